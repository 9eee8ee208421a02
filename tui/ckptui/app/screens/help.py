"""Provides HelpScreen: every key the app answers to (the browser's, or the compare screen's)."""

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
    (
        "m",
        "module view: dotted names grouped into modules with parameter counts (again: as stored)",
    ),
    ("s", "sort rows: by name · by size · by parameters · as stored (the footer says which)"),
    ("y", "copy the key path, e.g. ['model']['conv1.weight'] (OSC 52: works over SSH)"),
    ("v", "compute the selected tensor's values (automatic up to 64 MiB)"),
    ("z", "zoom: the panel alone, full screen (values and histogram at 80x24) · z again: back"),
    ("J  K", "scroll the panel down / up (zoomed or not); a new row's card starts at its top"),
    ("w", "why is the file this big: size breakdown and what to drop (enter jumps back here)"),
    ("space", "mark / unmark the subtree for export (marked rows: ● and the mark colour)"),
    ("x", "export a slimmed, verified copy: the marks, or else the detected weights"),
    ("ctrl+p", "command palette"),
    ("?", "this help"),
    ("q", "quit"),
]


COMPARE_KEYS = [
    ("↑ ↓  j k", "move the cursor"),
    ("← →  h l", "collapse / go to parent · expand / go to first child"),
    ("enter", "expand or collapse the row"),
    ("g  G", "first row · last row"),
    ("e  E", "expand all below the cursor (first 5,000 rows) · collapse all below"),
    ("d", "only differences: hide equal rows (again: show all)"),
    ("v", "compare the selected tensor's values: max |a-b|"),
    ("a", "compare the values of every tensor both files have with the same shape"),
    ("esc", "cancel a value comparison (results so far stay) · clear the key filter"),
    ("/", "filter keys by substring or regex"),
    ("y", "copy the entry's key path in A (else B)"),
    ("ctrl+p", "command palette"),
    ("?", "this help"),
    ("q", "quit"),
]
COMPARE_LEGEND = (
    "Rows: - only in A · + only in B · ≠ shape differs · ~ dtype differs · "
    "Δ values differ (max |a-b|) · ? values not compared · * plain value differs · = equal · "
    "• a module with differences below (how many: after its name). Dotted state-dict keys are "
    "shown as modules; a module./_orig_mod. prefix on one side only is stripped."
)


class HelpScreen(ModalScreen[None]):
    """A modal list of keys; any of esc, q or ? closes it."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def __init__(self, which: str = "browse") -> None:
        super().__init__()
        self.which = which
        """`browse` or `compare`: whose keys to list."""

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        compare = self.which == "compare"
        for keys, what in COMPARE_KEYS if compare else KEYS:
            table.add_row(keys, what)
        either = "either file is" if compare else "the file is"
        with VerticalScroll(id="help"):
            yield Static("ckptui compare keys" if compare else "ckptui keys", id="help-title")
            yield Static(table)
            if compare:
                yield Static(COMPARE_LEGEND, id="help-legend")
            yield Static(
                f"Nothing in {either} ever run: pickles are read by an inert unpickler.",
                id="help-note",
            )
