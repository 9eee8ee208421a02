"""Provides BarTree and BarRows: the why screen's tree of bar rows (name, size, percent, bar).

Split from `screens/why.py` by concept: how a row of bars is laid out at every depth, and the
tree that shows them; the screen decides which rows there are.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from ckptui.core.tree import KeyPath
from ckptui.core.units import printable, size
from ckptui.report.why import bar

BAR = 24
"""Cells of a full bar, at most (a quarter of the tree's width)."""


class BarTree(Tree[KeyPath | None]):
    """The groupings: a tree of bar rows, with the browser's vim keys."""

    class Resized(Message):
        """The tree's size changed (a scrollbar came or went, the layout changed): its bars,
        sized to its width, may need making again."""

    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("h,left", "collapse", "Collapse", show=False),
        Binding("l,right", "expand", "Expand", show=False),
        Binding("g,home", "scroll_home", "Top", show=False),
        Binding("G,end", "scroll_end", "Bottom", show=False),
    ]

    def on_resize(self, event: events.Resize) -> None:
        self.post_message(self.Resized())

    def action_collapse(self) -> None:
        """h: close the row, or go to its parent."""
        node = self.cursor_node
        if node is None:
            return
        if node.is_expanded:
            node.collapse()
        elif node.parent is not None and node.parent is not self.root:
            self.move_cursor(node.parent)

    def action_expand(self) -> None:
        """l: open the row."""
        node = self.cursor_node
        if node is not None and node.allow_expand:
            node.expand()


def opened_state(tree: Tree[Any]) -> tuple[int, tuple[bool, ...]]:
    """The cursor's line and which rows are open: what a refill (the why screen's `_refit`) would lose."""
    opened: list[bool] = []
    stack = list(tree.root.children)
    while stack:
        node = stack.pop()
        opened.append(node.is_expanded)
        stack.extend(node.children)
    return tree.cursor_line, tuple(opened)


class BarRows:
    """Builds bar rows whose size and bar columns line up at every tree depth."""

    GUIDE = 4  # cells each tree level indents by (Tree.guide_depth)
    ARROW = 2  # the expand/collapse arrow before a branch's label

    def __init__(self, width: int, of: int) -> None:
        # A row: guides, arrow, name, size (10), percent (8), bar.
        self.bar = max(8, min(BAR, width // 4))
        self.name_width = max(12, width - self.GUIDE - self.ARROW - 10 - 8 - self.bar - 1)
        self.of = of

    def section(
        self,
        root: TreeNode,
        title: str,
        nbytes: int | None,
        of: int | None = None,
        expand: bool = True,
    ) -> TreeNode:
        label = Text(title, style="bold")
        if nbytes is not None:
            label.append(f"  {size(nbytes)}", style="dim")
        node = root.add(label, data=None, expand=expand)
        return node

    def add(
        self, parent: TreeNode, name: str, nbytes: int, path: KeyPath | None, leaf: bool = False
    ) -> TreeNode:
        depth = 0
        p = parent
        while p.parent is not None:
            depth += 1
            p = p.parent
        width = self.name_width - self.GUIDE * (depth - 1) + (self.ARROW if leaf else 0)
        width = max(6, width)
        name = printable(name)  # keys from the file: control characters shown as escapes
        shown = name if len(name) <= width else name[: width - 1] + "…"
        label = Text(shown.ljust(width), style="bold" if path is not None else "")
        label.append(f"{size(nbytes):>10}", style="")
        pct = 100 * nbytes / self.of if self.of else 0.0
        label.append(f"{pct:6.1f}% ", style="dim")
        label.append(bar(nbytes / self.of if self.of else 0.0, self.bar), style="cyan")
        if leaf:
            return parent.add_leaf(label, data=path)
        return parent.add(label, data=path)
