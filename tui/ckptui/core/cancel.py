"""Provides `Cancelled` and `interruptible`: how a long task stops when the user asks it to.

Every long worker (value statistics, value comparison, the duplicate search, an export's remote
reads) takes a `cancelled()` callback and raises `Cancelled` when it returns True, so that `q`
and `esc` act within a fraction of a second. A wait that cannot poll (a stalled network read)
is made `interruptible`. Stdlib only: every layer above uses it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

T = TypeVar("T")


class Cancelled(Exception):
    """A long task stopped because its `cancelled` callback returned True (the user pressed
    `esc` or `q`): value reads, comparisons, the duplicate search, remote waits."""


def interruptible(fn: Callable[[], T], cancelled: Callable[[], bool] | None) -> T:
    """`fn()`, run on a daemon thread while this one polls `cancelled()` every 0.1 s.

    A network read can stall for up to the back-end's timeout, and a worker blocked in one
    would hold the app open after `q` (the executor joins its threads at exit). Cancelled, this
    returns at once by raising `Cancelled`; the abandoned read finishes, or dies with the
    process, on its own thread, whose result is dropped.
    """
    if cancelled is None:
        return fn()
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the waiting thread
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=run, name="ckptui-read", daemon=True).start()
    while not done.wait(0.1):
        if cancelled():
            raise Cancelled("cancelled")
    if "error" in box:
        raise box["error"]
    return cast(T, box["value"])
