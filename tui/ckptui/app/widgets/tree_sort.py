"""Provides Sorting: `s` puts every container's rows in another order (`tree_order`), the
cursor kept on its key.

A mixin of CkptTree, split from it by concept; the orders themselves (plain Python over the
model) are in `tree_order`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from textual.worker import get_current_worker

from ckptui.app.widgets.tree_entry import NotOpen
from ckptui.app.widgets.tree_order import LABELS, ORDERS, Sorter, next_order
from ckptui.core.bulk import gc_paused
from ckptui.core.tree import Node

SORT_INLINE = 20_000
"""Storages (or children of one row) up to which `s` sorts on the UI thread: 20,000 one-element
tensors sort in ~0.1 s; 100,000 took 0.45-0.63 s (issue 18), so larger ones sort in a worker."""


class Sorting:
    """Row order of CkptTree (a mixin: `self` is the tree)."""

    SORTABLE = True
    """Whether `s` sorts the rows (the compare screen's merged tree keeps its own order)."""

    ckpt: Any
    order: str
    filtered: bool
    _sorter: Sorter | None
    _sorting: str | None = None
    """The order a worker is sorting the rows in, or None."""

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
        """s: rows by name, by size, by parameters, or as stored; the cursor stays on its key.

        On a large checkpoint the first sort in an order runs in a worker (`_sort_ahead`) and
        this action runs again when it is done: the UI thread never waits on it."""
        if order not in ORDERS:
            return
        if self.ckpt is None:  # pressed while the file opens: once it is open
            self.post_message(NotOpen(f"rows {LABELS[order]}", lambda: self.action_sort_by(order)))
            return
        if not self._sort_ahead(order):
            self._apply_sort(order)

    def _apply_sort(self, order: str) -> None:
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

    def _sort_ahead(self, order: str) -> bool:
        """Start sorting in a worker when the rows to show are not sorted in `order` yet and
        the checkpoint is large; True while that worker runs (or was just started)."""
        if self._sorter is None or self.ckpt is None:
            return False
        if self._sorting == order:
            return True  # `s` again while it sorts: the same order is on its way
        nodes = self._loaded_nodes()
        if self._sorter.ready(nodes, order) or not self._large(nodes):
            return False
        self._sorting = order
        sorter = self._sorter
        self.notify(f"sorting rows {LABELS[order]}…", timeout=2)

        def run() -> None:
            worker = get_current_worker()
            try:
                # the collector paused: a full collection over what the sort makes holds the
                # GIL, so the UI thread stalled 135 ms on a 100,000-key sort without it
                with gc_paused(keep_frozen=True):
                    sorter.prepare(nodes, order, lambda: worker.is_cancelled)
            finally:  # failed too: the rows are sorted as they are asked for, and `s` works on
                if not worker.is_cancelled:
                    self.app.call_from_thread(self._sorted_ahead, sorter, order)

        self.run_worker(run, thread=True, exclusive=True, group="sort", exit_on_error=False)
        return True

    def _sorted_ahead(self, sorter: Sorter, order: str) -> None:
        self._sorting = None
        if sorter is self._sorter and self.ckpt is not None:  # not another file meanwhile
            self._apply_sort(order)

    def _loaded_nodes(self) -> list[Node]:
        """The checkpoint nodes whose rows are loaded (what a re-sort shows at once)."""
        seen: dict[int, Node] = {}
        stack = [self.root]
        while stack:
            row = stack.pop()
            entry = row.data
            if entry is None or not getattr(entry, "loaded", False):
                continue
            node = getattr(entry, "node", None)
            if node is not None and node.children:
                seen.setdefault(id(node), node)
            stack.extend(row.children)
        return list(seen.values())

    def _large(self, nodes: list[Node]) -> bool:
        """Sorting these (and summing below every node) costs more than a frame."""
        assert self.ckpt is not None
        return len(self.ckpt.storages) > SORT_INLINE or any(
            len(n.children) > SORT_INLINE for n in nodes
        )
