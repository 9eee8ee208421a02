"""Provides BrowseScreen: header line, checkpoint tree, details panel, filter bar, footer.

The file is opened in a thread worker (the window appears at once, with a loading indicator);
a file that cannot be opened ends the app with exit code 2 and the one-line reason.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any, TypeVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Input, Static, Tree
from textual.worker import Worker, WorkerState, get_current_worker

from ckptui.analysis.frameworks import detect
from ckptui.analysis.index import Index, search, subtree_sizes
from ckptui.analysis.params import params_at
from ckptui.analysis.roles import weights_path
from ckptui.app.open_progress import OpenProgress
from ckptui.app.widgets.ckpt_tree import CkptTree, Entry
from ckptui.app.widgets.detail import DetailPanel
from ckptui.app.widgets.filter_bar import FilterBar
from ckptui.app.widgets.keys_footer import KeysFooter
from ckptui.app.widgets.tree_labels import big_summaries
from ckptui.core import units
from ckptui.core.bulk import gc_paused
from ckptui.core.cancel import Cancelled, interruptible
from ckptui.core.errors import CkptError
from ckptui.core.keypath import path_expr
from ckptui.core.tree import Checkpoint, KeyPath
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
T = TypeVar("T")


def _model_params(ckpt: Checkpoint) -> tuple[KeyPath, Any] | None:
    """(path, `params.Params`) of the model's weights (`roles.weights_path`), or None."""
    path = weights_path(ckpt)
    params = params_at(ckpt.root, path)
    return (path, params) if path is not None and params is not None else None


def _gc_paused(fn: Callable[[], T]) -> Callable[[], T]:
    """`fn` run with the cyclic GC paused: the workers after the open build a result per
    tensor, and a full collection they trigger holds the GIL for 50-100 ms at 100,000 keys,
    a stall of the UI thread (the tree itself is frozen out of the collector by `_show`).

    What it built is frozen before the collector resumes: the results live as long as the
    screen, and left young they made the first collection after it (on whichever thread
    allocates next, often the UI thread) walk all of them at once."""

    def run() -> T:
        with gc_paused():
            out = fn()
            gc.freeze()
            return out

    return run


class BrowseScreen(Screen[None]):
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
        super().__init__()
        self.path = path
        self.ckpt: Checkpoint | None = None
        self._pending: Entry | None = None
        self._panel_timer: Timer | None = None
        self._panel_at = 0.0
        self._moved_at = 0.0
        self._header = ""
        self._why: Any = None
        """The size breakdown's WhyCache, made on the first `w` (its module loads then)."""
        self._opening = OpenProgress(path)
        """What the header says while the file opens (stage, files read, seconds)."""
        self._opening_timer: Timer | None = None

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
        self.query_one("#main").loading = True
        self.query_one("#filter-row").display = False
        self._filter_timer: Timer | None = None
        self._opening_timer = self.set_interval(0.5, self._show_opening)
        self.open_file()

    def _show_opening(self) -> None:
        self.query_one("#header", Static).update(printable(self._opening.text()))

    @work(thread=True, exclusive=True, exit_on_error=False, group="open")
    def open_file(self) -> tuple[Checkpoint, Index, Any, dict[int, str]]:
        """Read the checkpoint's metadata off the UI thread (a URL's reads give way when the
        app quits: the worker is cancelled, and a stalled server must not hold the app open)."""
        worker = get_current_worker()
        opening = self._opening
        ckpt = interruptible(opening.open, lambda: worker.is_cancelled)
        # A full collection in this thread holds the GIL for 0.1-0.2 s at 100,000 tensors,
        # stalling the UI thread; what is built here forms no cycles (`gc_paused`)
        with gc_paused():
            opening.stage = "indexing"
            index = Index.build(ckpt)
            opening.stage = "finding the weights"
            params = _model_params(ckpt)
            # What showing the tree needs that walks every node (0.8 s on the UI thread at
            # 100,000 keys, issue 16): the root card's sizes and the big rows' summaries
            opening.stage = "summing sizes"
            subtree_sizes(ckpt).largest(ckpt.root)
            summaries = big_summaries(ckpt.root)
            gc.freeze()  # as `_gc_paused` says; `_show` freezes what the UI adds to it
        return ckpt, index, params, summaries

    @work(thread=True, exclusive=True, exit_on_error=False, group="training")
    def find_training_facts(self, ckpt: Checkpoint) -> Any:
        """Name optimizer entries' parameters, make the resume card and the weights_only
        report, after the tree is shown (aligning a huge optimizer can take a second)."""
        # deferred: the training analysis runs in this worker after first paint, and loads here
        from ckptui.analysis.training.facts import training_facts

        # On a thread `q` can abandon: the alignment has no cancellation points (see open_file).
        worker = get_current_worker()
        return interruptible(_gc_paused(lambda: training_facts(ckpt)), lambda: worker.is_cancelled)

    @on(Worker.StateChanged)
    def _training_found(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "training" or event.state is not WorkerState.SUCCESS:
            return
        facts = event.worker.result
        self.query_one(CkptTree).add_parts(facts.labels())
        panel = self.query_one(DetailPanel)
        panel.training = facts
        panel.show(panel.entry)

    @on(Worker.StateChanged)
    def _opened(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "open":
            return
        if event.state in (WorkerState.ERROR, WorkerState.SUCCESS) and self._opening_timer:
            self._opening_timer.stop()
        if event.state is WorkerState.ERROR:
            error = event.worker.error
            if isinstance(error, Cancelled):
                return  # the app is quitting
            if isinstance(error, CkptError):
                message = f"ckptui: {error.path}: {error.message}"
            else:
                message = f"ckptui: {self.path}: unexpected error: {error!r}"
            # Printed plainly by the CLI after the terminal is restored (rich would wrap it and
            # read brackets in file names as markup).
            self.app.error_message = message  # type: ignore[attr-defined]
            self.app.exit(return_code=2)
        elif event.state is WorkerState.SUCCESS:
            self._show(*event.worker.result)

    def _show(
        self, ckpt: Checkpoint, index: Index, params: Any = None, summaries: Any = None
    ) -> None:
        self.ckpt = ckpt
        # The checkpoint's nodes live as long as the app: moving them out of the collector's
        # generations stops full collections over a million nodes from stalling cursor moves
        # (100-200 ms each on a 50,000-key state dict).
        gc.freeze()
        self.query_one("#main").loading = False
        dangers = sum(1 for f in ckpt.findings if f.severity.value == "danger")
        framework = detect(ckpt)
        # The framework comes right after the name: the rest of the line is cut first at 80
        # columns, and "Lightning 2.6.6 · epoch 3" says more than the container format.
        header = f"{ckpt.path} · " + (f"{framework.heading()} · " if framework else "")
        fetched = ckpt.info.get("bytes_read")
        if fetched is not None:  # a URL: what opening it cost, before the line is cut at 80
            header += f"{units.size(fetched)} read · "
        header += f"{ckpt.format} · {units.size(ckpt.file_bytes)} · {index.tensor_count:,} tensor"
        header += "" if index.tensor_count == 1 else "s"  # `1 tensor`
        if params is not None:  # the model's, not the optimizer's: what a user sizes it by
            header += f" · {params[1].text()}"
        if dangers:
            header += f" · ⚠ {units.plural(dangers, 'dangerous call')}: torch.load would run code"
        self._header = header = printable(header)  # text from the file: escaped
        head = self.query_one("#header", Static)
        head.update(header)
        head.set_class(bool(dangers), "danger")
        panel = self.query_one(DetailPanel)
        panel.ckpt, panel.index, panel.params = ckpt, index, params
        tree = self.query_one(CkptTree)
        tree.params = {params[0]: params[1]} if params is not None else {}
        tree.show_checkpoint(ckpt, summaries)
        panel.show(tree.root.data)  # the cursor starts on the root: no highlight event comes
        tree.focus()
        if params is not None:  # first: `m` is a key away, the training facts a panel away
            weights = ckpt.find(params[0])
            if weights is not None:  # `m` meanwhile waits for these rows (tree_modules)
                tree.expect_modules(weights)
            self.find_modules(ckpt, params[0])
        self.find_training_facts(ckpt)

    @work(thread=True, exclusive=True, exit_on_error=False, group="modules")
    def find_modules(self, ckpt: Checkpoint, path: KeyPath) -> tuple[Any, Any]:
        """The module view's rows for the weights, made before `m` asks for them (grouping a
        100,000-key dict takes most of a second here)."""
        # deferred: the module view's grouping loads in this worker, after first paint
        from ckptui.analysis import modules

        def run() -> tuple[Any, Any]:
            node = ckpt.find(path)
            rows = modules.module_rows(node, path) if node is not None else None
            # handed over before the next two levels are made: `m` pressed meanwhile shows
            # these rows instead of grouping 100,000 names again on the UI thread
            self.app.call_from_thread(self._preload_modules, node, rows)
            modules.warm(rows, levels=2)
            return node, rows

        worker = get_current_worker()  # on a thread q abandons (see open_file)
        return interruptible(_gc_paused(run), lambda: worker.is_cancelled)

    def _preload_modules(self, node: Any, rows: Any) -> None:
        if node is not None and self.ckpt is not None:
            self.query_one(CkptTree).preload_modules(node, rows)

    @on(Worker.StateChanged)
    def _modules_found(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "modules":
            return
        if event.state is WorkerState.SUCCESS:
            node, rows = event.worker.result
            if node is not None:
                self.query_one(CkptTree).preload_modules(node, rows)
        elif event.state in (WorkerState.ERROR, WorkerState.CANCELLED) and self.ckpt is not None:
            tree = self.query_one(CkptTree)
            weights = tree.params and next(iter(tree.params))
            node = self.ckpt.find(weights) if isinstance(weights, tuple) else None
            if node is not None:  # a row waiting for those rows groups them itself
                tree.modules_lost(node)

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
        if self.ckpt is None or not bar.display:
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

    def action_clear_filter(self) -> None:
        """esc: show the whole tree again (n/N still step through the matches); esc again
        forgets the matches."""
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
        self.query_one(DetailPanel).compute_values()

    def action_why(self) -> None:
        """w: the size breakdown; enter there comes back with the cursor on that subtree."""
        if self.ckpt is None:
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
