"""Provides `collector_paused`: the cyclic GC off while any of the app's workers builds results.

`core.bulk.gc_paused` turns the collector off for one block and puts back what it found,
process-wide. Two such blocks overlapping on two of the app's threads undo each other: the
first to end turns the collector back on while the other is still building (the module rows
and the training facts start together once a file is open; a new export plan replaces a
running one), and the collections that follow walk what the other is building, holding the
GIL: 0.1-0.3 s each on a 100,000-key state dict, UI-thread stalls that `bench_ui.py --only
scale` named (`Stalls.worst_where`), some of them paid by the UI thread itself.

Here the app's workers are counted: the collector is off from the first one's start to the
last one's end, and the core's blocks inside them find it off and leave it so. What they built
is then frozen out of the collector's generations (it lives as long as the screen that asked
for it), so no later collection, on whichever thread, walks it.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_running = 0
"""Blocks running now, on any thread."""
_resume = False
"""Whether the collector was on when the first of them started."""
_epoch = 0
"""Bumped by `resume_collector`: blocks started before it no longer count when they end."""


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic collector off until every block started meanwhile (on any thread) is done;
    then what they built is frozen and the collector resumes as it was."""
    global _running, _resume
    with _lock:
        if _running == 0:
            _resume = gc.isenabled()
            gc.disable()
        _running += 1
        epoch = _epoch
    try:
        yield
    finally:
        with _lock:
            if epoch == _epoch:
                _running -= 1
                if _running == 0:
                    gc.freeze()
                    if _resume:
                        gc.enable()


def resume_collector() -> None:
    """The app is closing: blocks still running on threads it abandoned (`q` during a long
    analysis, `interruptible`) no longer keep the collector off for the rest of the process."""
    global _running, _epoch
    with _lock:
        if _running:
            _running = 0
            _epoch += 1
            if _resume:
                gc.enable()


def paused(fn: Callable[[], T]) -> Callable[[], T]:
    """`fn`, to be run in a worker inside `collector_paused`."""

    def run() -> T:
        with collector_paused():
            return fn()

    return run
