"""Provides Marks: `space` marks a subtree for export, and the tree says so on every row
below it.

A mixin of CkptTree, split from it by concept; the row colours are drawn by `tree_labels`.
"""

from __future__ import annotations

from typing import Any

from ckptui.app.widgets.tree_entry import Entry, NotOpen, has_tensors
from ckptui.core.keypath import path_text
from ckptui.core.tree import KeyPath, Node
from ckptui.core.units import printable


class Marks:
    """Export marks of CkptTree (a mixin: `self` is the tree)."""

    marks: dict[KeyPath, None]
    ckpt: Any

    def action_toggle_mark(self) -> None:
        """space: mark the cursor's subtree for export, or unmark it."""
        row = self.cursor_node
        entry = row.data if row else None
        if self.ckpt is None:
            self.post_message(NotOpen("nothing to mark yet"))
            return
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
                with_tensors = [p for p in paths if has_tensors(self._node_at(p, entry))]
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
