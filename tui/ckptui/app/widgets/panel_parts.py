"""Provides the detail panel's drawing parts: plain file text, the two-column card, a table laid
out once per width (`Laid`), and updates that ask for a layout only when a height changes.

An update of the panel runs while the cursor moves, so it must stay cheap: a part whose height
changes asks for a layout, which reflows the whole screen and repaints the tree's scroll bars
(~15 ms at 100x30); a part whose height stays the same only repaints.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.measure import Measurement
from rich.segment import Segment
from rich.table import Table
from rich.text import Text
from textual.visual import visualize
from textual.widgets import Static

from ckptui.core import units


def plain(text: object) -> Text:
    """File text (keys, class names, values, messages quoting them) as a Text: control
    characters shown as escapes (`units.printable`), and never read as markup, which a str
    given to `Table.add_row` would be."""
    return Text(units.printable(text))


def grid_table() -> Table:
    """Two columns, names in bold: every card of the panel."""
    t = Table.grid(padding=(0, 1))
    t.add_column(style="bold", no_wrap=True)
    t.add_column()
    return t


class Laid:
    """A renderable laid out once per width. Textual renders a Static's content twice per
    change (once to measure its height, once to paint), and a Rich table is the costly part."""

    def __init__(self, renderable: RenderableType) -> None:
        self.renderable = renderable
        self._key: tuple[Any, ...] | None = None
        self._lines: list[list[Segment]] = []

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        key = (options.max_width, options.justify, options.overflow, options.no_wrap)
        if key != self._key:
            # No height: Textual measures with none and paints with the widget's, and a height
            # would crop or pad the lines to it.
            whole = options.update(height=None)
            self._lines = console.render_lines(self.renderable, whole, pad=False)
            self._key = key
        new_line = Segment.line()
        for line in self._lines:
            yield from line
            yield new_line

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self.renderable)


def put(static: Static, content: RenderableType) -> None:
    """Replace a Static's content, asking for a layout only if its height changes."""
    width, height = static.size
    same = (
        static.display
        and width > 0
        and visualize(static, content).get_height(static.styles, width) == height
    )
    static.update(content, layout=not same)


def show_if(widget: Any, on: bool) -> None:
    """Show or hide `widget`, touching `display` only when it changes (each set asks for a layout)."""
    if widget.display != on:
        widget.display = on
