"""Provides CkptApp: the Textual application behind `ckptui PATH` and `ckptui A B`.

The app never opens a file itself: BrowseScreen (one path) or CompareScreen (two) calls the
core in a worker and shows the model.
"""

from __future__ import annotations

from textual.app import App
from textual.binding import Binding

from ckptui.app.commands import CkptCommands
from ckptui.app.screens.browse import BrowseScreen
from ckptui.app.screens.help import HelpScreen
from ckptui.app.widgets.ckpt_tree import CkptTree
from ckptui.app.widgets.tree_order import next_order
from ckptui.core.bulk import gc_resume


class CkptApp(App[None]):
    """ckptui's browser."""

    CSS_PATH = "ckptui.tcss"
    TITLE = "ckptui"
    COMMANDS = App.COMMANDS | {CkptCommands}
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help"),
    ]

    def __init__(self, path: str, other: str | None = None) -> None:
        super().__init__()
        self.path = path
        self.other = other
        """With a second path, the app compares the two (CompareScreen)."""
        self.error_message: str | None = None
        """The one-line reason the file could not be opened, for the CLI to print."""

    def on_mount(self) -> None:
        if self.other is not None:
            # deferred: the compare screen loads only when two files are given
            from ckptui.app.screens.compare import CompareScreen

            self.push_screen(CompareScreen(self.path, self.other))
        else:
            self.push_screen(BrowseScreen(self.path))

    def on_unmount(self) -> None:
        gc_resume()  # a worker thread left running must not keep the GC off after us

    def action_help(self) -> None:
        """?: the key list (of the compare screen when comparing)."""
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(getattr(self.screen, "HELP", "browse")))

    def action_tree_expand_below(self) -> None:
        """Palette: expand all below the cursor."""
        self.screen.query_one(CkptTree).action_expand_below()

    def action_tree_collapse_below(self) -> None:
        """Palette: collapse all below the cursor."""
        self.screen.query_one(CkptTree).action_collapse_below()

    def action_tree_toggle_modules(self) -> None:
        """Palette: the module view, or the keys as stored."""
        self.screen.query_one(CkptTree).action_toggle_modules()

    def action_tree_sort(self) -> None:
        """Palette: the rows in the next order (s)."""
        tree = self.screen.query_one(CkptTree)
        tree.action_sort_by(next_order(tree.order))

    def action_tree_toggle_mark(self) -> None:
        """Palette: mark or unmark the subtree at the cursor."""
        self.screen.query_one(CkptTree).action_toggle_mark()

    def action_tree_clear_marks(self) -> None:
        """Palette: forget every mark."""
        self.screen.query_one(CkptTree).clear_marks()
