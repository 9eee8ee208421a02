"""The export dialog as a keyboard user meets it: enter writes from wherever the focus is, and the
chosen radio button is visible without colour (issue 18)."""

from __future__ import annotations

import torch
from rich.console import Console
from textual.widgets import RadioSet

from ckptui.app.app import CkptApp
from ckptui.app.screens.export import ExportDoneScreen
from tests.app.test_browse import opened
from tests.app.test_export import finish, open_dialog


def plain(widget) -> str:
    """The widget's rendered line with no colour at all, as NO_COLOR shows it."""
    console = Console(width=80, color_system=None, record=True)
    console.print(widget.render())
    return console.export_text().strip()


async def test_enter_on_the_dtype_choice_writes_the_export(dp_ckpt, tmp_path) -> None:
    src, ck = dp_ckpt
    app = CkptApp(str(src))
    async with app.run_test(size=(80, 24)) as pilot:
        await opened(pilot)
        screen = await open_dialog(pilot)
        dtype = screen.query_one("#export-dtype", RadioSet)
        dtype.focus()
        await pilot.press("right", "space")  # bf16
        await finish(pilot)
        assert dtype.pressed_index == 1
        await pilot.press("enter")
        await finish(pilot)
        assert isinstance(app.screen, ExportDoneScreen), "enter did not write from the radio set"
    out = tmp_path / "train.weights.pth"
    sd = torch.load(out, weights_only=True)
    assert sd["conv1.weight"].dtype is torch.bfloat16
    assert torch.equal(sd["conv1.weight"], ck["model"]["module.conv1.weight"].bfloat16())


async def test_enter_in_the_strip_checkbox_writes_too(dp_ckpt, tmp_path) -> None:
    src, _ = dp_ckpt
    app = CkptApp(str(src))
    async with app.run_test(size=(80, 24)) as pilot:
        await opened(pilot)
        screen = await open_dialog(pilot)
        screen.query_one("#export-strip").focus()
        await pilot.press("enter")
        await finish(pilot)
        assert isinstance(app.screen, ExportDoneScreen)
    assert (tmp_path / "train.weights.pth").exists()


async def test_the_chosen_radio_button_shows_without_colour(dp_ckpt) -> None:
    src, _ = dp_ckpt
    app = CkptApp(str(src))
    async with app.run_test(size=(80, 24)) as pilot:
        await opened(pilot)
        screen = await open_dialog(pilot)
        keep, bf16, fp16 = screen.query_one("#export-dtype", RadioSet).query("RadioButton")
        assert "●" in plain(keep) and "●" not in plain(bf16) and "●" not in plain(fp16)
        bf16.value = True
        await pilot.pause()
        assert "●" not in plain(keep) and "●" in plain(bf16)
        tick = screen.query_one("#export-strip")
        assert tick.value and "X" in plain(tick)
        tick.value = False
        await pilot.pause()
        assert "X" not in plain(tick).replace("prefix", "")
