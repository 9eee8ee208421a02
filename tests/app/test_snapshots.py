"""How the browser looks: SVG snapshots of the demo checkpoint (pytest-textual-snapshot).

Update them only after reading the report: `pytest tests/app/test_snapshots.py --snapshot-update`.
The demo is opened by a path relative to its own folder so the header is the same on every
machine.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from ckptui.app.app import CkptApp

DEMO_DIR = Path(__file__).resolve().parents[2] / "tui" / "ckptui" / "data"
DEMO = "demo_ckpt_0099999.pth"


@pytest.fixture(autouse=True)
def _in_demo_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(DEMO_DIR)


def keys_then_settle(keys: Iterable[str]):
    """A run_before that waits for the file, presses `keys`, and waits for values workers."""

    async def run(pilot) -> None:
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        for key in keys:
            await pilot.press(key)
            await pilot.pause()
        await pilot.pause(0.25)  # the panel is throttled while keys come fast
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()

    return run


SCENES: dict[str, tuple[list[str], tuple[int, int]]] = {
    "main": ([], (110, 32)),
    # model -> expand -> module.conv1.weight, with its values and histogram
    "tensor": (["j", "l", "j"], (110, 32)),
    "filter": (["slash", *"layer2.0.downsample", "enter"], (110, 32)),
    "help": (["question_mark"], (110, 32)),
    "narrow_80x24": (["j", "l", "j"], (80, 24)),
    # the size breakdown (w), after its duplicate search
    "why": (["w"], (110, 32)),
    "why_80x24": (["w", "tab"], (80, 24)),
    # model marked with space, then the export dialog (x)
    "export": (["j", "space", "x"], (110, 32)),
    "export_80x24": (["j", "space", "x"], (80, 24)),
}
"""Named scenes: keys pressed after the file opens, and the terminal size. The README's
screenshots are made from the same scenes (tests/make_screenshots.py)."""


@pytest.mark.parametrize("scene", list(SCENES))
def test_scene(snap_compare, scene: str) -> None:
    keys, size = SCENES[scene]
    assert snap_compare(CkptApp(DEMO), terminal_size=size, run_before=keys_then_settle(keys))
