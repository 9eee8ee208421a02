"""Keys pressed while a big file still opens (issue 16: 100,000 tensors take seconds): each
says that the file is still opening, and what it asked for runs once the tree is shown.

Real `torch.save` checkpoints; the open is held by the test (as test_open_progress does).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from ckptui.app.app import CkptApp
from ckptui.app.open_progress import OpenProgress
from ckptui.app.screens.browse import BrowseScreen
from ckptui.app.screens.export import ExportScreen
from ckptui.app.screens.why import WhyScreen
from ckptui.app.widgets.ckpt_tree import CkptTree
from ckptui.app.widgets.filter_bar import FilterBar
from tests.app.test_browse import opened, text_of

SIZE = (100, 30)


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Every open waits until the test sets the event."""
    release = threading.Event()
    real = OpenProgress.open

    def slow_open(self: OpenProgress):
        release.wait(10)
        return real(self)

    monkeypatch.setattr(OpenProgress, "open", slow_open)
    yield release
    release.set()


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "run.pth"
    sd = {f"layer{i}.weight": torch.randn(4, 4) for i in range(3)}
    sd |= {"head.bias": torch.zeros(4)}
    torch.save({"model": sd, "step": 7}, path)
    return path


def notices(app: CkptApp) -> list[str]:
    return [n.message for n in app._notifications]


async def until_why_screen(app: CkptApp, pilot: Any) -> None:
    """Wait (5 s at most) for the size breakdown a key pressed during the open asked for."""
    for _ in range(50):
        await app.workers.wait_for_complete()
        await pilot.pause(0.05)
        if isinstance(app.screen, WhyScreen):
            break
    assert isinstance(app.screen, WhyScreen)


async def test_x_while_opening_says_so_then_opens_the_dialog(
    ckpt: Path, held: threading.Event
) -> None:
    app = CkptApp(str(ckpt))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.1)
        await pilot.press("x")
        await pilot.pause()
        assert isinstance(app.screen, BrowseScreen)
        assert notices(app) == [
            f"still opening {ckpt} · the export dialog opens once it is open (esc: forget it)"
        ]
        held.set()
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert isinstance(app.screen, ExportScreen)
        assert app.screen.marks == []


async def test_keys_pressed_twice_run_once_in_the_order_pressed(
    ckpt: Path, held: threading.Event
) -> None:
    app = CkptApp(str(ckpt))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.1)
        for key in "mmw":
            await pilot.press(key)
        await pilot.pause()
        assert len(notices(app)) == 3
        assert "the module view shows once it is open" in notices(app)[0]
        assert "the size breakdown shows once it is open" in notices(app)[2]
        held.set()
        await until_why_screen(app, pilot)
        await pilot.press("escape")
        await pilot.pause()
        tree = app.screen.query_one(CkptTree)
        assert tree.module_view  # toggled once, not twice


async def test_esc_while_opening_forgets_the_keys(ckpt: Path, held: threading.Event) -> None:
    app = CkptApp(str(ckpt))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.1)
        await pilot.press("w", "s", "escape")
        await pilot.pause()
        assert notices(app)[-1] == "never mind: nothing runs once it is open"
        held.set()
        tree = await opened(pilot)
        await pilot.pause(0.2)
        assert isinstance(app.screen, BrowseScreen)
        assert tree.order == "file"


async def test_a_filter_typed_while_opening_is_searched_once_open(
    ckpt: Path, held: threading.Event
) -> None:
    app = CkptApp(str(ckpt))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.1)
        await pilot.press("slash", *"layer")
        await pilot.pause(0.3)  # past the debounce: nothing to search yet
        bar = app.screen.query_one(FilterBar)
        assert bar.value == "layer" and bar.display
        assert text_of(app, "#filter-count").strip() == "opening …"
        held.set()
        await opened(pilot)
        await pilot.pause(0.1)
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.focused is bar  # the typing goes on in the bar, not in the tree
        assert text_of(app, "#filter-count").strip() == "3 matches"
        assert app.screen.query_one(CkptTree).filtered


async def test_a_filter_submitted_while_opening_applies_once_open(
    ckpt: Path, held: threading.Event
) -> None:
    app = CkptApp(str(ckpt))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.1)
        await pilot.press("slash", *"bias", "enter")
        await pilot.pause()
        bar = app.screen.query_one(FilterBar)
        assert bar.display and bar.value == "bias"  # kept, not cleared
        assert "the filter applies once it is open" in notices(app)[-1]
        held.set()
        tree = await opened(pilot)
        await pilot.pause()
        assert tree.filtered and tree.matches == [("model", "head.bias")]
        assert not bar.display and app.focused is tree


async def test_keys_with_nothing_to_act_on_say_why(ckpt: Path, held: threading.Event) -> None:
    app = CkptApp(str(ckpt))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.1)
        await pilot.press("y", "space", "v")
        await pilot.pause()
        assert notices(app) == [
            f"still opening {ckpt} · nothing to copy yet",
            f"still opening {ckpt} · nothing to mark yet",
            f"still opening {ckpt} · no tensor to read yet",
        ]
        held.set()
        tree = await opened(pilot)
        assert tree.marks == {} and len(notices(app)) == 3


async def test_the_notice_escapes_a_hostile_file_name(
    tmp_path: Path, held: threading.Event
) -> None:
    path = tmp_path / "run\x1b[31m[b].pth"
    torch.save({"w": torch.zeros(2)}, path)
    app = CkptApp(str(path))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.1)
        await pilot.press("w")
        await pilot.pause()
        note = list(app._notifications)[-1]
        assert note.message.startswith(f"still opening {tmp_path}/run\\x1b[31m[b].pth · ")
        assert "\x1b" not in note.message and note.markup is False
        held.set()
        await until_why_screen(app, pilot)
