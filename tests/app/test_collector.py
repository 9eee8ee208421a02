"""The app's workers pause the cyclic collector together (`app.collector`): one ending while
another still builds leaves it off, and the last one freezes what they built."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from ckptui.app.collector import collector_paused, paused, resume_collector
from ckptui.core.bulk import gc_paused


@pytest.fixture(autouse=True)
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if was:  # as it was, whatever the test left (one of them turns it off)
        gc.enable()
    else:
        gc.disable()


def test_overlapping_blocks_on_two_threads_keep_it_off_until_the_last_ends() -> None:
    started, first_done, seen = threading.Event(), threading.Event(), []

    def other() -> None:
        with collector_paused():
            started.set()
            first_done.wait(5)
            seen.append(gc.isenabled())  # the first block has ended meanwhile
            with gc_paused():  # the core's own block inside finds it off, leaves it off
                pass
            seen.append(gc.isenabled())

    thread = threading.Thread(target=other)
    with collector_paused():
        thread.start()
        assert started.wait(5)
    assert not gc.isenabled()  # the other thread's block still runs
    first_done.set()
    thread.join(5)
    assert seen == [False, False]
    assert gc.isenabled()


def test_the_last_block_freezes_what_was_built_and_resumes() -> None:
    before = gc.get_freeze_count()
    built = paused(lambda: [[i] for i in range(1000)])()
    assert len(built) == 1000 and gc.isenabled()
    assert gc.get_freeze_count() >= before + 1000


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    with collector_paused():
        pass
    assert not gc.isenabled()


def test_an_error_inside_still_resumes_it() -> None:
    with pytest.raises(ValueError), collector_paused():
        raise ValueError("worker failed")
    assert gc.isenabled()


def test_a_block_left_running_by_a_closed_app_no_longer_holds_it_off() -> None:
    release = threading.Event()

    def abandoned() -> None:  # a worker thread `q` left behind, still in its block
        with collector_paused():
            release.wait(5)

    thread = threading.Thread(target=abandoned)
    thread.start()
    while gc.isenabled():
        release.wait(0.01)
    resume_collector()  # CkptApp.on_unmount
    assert gc.isenabled()
    with collector_paused():  # a new app's workers count afresh
        assert not gc.isenabled()
        release.set()
        thread.join(5)  # the old block ends: it no longer counts
        assert not gc.isenabled()
    assert gc.isenabled()
