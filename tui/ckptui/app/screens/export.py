"""Provides ExportScreen (`x`): choose what to keep and how, see the output's size, write it.

The dialog only gathers choices and shows the core's answers: `make_plan` says what the output
holds and exactly how big it is (recomputed on every change), and `export` writes it through a
verified temporary file in a thread worker, reporting progress (ExportWriting, this screen's
base in export_write.py, with ExportDoneScreen, which says what was written).
"""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Checkbox, Input, Label, RadioSet, Static
from textual.worker import Worker, WorkerState, get_current_worker

from ckptui.app.screens.export_write import ExportDoneScreen, ExportWriting
from ckptui.app.widgets.choices import Choice, Tick
from ckptui.app.widgets.shown_input import ShownInput
from ckptui.core import units
from ckptui.core.bulk import gc_keep, gc_paused
from ckptui.core.cancel import Cancelled, interruptible
from ckptui.core.errors import CkptError
from ckptui.core.keypath import path_text
from ckptui.core.tree import Checkpoint, KeyPath
from ckptui.export import Plan, check_target, default_target, make_plan
from ckptui.export.dcp import stitched_bytes
from ckptui.export.plan import output_stem
from ckptui.formats.source import is_url

__all__ = ["ExportDoneScreen", "ExportScreen", "default_format"]
"""ExportDoneScreen is ExportWriting's: imported from here by the tests, as it always was."""

DTYPES = ("keep", "bf16", "fp16")
FORMATS = ("pth", "safetensors")


class ExportScreen(ExportWriting):
    """The export dialog, prefilled with the marks or else the detected weights."""

    # None of the dialog's rules depends on the app's -narrow/-wide classes: without them its
    # first resize does not restyle every widget of it once more (issue 16: the dialog's open)
    HORIZONTAL_BREAKPOINTS = []  # type: ignore[assignment]
    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        # Priority: a focused radio set, checkbox or input would take enter for itself, and a
        # user who just picked bf16 expects enter to write, as it does from the button.
        Binding("enter", "enter", "Export", priority=True),
    ]

    def __init__(self, ckpt: Checkpoint, marks: list[KeyPath]) -> None:
        super().__init__()
        self.ckpt = ckpt
        self.marks = marks
        self.plan: Plan | None = None
        self._prefix = ""
        """The prefix every kept name shares (`module.`): offered for stripping."""
        self._replace: str | None = None
        """The existing target the user agreed to replace (by pressing Export twice)."""

    # -- layout ------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        with Vertical(id="export") as box:
            box.border_title = "Export a slimmed copy"
            with Horizontal(classes="export-row", id="export-first"):
                yield Label("Keep", classes="export-label")
                yield Static(id="export-keep")
            with Horizontal(classes="export-row"):
                yield Label("Names", classes="export-label")
                yield Tick("strip the prefix", id="export-strip")
            with Horizontal(classes="export-row"):
                yield Label("Floats", classes="export-label")
                with RadioSet(id="export-dtype"):
                    yield Choice("keep dtype", value=True)
                    yield Choice("bf16")
                    yield Choice("fp16")
            with Horizontal(classes="export-row"):
                yield Label("Format", classes="export-label")
                fmt = default_format(self.ckpt)
                with RadioSet(id="export-format"):
                    yield Choice(".pth", value=fmt == "pth")
                    yield Choice(".safetensors", value=fmt == "safetensors")
            with Horizontal(classes="export-row"):
                yield Label("Write to", classes="export-label")
                # the name is the source's: its control characters drawn as symbols, kept
                yield ShownInput(self._default_target(fmt), id="export-target")
            with Horizontal(classes="export-row", id="export-size-row"):
                yield Label("Size", classes="export-label")
                yield Static(id="export-size")
            yield Static(id="export-note")
            # (the progress bar is mounted here when writing starts: `_progress_bar`)
            with Horizontal(id="export-buttons"):
                yield Button("Export", id="export-go", variant="primary")
                yield Button("Cancel", id="export-cancel")

    def _default_target(self, fmt: str) -> str:
        return _named_target(self.ckpt, self.marks, fmt)

    def on_mount(self) -> None:
        self._check_target()
        # The default plan after the dialog's first frame: planning 100,000 tensors is a
        # second of Python on a worker thread, which would compete for the GIL with composing
        # and painting the dialog.
        self._show_size("[dim]computing …[/]")
        self.call_after_refresh(self.call_after_refresh, self._replan, True)

    # -- choices -> plan ---------------------------------------------------------------------
    def _choices(self) -> tuple[str, str, str]:
        strip = "auto" if self.query_one("#export-strip", Checkbox).value else "none"
        dtype = DTYPES[self.query_one("#export-dtype", RadioSet).pressed_index]
        fmt = FORMATS[self.query_one("#export-format", RadioSet).pressed_index]
        return strip, dtype, fmt

    def _replan(self, first: bool = False) -> None:
        # Planning a 100,000-tensor export takes about a second: a worker keeps the dialog
        # responsive, and Export waits for the answer.
        strip, dtype, fmt = self._choices()
        self.plan = None
        self._update_button()
        self._show_size("[dim]computing …[/]")
        self._plan(self.marks or None, "auto" if first else strip, dtype, fmt, first)

    @work(thread=True, exclusive=True, exit_on_error=False, group="plan")
    def _plan(
        self, keep: list[KeyPath] | None, strip: str, dtype: str, fmt: str, first: bool
    ) -> tuple[Plan, int, bool, int]:
        worker = get_current_worker()  # on a thread `q` abandons, as every long worker

        def run() -> tuple[Plan, int, bool, int]:
            with gc_paused(keep_frozen=True):  # the size's allocations too: see `_planned`
                plan = make_plan(self.ckpt, keep, strip, dtype, fmt)
                return plan, plan.predicted_bytes, first, stitched_bytes(plan)

        return interruptible(run, lambda: worker.is_cancelled)

    @on(Worker.StateChanged)
    def _planned(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "plan":
            return
        if event.state is WorkerState.ERROR:
            error = event.worker.error
            if isinstance(error, Cancelled):
                return  # a newer plan replaced it, or the dialog closed
            reason = error.message if isinstance(error, CkptError) else repr(error)
            self._show_size(f"[b $error]{escape(units.printable(reason))}[/]")
            self.query_one("#export-keep", Static).update(self._keep_text(None))
            if isinstance(error, CkptError):
                self.query_one("#export-strip", Checkbox).label = "strip a prefix (nothing to keep)"
            return
        if event.state is not WorkerState.SUCCESS:
            return
        plan, predicted, first, stitched = event.worker.result
        # The plan (an item per tensor) lives while the dialog is open: out of the collector's
        # generations, or the next full collection walks its 100,000 items holding the GIL
        # for a second, whichever thread triggers it (as the browser does with the tree)
        gc_keep()
        if first:
            self._prefix = plan.detected_prefix
            box = self.query_one("#export-strip", Checkbox)
            with box.prevent(Checkbox.Changed):  # the plan already strips it
                box.value = bool(self._prefix)
            box.label = (
                f"strip the prefix {self._prefix!r} from every name"
                if self._prefix
                else "strip a prefix (none found: no module./_orig_mod.)"
            )
            box.disabled = not self._prefix
        self.plan = plan
        self.query_one("#export-keep", Static).update(self._keep_text(plan))
        text = (
            f"[b]{units.size_change(self.ckpt.file_bytes, predicted)}[/] · "
            f"{len(plan.items):,} tensors"
        )
        if stitched:  # chunks saved by several ranks: torch's DCP reader joins them
            n = len(plan.skipped)
            approx = units.size_change(self.ckpt.file_bytes, predicted + stitched)
            text = (
                f"[b]≈ {approx}[/] · {len(plan.items) + n:,} tensors\n"
                f"[dim]{n:,} saved in chunks: torch's DCP reader joins them (needs torch)[/]"
            )
        elif plan.skipped:
            more = ", …" if len(plan.skipped) > 1 else ""
            why = escape(units.printable(plan.skipped[0][1]))  # it may quote a key
            text += f"\n[$warning]{len(plan.skipped):,} skipped ({why}{more})[/]"
        self._show_size(text)
        self._update_button()
        if first:  # x, then enter, exports the defaults
            self.query_one("#export-go", Button).focus()

    def _keep_text(self, plan: Plan | None) -> str:
        if self.marks:
            names = ", ".join(path_text(p) or "the whole file" for p in self.marks[:3])
            more = f" and {len(self.marks) - 3} more" if len(self.marks) > 3 else ""
            return f"{len(self.marks)} marked: [b]{escape(units.printable(names))}[/]{more}"
        if plan is None:
            return "the detected weights (none found: mark subtrees with space)"
        where = path_text(plan.keep[0]) or "the whole file"
        where = units.printable(where)  # keys from the file: control characters shown
        return f"the detected weights: [b]{escape(where)}[/]  [dim](space marks others)[/]"

    def _show_size(self, text: str) -> None:
        self.query_one("#export-size", Static).update(text)

    @on(Checkbox.Changed, "#export-strip")
    @on(RadioSet.Changed, "#export-dtype")
    def _transform_changed(self) -> None:
        self._replan()

    @on(RadioSet.Changed, "#export-format")
    def _format_changed(self) -> None:
        _, _, fmt = self._choices()
        target = self.query_one("#export-target", Input)
        other = "safetensors" if fmt == "pth" else "pth"
        if target.value.endswith(f".{other}"):  # follow the format unless the user named it
            target.value = target.value[: -len(other)] + fmt
        self._replan()

    @on(Input.Changed, "#export-target")
    def _target_changed(self) -> None:
        self._replace = None
        self._check_target()

    def _check_target(self) -> None:
        self.query_one("#export-note", Static).update(self._target_problem() or "")
        self._update_button()

    def _target_problem(self) -> str | None:
        """Why the target cannot be written (markup), or a warning that it exists."""
        value = self.query_one("#export-target", Input).value.strip()
        if not value:
            return "[$error]name the file to write[/]"
        target = value if is_url(value) else str(Path(value).expanduser())
        problem = check_target(target, self.ckpt)
        if problem is None:
            return None
        level, reason = problem
        value, reason = units.printable(value), units.printable(reason)  # typed, or from the file
        if level == "error":
            return f"[b $error]{escape(value)} {escape(reason)}[/]"
        if self._replace == target:
            return f"[$warning]{escape(value)} exists: press Replace to overwrite it[/]"
        return f"[$warning]{escape(value)} exists: Export will ask before replacing it[/]"

    def _update_button(self) -> None:
        button = self.query_one("#export-go", Button)
        problem = self._target_problem() or ""
        button.disabled = self._writing or self.plan is None or "$error" in problem
        button.label = "Replace" if self._replace else "Export"


def _named_target(ckpt: Checkpoint, marks: list[Path], fmt: str) -> str:
    """`run/ckpt.weights.pth` for the detected weights (the name the root panel's export
    command suggests too), `run/ckpt.slim.pth` for marked subtrees."""
    if marks:
        return default_target(_source_name(ckpt), fmt)
    return f"{output_stem(_source_name(ckpt))}.weights.{fmt}"


def default_format(ckpt: Checkpoint) -> str:
    """`safetensors` for a safetensors file or a folder of safetensors shards (what its users
    load it with), else `pth`."""
    if ckpt.format == "safetensors":
        return "safetensors"
    shards = ckpt.info.get("shard_formats")
    return "safetensors" if shards and set(shards) == {"safetensors"} else "pth"


def _source_name(ckpt: Checkpoint) -> str:
    """What the default target is named after: the file, or the folder of a many-file one."""
    return ckpt.info.get("folder") or ckpt.path
