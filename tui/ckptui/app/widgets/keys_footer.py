"""Provides KeysFooter: Textual's Footer, rebuilt only when the keys it shows change.

Textual's Footer recomposes (mounts a FooterKey per binding, each styled and laid out) every
time its screen's bindings are refreshed: on each focus change and whenever the screen is
suspended or resumed. Under a dialog (`x`, `w`) that was a rebuild of a footer nobody can use,
drawn dimmed behind the dialog, and every change to the screen behind repaints the whole
dialog over it: about 30 ms of footer plus a full repaint, on the UI thread, while the dialog
was opening (issue 16). Back from the dialog, the keys were the same as before, rebuilt again.
"""

from __future__ import annotations

from typing import Any

from textual.screen import Screen
from textual.widgets import Footer


class KeysFooter(Footer):
    """A Footer that skips rebuilding while its screen is under another one, and when the
    keys it would show are the ones it shows."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._shown: tuple[Any, ...] | None = None
        """What the keys were built from last (`_keys`), None before the first build."""

    def bindings_changed(self, screen: Screen[Any]) -> None:
        if not screen.is_current:
            return  # drawn dimmed under a dialog; resuming the screen refreshes the bindings
        keys = _keys(screen)
        if keys == self._shown:
            return
        self._shown = keys
        super().bindings_changed(screen)


def _keys(screen: Screen[Any]) -> tuple[Any, ...]:
    """Everything of the screen's bindings that Footer.compose shows."""
    app = screen.app
    return (
        app.app_focus,
        tuple(
            (b.key, app.get_key_display(b), b.description, b.action, b.show, b.group, on, tip)
            for _, b, on, tip in screen.active_bindings.values()
        ),
    )
