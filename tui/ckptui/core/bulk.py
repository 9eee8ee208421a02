"""Provides `gc_paused`: the cyclic garbage collector off while many small objects are built.

Opening a 100,000-tensor checkpoint or breaking it down builds millions of small objects that
form no cycles. Each collection the allocations trigger walks every object still alive, so
their cost grows with the work done so far, and a full one runs on whichever thread allocates,
holding the GIL: the browser's UI thread stalled for seconds while a worker broke down such a
file (issue 16). Reference counting still frees everything at once; collection resumes after.

The pause is process-wide, so blocks are counted across threads: the collector is off from the
first block's start to the last one's end. Counted per block, two overlapping on two threads
(the browser's module rows and training facts start together once a file is open) undid each
other: the first to end turned the collector back on while the other still built, and the
collections that followed walked what it was building, 0.1-0.3 s each while holding the GIL.

On the last block's way out, what was built is handed to the collector's permanent or oldest
generation (`gc.freeze`, then `gc.unfreeze` unless a block asked to `keep_frozen`): re-enabled
as they were, the first allocation after the block ran a young collection over every object the
block made (0.09 s after opening a 100,000-tensor zip, 0.05 s after building its tree). In the
oldest generation they are still collected by the full collections, which stay as rare as
before; that suits a command that ends. The browser runs for hours, and one full collection
walking a 100,000-key tree was its UI thread's longest stall (157-184 ms, `bench_ui.py --only
scale`): its workers keep what they built frozen, for good. What it built is freed by
reference counting when it goes; a cycle made then is never collected, which is why only the
app asks for it, for work that builds trees (and `gc_keep` for the results its screens keep).
Once something is frozen for good, every later group keeps what it built frozen too:
`gc.unfreeze` would thaw it all, the app's trees with the rest. `gc_resume`, when the app
closes, hands everything back to the collector.
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
_keep = False
"""Whether a block running since then asked to keep what was built frozen."""
_epoch = 0
"""Bumped by `gc_resume`: blocks started before it no longer count when they end."""
_kept = False
"""Whether something was frozen for good (`keep_frozen`, `gc_keep`) since the last `gc_resume`.
A flag, not `gc.get_freeze_count()`, which walks the whole permanent generation per call."""


@contextmanager
def gc_paused(keep_frozen: bool = False) -> Iterator[None]:
    """The cyclic collector off until every block started meanwhile (on any thread) is done,
    then back as the first found it; a collector found off stays off (module docstring)."""
    global _running, _resume, _keep
    with _lock:
        if _running == 0:
            _resume = gc.isenabled()
            # `gc.unfreeze` thaws everything frozen, not only this group's: what the app froze
            # before (its tree, its breakdown) must stay so, so this group keeps its own too
            _keep = _kept
            gc.disable()
        _running += 1
        _keep = _keep or keep_frozen
        epoch = _epoch
    try:
        yield
    finally:
        with _lock:
            if epoch == _epoch:
                _running -= 1
                if _running == 0 and _resume:
                    _freeze(_keep)
                    gc.enable()


def _freeze(for_good: bool) -> None:
    global _kept
    gc.freeze()  # every tracked object to the permanent generation
    if for_good:
        _kept = True
    else:
        gc.unfreeze()  # ... and from there to the oldest one


def gc_keep() -> None:
    """Freeze every object alive now for good (the app, for results it keeps while it runs:
    out of the collector's generations, no full collection walks them holding the GIL)."""
    with _lock:
        _freeze(True)


def gc_resume() -> None:
    """The app is closing: what it froze for good goes back to the collector, and blocks still
    running (on threads it abandoned: `q` during a long analysis) no longer count when they
    end, so they cannot keep the collector off for the rest of the process."""
    global _running, _epoch, _kept
    with _lock:
        if _kept:
            gc.unfreeze()
            _kept = False
        if _running:
            _running = 0
            _epoch += 1
            if _resume:
                gc.enable()


def gc_paused_call(fn: Callable[[], T], keep_frozen: bool = False) -> Callable[[], T]:
    """`fn`, run inside `gc_paused(keep_frozen)` (for a worker's thread)."""

    def run() -> T:
        with gc_paused(keep_frozen):
            return fn()

    return run
