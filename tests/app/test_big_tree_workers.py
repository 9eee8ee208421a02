"""At 100,000 keys the first `s` and a cold `m` take a second or more: they run in workers and
the UI thread never waits (issue 18). The thresholds are lowered here so that a 300-key state
dict made by real torch.save stands in for a 100,000-key one; gates hold the workers so the
test can see what the screen shows meanwhile, and which thread did the work."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from ckptui.analysis import modules as mv
from ckptui.app.app import CkptApp
from ckptui.app.widgets import tree_modules, tree_sort
from ckptui.app.widgets.tree_order import Sorter, natural_key
from tests.app.test_browse import cursor_path, opened, settle

SIZE = (80, 24)
KEYS = [f"layer{i // 10}.block{i % 10}.weight" for i in range(300)]


@pytest.fixture
def big(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tree_sort, "SORT_INLINE", 50)
    monkeypatch.setattr(tree_modules, "GROUP_INLINE", 50)
    # stored in reverse natural order: sorting by name changes every row
    sd = {k: torch.zeros(1 + i % 7) for i, k in enumerate(reversed(KEYS))}
    path = tmp_path / "big.pth"
    torch.save(sd, path)
    return path


def gated(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> tuple:
    """Wrap `owner.name` so that each call records its thread and waits for the gate."""
    gate, threads = threading.Event(), []
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        threads.append(threading.current_thread())
        assert gate.wait(30), "gate never opened"
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)
    return gate, threads


async def test_first_sort_runs_in_a_worker_and_keeps_the_cursor(
    big: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with CkptApp(str(big)).run_test(size=SIZE) as pilot:
        tree = await opened(pilot)
        await pilot.press("j", "j", "j")
        await settle(pilot)
        here = cursor_path(tree)
        gate, threads = gated(monkeypatch, Sorter, "prepare")
        await pilot.press("s")
        await pilot.pause(0.1)
        # the key came back at once: rows still as stored, the worker holds the sort
        assert tree.order == "file" and len(threads) == 1
        assert threads[0] is not threading.main_thread()
        await pilot.press("j", "k")  # the UI answers meanwhile
        assert cursor_path(tree) == here
        await pilot.press("s")  # again while it sorts: no second worker
        await pilot.pause(0.1)
        assert len(threads) == 1
        gate.set()
        await settle(pilot)
        assert tree.order == "name"
        keys = [c.data.path[-1] for c in tree.root.children if c.data is not None]
        assert keys[:300] == sorted(KEYS, key=natural_key)
        assert cursor_path(tree) == here  # the cursor stayed on its key
        # the next order (size) is prepared in a worker too, then sorts
        await pilot.press("s")
        await settle(pilot)
        assert tree.order == "size" and len(threads) == 2


async def test_small_files_still_sort_at_once(tmp_path: Path) -> None:
    path = tmp_path / "small.pth"
    torch.save({"b": torch.zeros(2), "a": torch.zeros(3)}, path)
    async with CkptApp(str(path)).run_test(size=SIZE) as pilot:
        tree = await opened(pilot)
        await pilot.press("s")
        assert tree.order == "name"  # no worker, no wait


async def test_cold_module_view_groups_in_a_worker(
    big: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with CkptApp(str(big)).run_test(size=SIZE) as pilot:
        tree = await opened(pilot)
        tree._module_rows = {}  # as if the screen's worker had not run
        gate, threads = gated(monkeypatch, mv, "module_rows")
        await pilot.press("m")
        await pilot.pause(0.1)
        assert tree.module_view
        (row,) = tree.root.children
        assert row.data is None and "grouping 300 names into modules" in str(row.label)
        assert len(threads) == 1 and threads[0] is not threading.main_thread()
        await pilot.press("j", "k")  # the UI answers meanwhile
        gate.set()
        await settle(pilot)
        rows = tree.root.children
        assert [r.data.module.name for r in rows] == [f"layer{i}" for i in range(29, -1, -1)]
        await pilot.press("m", "m")  # the rows are kept: no second grouping
        await settle(pilot)
        assert len(threads) == 1 and tree.root.children[0].data.module is not None


async def test_m_before_the_screens_worker_waits_for_its_rows(
    big: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The screen groups the weights after first paint; `m` pressed meanwhile shows the
    `grouping…` line and those rows when they come, without grouping a second time."""
    gate, threads = gated(monkeypatch, mv, "module_rows")
    async with CkptApp(str(big)).run_test(size=SIZE) as pilot:
        for _ in range(200):  # the tree is shown, the screen's modules worker waits
            await pilot.pause(0.05)
            tree = pilot.app.screen.query_one("CkptTree")
            if tree.ckpt is not None and threads:
                break
        await pilot.press("m")
        await pilot.pause(0.1)
        (row,) = tree.root.children
        assert row.data is None and "grouping" in str(row.label)
        gate.set()
        await settle(pilot)
        assert len(threads) == 1  # the screen's worker only
        assert tree.root.children[0].data.module is not None
