"""Provides Entry, what a row of the browser's tree stands for, and the tree's sizes.

Kept apart from CkptTree so that the modules that make its rows, labels, sort, filter and
marks (`tree_*`) share one definition without importing the widget itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from textual.message import Message

from ckptui.analysis import modules as mv
from ckptui.core.tree import KeyPath, Node, NodeKind, walk

GROUP = 1000
"""Children shown per group row in large containers."""
EXPAND_BUDGET = 5000
"""Tree rows `e` (expand all below) may create at once."""


class NotOpen(Message):
    """A key that needs the checkpoint (`m`, `s`, space) was pressed while it is still
    opening: the screen says so, and runs `again` (if any) once the tree is shown."""

    def __init__(self, what: str, again: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.what = what
        """What happens once it is open (`the module view shows`), or why nothing can."""
        self.again = again


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


def holds(entry: Entry | None, path: KeyPath, kids: Callable[[Node], Sequence[Node]]) -> bool:
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


def has_tensors(node: Node) -> bool:
    return node.kind is NodeKind.TENSOR or any(n.kind is NodeKind.TENSOR for _, n in walk(node))
