"""Provides the `ckptui` command's quick ending: a command done with a large checkpoint hands it
over (`keep_for_exit`), and the console entry point (`cli.main.console`) then ends the process
with `os._exit` once the output is flushed, instead of freeing the checkpoint object by object.

A 100,000-tensor checkpoint is some 300,000 objects; freeing them one by one, then tearing
down the interpreter, took 40-100 ms of `inspect --json`'s wall time (a fifth of a 160-shard
folder's distance to its target, issue 16), and nothing is gained by it: the process is ending.
mypy ends the same way for the same reason. Only the console script does this: `main()` called
from Python (the tests, a user's script) returns normally and `keep_for_exit` keeps nothing.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, NoReturn

_armed = False
_kept: list[Any] = []


def arm() -> None:
    """Let `keep_for_exit` keep what it is given (the console entry point calls this first)."""
    global _armed
    _armed = True


def keep_for_exit(*objects: Any) -> None:
    """Hold `objects` until the process ends, when the console is armed; else do nothing, so a
    caller in a long-lived process frees them as usual."""
    if _armed:
        _kept.extend(objects)


def end(code: int) -> NoReturn:
    """Exit with `code`: through `os._exit` when a command kept something for the exit (after
    flushing stdout and stderr), else normally (the browser, errors, `--help`)."""
    if not _kept:
        sys.exit(code)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pass  # `ckptui inspect --json | head`: the reader stopped reading, not an error (main)
    except OSError:  # a full disk under a redirect: an error, as Python's own exit reports it
        code = code or 120
    with contextlib.suppress(OSError):
        sys.stderr.flush()
    os._exit(code)
