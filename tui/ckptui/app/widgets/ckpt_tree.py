"""Provides CkptTree: the checkpoint as a lazy, keyboard-first Textual Tree.

Children are created when a node is first expanded (as Textual's DirectoryTree loads folders).
Textual's Tree makes a Python node per child (50 000 leaves took 1.2 s to add), so a container
with more than `GROUP` children shows them in groups of `GROUP` (`[0 … 999]`), each loaded on
expand: a 100 000-key state dict opens as 100 rows. `reveal(path)` expands whatever lies on the
way to a key, groups included, so jumping to a match or to the last key always works.

`space` marks a subtree for export: the row gets a bullet and the mark colour, and the rows below
it take the colour too, so what an export keeps is visible at every depth.

The widget is split by concept: this module makes the rows and moves between them; row labels
(`tree_labels`), the module view (`tree_modules`), sorting (`tree_sort`), the filter
(`tree_filter`) and marks (`tree_marks`) are mixins, and `Entry` is in `tree_entry`.
"""

from __future__ import annotations

from typing import Any

from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from ckptui.analysis import modules as mv
from ckptui.analysis.frameworks import detect
from ckptui.analysis.index import subtree_sizes
from ckptui.analysis.roles import is_module
from ckptui.app.widgets.tree_entry import EXPAND_BUDGET, GROUP, Entry, NotOpen
from ckptui.app.widgets.tree_filter import Filtering
from ckptui.app.widgets.tree_labels import RowLabels
from ckptui.app.widgets.tree_marks import Marks
from ckptui.app.widgets.tree_modules import ModuleView
from ckptui.app.widgets.tree_order import FOOTER, ORDERS, Sorter, next_order
from ckptui.app.widgets.tree_sort import Sorting
from ckptui.core.tree import Checkpoint, KeyPath, Node, NodeKind
from ckptui.core.units import printable

__all__ = ["GROUP", "CkptTree", "Entry"]
"""GROUP and Entry live in `tree_entry`; importers of the tree find them here too."""


class CkptTree(RowLabels, ModuleView, Sorting, Filtering, Marks, Tree[Entry]):
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

    COMPONENT_CLASSES = {
        "ckpt-tree--summary",
        "ckpt-tree--danger",
        "ckpt-tree--match",
        "ckpt-tree--group",
        "ckpt-tree--marked",
    }

    NotOpen = NotOpen
    """Posted by a key that needs the checkpoint while it is still opening (tree_entry)."""

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
        self._grouping: set[int] = set()
        self._waiting: dict[int, KeyPath] = {}
        self._summaries: dict[int, str] = {}
        """Summaries of rows with over GROUP children, by node id (see `_label`)."""
        """The module view's first rows below a node (by id), made once."""

    # -- building ---------------------------------------------------------------------------
    def show_checkpoint(self, ckpt: Checkpoint, summaries: dict[int, str] | None = None) -> None:
        """Show a freshly opened checkpoint, root expanded; `summaries` are rows' summaries
        made ahead off the UI thread (`tree_labels.big_summaries`)."""
        if ckpt is not self.ckpt:
            self.marks = {}
            framework = detect(ckpt)
            self.parts = {p.path: p.label for p in framework.parts} if framework else {}
            self._module_rows = {}
            self._grouping, self._waiting = set(), {}
            self._summaries = dict(summaries or {})
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

    def _add(self, parent: TreeNode[Entry], node: Node, path: KeyPath, owner: Node) -> TreeNode:
        label = self._row_label(node, path, owner)
        if node.children and node.kind is not NodeKind.REF:
            return parent.add(label, Entry(node, path))
        return parent.add_leaf(label, Entry(node, path, loaded=True))

    def _load(self, tree_node: TreeNode[Entry]) -> None:
        """Create a row's children (once); the root's end with the folder's text files."""
        entry = tree_node.data
        if entry is None or entry.loaded:
            return
        entry.loaded = True
        self._load_children(tree_node, entry)
        if tree_node is self.root:
            self._add_text_files(tree_node)

    def _add_text_files(self, root: TreeNode[Entry]) -> None:
        """`config.json` and the folder's other small text files (`formats.folder_text`), after
        the checkpoint's own rows: not keys of the checkpoint, so nothing counts or exports
        them, but what a user looks for beside the weights."""
        files = self.ckpt.info.get("text_files") if self.ckpt is not None else None
        if isinstance(files, Node):
            for child in files.children:
                self._add(root, child, (child.key,), files)

    def _load_children(self, tree_node: TreeNode[Entry], entry: Entry) -> None:
        node = entry.node
        if self.module_view and not entry.raw and entry.group is None:
            if entry.module is None and self.group_later(tree_node, entry):
                return
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
