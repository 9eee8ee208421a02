"""Provides CompareScreen: `ckptui A B`, two checkpoints' merged tree with every difference marked.

Both files are opened and compared (keys, shapes, dtypes: metadata only) by the core's
`diff_checkpoints` in a thread worker, as the browser opens one file; a file that cannot be
opened ends the app with exit code 2 and the one-line reason. Values are compared only on
request, in thread workers that stream results back in batches: `v` for the selected tensor,
`a` for every tensor on both sides, each with a progress bar and cancelled by `esc`. Rows and
the header's counts change as results arrive.
"""

from __future__ import annotations

import time

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Input, ProgressBar, Static, Tree
from textual.worker import Worker, WorkerState, get_current_worker

from ckptui.analysis.diff.compare import Diff, diff_checkpoints
from ckptui.analysis.index import compile_query
from ckptui.app.compare_values import ValuesArrived, stream_values
from ckptui.app.widgets.compare_panel import ComparePanel
from ckptui.app.widgets.diff_rows import MARK, NAME, Kind, Row, file_name, leaves, merge
from ckptui.app.widgets.diff_tree import DiffTree
from ckptui.app.widgets.filter_bar import FilterBar
from ckptui.app.widgets.keys_footer import KeysFooter
from ckptui.core.bulk import gc_keep
from ckptui.core.cancel import Cancelled, interruptible
from ckptui.core.errors import CkptError
from ckptui.core.keypath import describe_path, path_expr
from ckptui.core.tree import Checkpoint
from ckptui.core.units import plural, printable
from ckptui.formats import open_checkpoint
from ckptui.formats.source import is_url

SHORT = {
    Kind.ONLY_A: "only A",
    Kind.ONLY_B: "only B",
    Kind.SHAPE: "shape",
    Kind.DTYPE: "dtype",
    Kind.VALUES: "values",
    Kind.UNREAD: "unread",
    Kind.OTHER: "other",
    Kind.PENDING: "not compared",
}
"""Kinds as the header counts them (its line must fit 80 columns)."""
AUTO_COMPARE_BYTES = 512 << 20
"""Two local files whose comparable tensors hold at most this many bytes (both sides together)
have their values compared as soon as they open, streamed with progress: metadata alone cannot
say two tensors are equal, and a screen of `?` asks the user for a key they should not need."""
REFILTER_EVERY = 1.0
"""While values stream in with 'only differences' on, the tree is re-filtered this often."""


class CompareScreen(Screen[None]):
    """The compare screen."""

    HELP = "compare"

    BINDINGS = [
        Binding("d", "only_changes", "Only diffs"),
        Binding("v", "compare_one", "Values"),
        Binding("a", "compare_all", "All values"),
        Binding("slash", "filter", "Filter"),
        Binding("y", "copy_path", "Copy", show=False),
        Binding("escape", "cancel", "Cancel", show=False),
    ]

    def __init__(self, path_a: str, path_b: str) -> None:
        super().__init__()
        self.path_a, self.path_b = path_a, path_b
        self.a: Checkpoint | None = None
        self.b: Checkpoint | None = None
        self.diff: Diff | None = None
        self.merged: Row | None = None
        self._refiltered_at = 0.0
        self._comparable_rows: list[Row] | None = None

    def compose(self) -> ComposeResult:
        opening = printable(f"ckptui · comparing {self.path_a} with {self.path_b} …")
        yield Static(opening, id="header", markup=False)  # file names: not markup
        with Horizontal(id="main"):
            yield DiffTree(id="tree")
            yield ComparePanel(id="detail")
        with Horizontal(id="cmp-progress"):
            yield Static("comparing values", id="cmp-progress-label")
            yield ProgressBar(id="cmp-all-progress", show_eta=False)
        yield FilterBar()
        yield KeysFooter()

    def on_mount(self) -> None:
        self.query_one("#cmp-progress").display = False
        self.query_one("#main").loading = True
        self.open_files()

    # -- opening -----------------------------------------------------------------------------
    @work(thread=True, exclusive=True, exit_on_error=False, group="open")
    def open_files(self) -> tuple[Checkpoint, Checkpoint, Diff, Row]:
        """Open both files and compare their metadata, off the UI thread, on a thread that `q`
        abandons (a slow disk or server must not hold the process open after the screen)."""
        worker = get_current_worker()

        def run() -> tuple[Checkpoint, Checkpoint, Diff, Row]:
            a = open_checkpoint(self.path_a)
            b = open_checkpoint(self.path_b)
            d = diff_checkpoints(a, b)
            return a, b, d, merge(d, file_name(a.path), file_name(b.path))

        return interruptible(run, lambda: worker.is_cancelled)

    @on(Worker.StateChanged)
    def _worker_changed(self, event: Worker.StateChanged) -> None:
        group = event.worker.group
        if event.state is not WorkerState.ERROR and not (
            group == "open" and event.state is WorkerState.SUCCESS
        ):
            return
        if group == "open" and event.state is WorkerState.SUCCESS:
            self._show(*event.worker.result)
            return
        error = event.worker.error
        if isinstance(error, Cancelled):
            return  # the app is quitting (or the screen closing): nothing to report
        if isinstance(error, CkptError):
            message = f"ckptui: {error.path}: {error.message}"
        else:
            message = f"ckptui: unexpected error: {error!r}"
        if group == "open":
            self.app.error_message = message  # type: ignore[attr-defined]
            self.app.exit(return_code=2)
        else:
            self._finished(group)
            self.notify(message, severity="error", markup=False)  # it quotes the file

    def _show(self, a: Checkpoint, b: Checkpoint, d: Diff, root: Row) -> None:
        self.a, self.b, self.diff, self.merged = a, b, d, root
        # Both trees and the merged rows live as long as the app: out of the collector's
        # generations, full collections stop stalling cursor moves (as BrowseScreen does).
        gc_keep()
        self.query_one("#main").loading = False
        panel = self.query_one(ComparePanel)
        panel.a, panel.b, panel.diff = a, b, d
        tree = self.query_one(DiffTree)
        tree.show_merged(root)
        self._update_header()
        panel.show(root)
        tree.focus()
        self._auto_compare()

    def _auto_compare(self) -> None:
        """Compare every value at once when both files are local and the bytes are few."""
        if self.a is None or self.b is None or is_url(self.path_a) or is_url(self.path_b):
            return
        rows = self._comparable()
        need = sum(r.bytes_a + r.bytes_b for r in rows)
        if rows and need <= AUTO_COMPARE_BYTES:
            self.action_compare_all()

    def _update_header(self) -> None:
        d, root = self.diff, self.merged
        if d is None or root is None or self.a is None or self.b is None:
            return
        if d.mode == "whole":
            what = "whole files"
        else:
            # `the root`, as the CLI's diff says it: `(root)` is the merged tree's row name
            what = f"weights: A {describe_path(d.a_root)}, B {describe_path(d.b_root)}"
        kinds = [k for k in Kind if k is not Kind.EQUAL and root.counts[k]]
        if root.changed:
            parts = ["differ"]
        else:  # "match" only once every value was compared
            parts = ["no difference yet" if root.counts[Kind.PENDING] else "match"]
        parts += [f"{MARK[k]} {root.counts[k]:,} {SHORT[k]}" for k in kinds]
        parts.append(f"= {root.counts[Kind.EQUAL]:,} equal")
        total, compared = self._value_counts()
        if not total:
            parts.append("no values to compare")
        elif compared < total:
            parts.append(f"values {compared:,}/{total:,} compared (v, a)")
        else:
            parts.append(f"values all {total:,} compared")
        if self.query_one(DiffTree).only_changes:
            parts.append("only differences shown (d)")
        # One line (issue 18): the verdict and counts first, as the 80th column cuts the rest;
        # the files come after (the tree's root row names them too).
        line = Text(" · ".join(parts), no_wrap=True, overflow="ellipsis")
        a, b, what = printable(d.a), printable(d.b), printable(what)  # names from the files
        line.append(" · ")
        line.append_text(Text.assemble(("A ", "bold"), a, " ", ("B ", "bold"), b, f" · {what}"))
        for side, prefix in (("A", d.prefix_a), ("B", d.prefix_b)):
            if prefix:
                line.append(printable(f" · {side} has {prefix!r}; stripped"))
        head = self.query_one("#header", Static)
        head.update(line)
        head.set_class(bool(root.changed), "differ")

    def _value_counts(self) -> tuple[int, int]:
        rows = self._comparable()
        return len(rows), sum(1 for r in rows if r.max_abs is not None or r.why is not None)

    def _comparable(self) -> list[Row]:
        """Leaves whose values can be compared, in display order."""
        if self.merged is None:
            return []
        if self._comparable_rows is None:
            self._comparable_rows = [r for r in leaves(self.merged) if r.comparable]
        return self._comparable_rows

    @on(Tree.NodeHighlighted)
    def _highlighted(self, event: Tree.NodeHighlighted) -> None:
        data = event.node.data
        self.query_one(ComparePanel).show(data.row if data is not None else None)

    # -- values ------------------------------------------------------------------------------
    def action_compare_one(self) -> None:
        """v: compare the selected tensor's values."""
        row = self.query_one(DiffTree).current_row()
        if row is None or self.a is None:
            return
        if not row.leaf or not row.comparable:
            why = "not a tensor" if not row.leaf else NAME[row.kind]
            self.notify(
                f"{why}: v compares a tensor both files have with the same shape (a: all)",
                severity="warning",
            )
            return
        panel = self.query_one(ComparePanel)
        panel.busy = row
        panel.progress(0, 1)
        panel.show(row)
        self.compare_one(row)

    def action_compare_all(self) -> None:
        """a: compare the values of every tensor both files have with the same shape."""
        rows = [r for r in self._comparable() if r.max_abs is None and r.why is None]
        if self.a is None:
            return
        if not rows:
            self.notify("every comparable tensor's values are already compared", timeout=3)
            return
        self.query_one("#cmp-progress").display = True
        bar = self.query_one("#cmp-all-progress", ProgressBar)
        bar.update(total=None, progress=0)
        self.query_one("#cmp-progress-label", Static).update(
            f"comparing the values of {plural(len(rows), 'tensor')} · esc cancels"
        )
        self.compare_all(rows)

    def action_cancel(self) -> None:
        """esc: cancel value comparisons, else clear the key filter."""
        running = [w for w in self.workers if w.group in ("one", "all") and w.is_running]
        if running:
            for w in running:
                w.cancel()
            self.notify("value comparison cancelled; results so far are kept", timeout=3)
            return
        self._clear_filter()

    @work(thread=True, exclusive=True, exit_on_error=False, group="one")
    def compare_one(self, row: Row) -> None:
        """Compare one tensor's values."""
        self._stream([row], "one")

    @work(thread=True, exclusive=True, exit_on_error=False, group="all")
    def compare_all(self, rows: list[Row]) -> None:
        """Compare the values of `rows`, sending results as they come."""
        self._stream(rows, "all")

    def _stream(self, rows: list[Row], group: str) -> None:
        """Run in a worker thread: `stream_values` posts the results back in batches."""
        assert self.a is not None and self.b is not None
        worker = get_current_worker()
        stream_values(self.a, self.b, rows, group, self.post_message, lambda: worker.is_cancelled)

    def on_values_arrived(self, message: ValuesArrived) -> None:
        changed = False
        rows = []
        for row, m, why, rel in message.results:
            changed |= row.set_values(m, why, rel)
            rows.append(row)
        tree = self.query_one(DiffTree)
        tree.relabel(rows)
        panel = self.query_one(ComparePanel)
        if message.group == "all":
            bar = self.query_one("#cmp-all-progress", ProgressBar)
            bar.update(total=max(message.total, 1), progress=message.done)
        elif panel.busy is not None:
            panel.progress(message.done, message.total)
        if message.finished:
            self._finished(message.group)
            if message.error:
                self.notify(message.error, severity="error", markup=False)
        if tree.only_changes and changed:
            now = time.monotonic()
            if message.finished or now - self._refiltered_at >= REFILTER_EVERY:
                self._refiltered_at = now
                tree.refilter()
        if rows or message.finished:
            self._update_header()
            panel.show(tree.current_row())

    def _finished(self, group: str) -> None:
        if group == "all":
            self.query_one("#cmp-progress").display = False
        else:
            panel = self.query_one(ComparePanel)
            panel.busy = None
            panel.show(panel.row)

    # -- filters -----------------------------------------------------------------------------
    def action_only_changes(self) -> None:
        """d: show only rows that differ (and the containers above them), or everything."""
        tree = self.query_one(DiffTree)
        if tree.merged is None:
            return
        tree.only_changes = not tree.only_changes
        tree.refilter()
        self._update_header()
        if tree.only_changes and not tree.merged.changed:
            self.notify("no differences (so far): every row is hidden; d shows them", timeout=4)
        tree.focus()

    def action_filter(self) -> None:
        """/: filter keys by substring or regex."""
        self.query_one(FilterBar).open()

    @on(Input.Submitted, "#filter")
    def _apply_filter(self, event: Input.Submitted) -> None:
        query = event.value.strip()
        if not query:
            self._clear_filter()
            return
        pattern = self.query_one(FilterBar).parse(query, compile_query)
        if pattern is None:
            return
        tree = self.query_one(DiffTree)
        tree.query = pattern
        tree.refilter()
        tree.focus()

    def action_clear_filter(self) -> None:
        """Palette: show every key again."""
        self._clear_filter()

    def _clear_filter(self) -> None:
        self.query_one(FilterBar).close()
        tree = self.query_one(DiffTree)
        if tree.query is not None:
            tree.query = None
            tree.refilter()
        tree.focus()

    def action_copy_path(self) -> None:
        """y: copy the selected entry's key path in A (else B) as Python indexing."""
        row = self.query_one(DiffTree).current_row()
        if row is None or row.path is None or self.diff is None:
            return
        origin = self.diff.origin_a.get(row.path) or self.diff.origin_b.get(row.path) or row.path
        text = path_expr(origin) or "<root>"
        self.app.copy_to_clipboard(text)
        self.notify(f"copied {printable(text)}", timeout=3, markup=False)  # keys: not markup
