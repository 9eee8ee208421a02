"""Provides FilterBar: the `/` bar that filters tree rows by substring or regex, on both screens.

The browser and the compare screen read the query differently (the browser searches the
checkpoint's keys, the compare screen keeps the merged rows whose path matches), so each screen
still handles the bar's `Input.Submitted` itself; the bar holds what they share: its text, that
it is hidden until `/` opens it, how it closes, and how a query the screen rejects (a bad regex)
is reported while the bar stays open to fix it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from textual.widgets import Input

from ckptui.core.units import printable

T = TypeVar("T")

PLACEHOLDER = "filter keys: substring or regex · enter to apply · esc to clear"


class FilterBar(Input):
    """The filter bar, docked at the bottom by `#filter` in ckptui.tcss."""

    def __init__(self, *, id: str = "filter") -> None:
        super().__init__(placeholder=PLACEHOLDER, id=id)
        self.display = False

    def open(self) -> None:
        """Show the bar and type into it."""
        self.display = True
        if self.parent is not None and self.parent.id == "filter-row":
            self.parent.display = True
        self.focus()

    def close(self) -> None:
        """Empty and hide the bar."""
        self.value = ""
        self.hide()

    def hide(self) -> None:
        """Hide the bar, keeping its text (the rows it took are given back to the tree)."""
        self.display = False
        if self.parent is not None and self.parent.id == "filter-row":
            self.parent.display = False

    def parse(self, query: str, parse: Callable[[str], T]) -> T | None:
        """What `parse` makes of `query`, or None after showing why it refused it.

        Args:
            query: The submitted text, stripped and not empty.
            parse: The screen's reading of a query; raises ValueError for a bad one.

        Returns:
            The parsed query, or None when `parse` raised ValueError (shown as an error).
        """
        try:
            return parse(query)
        except ValueError as e:
            self.notify(printable(str(e)), severity="error", markup=False)  # quotes the query
            return None
