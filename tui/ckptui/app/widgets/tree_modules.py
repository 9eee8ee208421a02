"""Provides ModuleView: the browser's module view (`m`), dotted state-dict names grouped into
modules and whole-module pickles shown as their layers.

A mixin of CkptTree, split from it by concept: the module rows, their labels' rows, the toggle,
and finding a key among module rows (`reveal` in the module view).
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets.tree import TreeNode
from textual.worker import get_current_worker

from ckptui.analysis import modules as mv
from ckptui.app.widgets.tree_entry import Entry, NotOpen, holds
from ckptui.core.bulk import gc_paused
from ckptui.core.tree import KeyPath, Node, NodeKind
from ckptui.core.units import plural, printable

GROUP_INLINE = 5000
"""Children of a node grouped into modules on the UI thread; more are grouped in a worker."""


class ModuleView:
    """The module view of CkptTree (a mixin: `self` is the tree)."""

    ckpt: Any
    module_view: bool
    filtered: bool
    _module_rows: dict[int, list[mv.Row] | None]
    _grouping: set[int]
    """Nodes (by id) a worker is grouping into modules."""
    _waiting: dict[int, KeyPath]
    """Nodes (by id) whose row shows `grouping…`, by path, until their rows come."""
    _keep_later: KeyPath | None = None
    """Where the cursor goes once those rows come."""

    def modules_of(self, entry: Entry) -> list[mv.Row] | None:
        """The module view's rows below a checkpoint node (None: it shows as it is)."""
        key = id(entry.node)
        if key not in self._module_rows:
            self._module_rows[key] = mv.module_rows(entry.node, entry.path)
        return self._module_rows[key]

    def preload_modules(self, node: Node, rows: list[mv.Row] | None) -> None:
        """Rows a worker made ahead for `node` (see BrowseScreen.find_modules); a row waiting
        for them (`group_later`) shows them now."""
        self._module_rows.setdefault(id(node), rows)
        self._grouping.discard(id(node))
        if self._waiting.pop(id(node), None) is not None and self.module_view:
            self._reshow()

    def expect_modules(self, node: Node) -> None:
        """A worker (BrowseScreen.find_modules) is grouping `node`: `m` waits for it rather
        than grouping it again."""
        if id(node) not in self._module_rows:
            self._grouping.add(id(node))

    def modules_lost(self, node: Node) -> None:
        """That worker failed or was cancelled: a row waiting for it groups on its own."""
        self._grouping.discard(id(node))
        path = self._waiting.pop(id(node), None)
        if path is not None and self.module_view:
            self._group_ahead(node, path)

    def group_later(self, tree_node: TreeNode[Entry], entry: Entry) -> bool:
        """In the module view, a node with more than GROUP_INLINE children not grouped yet:
        its grouping runs in a worker (1-1.7 s for 100,000 names, issue 18) and the row shows
        one line saying so until the rows come (`preload_modules`). True when it does."""
        node = entry.node
        if id(node) in self._module_rows or len(node.children) <= GROUP_INLINE:
            return False
        label = Text(
            f"grouping {len(node.children):,} names into modules… (m: as stored)",
            style=self._fg("ckpt-tree--group"),
        )
        tree_node.add_leaf(label, None)
        self._waiting[id(node)] = entry.path
        if id(node) not in self._grouping:
            self._group_ahead(node, entry.path)
        return True

    def _group_ahead(self, node: Node, path: KeyPath) -> None:
        self._grouping.add(id(node))

        def run() -> None:
            worker = get_current_worker()
            with gc_paused(keep_frozen=True):  # a collection in this thread holds the UI thread too
                rows = mv.module_rows(node, path)
                mv.warm(rows, levels=1)  # the first expand then costs nothing either
            if not worker.is_cancelled:
                self.app.call_from_thread(self.preload_modules, node, rows)

        self.run_worker(run, thread=True, group="tree-modules", exit_on_error=False)

    def _reshow(self) -> None:
        """The tree again with the rows that came, the cursor kept on its key (the one it was
        on when `m` was pressed, if the rows were not there to put it on)."""
        entry = self.cursor_node.data if self.cursor_node else None
        keep = self._keep_later or (entry.path if entry is not None else None)
        self._keep_later = None
        if self.filtered:
            self.clear_filter()
        else:
            self.show_checkpoint(self.ckpt)
        if keep:
            self.select_path(keep)

    def _add_module_row(self, parent: TreeNode[Entry], row: mv.Row) -> TreeNode[Entry]:
        if isinstance(row, mv.Module):
            node = row.node if row.node is not None else parent.data.node  # type: ignore[union-attr]
            return parent.add(self._module_label(row), Entry(node, row.path, module=row))
        if row.internals:
            n = len(row.node.children)
            label = Text.assemble(
                (printable(row.name), self._fg("ckpt-tree--group")),
                "  ",
                (f"{plural(n, 'field')} as recorded", self._fg("ckpt-tree--summary")),
            )
            return parent.add(label, Entry(row.node, row.path, raw=True))
        label = self._row_label(row.node, row.path, None, row.name)
        entry = Entry(row.node, row.path, name=row.name)
        if row.node.children and row.node.kind is not NodeKind.REF:
            return parent.add(label, entry)
        entry.loaded = True
        return parent.add_leaf(label, entry)

    def action_toggle_modules(self) -> None:
        """m: group dotted state-dict names into modules (and whole-module pickles into their
        layers), or show the keys as they are stored; the cursor stays on its key."""
        if self.ckpt is None:  # pressed while the file opens: once it is open
            self.post_message(NotOpen("the module view shows", self.action_toggle_modules))
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
        if keep and not self.select_path(keep) and self._waiting:
            self._keep_later = keep  # its module's rows are being made: put it there then
        self.notify(
            "module view: dotted names grouped into modules (m: as stored)"
            if self.module_view
            else "keys as stored (m: module view)",
            timeout=3,
        )

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
                if holds(child.data, path, self.kids):
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
