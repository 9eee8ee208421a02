"""Provides Choice and Tick: a radio button and a checkbox readable without colour.

Textual's draw their dot (or X) in both states and tell them apart by colour alone, which
NO_COLOR (and a monochrome terminal) removes; these draw it only when chosen.
"""

from __future__ import annotations

from textual.widgets import Checkbox, RadioButton


class Choice(RadioButton):
    """A radio button whose dot is there only when chosen."""

    @property  # type: ignore[override]
    def BUTTON_INNER(self) -> str:
        return "●" if self.value else " "


class Tick(Checkbox):
    """A checkbox whose X is there only when ticked."""

    @property  # type: ignore[override]
    def BUTTON_INNER(self) -> str:
        return "X" if self.value else " "
