"""Provides the compare screen's value comparisons: `stream_values` and its `ValuesArrived` batches.

`stream_values` runs in the screen's thread workers (`v` for one tensor, `a` for all): it reads
both files through the core's `iter_values` and posts what it finds in batches every
`FLUSH_EVERY` seconds, so that a comparison of thousands of small tensors does not flood the UI
with one message each. The screen applies the batches to the rows and moves the progress bars.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from textual.message import Message

from ckptui.analysis.diff.values import ValueResult, iter_values
from ckptui.app.widgets.diff_rows import Row
from ckptui.core.cancel import Cancelled
from ckptui.core.errors import CkptError
from ckptui.core.tree import Checkpoint

FLUSH_EVERY = 0.1
"""Seconds between batches of value results (and progress) sent to the UI."""


class ValuesArrived(Message):
    """A batch of value results (and progress) from a comparing worker."""

    def __init__(
        self,
        group: str,
        results: list[tuple[Row, float | None, str | None, float | None]],
        done: int,
        total: int,
        finished: bool = False,
        error: str | None = None,
    ) -> None:
        super().__init__()
        self.group = group
        """`one` (v) or `all` (a)."""
        self.results = results
        self.done = done
        """Bytes read so far, both files together."""
        self.total = total
        self.finished = finished
        """The last message of the worker (done, cancelled or failed)."""
        self.error = error


def stream_values(
    a: Checkpoint,
    b: Checkpoint,
    rows: list[Row],
    group: str,
    post: Callable[[Message], object],
    cancelled: Callable[[], bool],
) -> None:
    """Compare the values of `rows`, posting results in batches (run in a worker thread).

    Args:
        a: File A, opened.
        b: File B, opened.
        rows: Comparable leaves of the merged tree.
        group: The worker's group, `one` or `all`, passed on in every batch.
        post: Sends a batch to the screen (`post_message`: safe from a thread).
        cancelled: True once the worker is cancelled; results so far are still sent.
    """
    by_path = {r.path: r for r in rows}
    pairs = [(r.path, r.a, r.b) for r in rows]
    pending: list[tuple[Row, float | None, str | None, float | None]] = []
    state = {"done": 0, "total": 0, "at": 0.0}

    def flush(force: bool = False, **extra: Any) -> None:
        now = time.monotonic()
        if not force and now - state["at"] < FLUSH_EVERY:
            return
        state["at"] = now
        batch = pending[:]
        pending.clear()
        post(ValuesArrived(group, batch, state["done"], state["total"], **extra))

    def progress(done: int, total: int) -> None:
        state["done"], state["total"] = done, total
        flush()

    try:
        result: ValueResult
        for result in iter_values(a, b, pairs, progress, cancelled):
            p, m, why, rel = result
            pending.append((by_path[p], m, why, rel))
            flush()
    except Cancelled:
        flush(True, finished=True)
        return
    except CkptError as e:
        flush(True, finished=True, error=f"ckptui: {e.path}: {e.message}")
        return
    flush(True, finished=True)
