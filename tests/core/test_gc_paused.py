"""The collector pauses are counted across threads (`core.bulk`): one ending while another still
builds leaves it off, and the last one freezes what they built (for good when a block asks)."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from ckptui.core.bulk import gc_keep, gc_paused, gc_paused_call, gc_resume


@pytest.fixture(autouse=True)
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    gc_resume()  # what the blocks froze goes back to the collector
    if was:
        gc.enable()  # a test turned it off
    else:
        gc.disable()


def test_overlapping_blocks_on_two_threads_keep_it_off_until_the_last_ends() -> None:
    started, first_done, seen = threading.Event(), threading.Event(), []

    def other() -> None:
        with gc_paused(keep_frozen=True):
            started.set()
            first_done.wait(5)
            seen.append(gc.isenabled())  # the first block has ended meanwhile
            with gc_paused():  # a block inside finds it off, leaves it off
                pass
            seen.append(gc.isenabled())

    thread = threading.Thread(target=other)
    with gc_paused():
        thread.start()
        assert started.wait(5)
    assert not gc.isenabled()  # the other thread's block still runs
    first_done.set()
    thread.join(5)
    assert seen == [False, False]
    assert gc.isenabled()


def test_the_last_block_freezes_what_was_built_and_resumes() -> None:
    before = gc.get_freeze_count()
    built = gc_paused_call(lambda: [[i] for i in range(1000)], keep_frozen=True)()
    assert len(built) == 1000 and gc.isenabled()
    assert gc.get_freeze_count() >= before + 1000


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    with gc_paused():
        pass
    assert not gc.isenabled()


def test_an_error_inside_still_resumes_it() -> None:
    with pytest.raises(ValueError), gc_paused():
        raise ValueError("worker failed")
    assert gc.isenabled()


def test_a_plain_block_leaves_nothing_frozen() -> None:
    before = gc.get_freeze_count()
    with gc_paused():
        made = [[i] for i in range(1000)]
    assert len(made) == 1000 and gc.isenabled()
    assert gc.get_freeze_count() == before


def test_a_block_left_running_by_a_closed_app_no_longer_holds_it_off() -> None:
    release = threading.Event()

    def abandoned() -> None:  # a worker thread `q` left behind, still in its block
        with gc_paused(keep_frozen=True):
            release.wait(5)

    thread = threading.Thread(target=abandoned)
    thread.start()
    while gc.isenabled():
        release.wait(0.01)
    gc_resume()  # CkptApp.on_unmount
    assert gc.isenabled()
    with gc_paused():  # a new app's workers count afresh
        assert not gc.isenabled()
        release.set()
        thread.join(5)  # the old block ends: it no longer counts
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_plain_block_after_a_kept_one_does_not_thaw_it() -> None:
    kept = gc_paused_call(lambda: [[i] for i in range(1000)], keep_frozen=True)()
    frozen = gc.get_freeze_count()
    with gc_paused():  # e.g. a core block the app runs outside its own
        made = [[i] for i in range(1000)]
    assert len(kept) == len(made) == 1000
    assert gc.get_freeze_count() >= frozen + 1000  # the app's still frozen, and these too


def test_what_the_app_keeps_stays_frozen_until_it_closes() -> None:
    kept = [[i] for i in range(1000)]
    gc_keep()  # a screen keeping its results
    with gc_paused():
        pass
    assert gc.get_freeze_count() >= len(kept)
    gc_resume()  # CkptApp.on_unmount
    assert gc.get_freeze_count() == 0
    with gc_paused():  # and later blocks leave nothing frozen again
        made = [[i] for i in range(1000)]
    assert len(made) == 1000 and gc.get_freeze_count() == 0
