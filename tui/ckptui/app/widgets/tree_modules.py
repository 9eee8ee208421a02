"""Provides ModuleView: the browser's module view (`m`), dotted state-dict names grouped into
modules and whole-module pickles shown as their layers.

A mixin of CkptTree, split from it by concept: the module rows, their labels' rows, the toggle,
and finding a key among module rows (`reveal` in the module view).
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets.tree import TreeNode

from ckptui.analysis import modules as mv
from ckptui.app.widgets.tree_entry import Entry, holds
from ckptui.core.tree import KeyPath, Node, NodeKind
from ckptui.core.units import plural, printable


class ModuleView:
    """The module view of CkptTree (a mixin: `self` is the tree)."""

    ckpt: Any
    module_view: bool
    filtered: bool
    _module_rows: dict[int, list[mv.Row] | None]

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
