"""Provides Filtering: the browser's tree showing only the keys a filter matched (and their
ancestors), n/N stepping through them, esc back to the whole tree.

A mixin of CkptTree, split from it by concept; the search itself is `analysis.index.search`.
"""

from __future__ import annotations

from typing import Any

from textual.widgets.tree import TreeNode

from ckptui.app.widgets.tree_entry import Entry
from ckptui.core.keypath import path_text
from ckptui.core.tree import KeyPath


class Filtering:
    """The filtered view of CkptTree (a mixin: `self` is the tree)."""

    ckpt: Any
    matches: list[KeyPath]
    filtered: bool

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
