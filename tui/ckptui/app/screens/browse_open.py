"""Provides OpeningScreen, the browser's opening half (a Screen base of BrowseScreen: Textual
collects `@on` handlers from Screen classes, not from plain mixins).

The file is opened in a thread worker (the window appears at once, with a loading indicator
and the header saying how far the open is); a file that cannot be opened ends the app with
exit code 2 and the one-line reason. Once it is open the tree is shown, and more workers find
what the browser shows later: the module view's rows and the training facts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textual import on, work
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Static
from textual.worker import Worker, WorkerState, get_current_worker

from ckptui.analysis.frameworks import detect
from ckptui.analysis.index import Index, subtree_sizes
from ckptui.analysis.params import params_at
from ckptui.analysis.roles import weights_path
from ckptui.app.open_progress import OpenProgress
from ckptui.app.widgets.ckpt_tree import CkptTree
from ckptui.app.widgets.detail import DetailPanel
from ckptui.app.widgets.filter_bar import FilterBar
from ckptui.app.widgets.tree_labels import big_summaries
from ckptui.core import units
from ckptui.core.bulk import gc_keep, gc_paused, gc_paused_call
from ckptui.core.cancel import Cancelled, interruptible
from ckptui.core.errors import CkptError
from ckptui.core.tree import Checkpoint, KeyPath
from ckptui.core.units import printable


def _model_params(ckpt: Checkpoint) -> tuple[KeyPath, Any] | None:
    """(path, `params.Params`) of the model's weights (`roles.weights_path`), or None."""
    path = weights_path(ckpt)
    params = params_at(ckpt.root, path)
    return (path, params) if path is not None and params is not None else None


class OpeningScreen(Screen[None]):
    """Opening the file, then showing it: the header, the tree, the panel's checkpoint."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.ckpt: Checkpoint | None = None
        self._header = ""
        self._opening = OpenProgress(path)
        """What the header says while the file opens (stage, files read, seconds)."""
        self._opening_timer: Timer | None = None
        self._after_open: dict[str, Callable[[], None]] = {}
        """What the keys pressed while the file opened asked for, by what each said it would
        do, run in that order once the tree is shown (a key pressed twice runs once)."""

    def _start_opening(self) -> None:
        """Show the loading view and open the file (from the subclass's `on_mount`)."""
        self.query_one("#main").loading = True
        self._opening_timer = self.set_interval(0.5, self._show_opening)
        self.open_file()

    def when_open(self, what: str, run: Callable[[], None] | None = None) -> None:
        """`run` now if the file is open; else say that it is still opening and run it once
        the tree is shown (esc forgets it): a key pressed during a 100,000-tensor open is
        neither lost nor silent.

        Args:
            what: What happens once it is open (`the export dialog opens`), or why nothing
                can (`nothing to copy yet`, with no `run`).
            run: The action.
        """
        if self.ckpt is not None:
            if run is not None:
                run()
            return
        if run is not None:
            self._after_open[what] = run
        self.notify(
            f"still opening {printable(self.path)} · {what}"
            + (" once it is open (esc: forget it)" if run is not None else ""),
            timeout=4,
            markup=False,  # the file's name: not markup, its control characters escaped
        )

    def forget_after_open(self) -> None:
        """esc while the file opens: what the keys asked for will not run."""
        if self.ckpt is None and self._after_open:
            self._after_open = {}
            self.notify("never mind: nothing runs once it is open", timeout=3)

    @on(CkptTree.NotOpen)
    def _tree_not_open(self, event: CkptTree.NotOpen) -> None:
        self.when_open(event.what, event.again)

    def _shown(self) -> None:
        """The tree is shown: run what the keys asked for meanwhile (BrowseScreen adds the
        filter typed meanwhile)."""
        runs, self._after_open = self._after_open, {}
        for run in runs.values():
            run()

    def _show_opening(self) -> None:
        self.query_one("#header", Static).update(printable(self._opening.text()))

    @work(thread=True, exclusive=True, exit_on_error=False, group="open")
    def open_file(self) -> tuple[Checkpoint, Index, Any, dict[int, str]]:
        """Read the checkpoint's metadata off the UI thread (a URL's reads give way when the
        app quits: the worker is cancelled, and a stalled server must not hold the app open)."""
        worker = get_current_worker()
        opening = self._opening
        # A collection in this thread holds the GIL for 0.1-0.3 s at 100,000 tensors, stalling
        # the UI thread; what is built here forms no cycles (`core.bulk.gc_paused`)
        with gc_paused(keep_frozen=True):
            ckpt = interruptible(opening.open, lambda: worker.is_cancelled)
            opening.stage = "indexing"
            index = Index.build(ckpt)
            opening.stage = "finding the weights"
            params = _model_params(ckpt)
            # What showing the tree needs that walks every node (0.8 s on the UI thread at
            # 100,000 keys, issue 16): the root card's sizes and the big rows' summaries
            opening.stage = "summing sizes"
            subtree_sizes(ckpt).largest(ckpt.root)
            summaries = big_summaries(ckpt.root)
        return ckpt, index, params, summaries

    @work(thread=True, exclusive=True, exit_on_error=False, group="training")
    def find_training_facts(self, ckpt: Checkpoint) -> Any:
        """Name optimizer entries' parameters, make the resume card and the weights_only
        report, after the tree is shown (aligning a huge optimizer can take a second)."""
        # deferred: the training analysis runs in this worker after first paint, and loads here
        from ckptui.analysis.training.facts import training_facts

        # On a thread `q` can abandon: the alignment has no cancellation points (see open_file).
        worker = get_current_worker()
        return interruptible(
            gc_paused_call(lambda: training_facts(ckpt), keep_frozen=True),
            lambda: worker.is_cancelled,
        )

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
        gc_keep()
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
        if not self.query_one(FilterBar).display:  # typing a filter meanwhile: typed on there
            tree.focus()
        if params is not None:  # first: `m` is a key away, the training facts a panel away
            weights = ckpt.find(params[0])
            if weights is not None:  # `m` meanwhile waits for these rows (tree_modules)
                tree.expect_modules(weights)
            self.find_modules(ckpt, params[0])  # the training facts follow (`_modules_found`)
        else:
            self.find_training_facts(ckpt)
        self._shown()

    @work(thread=True, exclusive=True, exit_on_error=False, group="modules")
    def find_modules(self, ckpt: Checkpoint, path: KeyPath) -> tuple[Any, Any]:
        """The module view's rows for the weights, made before `m` asks for them (grouping a
        100,000-key dict takes most of a second here)."""
        # deferred: the module view's grouping loads in this worker, after first paint
        from ckptui.analysis import modules

        def run() -> tuple[Any, Any]:
            node = ckpt.find(path)
            with gc_paused(keep_frozen=True):
                rows = modules.module_rows(node, path) if node is not None else None
            # handed over before the next two levels are made: `m` pressed meanwhile shows
            # these rows instead of grouping 100,000 names again on the UI thread (outside
            # the pause: a quitting app may never answer, and the pause would never end)
            self.app.call_from_thread(self._preload_modules, node, rows)
            with gc_paused(keep_frozen=True):
                modules.warm(rows, levels=2)
            return node, rows

        worker = get_current_worker()  # on a thread q abandons (see open_file)
        return interruptible(run, lambda: worker.is_cancelled)

    def _preload_modules(self, node: Any, rows: Any) -> None:
        if node is not None and self.ckpt is not None:
            self.query_one(CkptTree).preload_modules(node, rows)

    @on(Worker.StateChanged)
    def _modules_found(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "modules":
            return
        quitting = event.state is WorkerState.ERROR and isinstance(event.worker.error, Cancelled)
        if event.state in (WorkerState.SUCCESS, WorkerState.ERROR) and not quitting and self.ckpt:
            # One analysis thread at a time: with two beside the UI thread, the GIL went to
            # the other one as often as to the UI, which then waited 80-140 ms for it (100,000
            # keys, issue 16); one after the other they take as long, the GIL being one
            self.find_training_facts(self.ckpt)
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
