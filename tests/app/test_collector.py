"""The app's workers pause the cyclic collector together (`app.collector`): one ending while
another still builds leaves it off, and the last one freezes what they built."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from ckptui.app.collector import collector_paused, paused
from ckptui.core.bulk import gc_paused


@pytest.fixture(autouse=True)
def collector_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    gc.unfreeze()  # what the blocks froze goes back to the collector
    if not was:
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
