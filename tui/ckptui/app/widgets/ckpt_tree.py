"""Provides CkptTree: the checkpoint as a lazy, keyboard-first Textual Tree.

Children are created when a node is first expanded (as Textual's DirectoryTree loads folders).
Textual's Tree makes a Python node per child (50 000 leaves took 1.2 s to add), so a container
with more than `GROUP` children shows them in groups of `GROUP` (`[0 … 999]`), each loaded on
expand: a 100 000-key state dict opens as 100 rows. `reveal(path)` expands whatever lies on the
way to a key, groups included, so jumping to a match or to the last key always works.

`space` marks a subtree for export: the row gets a bullet and the mark colour, and the rows below
it take the colour too, so what an export keeps is visible at every depth.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from ckptui.analysis import modules as mv
from ckptui.analysis.frameworks import detect
from ckptui.analysis.index import subtree_sizes, summary
from ckptui.analysis.roles import is_module
from ckptui.app.widgets.row_columns import GAP, KEY_MIN, fit, tensor_columns
from ckptui.app.widgets.tree_order import FOOTER, LABELS, ORDERS, Sorter, next_order
from ckptui.core.keypath import path_text
from ckptui.core.tree import Checkpoint, KeyPath, Node, NodeKind, TensorInfo, walk
from ckptui.core.units import printable, size

GROUP = 1000
"""Children shown per group row in large containers."""
EXPAND_BUDGET = 5000
"""Tree rows `e` (expand all below) may create at once."""


@dataclass
class Entry:
    """What a tree row stands for: a checkpoint node, or a group of a node's children."""

    node: Node
    path: KeyPath
    group: tuple[int, int] | None = None
    """For a group row: the child index range [start, end) of `node`."""
    loaded: bool = False
    module: mv.Module | None = None
    """In the module view, for a module row: the module (`node` is then the placeholder
    nn.Module, or for a group of dotted names the state dict holding them)."""
    raw: bool = False
    """A placeholder module's internals row: its fields as recorded, not as modules."""
    name: str | None = None
    """The key shown, when it is not the node's own (a module view leaf shows `weight`)."""


class CkptTree(Tree[Entry]):
    """The checkpoint tree. Posts Textual's NodeHighlighted as the cursor moves."""

    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("h,left", "collapse_or_parent", "Collapse", show=False),
        Binding("l,right", "expand_or_child", "Expand", show=False),
        Binding("g,home", "scroll_home", "Top", show=False),
        Binding("G,end", "last_key", "Bottom", show=False),
        Binding("e", "expand_below", "Expand all", show=False),
        Binding("E", "collapse_below", "Collapse all", show=False),
        Binding("enter", "toggle_node", "Toggle", show=False),
        Binding("space", "toggle_mark", "Mark"),
        Binding("m", "toggle_modules", "Modules"),
        # One binding per order, only the current one active (check_action): the footer then
        # says the order the rows are in, and `s` moves on to the next.
        *(Binding("s", f"sort_by('{next_order(o)}')", FOOTER[o], id=f"sort-{o}") for o in ORDERS),
    ]

    SORTABLE = True
    """Whether `s` sorts the rows (the compare screen's merged tree keeps its own order)."""

    COMPONENT_CLASSES = {
        "ckpt-tree--summary",
        "ckpt-tree--danger",
        "ckpt-tree--match",
        "ckpt-tree--group",
        "ckpt-tree--marked",
    }

    class MarksChanged(Message):
        """The set of subtrees marked for export changed."""

        def __init__(self, marks: list[KeyPath]) -> None:
            super().__init__()
            self.marks = marks

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("checkpoint", id=id)
        self.show_root = True
        self.guide_depth = 2
        self.auto_expand = False
        self.ckpt: Checkpoint | None = None
        self.matches: list[KeyPath] = []
        """Paths matching the active filter, in display order."""
        self.filtered = False
        self.marks: dict[KeyPath, None] = {}
        """Subtrees marked for export, in the order they were marked (a dict as ordered set)."""
        self._fg_styles: dict[str, Style] = {}
        self.parts: dict[KeyPath, str] = {}
        """Labels of the parts of a recognised framework's file (`state_dict`: model weights)."""
        self.params: dict[KeyPath, Any] = {}
        """Parameter counts (`params.Params`) of the model's weights, by path: shown on its row
        (and the root's), counted once in the screen's open worker."""
        self.module_view = False
        """`m`: state dicts grouped into modules, placeholder nn.Modules shown as layers."""
        self.badges: dict[KeyPath, str] = {}
        """`NaN`, `Inf`: tensors whose values the panel found non-finite, shown on their row."""
        self.order = "file"
        """`s`: the order of every container's rows (`tree_order.ORDERS`); kept across files."""
        self._sorter: Sorter | None = None
        self._module_rows: dict[int, list[mv.Row] | None] = {}
        self._summaries: dict[int, str] = {}
        """Summaries of rows with over GROUP children, by node id (see `_label`)."""
        """The module view's first rows below a node (by id), made once."""

    # -- building ---------------------------------------------------------------------------
    def show_checkpoint(self, ckpt: Checkpoint) -> None:
        """Show a freshly opened checkpoint, root expanded."""
        if ckpt is not self.ckpt:
            self.marks = {}
            framework = detect(ckpt)
            self.parts = {p.path: p.label for p in framework.parts} if framework else {}
            self._module_rows = {}
            self._summaries = {}
            self._sorter = Sorter(subtree_sizes(ckpt))
            self.badges = {}
            # a whole-module pickle opens on its layers: its raw fields are nn.Module internals
            self.module_view = is_module(ckpt.root)
        self.ckpt = ckpt
        self.filtered = False
        self.matches = []
        self._reset()
        self._load(self.root)
        self.root.expand()
        self.move_cursor(self.root)

    def _reset(self) -> None:
        assert self.ckpt is not None
        self.clear()
        self.root.set_label(self._row_label(self.ckpt.root, (), None))
        self.root.data = Entry(self.ckpt.root, ())

    def _fg(self, component: str) -> Style:
        """A component class's foreground only: `partial=True` would drop the blending of
        translucent theme colours ($text-muted), and a background would hide the cursor.

        Kept until the styles change (theme, focus): Textual's own cache is cleared by every
        refresh, so a 1000-row group would compute each style 1000 times (60% of its expand)."""
        style = self._fg_styles.get(component)
        if style is None:
            s = self.get_component_rich_style(component)
            style = self._fg_styles[component] = Style(color=s.color, bold=s.bold, italic=s.italic)
        return style

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._fg_styles = {}

    def _label(
        self,
        node: Node,
        key_text: str,
        match: bool = False,
        mark: str = "",
        part: str = "",
        more: str = "",
        badge: str = "",
    ) -> Text:
        """A row's text; `mark` is `self` for a marked row, `below` for a row under one; `part`
        is what a framework's part is for, shown dim and slanted after the summary."""
        if node.safety == "danger":
            key_style = self._fg("ckpt-tree--danger")
        elif match:
            key_style = self._fg("ckpt-tree--match")
        elif mark:
            key_style = self._fg("ckpt-tree--marked")
        else:
            key_style = Style()
        summary_style = self._fg("ckpt-tree--summary")
        if node.kind is NodeKind.TENSOR and node.tensor is not None and not more:
            # shape | dtype | size are columns at the row's right edge (`render_label`)
            bullet = ("● ", self._fg("ckpt-tree--marked")) if mark == "self" else ""
            text = Text.assemble(bullet, (printable(key_text), key_style))
            if badge:  # words, not only colour: NO_COLOR shows it too
                text.append(f" ⚠ {badge}", self._fg("ckpt-tree--danger"))
            if part:
                text.append(f" — {printable(part)}", summary_style + Style(italic=True))
            return text
        if len(node.children) > GROUP:
            # its bytes are a walk of every node below: a 100,000-key root's label is made
            # again on every rebuild (m, esc), 0.3-1 s each time; the model is frozen
            text = self._summaries.get(id(node))
            if text is None:
                text = self._summaries[id(node)] = summary(node)
        else:
            text = summary(node)
        bullet = ("● ", self._fg("ckpt-tree--marked")) if mark == "self" else ""
        # keys, class names and parts come from the file: control characters shown as escapes
        text = Text.assemble(
            bullet,
            (printable(key_text), key_style),
            "  ",
            (printable(text + more), summary_style),
        )
        if part:
            text.append(f" — {printable(part)}", summary_style + Style(italic=True))
        return text

    def render_label(self, node: TreeNode[Entry], base_style: Style, style: Style) -> Text:
        """The label, and for a tensor row its shape | dtype | size columns, right-aligned at
        the tree's edge (`row_columns`); Textual caches the drawn line per width."""
        text = super().render_label(node, base_style, style)
        t = self._tensor_row(node)
        if t is None:
            return text
        room = self._room(node)
        full = tensor_columns(t)
        if text.cell_len + GAP + len(full) > room:
            # the key comes first: a shape the panel shows anyway gives way before it is cut
            full = tensor_columns(t, shape=False)
        columns = Text(full, style=self._fg("ckpt-tree--summary"))
        columns.stylize(style)
        fitted = fit(text, columns, room, style)
        if fitted is not None:
            return fitted
        text.append("  ")  # no room for columns: one run of text, as other rows, shape kept
        text.append(" ".join(tensor_columns(t).split()), columns.style)
        return text

    def get_label_width(self, node: TreeNode[Entry]) -> int:
        """A tensor row fills the line (`render_label`), known without drawing it: Textual asks
        for every row's width each time rows open (1000 of them in a group)."""
        t = self._tensor_row(node)
        if t is not None:
            room = self._room(node)
            if room - len(tensor_columns(t, shape=False)) - GAP >= KEY_MIN:
                return room
        return super().get_label_width(node)

    @staticmethod
    def _tensor_row(node: TreeNode[Entry]) -> TensorInfo | None:
        """The tensor a row shows in columns, or None (a container, a group, the compare
        screen's rows: DiffEntry, with their own summaries)."""
        entry = node.data
        if not isinstance(entry, Entry) or entry.group or entry.module or entry.raw:
            return None
        return entry.node.tensor if entry.node.kind is NodeKind.TENSOR else None

    def _room(self, node: TreeNode[Entry]) -> int:
        """Cells from the end of a row's guides to the tree's right edge."""
        depth, up = 0, node.parent
        while up is not None:
            depth, up = depth + 1, up.parent
        return self.scrollable_content_region.width - depth * self.guide_depth

    def _mark_of(self, path: KeyPath) -> str:
        if not self.marks:
            return ""
        if path in self.marks:
            return "self"
        return "below" if any(path[:i] in self.marks for i in range(len(path))) else ""

    @staticmethod
    def _key_text(child: Node, parent: Node) -> str:
        return f"[{child.key}]" if parent.kind is NodeKind.SEQUENCE else str(child.key)

    def _row_label(
        self, node: Node, path: KeyPath, owner: Node | None, name: str | None = None
    ) -> Text:
        if name is not None:
            key_text = name
        elif owner is None:  # the root row is named after the file
            assert self.ckpt is not None
            key_text = Path(self.ckpt.path).name
        else:
            key_text = self._key_text(node, owner)
        part = self.parts.get(path, "") if self.parts else ""
        params = self.params.get(path) if self.params else None
        more = f" · {params.text()}" if params is not None and node.children else ""
        badge = self.badges.get(path, "") if self.badges else ""
        return self._label(
            node, key_text, path in self._match_set, self._mark_of(path), part, more, badge
        )

    def _add(self, parent: TreeNode[Entry], node: Node, path: KeyPath, owner: Node) -> TreeNode:
        label = self._row_label(node, path, owner)
        if node.children and node.kind is not NodeKind.REF:
            return parent.add(label, Entry(node, path))
        return parent.add_leaf(label, Entry(node, path, loaded=True))

    @property
    def _match_set(self) -> set[KeyPath]:
        if not hasattr(self, "_matches_cache") or self._matches_cache[0] is not self.matches:
            self._matches_cache = (self.matches, set(self.matches))
        return self._matches_cache[1]

    def _load(self, tree_node: TreeNode[Entry]) -> None:
        """Create a row's children (once)."""
        entry = tree_node.data
        if entry is None or entry.loaded:
            return
        entry.loaded = True
        node = entry.node
        if self.module_view and not entry.raw and entry.group is None:
            rows = entry.module.rows() if entry.module is not None else self.modules_of(entry)
            if rows is not None:
                if self._sorter is not None:
                    rows = self._sorter.rows(rows, self.order)
                for row in rows:
                    self._add_module_row(tree_node, row)
                return
        kids = self.kids(node)
        start, end = entry.group or (0, len(kids))
        if end - start > GROUP:
            style = self._fg("ckpt-tree--group")
            for lo in range(start, end, GROUP):
                hi = min(lo + GROUP, end)
                first, last = kids[lo].key, kids[hi - 1].key
                label = Text(printable(f"[{lo:,} … {hi - 1:,}]  {first} … {last}"), style=style)
                tree_node.add(label, Entry(node, entry.path, (lo, hi)))
            return
        for child in kids[start:end]:
            self._add(tree_node, child, (*entry.path, child.key), node)

    def kids(self, node: Node) -> Sequence[Node]:
        """`node`'s children in the current order (a group row's range indexes this)."""
        if self._sorter is None or self.order == "file":
            return node.children
        return self._sorter.children(node, self.order)

    # -- sorting -----------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Only the `s` binding of the current order is active (and shown)."""
        if action == "sort_by":
            return self.SORTABLE and parameters == (next_order(self.order),)
        return True

    def action_sort_by(self, order: str) -> None:
        """s: rows by name, by size, by parameters, or as stored; the cursor stays on its key."""
        if self.ckpt is None or order not in ORDERS:
            return
        entry = self.cursor_node.data if self.cursor_node else None
        keep = entry.path if entry is not None else None
        if entry is not None and entry.module is not None and entry.module.node is None:
            keep = (*entry.path, entry.module.members[0][1].key)  # a group: its first name
        self.order = order
        if self.filtered:
            self._refill_matches()
        else:
            self.show_checkpoint(self.ckpt)
            if keep:
                self.select_path(keep)
        self.refresh_bindings()
        self.notify(f"rows {LABELS[order]} (s: {LABELS[next_order(order)]})", timeout=3)

    # -- the module view ----------------------------------------------------------------------
    def modules_of(self, entry: Entry) -> list[mv.Row] | None:
        """The module view's rows below a checkpoint node (None: it shows as it is)."""
        key = id(entry.node)
        if key not in self._module_rows:
            self._module_rows[key] = mv.module_rows(entry.node, entry.path)
        return self._module_rows[key]

    def preload_modules(self, node: Node, rows: list[mv.Row] | None) -> None:
        """Rows a worker made ahead for `node` (see BrowseScreen.find_modules)."""
        self._module_rows.setdefault(id(node), rows)

    def _add_module_row(self, parent: TreeNode[Entry], row: mv.Row) -> TreeNode[Entry]:
        if isinstance(row, mv.Module):
            node = row.node if row.node is not None else parent.data.node  # type: ignore[union-attr]
            return parent.add(self._module_label(row), Entry(node, row.path, module=row))
        if row.internals:
            n = len(row.node.children)
            label = Text.assemble(
                (printable(row.name), self._fg("ckpt-tree--group")),
                "  ",
                (f"{n} fields as recorded", self._fg("ckpt-tree--summary")),
            )
            return parent.add(label, Entry(row.node, row.path, raw=True))
        label = self._row_label(row.node, row.path, None, row.name)
        entry = Entry(row.node, row.path, name=row.name)
        if row.node.children and row.node.kind is not NodeKind.REF:
            return parent.add(label, entry)
        entry.loaded = True
        return parent.add_leaf(label, entry)

    def _module_label(self, row: mv.Module) -> Text:
        """`conv1  Conv2d(3, 64, kernel_size=7, stride=2) · 9,408 params · 36.8 KiB · float32`."""
        p = row.params
        parts = [row.title] if row.title else []
        if p.tensors:
            parts += [p.text(), size(p.nbytes)]
            if p.dtype_mix(0.01):
                parts.append(p.dtype_mix(0.01))
        mark = self._mark_of(row.path) if row.node is not None else ""
        key_style = self._fg("ckpt-tree--marked") if mark else Style(bold=True)
        return Text.assemble(
            (printable(row.name), key_style),
            "  ",
            (printable(" · ".join(parts)), self._fg("ckpt-tree--summary")),
        )

    def action_toggle_modules(self) -> None:
        """m: group dotted state-dict names into modules (and whole-module pickles into their
        layers), or show the keys as they are stored; the cursor stays on its key."""
        if self.ckpt is None:
            return
        entry = self.cursor_node.data if self.cursor_node else None
        keep = entry.path if entry is not None else None
        if entry is not None and entry.module is not None and entry.module.node is None:
            keep = (*entry.path, entry.module.members[0][1].key)  # a group: its first name
        self.module_view = not self.module_view
        if self.filtered:
            self.clear_filter()
        else:
            self.show_checkpoint(self.ckpt)
        if keep:
            self.select_path(keep)
        self.notify(
            "module view: dotted names grouped into modules (m: as stored)"
            if self.module_view
            else "keys as stored (m: module view)",
            timeout=3,
        )

    def on_tree_node_expanded(self, event: Tree.NodeExpanded[Entry]) -> None:
        """Load children on first expand (rows opened by Textual itself; ckptui's own keys load
        them before expanding, see `_open`)."""
        self._load(event.node)

    def _open(self, node: TreeNode[Entry]) -> None:
        """Expand a row with its children already there, and scroll them into view.

        Loading in the key's own handler, not in the NodeExpanded handler, matters for type-ahead:
        keys that arrive in one batch (a laggy SSH link) sit in the queue before NodeExpanded, so
        `l j j` would move the cursor over a tree that does not have the new rows yet."""
        self._load(node)
        node.expand()
        if node.children:
            self.call_after_refresh(self._reveal_children, node)

    def _reveal_children(self, node: TreeNode[Entry]) -> None:
        """Scroll so that the rows just opened below `node` show (as many as fit, `node` kept)."""
        line = node.line
        if line < 0 or not node.is_expanded:
            return
        height = self.scrollable_content_region.height
        shown = min(len(node.children), max(0, height - 1))
        bottom = line + shown
        if bottom >= self.scroll_offset.y + height:
            self.scroll_to(y=min(line, bottom - height + 1), animate=False)

    def _toggle_node(self, node: TreeNode[Entry]) -> None:
        if not node.allow_expand:
            return
        if node.is_expanded:
            node.collapse()
        else:
            self._open(node)

    # -- navigation --------------------------------------------------------------------------
    def reveal(self, path: KeyPath) -> TreeNode[Entry] | None:
        """Expand the way to `path` and return its row (None if it is not in the tree)."""
        if self.module_view:
            return self._reveal_in_modules(path)
        current = self.root
        for depth in range(len(path)):
            self._load(current)
            current.expand()
            entry = current.data
            assert entry is not None
            target = path[: depth + 1]
            nxt = None
            for child in current.children:
                ce = child.data
                if ce is None:
                    continue
                if ce.group is not None:
                    lo, hi = ce.group
                    keys = [c.key for c in self.kids(ce.node)[lo:hi]]
                    if target[-1] in keys:
                        self._load(child)
                        child.expand()
                        nxt = next(
                            (g for g in child.children if g.data and g.data.path == target), None
                        )
                        break
                elif ce.path == target:
                    nxt = child
                    break
            if nxt is None:
                return None
            current = nxt
        return current

    def _reveal_in_modules(self, path: KeyPath) -> TreeNode[Entry] | None:
        """`reveal` in the module view: at each level, the row whose subtree holds `path`."""
        current = self.root
        for _ in range(4 * len(path) + 64):  # module rows add levels; a bound, not a guess
            entry = current.data
            if entry is None:
                return None
            if entry.path == path and entry.module is None and not entry.raw:
                return current
            self._load(current)
            current.expand()
            nxt = None
            fallback = None
            for child in current.children:
                if _holds(child.data, path, self.kids):
                    if child.data.raw:  # type: ignore[union-attr]
                        fallback = child
                        continue
                    nxt = child
                    break
            nxt = nxt or fallback
            if nxt is None:
                return None
            current = nxt
        return None

    def select_path(self, path: KeyPath) -> bool:
        """Reveal `path` and put the cursor on it."""
        row = self.reveal(path)
        if row is None:
            return False
        self._move_later(row)
        return True

    def _move_later(self, row: TreeNode[Entry]) -> None:
        # Rows just added or opened get their line numbers at the next refresh.
        self.call_after_refresh(self.move_cursor, row)

    def action_collapse_or_parent(self) -> None:
        """h: collapse an open row, else go to its parent."""
        node = self.cursor_node
        if node is None:
            return
        if node.is_expanded:
            node.collapse()
        elif node.parent is not None:
            self.move_cursor(node.parent)

    def action_expand_or_child(self) -> None:
        """l: expand a closed row, else go to its first child."""
        node = self.cursor_node
        if node is None or not node.allow_expand:
            return
        if not node.is_expanded:
            self._open(node)
        elif node.children:
            self.move_cursor(node.children[0])

    def action_last_key(self) -> None:
        """G: the last row, opening a trailing group so the cursor lands on a real key."""
        self.action_scroll_end()
        node = self.cursor_node
        moved = False
        while node is not None and node.data is not None and node.data.group is not None:
            self._load(node)
            node.expand()
            node = node.children[-1] if node.children else None
            moved = True
        if moved and node is not None:
            self._move_later(node)

    def action_expand_below(self) -> None:
        """e: expand everything below the cursor, up to EXPAND_BUDGET new rows."""
        start = self.cursor_node or self.root
        budget = EXPAND_BUDGET
        queue = [start]
        while queue and budget > 0:
            node = queue.pop(0)
            if not node.allow_expand:
                continue
            before = len(node.children)
            self._load(node)
            node.expand()
            budget -= len(node.children) - before
            queue.extend(node.children)
        if queue:
            self.notify(
                f"expanded the first {EXPAND_BUDGET:,} rows; expand further by hand", timeout=4
            )

    def action_collapse_below(self) -> None:
        """E: collapse everything below the cursor."""
        node = self.cursor_node or self.root
        node.collapse_all()
        if node is self.root:
            node.expand()  # keep the top-level keys in view
        self.move_cursor(node)

    def add_parts(self, labels: dict[KeyPath, str]) -> None:
        """Label more rows (optimizer entries naming their parameter) and redraw loaded ones."""
        if not labels:
            return
        self.parts = {**self.parts, **labels}
        self._relabel(self.root)

    def set_badge(self, path: KeyPath, badge: str) -> None:
        """Show `badge` (`NaN`, `Inf`) on the row of the tensor at `path`, wherever it is
        loaded (the stored view and the module view share rows' paths)."""
        if self.badges.get(path) == badge:
            return
        self.badges[path] = badge
        stack = [self.root]
        while stack:
            row = stack.pop()
            stack.extend(row.children)
            if row.data is not None and row.data.path == path and row.data.module is None:
                self._relabel(row)

    # -- marks -------------------------------------------------------------------------------
    def action_toggle_mark(self) -> None:
        """space: mark the cursor's subtree for export, or unmark it."""
        row = self.cursor_node
        entry = row.data if row else None
        if row is None or entry is None:
            return
        if entry.group is not None:  # a group row stands for its children
            lo, hi = entry.group
            paths = [(*entry.path, c.key) for c in self.kids(entry.node)[lo:hi]]
        elif entry.module is not None and entry.module.node is None:
            # a group of names stands for its tensors, each a key of the state dict
            paths = [(*entry.path, n.key) for _, n in entry.module.members]
        else:
            paths = [entry.path]
        covering = next((p[:i] for p in paths for i in range(len(p)) if p[:i] in self.marks), None)
        if covering is not None:
            where = path_text(covering) or "the whole file"
            where = printable(where)  # keys from the file: not markup
            self.notify(
                f"already kept with {where}: unmark it there", severity="warning", markup=False
            )
            return
        if all(p in self.marks for p in paths):
            for p in paths:
                del self.marks[p]
        else:
            if entry.module is not None and entry.module.node is None:
                with_tensors = paths  # a group's members are its tensors
            else:
                with_tensors = [p for p in paths if _has_tensors(self._node_at(p, entry))]
            if not with_tensors:
                what = path_text(entry.path) or "the file"
                what = printable(what)  # keys from the file: not markup
                self.notify(
                    f"no tensors below {what}: nothing to export", severity="warning", markup=False
                )
                return
            for p in with_tensors:
                # a mark covers its subtree: marks below it are folded into it
                for old in [m for m in self.marks if m[: len(p)] == p]:
                    del self.marks[old]
                self.marks[p] = None
        self._relabel(row)
        self.post_message(self.MarksChanged(list(self.marks)))

    def clear_marks(self) -> None:
        """Forget every mark."""
        self.marks = {}
        self._relabel(self.root)
        self.post_message(self.MarksChanged([]))

    @staticmethod
    def _node_at(path: KeyPath, entry: Entry) -> Node:
        if path == entry.path:
            return entry.node
        child = entry.node.child(path[-1])
        assert child is not None
        return child

    def _relabel(self, row: TreeNode[Entry]) -> None:
        """Redraw the labels of `row` and every loaded row below it."""
        stack = [row]
        while stack:
            r = stack.pop()
            stack.extend(r.children)
            e = r.data
            if e is None or e.group is not None or e.raw:
                continue
            if e.module is not None:
                r.set_label(self._module_label(e.module))
                continue
            owner = r.parent.data.node if r.parent is not None and r.parent.data else None
            r.set_label(self._row_label(e.node, e.path, owner, e.name))

    # -- filtering ---------------------------------------------------------------------------
    def show_matches(self, matches: list[KeyPath]) -> None:
        """Show only `matches` and their ancestors, all opened."""
        assert self.ckpt is not None
        self.matches = matches
        self.filtered = True
        self._reset()
        self.root.data.loaded = True  # type: ignore[union-attr]
        rows: dict[KeyPath, TreeNode[Entry]] = {(): self.root}
        for path in matches:
            for depth in range(1, len(path) + 1):
                sub = path[:depth]
                if sub in rows:
                    continue
                parent_row = rows[path[: depth - 1]]
                parent_entry = parent_row.data
                assert parent_entry is not None
                node = parent_entry.node.child(sub[-1])
                if node is None:
                    break
                row = self._add(parent_row, node, sub, parent_entry.node)
                if depth < len(path) and row.data is not None:
                    row.data.loaded = True  # shows only the matching branch
                rows[sub] = row
                parent_row.expand()
        self.root.expand()
        if matches and matches[0] in rows:
            self._move_later(rows[matches[0]])

    def _refill_matches(self) -> None:
        """The filtered rows again, in the current order, the cursor kept on its key."""
        entry = self.cursor_node.data if self.cursor_node else None
        keep = entry.path if entry is not None else None
        assert self.ckpt is not None
        where: dict[int, dict[object, int]] = {}

        def position(path: KeyPath) -> tuple[int, ...]:
            node, out = self.ckpt.root, []  # type: ignore[union-attr]
            for key in path:
                index = where.get(id(node))
                if index is None:
                    index = where[id(node)] = {c.key: i for i, c in enumerate(self.kids(node))}
                out.append(index.get(key, -1))
                node = node.child(key)
                if node is None:
                    break
            return tuple(out)

        self.show_matches(sorted(self.matches, key=position))
        if keep:
            self.select_path(keep)

    def clear_filter(self) -> None:
        """Back to the whole tree, keeping the cursor's key, and the matches for n/N."""
        entry = self.cursor_node.data if self.cursor_node else None
        keep = entry.path if entry is not None else ()
        assert self.ckpt is not None
        matches = self.matches
        self.show_checkpoint(self.ckpt)
        self.matches = matches
        if keep:
            self.select_path(keep)

    def jump_match(self, step: int) -> KeyPath | None:
        """n/N: move to the next (step 1) or previous (-1) match after the cursor."""
        if not self.matches:
            return None
        entry = self.cursor_node.data if self.cursor_node else None
        here = entry.path if entry is not None else ()
        try:
            i = self.matches.index(here) + step
        except ValueError:
            i = 0 if step > 0 else -1
        target = self.matches[i % len(self.matches)]
        self.select_path(target)
        return target

    def current_path_text(self) -> str:
        """The cursor row's dotted path."""
        entry = self.cursor_node.data if self.cursor_node else None
        return path_text(entry.path) if entry else ""


def _holds(entry: Entry | None, path: KeyPath, kids: Callable[[Node], Sequence[Node]]) -> bool:
    """True when the row of `entry` has `path` at or below it (`kids`: children in the order
    the tree shows them, which a group row's range indexes)."""
    if entry is None:
        return False
    if entry.group is not None:
        lo, hi = entry.group
        n = len(entry.path)
        if len(path) <= n or path[:n] != entry.path:
            return False
        return any(c.key == path[n] for c in kids(entry.node)[lo:hi])
    module = entry.module
    if module is not None and module.node is None:  # a group of names in a state dict
        n = len(entry.path)
        key = path[n] if len(path) > n and path[:n] == entry.path else None
        return isinstance(key, str) and key.startswith(module.prefix + ".")
    n = len(entry.path)
    return path[:n] == entry.path


def _has_tensors(node: Node) -> bool:
    return node.kind is NodeKind.TENSOR or any(n.kind is NodeKind.TENSOR for _, n in walk(node))
