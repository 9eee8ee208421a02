"""Provides HelpScreen: every key the app answers to."""

from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS = [
    ("↑ ↓  j k", "move the cursor"),
    ("← →  h l", "collapse / go to parent · expand / go to first child"),
    ("enter", "expand or collapse the row"),
    ("g  G", "first row · last key (opens the last group)"),
    ("e  E", "expand all below the cursor (first 5,000 rows) · collapse all below"),
    ("/", "filter keys by substring or regex (matches and their parents stay)"),
    ("n  N", "next / previous match"),
    ("esc", "clear the filter"),
    ("y", "copy the key path, e.g. ['model']['conv1.weight'] (OSC 52: works over SSH)"),
    ("v", "compute the selected tensor's values (automatic up to 64 MiB)"),
    ("w", "why is the file this big: size breakdown and what to drop (enter jumps back here)"),
    ("space", "mark / unmark the subtree for export (marked rows: ● and the mark colour)"),
    ("x", "export a slimmed, verified copy: the marks, or else the detected weights"),
    ("ctrl+p", "command palette"),
    ("?", "this help"),
    ("q", "quit"),
]


class HelpScreen(ModalScreen[None]):
    """A modal list of keys; any of esc, q or ? closes it."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        for keys, what in KEYS:
            table.add_row(keys, what)
        with VerticalScroll(id="help"):
            yield Static("ckptui keys", id="help-title")
            yield Static(table)
            yield Static(
                "Nothing in the file is ever run: pickles are read by an inert unpickler.",
                id="help-note",
            )
