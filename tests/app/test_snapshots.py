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
    # the module view (m): model > module > its layers, each with parameters, bytes, dtypes
    "modules_80x24": (["j", "m", "l", "j", "l", "j", "j", "j", "l"], (80, 24)),
    "modules": (["j", "m", "l", "j", "l", "j", "j", "j", "l"], (110, 32)),
    # the root card zoomed (z): the model's parameter count, the resume card
    "root_80x24": (["z"], (80, 24)),
    # a tensor's card zoomed (z): values and the histogram fit 80x24
    "zoom_80x24": (["j", "l", "j", "z"], (80, 24)),
    # the optimizer card zoomed (z): kind, step, parameters, state bytes, each group's lr, betas...
    "optimizer_80x24": (["j", "j", "z"], (80, 24)),
}
"""Named scenes: keys pressed after the file opens, and the terminal size. The README's
screenshots are made from the same scenes (tests/make_screenshots.py)."""


@pytest.mark.parametrize("scene", list(SCENES))
def test_scene(snap_compare, scene: str) -> None:
    keys, size = SCENES[scene]
    assert snap_compare(CkptApp(DEMO), terminal_size=size, run_before=keys_then_settle(keys))


COMPARE_SCENES: dict[str, tuple[list[str], tuple[int, int]]] = {
    # `ckptui demo weights.pth`: every value compared (a), then only the differences (d)
    "compare": (["a", "d"], (110, 32)),
    "compare_80x24": (["a", "d"], (80, 24)),
}
"""Scenes of the compare screen: the demo against `demo_pair`'s exported, edited weights."""

PENDING_SCENES: dict[str, tuple[list[str], tuple[int, int]]] = {
    # values not compared (as for files too big, or at a URL): `?`, never `=`
    "compare_pending_80x24": (["j", "j"], (80, 24)),
}
"""Compare scenes with the automatic value comparison off (`no_auto_compare`)."""


def no_auto_compare() -> None:
    """Compare values only on v / a, as for a pair over the budget or at a URL."""
    from ckptui.app.screens import compare

    compare.AUTO_COMPARE_BYTES = -1


def make_demo_pair(folder: Path) -> tuple[str, str]:
    """The demo and its model's weights as a bare state dict (the `module.` prefix dropped),
    with one of each difference, side by side in `folder`; returns their names there."""
    import torch

    # ckptui's own shipped file, loaded only to derive the variant
    model = torch.load(DEMO_DIR / DEMO, weights_only=False)["model"]
    sd = {k.removeprefix("module."): v.clone() for k, v in model.items()}
    del sd["fc.bias"]  # only in A
    sd["fc.weight"] = torch.zeros(12, 32)  # shape
    sd["layer3.1.conv2.weight"] = sd["layer3.1.conv2.weight"].half()  # dtype
    sd["layer1.0.conv1.weight"][0, 0, 0, 0] += 0.25  # values
    sd["head.weight"] = torch.ones(4)  # only in B
    (folder / DEMO).symlink_to(DEMO_DIR / DEMO)
    torch.save(sd, folder / "weights.pth")
    return DEMO, "weights.pth"


@pytest.fixture
def demo_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """`make_demo_pair` in a temporary folder, opened by name from there."""
    pair = make_demo_pair(tmp_path)
    monkeypatch.chdir(tmp_path)
    return pair


@pytest.mark.parametrize("scene", list(COMPARE_SCENES))
def test_compare_scene(snap_compare, demo_pair: tuple[str, str], scene: str) -> None:
    keys, size = COMPARE_SCENES[scene]
    app = CkptApp(*demo_pair)
    assert snap_compare(app, terminal_size=size, run_before=keys_then_settle(keys))


@pytest.mark.parametrize("scene", list(PENDING_SCENES))
def test_pending_scene(
    snap_compare, demo_pair: tuple[str, str], scene: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ckptui.app.screens import compare

    monkeypatch.setattr(compare, "AUTO_COMPARE_BYTES", compare.AUTO_COMPARE_BYTES)
    no_auto_compare()
    keys, size = PENDING_SCENES[scene]
    app = CkptApp(*demo_pair)
    assert snap_compare(app, terminal_size=size, run_before=keys_then_settle(keys))


REMOTE_SCENES: dict[str, tuple[list[str], tuple[int, int]]] = {
    # the demo at a URL: the header says what opening it read; the tensor's values are fetched
    "remote_80x24": (["j", "l", "j"], (80, 24)),
}
REMOTE_DEMO = f"memory://runs/{DEMO}"
"""The demo in fsspec's in-memory file system: a URL read by range requests like any other,
with no server whose port would change the header."""


def put_remote_demo() -> str:
    """Copy the demo to `REMOTE_DEMO`; returns that URL."""
    import fsspec

    fsspec.filesystem("memory").pipe(
        REMOTE_DEMO.removeprefix("memory:/"), (DEMO_DIR / DEMO).read_bytes()
    )
    return REMOTE_DEMO


@pytest.fixture
def remote_demo():
    url = put_remote_demo()
    yield url
    import fsspec

    fsspec.filesystem("memory").rm(url.removeprefix("memory:/"))


@pytest.mark.parametrize("scene", list(REMOTE_SCENES))
def test_remote_scene(snap_compare, remote_demo: str, scene: str) -> None:
    keys, size = REMOTE_SCENES[scene]
    app = CkptApp(remote_demo)
    assert snap_compare(app, terminal_size=size, run_before=keys_then_settle(keys))
