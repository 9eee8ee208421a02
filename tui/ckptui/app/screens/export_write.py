"""Provides ExportWriting, the export dialog's writing half (a Screen base of ExportScreen:
Textual collects `@on` handlers from Screen classes, not from plain mixins), and
ExportDoneScreen, what was written.

Export runs `export` in a thread worker, through a verified temporary file, and shows its
progress; esc while writing stops it at the next block, and `export` then removes its
temporary file, so nothing is left. ExportDoneScreen then says where the file is, how big,
and that it was verified.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, ProgressBar, Static
from textual.worker import Worker, WorkerState, get_current_worker

from ckptui.core import units
from ckptui.core.cancel import Cancelled
from ckptui.core.errors import CkptError
from ckptui.core.tree import Checkpoint
from ckptui.export import ExportError, Plan, Result, export

PROGRESS_EVERY = 0.05
"""Seconds between progress updates sent from the writing thread to the screen."""


class ExportWriting(ModalScreen[None]):
    """Writing the planned export: Export (or enter), progress, esc to stop, the outcome.

    ExportScreen, its subclass, makes `plan` from the dialog's choices and says what is wrong
    with the target (`_check_target`, `_update_button`)."""

    ckpt: Checkpoint
    plan: Plan | None
    _prefix: str
    _replace: str | None

    def __init__(self) -> None:
        super().__init__()
        self._cancel = threading.Event()
        self._writing = False

    def _check_target(self) -> None:
        raise NotImplementedError

    def _update_button(self) -> None:
        raise NotImplementedError

    @on(Button.Pressed, "#export-cancel")
    def action_cancel(self) -> None:
        """esc: close the dialog, or stop a running export (nothing is left behind)."""
        if self._writing:
            self._cancel.set()
            self.query_one("#export-note", Static).update("stopping …")
        else:
            self.dismiss(None)

    def action_enter(self) -> None:
        """enter: write the export from anywhere in the dialog (on Cancel: cancel)."""
        if self.focused is not None and self.focused.id == "export-cancel":
            self.action_cancel()
        else:
            self._go()

    @on(Button.Pressed, "#export-go")
    @on(Input.Submitted, "#export-target")
    def _go(self) -> None:
        if self._writing or self.plan is None or self.query_one("#export-go", Button).disabled:
            return
        target = str(Path(self.query_one("#export-target", Input).value.strip()).expanduser())
        exists = Path(target).exists()
        if exists and self._replace != target:
            self._replace = target  # ask first: the second press replaces
            self._check_target()
            self.query_one("#export-go", Button).focus()
            return
        self._writing = True
        self._cancel.clear()
        for widget in self.query("Checkbox, RadioSet, Input"):
            widget.disabled = True
        self._update_button()
        self.query_one("#export-cancel", Button).focus()
        self._progress_bar(max(1, 2 * self.plan.data_bytes))
        self._write(self.plan, target, exists)

    def _progress_bar(self, total: int) -> None:
        """Show the progress bar at 0 of `total`, mounting it on the first export: a hidden
        ProgressBar still costs its four widgets' styling and layout in every pass while the
        dialog opens, and its clock ticks every second."""
        bars = self.query(ProgressBar)
        if bars:
            bar = bars.first()
            bar.display = True
            bar.update(total=total, progress=0)
        else:
            bar = ProgressBar(total=total, id="export-progress", show_eta=True)
            self.query_one("#export").mount(bar, before="#export-buttons")

    @work(thread=True, exclusive=True, exit_on_error=False, group="export")
    def _write(self, plan: Plan, target: str, force: bool) -> Result:
        total = plan.data_bytes
        worker = get_current_worker()
        return export(
            plan,
            target,
            force=force,
            progress=self._reporter("writing", 0),
            verify_progress=self._reporter("verifying", total),
            # esc, or quitting (the worker is cancelled), stops a read from a URL mid-wait
            cancelled=lambda: self._cancel.is_set() or worker.is_cancelled,
        )

    def _reporter(self, phase: str, base: int):
        """A progress callback for the writing thread: checks for esc, posts throttled updates."""
        last = 0.0

        def report(done: int, total: int, name: str) -> None:
            nonlocal last
            if self._cancel.is_set():  # esc: `export` cleans up after it
                raise Cancelled
            now = time.monotonic()
            if now - last >= PROGRESS_EVERY or done >= total:
                last = now
                self.app.call_from_thread(self._progress, phase, base + done, name)

        return report

    def _progress(self, phase: str, done: int, name: str) -> None:
        self.query_one(ProgressBar).update(progress=done)
        if not self._cancel.is_set():
            shown = escape(units.printable(name))  # a tensor name from the file
            self.query_one("#export-note", Static).update(f"{phase} [b]{shown}[/]")

    @on(Worker.StateChanged)
    def _finished(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "export" or event.state not in (
            WorkerState.SUCCESS,
            WorkerState.ERROR,
        ):
            return
        self._writing = False
        if event.state is WorkerState.SUCCESS:
            result: Result = event.worker.result
            self.app.pop_screen()
            self.app.push_screen(ExportDoneScreen(result, self.ckpt.file_bytes, self.plan))
            return
        error = event.worker.error
        if isinstance(error, Cancelled):
            message = "[$warning]stopped: nothing was written[/]"
        elif isinstance(error, ExportError | CkptError):
            message = f"[b $error]{escape(units.printable(error.message))}: nothing was written[/]"
        else:
            message = f"[b $error]unexpected error: {escape(repr(error))}; nothing was written[/]"
        self.query_one(ProgressBar).display = False
        for widget in self.query("Checkbox, RadioSet, Input"):
            widget.disabled = False
        self.query_one("#export-strip", Checkbox).disabled = not self._prefix
        self._replace = None
        self._update_button()
        self.query_one("#export-note", Static).update(message)
        self.query_one("#export-go", Button).focus()


class ExportDoneScreen(ModalScreen[None]):
    """What was written: path, size, tensor count, and that it was verified."""

    BINDINGS = [
        Binding("escape,enter,q", "dismiss", "Close"),
        Binding("y", "copy_path", "Copy path"),
    ]

    def __init__(self, result: Result, source_bytes: int, plan: Plan | None) -> None:
        super().__init__()
        self.result = result
        self.source_bytes = source_bytes
        self.plan = plan

    def compose(self) -> ComposeResult:
        r = self.result
        path = str(Path(r.output).absolute())
        name = Path(r.output).name
        if r.output.endswith(".safetensors"):
            load = f"safetensors.torch.load_file({name!r})"
        else:
            load = f"torch.load({name!r}, weights_only=True)"
        change = units.size_change(self.source_bytes, r.bytes)
        rows = [
            ("Wrote", f"[b]{escape(units.printable(path))}[/]"),
            ("Size", f"{units.size(r.bytes)} · {r.tensors:,} tensors ({change})"),
            (
                "Verified",
                "every tensor was read back from the new file and matched the source bit for bit"
                if r.verified
                else "[$error]not verified[/]",
            ),
            ("Load it", escape(load)),
        ]
        if self.plan is not None and self.plan.strip_prefix:
            rows.insert(2, ("Names", f"stripped {escape(repr(self.plan.strip_prefix))}"))
        if r.bytes_read is not None:  # a source at a URL: what crossed the network
            fetched = f"{units.size(r.bytes_read)} of the {units.size(self.source_bytes)} source"
            rows.insert(2, ("Fetched", fetched))
        with Vertical(id="export-done") as box:
            box.border_title = "✓ Exported"
            for i, (label, text) in enumerate(rows):
                with Horizontal(classes="export-row", id="export-first" if i == 0 else None):
                    yield Label(label, classes="export-label")
                    yield Static(text)
            yield Static("enter closes · y copies the path", id="export-done-keys")

    def action_copy_path(self) -> None:
        """y: copy the written file's path."""
        path = str(Path(self.result.output).absolute())
        self.app.copy_to_clipboard(path)
        self.notify(f"copied {units.printable(path)}", timeout=3, markup=False)  # not markup
