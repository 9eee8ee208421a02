"""`q` ends the app at once while a long worker runs (issue 18).

A thread worker that never looks at its cancellation keeps the process alive after the screen
is gone: at exit the executor joins its (non-daemon) threads, so the terminal is back but the
process lives on. Each slow core call here is made slower than any test could wait; after `q` no
non-daemon thread may still be inside it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
import torch

from ckptui.app.app import CkptApp

STALL = 20.0
"""Longer than the test would ever wait."""


class Stall:
    """A core call that takes STALL seconds, remembering the threads that made it."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.entered = threading.Event()

    def __call__(self, *_args, **_kwargs):
        self.threads.append(threading.current_thread())
        self.entered.set()
        time.sleep(STALL)
        raise RuntimeError("stalled call finished")

    def holding_the_process(self) -> list[threading.Thread]:
        """Threads still in the call that the interpreter would wait for at exit."""
        return [t for t in self.threads if t.is_alive() and not t.daemon]


@pytest.fixture
def small(tmp_path: Path) -> Path:
    p = tmp_path / "small.pth"
    torch.save({"model": {"w": torch.zeros(4)}, "step": 3}, p)
    return p


async def _wait_entered(pilot, stall: Stall) -> None:
    for _ in range(200):
        if stall.entered.is_set():
            return
        await pilot.pause(0.01)
    raise AssertionError("the slow call never started")


async def _quit(pilot, stall: Stall) -> float:
    """Press q, wait until the worker thread left the call (or 1 s); the seconds that took."""
    start = time.monotonic()
    await pilot.press("q")
    while stall.holding_the_process() and time.monotonic() - start < 1:
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def test_q_ends_the_size_breakdown_at_once(small: Path, monkeypatch) -> None:
    from ckptui.app.screens import why

    stall = Stall()
    monkeypatch.setattr(why, "breakdown_of", stall)
    app = CkptApp(str(small))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.app.workers.wait_for_complete()
        await pilot.press("w")
        await _wait_entered(pilot, stall)
        took = await _quit(pilot, stall)
    assert not stall.holding_the_process()
    assert took < 1.0, f"q took {took:.2f} s with the breakdown running"


async def test_q_ends_the_training_facts_at_once(small: Path, monkeypatch) -> None:
    from ckptui.analysis.training import facts as training

    stall = Stall()
    monkeypatch.setattr(training, "training_facts", stall)
    app = CkptApp(str(small))
    async with app.run_test(size=(80, 24)) as pilot:
        await _wait_entered(pilot, stall)
        took = await _quit(pilot, stall)
    assert not stall.holding_the_process()
    assert took < 1.0, f"q took {took:.2f} s with the training facts running"


async def test_q_ends_the_compare_screen_while_it_opens(small: Path, monkeypatch) -> None:
    from ckptui.app.screens import compare

    stall = Stall()
    real = compare.open_checkpoint
    monkeypatch.setattr(compare, "open_checkpoint", lambda p: stall() if "b.pth" in p else real(p))
    app = CkptApp(str(small), str(small.with_name("b.pth")))
    async with app.run_test(size=(80, 24)) as pilot:
        await _wait_entered(pilot, stall)
        took = await _quit(pilot, stall)
    assert not stall.holding_the_process()
    assert took < 1.0, f"q took {took:.2f} s with the files opening"
