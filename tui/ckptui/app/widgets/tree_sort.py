"""Provides Sorting: `s` puts every container's rows in another order (`tree_order`), the
cursor kept on its key.

A mixin of CkptTree, split from it by concept; the orders themselves (plain Python over the
model) are in `tree_order`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ckptui.app.widgets.tree_order import LABELS, ORDERS, Sorter, next_order
from ckptui.core.tree import Node


class Sorting:
    """Row order of CkptTree (a mixin: `self` is the tree)."""

    SORTABLE = True
    """Whether `s` sorts the rows (the compare screen's merged tree keeps its own order)."""

    ckpt: Any
    order: str
    filtered: bool
    _sorter: Sorter | None

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
