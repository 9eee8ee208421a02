"""Provides DiffTree: two checkpoints' merged tree, each row marked with how A and B differ.

The rows come from `diff_rows.merge`. DiffTree reuses CkptTree's keys and navigation
(j/k/h/l/g/G/e/E) by subclassing it, and adds rows lazily on expand like it, in groups of
`GROUP` for very wide containers. `only_changes` hides equal rows; `query` keeps only the leaves
whose path matches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.widgets.tree import TreeNode

from ckptui.app.widgets.ckpt_tree import GROUP, CkptTree
from ckptui.app.widgets.diff_rows import MARK, Kind, Row, describe, leaves
from ckptui.core.keypath import path_text
from ckptui.core.units import printable

AUTO_OPEN_ROWS = 400
"""Rows a filter may open at once so that what it kept is in view."""
FIRST_OPEN_ROWS = 60
"""Rows opened when the tree is first shown: a small comparison is seen whole at once."""


@dataclass
class DiffEntry:
    """What a tree row stands for: a merged row, or a group of a wide row's children."""

    row: Row
    group: tuple[int, int] | None = None
    """For a group row: the range [start, end) of the row's shown children."""
    loaded: bool = False


class DiffTree(CkptTree):
    """The merged tree; CkptTree's keys, its own rows."""

    BINDINGS = [
        Binding("space", "toggle_node", "Toggle", show=False),
        # the browser's module view: the merged rows are already split into modules
        Binding("m", "nothing", show=False),
    ]

    SORTABLE = False

    def action_nothing(self) -> None:
        """m does nothing here (the compare rows are grouped by module already)."""

    COMPONENT_CLASSES = CkptTree.COMPONENT_CLASSES | {
        f"diff-tree--{k.value.replace('_', '-')}" for k in Kind
    }

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.merged: Row | None = None
        self.only_changes = False
        self.query: re.Pattern[str] | None = None
        """Leaves whose dotted path matches stay; None keeps all."""
        self._visible: set[int] | None = None
        self._rows: dict[int, TreeNode[DiffEntry]] = {}  # type: ignore[type-var]
        """Loaded tree rows by id(Row), to relabel them as results arrive."""

    # -- building ---------------------------------------------------------------------------
    def show_merged(self, root: Row) -> None:
        """Show a merged tree, root expanded, cursor on the root."""
        self.merged = root
        self._rebuild(root)

    @property
    def filtered_view(self) -> bool:
        """True when some rows are hidden."""
        return self.only_changes or self.query is not None

    def refilter(self) -> None:
        """Apply `only_changes` and `query` again, keeping the cursor's row when still shown."""
        if self.merged is None:
            return
        here = self.cursor_node.data.row if self.cursor_node and self.cursor_node.data else None
        self._rebuild(here)

    def _rebuild(self, keep: Row | None) -> None:
        root = self.merged
        assert root is not None
        self._visible = self._compute_visible(root)
        self.clear()
        self._rows = {id(root): self.root}
        self.root.data = DiffEntry(root)  # type: ignore[assignment]
        self.root.set_label(self._label_of(root))
        self._load(self.root)
        self.root.expand()
        self._open_shown(AUTO_OPEN_ROWS if self.filtered_view else FIRST_OPEN_ROWS)
        target = keep if keep is not None and self.shown(keep) else None
        if target is None or not self.select_row(target):
            self.move_cursor(self.root)

    def _compute_visible(self, root: Row) -> set[int] | None:
        if not self.filtered_view:
            return None
        keep: set[int] = {id(root)}
        for leaf in leaves(root):
            if self.only_changes and leaf.kind in (Kind.EQUAL, Kind.PENDING):
                continue
            if self.query is not None and not self.query.search(path_text(leaf.path or ())):
                continue
            keep.add(id(leaf))
            keep.update(id(r) for r in leaf.ancestors())
        return keep

    def shown(self, row: Row) -> bool:
        """True when the filters let `row` be shown."""
        return self._visible is None or id(row) in self._visible

    def _open_shown(self, budget: int) -> None:
        """Open rows breadth first while their children fit in `budget` new rows."""
        queue = list(self.root.children)
        while queue and budget > 0:
            node = queue.pop(0)
            if not node.allow_expand or node.data is None:
                continue
            entry = node.data
            lo, hi = entry.group or (0, len(self._shown_children(entry.row)))
            if min(hi - lo, GROUP) > budget:
                continue
            self._load(node)
            node.expand()
            budget -= len(node.children)
            queue.extend(node.children)

    def _shown_children(self, row: Row) -> list[Row]:
        return [c for c in row.children.values() if self.shown(c)]

    def _load(self, tree_node: TreeNode) -> None:  # type: ignore[override]
        """Create a row's children (once)."""
        entry = tree_node.data
        if entry is None or entry.loaded:
            return
        entry.loaded = True
        kids = self._shown_children(entry.row)
        start, end = entry.group or (0, len(kids))
        if end - start > GROUP:
            style = self._fg("ckpt-tree--group")
            for lo in range(start, end, GROUP):
                hi = min(lo + GROUP, end)
                keys = printable(f"{kids[lo].key} … {kids[hi - 1].key}")  # text from the files
                label = Text(f"[{lo:,} … {hi - 1:,}]  {keys}")
                label.stylize(style)
                tree_node.add(label, DiffEntry(entry.row, (lo, hi)))
            return
        for child in kids[start:end]:
            label = self._label_of(child)
            if child.leaf:
                node = tree_node.add_leaf(label, DiffEntry(child, loaded=True))
            else:
                node = tree_node.add(label, DiffEntry(child))
            self._rows[id(child)] = node

    # -- labels ------------------------------------------------------------------------------
    def _style(self, kind: Kind) -> Style:
        return self._fg(f"diff-tree--{kind.value.replace('_', '-')}")

    def _label_of(self, row: Row) -> Text:
        if row.leaf:
            kind = row.kind
        elif row.changed and row.counts[Kind.ONLY_A] == row.leaves:
            kind = Kind.ONLY_A
        elif row.changed and row.counts[Kind.ONLY_B] == row.leaves:
            kind = Kind.ONLY_B
        elif row.changed:
            kind = Kind.VALUES
        else:  # `=` only when every leaf below was compared equal
            kind = Kind.PENDING if row.counts[Kind.PENDING] else Kind.EQUAL
        if row.leaf or kind in (Kind.ONLY_A, Kind.ONLY_B):
            mark = MARK[kind]
        else:
            mark = "•" if row.changed else MARK[kind]
        key_style = self._style(kind) if kind is not Kind.EQUAL else Style()
        if not row.leaf and kind is Kind.VALUES:
            key_style = self._fg("diff-tree--other")  # a container with changes below
            mark_style = key_style
        else:
            mark_style = self._style(kind)
        return Text.assemble(
            (mark, mark_style),
            " ",
            (printable(row.key), key_style),  # keys and values from the files: escaped
            "  ",
            (printable(describe(row)), self._fg("ckpt-tree--summary")),
        )

    def relabel(self, rows: list[Row]) -> None:
        """Redraw these rows and their ancestors, where loaded."""
        done: set[int] = set()
        for row in rows:
            for r in [*row.ancestors(), row]:
                if id(r) in done:
                    continue
                done.add(id(r))
                node = self._rows.get(id(r))
                if node is not None:
                    node.set_label(self._label_of(r))

    def notify_style_update(self) -> None:
        super().notify_style_update()
        if self.merged is not None and self._rows:
            for rid, node in self._rows.items():
                if node.data is not None and id(node.data.row) == rid:
                    node.set_label(self._label_of(node.data.row))

    # -- navigation --------------------------------------------------------------------------
    def select_row(self, row: Row) -> bool:
        """Open the way to `row` and put the cursor on it."""
        node = self.root
        for target in [*row.ancestors()[1:], row]:
            self._load(node)
            node.expand()
            nxt = None
            for child in node.children:
                e = child.data
                if e is None:
                    continue
                if e.group is not None:
                    lo, hi = e.group
                    if target in self._shown_children(e.row)[lo:hi]:
                        self._load(child)
                        child.expand()
                        nxt = next((g for g in child.children if g.data.row is target), None)
                        break
                elif e.row is target:
                    nxt = child
                    break
            if nxt is None:
                return False
            node = nxt
        self._move_later(node)
        return True

    def current_row(self) -> Row | None:
        """The cursor's merged row (a group row stands for its parent)."""
        node = self.cursor_node
        return node.data.row if node is not None and node.data is not None else None

    def action_toggle_mark(self) -> None:
        """Marks belong to the browser's export: nothing to mark here."""

    def clear_marks(self) -> None:
        """Nothing is ever marked here."""
