"""Provides BrowseScreen: header line, checkpoint tree, details panel, filter bar, footer.

Opening the file and showing it is OpeningScreen's, its base (browse_open.py); this screen
adds what the keys do: the panel following the cursor, the filter bar, `w`, `x`, `y`, `z`.
"""

from __future__ import annotations

import time
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.timer import Timer
from textual.widgets import Input, Static, Tree
from textual.worker import Worker, WorkerState

from ckptui.analysis.index import search
from ckptui.app.screens.browse_open import OpeningScreen
from ckptui.app.widgets.ckpt_tree import CkptTree, Entry
from ckptui.app.widgets.detail import DetailPanel
from ckptui.app.widgets.filter_bar import FilterBar
from ckptui.app.widgets.keys_footer import KeysFooter
from ckptui.core.keypath import path_expr
from ckptui.core.tree import KeyPath
from ckptui.core.units import printable

PANEL_REST = 0.05
"""Seconds without a cursor move after which the panel describes the cursor's row."""
PANEL_INTERVAL = 0.25
"""While the cursor keeps moving (a held key), the panel still catches up this often."""
FILTER_DEBOUNCE = 0.12
"""Seconds after the last keystroke in the filter bar before the tree is filtered: typing
`layer2` searches once, not six times."""
LIVE_ROWS = 2000
"""Matches shown while typing (the count is exact up to 10,000); enter shows them all."""


class BrowseScreen(OpeningScreen):
    """The main screen."""

    BINDINGS = [
        Binding("slash", "filter", "Filter"),
        Binding("n", "next_match", "Next match", show=False),
        Binding("N", "previous_match", "Prev match", show=False),
        Binding("y", "copy_path", "Copy", show=False),
        Binding("v", "values", "Values", show=False),  # automatic up to 64 MiB; the panel says v
        Binding("w", "why", "Sizes"),
        Binding("x", "export", "Export"),
        Binding("z", "zoom", "Zoom"),
        Binding("J", "panel_scroll(1)", "Panel down", show=False),
        Binding("K", "panel_scroll(-1)", "Panel up", show=False),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self._pending: Entry | None = None
        self._panel_timer: Timer | None = None
        self._panel_at = 0.0
        self._moved_at = 0.0
        self._why: Any = None
        """The size breakdown's WhyCache, made on the first `w` (its module loads then)."""

    def compose(self) -> ComposeResult:
        # markup=False: the header quotes the file's name and framework version, and a name
        # such as `best[val=0.3].pth` lost its brackets, `run[/tmp].pth` raised MarkupError
        yield Static(printable(self._opening.text()), id="header", markup=False)
        with Horizontal(id="main"):
            yield CkptTree(id="tree")
            yield DetailPanel(id="detail")
        with Horizontal(id="filter-row"):
            yield FilterBar()
            yield Static(id="filter-count")
        yield KeysFooter(compact=True)

    def on_mount(self) -> None:
        self.query_one("#filter-row").display = False
        self._filter_timer: Timer | None = None
        self._start_opening()

    @on(Tree.NodeHighlighted)
    def _highlighted(self, event: Tree.NodeHighlighted[Entry]) -> None:
        # The tree moves at once and the panel follows after the frame showing the cursor: at
        # once for a single move; while a key is held, every PANEL_INTERVAL and when the cursor
        # rests. A panel update (~10 ms) in every move's frame (~15 ms) would double its time.
        now = time.monotonic()
        self._pending = event.node.data
        resting, self._moved_at = now - self._moved_at >= PANEL_REST, now
        if resting or now - self._panel_at >= PANEL_INTERVAL:
            self._panel_at = now
            self.call_after_refresh(self._flush_panel)
        elif self._panel_timer is None:
            self._panel_timer = self.set_timer(PANEL_REST, self._rested)

    def _rested(self) -> None:
        wait = self._moved_at + PANEL_REST - time.monotonic()
        if wait > 0:
            self._panel_timer = self.set_timer(wait, self._rested)
        else:
            self._panel_timer = None
            self._flush_panel()

    def _flush_panel(self) -> None:
        self._panel_at = time.monotonic()
        panel = self.query_one(DetailPanel)
        if panel.entry is not self._pending:
            panel.show(self._pending)

    # -- filter ----------------------------------------------------------------------------
    def action_filter(self) -> None:
        """/: open the filter bar."""
        self.query_one(FilterBar).open()

    @on(Input.Changed, "#filter")
    def _typed(self, event: Input.Changed) -> None:
        """Filter as you type, once the keys pause (FILTER_DEBOUNCE)."""
        if self._filter_timer is not None:
            self._filter_timer.stop()
        if not self.query_one(FilterBar).display:
            return  # the bar was closed (its text emptied): nothing typed
        self._filter_timer = self.set_timer(FILTER_DEBOUNCE, self._live_filter)

    def _live_filter(self) -> None:
        self._filter_timer = None
        bar = self.query_one(FilterBar)
        query = bar.value.strip()
        count = self.query_one("#filter-count", Static)
        if not bar.display:
            return
        if self.ckpt is None:  # typed while the file opens: searched once it is shown
            count.update("opening …" if query else "")
            return
        if not query:
            count.update("")
            tree = self.query_one(CkptTree)
            if tree.filtered:
                tree.clear_filter()
            return
        count.update("…")
        self._search(self.ckpt.root, query)

    @work(thread=True, exclusive=True, exit_on_error=False, group="search")
    def _search(self, root: Any, query: str) -> tuple[str, list[KeyPath] | str]:
        """Search the keys off the UI thread: 100,000 paths take longer than a keystroke."""
        try:
            return query, search(root, query)
        except ValueError as e:
            return query, str(e)

    @on(Worker.StateChanged)
    def _searched(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "search" or event.state is not WorkerState.SUCCESS:
            return
        query, found = event.worker.result
        bar = self.query_one(FilterBar)
        if not bar.display or bar.value.strip() != query:
            return  # typed on, or submitted: this answer is stale
        count = self.query_one("#filter-count", Static)
        if isinstance(found, str):
            count.update("bad regex")
            return
        if not found:
            count.update("no match")
            return
        more = "+" if len(found) >= 10_000 else ""
        count.update(f"{len(found):,}{more} {'match' if len(found) == 1 else 'matches'}")
        tree = self.query_one(CkptTree)
        tree.show_matches(found[:LIVE_ROWS])
        tree.matches = found  # n/N step through all of them

    @on(Input.Submitted, "#filter")
    def _apply_filter(self, event: Input.Submitted) -> None:
        if self._filter_timer is not None:
            self._filter_timer.stop()
            self._filter_timer = None
        self.workers.cancel_group(self, "search")
        query = event.value.strip()
        if query and self.ckpt is None:  # the bar stays open with it; applied once open
            bar = self.query_one(FilterBar)
            self.when_open("the filter applies", lambda: self._filter_by(bar.value.strip()))
            return
        self._filter_by(query)

    def _filter_by(self, query: str) -> None:
        """enter in the filter bar: the tree shows only the keys matching `query`."""
        if not query or self.ckpt is None:
            self.action_clear_filter()
            return
        root = self.ckpt.root
        matches = self.query_one(FilterBar).parse(query, lambda q: search(root, q))
        if matches is None:
            return
        if not matches:
            self.notify(f"no key matches {query!r}", severity="warning", markup=False)  # typed
            return
        tree = self.query_one(CkptTree)
        tree.show_matches(matches)
        self.query_one(FilterBar).hide()  # the rows go back to the tree; esc clears the filter
        tree.focus()
        more = " (first 10,000 shown)" if len(matches) >= 10_000 else ""
        noun = "match" if len(matches) == 1 else "matches"
        self.notify(
            f"{len(matches):,} {noun} for {query!r}{more} · n/N to step · esc clears",
            timeout=4,
            markup=False,  # the query is typed text: `[/x]` raised MarkupError
        )

    def _shown(self) -> None:
        """The tree is shown: a filter typed meanwhile is searched now (a submitted one is
        applied by the action waiting for the open)."""
        bar = self.query_one(FilterBar)
        if bar.display and bar.value.strip():
            self._live_filter()
        super()._shown()

    def action_clear_filter(self) -> None:
        """esc: show the whole tree again (n/N still step through the matches); esc again
        forgets the matches. While the file opens: what a key asked for meanwhile."""
        self.forget_after_open()
        self.query_one(FilterBar).close()
        tree = self.query_one(CkptTree)
        if tree.filtered:
            tree.clear_filter()
        else:
            tree.matches = []
        tree.focus()

    def action_next_match(self) -> None:
        """n: next match."""
        self.query_one(CkptTree).jump_match(1)

    def action_previous_match(self) -> None:
        """N: previous match."""
        self.query_one(CkptTree).jump_match(-1)

    # -- other actions ---------------------------------------------------------------------
    def action_copy_path(self) -> None:
        """y: copy the key path as Python indexing (OSC 52 works over SSH)."""
        if self.ckpt is None:
            self.when_open("nothing to copy yet")
            return
        node = self.query_one(CkptTree).cursor_node
        if node is None or node.data is None:
            return
        text = path_expr(node.data.path) or "<root>"
        self.app.copy_to_clipboard(text)
        self.notify(f"copied {printable(text)}", timeout=3, markup=False)  # keys: not markup

    def action_zoom(self) -> None:
        """z: the panel takes the whole screen (values and histogram at 80x24), or gives it back."""
        zoom = not self.has_class("-zoom")
        self.set_class(zoom, "-zoom")
        if not zoom:
            self.query_one(CkptTree).focus()  # hidden, it lost the focus

    def action_panel_scroll(self, lines: int) -> None:
        """J / K: scroll the panel without leaving the tree."""
        self.query_one(DetailPanel).scroll_relative(y=lines * 3, animate=False)

    def action_values(self) -> None:
        """v: compute the selected tensor's values."""
        if self.ckpt is None:
            self.when_open("no tensor to read yet")
            return
        self.query_one(DetailPanel).compute_values()

    def action_why(self) -> None:
        """w: the size breakdown; enter there comes back with the cursor on that subtree."""
        if self.ckpt is None:
            self.when_open("the size breakdown shows", self.action_why)
            return
        from ckptui.app.screens.why import (  # not needed to browse: kept off the start-up path
            WhyCache,
            WhyScreen,
        )

        if self._why is None:
            self._why = WhyCache()
        self.app.push_screen(WhyScreen(self.ckpt, self._why), self._jump_to)

    def action_export(self) -> None:
        """x: the export dialog, keeping the marked subtrees (or else the detected weights)."""
        if self.ckpt is None:
            self.when_open("the export dialog opens", self.action_export)
            return
        from ckptui.app.screens.export import (
            ExportScreen,  # not needed to browse: kept off the start-up path
        )

        marks = list(self.query_one(CkptTree).marks)
        self.app.push_screen(ExportScreen(self.ckpt, marks))

    @on(DetailPanel.NonFinite)
    def _non_finite(self, event: DetailPanel.NonFinite) -> None:
        self.query_one(CkptTree).set_badge(event.path, event.badge)

    @on(CkptTree.MarksChanged)
    def _marks_changed(self, event: CkptTree.MarksChanged) -> None:
        n = len(event.marks)
        text = self._header
        if n:
            text += f" · {n} marked for export (x)"
        self.query_one("#header", Static).update(text)

    def _jump_to(self, path: KeyPath | None) -> None:
        if path is None:
            return
        tree = self.query_one(CkptTree)
        if tree.filtered:
            self.action_clear_filter()
        if not tree.select_path(path):
            shown = printable(path_expr(path))  # keys from the file: not markup
            self.notify(f"{shown} is not in the tree", severity="warning", markup=False)
        tree.focus()
