"""Provides the orders `s` cycles the browser's rows through: as stored, by name, by size, by
parameters.

The stored order is the file's (a state dict's registration order, which is usually what a user
wants), so it comes first; the others answer "which of these 300 keys is the big one". Sizes and
parameter counts below every node are summed once per checkpoint (`index.subtree_sizes`), so
sorting a 100,000-key container costs one pass, not one walk per child. Plain Python over the
model: no Textual here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from ckptui.analysis import modules as mv
from ckptui.analysis.index import SubtreeSizes
from ckptui.core.tree import Node

ORDERS = ("file", "name", "size", "params")
"""The orders, in the order `s` cycles through them."""

LABELS = {"file": "as stored", "name": "by name", "size": "by size", "params": "by parameters"}
"""How the notice after `s` says each order."""

FOOTER = {"file": "Sort", "name": "By name", "size": "By size", "params": "By params"}
"""The footer's word for `s` in each order: the order the rows are in now (short: the footer
has 80 columns for every key that matters)."""

_DIGITS = re.compile(r"(\d+)")


def next_order(order: str) -> str:
    """The order after `order` in the cycle."""
    return ORDERS[(ORDERS.index(order) + 1) % len(ORDERS)]


def natural_key(key: object) -> tuple[Any, ...]:
    """`layer2` before `layer10`, case ignored; integer keys (list items) by value."""
    if isinstance(key, int | float) and not isinstance(key, bool):
        return ((0, key, ""),)
    text = str(key).casefold()
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part)
        for part in _DIGITS.split(text)
        if part
    )


class Sorter:
    """Children of one checkpoint's nodes in an order, each order made once per node."""

    def __init__(self, sizes: SubtreeSizes) -> None:
        self.sizes = sizes
        self._sorted: dict[tuple[int, str], list[Node]] = {}

    def children(self, node: Node, order: str) -> Sequence[Node]:
        """`node.children` in `order` (the list itself for the stored order)."""
        if order == "file" or len(node.children) < 2:
            return node.children
        key = (id(node), order)
        done = self._sorted.get(key)
        if done is None:
            done = self._sorted[key] = self._sort(list(node.children), order)
        return done

    def ready(self, nodes: Sequence[Node], order: str) -> bool:
        """Whether `children(node, order)` of every node in `nodes` is made already (and, for
        size and parameter orders, the sums below every node): then sorting costs no wait."""
        if order == "file":
            return True
        if (order == "size" and not self.sizes.summed("bytes")) or (
            order == "params" and not self.sizes.summed("elements")
        ):
            return False
        return all(len(n.children) < 2 or (id(n), order) in self._sorted for n in nodes)

    def prepare(self, nodes: Sequence[Node], order: str, cancelled: Callable[[], bool]) -> None:
        """Make `children(node, order)` for `nodes` (in a worker: a 100,000-key state dict
        takes a second to sort by name, and its sums a second more); `cancelled` is polled
        between nodes."""
        if order == "size":
            self.sizes.bytes(self.sizes.root)
        elif order == "params":
            self.sizes.elements(self.sizes.root)
        for node in nodes:
            if cancelled():
                return
            self.children(node, order)

    def _sort(self, nodes: list[Node], order: str) -> list[Node]:
        if order == "name":
            nodes.sort(key=lambda n: natural_key(n.key))
        elif order == "size":
            nodes.sort(key=lambda n: -self.sizes.bytes(n))  # stable: ties keep the file's order
        else:
            nodes.sort(key=lambda n: -self.sizes.elements(n))
        return nodes

    def rows(self, rows: list[mv.Row], order: str) -> list[mv.Row]:
        """Module-view rows in `order`; a placeholder module's internals row stays last."""
        if order == "file" or len(rows) < 2:
            return rows
        inner = [r for r in rows if isinstance(r, mv.ModuleEntry) and r.internals]
        rest = [r for r in rows if not (isinstance(r, mv.ModuleEntry) and r.internals)]
        if order == "name":
            rest.sort(key=lambda r: natural_key(r.name))
        elif order == "size":
            rest.sort(key=lambda r: -self._row_measure(r, bytes_=True))
        else:
            rest.sort(key=lambda r: -self._row_measure(r, bytes_=False))
        return rest + inner

    def _row_measure(self, row: mv.Row, *, bytes_: bool) -> int:
        if isinstance(row, mv.Module):
            return row.params.nbytes if bytes_ else row.params.total
        return self.sizes.bytes(row.node) if bytes_ else self.sizes.elements(row.node)
