"""Provides the `ckptui` command: `ckptui PATH`, `ckptui A B` (compare), `ckptui inspect PATH
[--json]`, `ckptui --demo`.

Exit codes (DESIGN.md): 0 success, 1 the command ran and found a problem it reports
(`--fail-on-unsafe`), 2 bad input or usage, always as one line `ckptui: <path>: <what is wrong>`
(`--debug` shows the traceback). rich is imported only to render human output; `--json` needs
neither rich nor Textual, so scripts pay only for reading the file.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from ckptui.cli import ending
from ckptui.core.errors import CkptError


def console() -> None:
    """The `ckptui` console script (and `python -m ckptui`): `main`, then the quick ending of
    `cli.ending` for a command that kept its checkpoint for the exit."""
    ending.arm()
    ending.end(main())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args_list
    try:
        return _run(args_list)
    except CkptError as e:
        if debug:
            import traceback  # deferred: only --debug prints one (6 ms of every start)

            traceback.print_exc()
        print(f"ckptui: {e.path}: {e.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ckptui: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def _run(args_list: list[str]) -> int:
    """The subcommand named first, else the browser.

    Each subcommand's module is imported when it runs (deferred on purpose): `ckptui f.pth`
    starts the browser without loading the export, diff or report code, and `inspect --json`
    without the browser.
    """
    command = args_list[0] if args_list else None
    rest = args_list[1:]
    if command == "inspect":
        from ckptui.cli import inspect_cmd

        return inspect_cmd.run(inspect_cmd.parser().parse_args(rest))
    if command == "why":
        from ckptui.cli import why_cmd

        return why_cmd.run(why_cmd.parser().parse_args(rest))
    if command == "export":
        from ckptui.cli import export_cmd

        with _terminated_as_interrupt():
            return export_cmd.run(export_cmd.parser().parse_args(rest))
    if command == "diff":
        from ckptui.cli import diff_cmd

        return diff_cmd.run(diff_cmd.parser().parse_args(rest))
    from ckptui.cli import browse_cmd

    return browse_cmd.run(browse_cmd.parser().parse_args(args_list))


@contextlib.contextmanager
def _terminated_as_interrupt() -> Iterator[None]:
    """SIGTERM, SIGHUP and SIGQUIT (a job scheduler's timeout, a closed SSH session, Ctrl-\\)
    raise KeyboardInterrupt while an export runs, so its temp file is removed as on Ctrl-C instead of
    being left beside the target."""

    def interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    wanted = [getattr(signal, n) for n in ("SIGTERM", "SIGHUP", "SIGQUIT") if hasattr(signal, n)]
    if threading.current_thread() is not threading.main_thread():
        wanted = []  # only the main thread may set handlers (an embedding caller's thread)
    old = {sig: signal.signal(sig, interrupt) for sig in wanted}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    raise SystemExit(main())
