"""The export dialog's default target: the root panel's `ckptui export ... -o` name for the
detected weights, and .safetensors for a folder of safetensors shards (issue 18)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from textual.widgets import Input, RadioSet

from ckptui.analysis.training.weights_only import weights_only_report
from ckptui.app.app import CkptApp
from ckptui.formats import open_checkpoint
from tests.app.test_browse import opened
from tests.app.test_export import finish, open_dialog
from tests.conftest import TinyNet


async def test_default_name_matches_the_panel_and_safetensors_folders_export_safetensors(
    tmp_path: Path,
) -> None:
    """The dialog's default target is the root panel's `ckptui export ... -o` name; a folder of
    safetensors shards defaults to .safetensors (what its users load it with)."""
    src = tmp_path / "args.pth"
    torch.save({"model": TinyNet().state_dict(), "args": argparse.Namespace(lr=0.1)}, src)
    command = weights_only_report(open_checkpoint(str(src))).export_command
    app = CkptApp(str(src))
    async with app.run_test(size=(100, 32)) as pilot:
        await opened(pilot)
        screen = await open_dialog(pilot)
        target = screen.query_one("#export-target", Input).value
        assert command is not None and command.endswith(f" -o {target}")

    folder = tmp_path / "hf"
    folder.mkdir()
    save_file({"a.weight": torch.zeros(4, 4)}, folder / "model-00001-of-00002.safetensors")
    save_file({"b.weight": torch.zeros(4)}, folder / "model-00002-of-00002.safetensors")
    weight_map = {
        "a.weight": "model-00001-of-00002.safetensors",
        "b.weight": "model-00002-of-00002.safetensors",
    }
    index = {"metadata": {"total_size": 80}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    app = CkptApp(str(folder))
    async with app.run_test(size=(100, 32)) as pilot:
        await opened(pilot)
        screen = await open_dialog(pilot)
        assert screen.query_one("#export-target", Input).value == f"{folder}.weights.safetensors"
        assert screen.query_one("#export-format", RadioSet).pressed_index == 1
        await finish(pilot)
        assert screen.plan.format == "safetensors"


async def test_a_source_named_with_a_terminal_escape_shows_it_as_a_symbol(
    tmp_path: Path,
) -> None:
    """A source named `run\x1b[31m.pth`: the target Input drew the raw ESC (the dialog turned
    red); it draws a control picture in its place, its value stays the real name, and the
    export writes that name."""
    src = tmp_path / "run\x1b[31m.pth"
    torch.save({"model": TinyNet().state_dict()}, src)
    app = CkptApp(str(src))
    async with app.run_test(size=(100, 32)) as pilot:
        await opened(pilot)
        screen = await open_dialog(pilot)
        box = screen.query_one("#export-target", Input)
        assert box.value == f"{tmp_path}/run\x1b[31m.weights.pth"  # the real name
        drawn = box.render_line(0).text
        assert "\x1b" not in drawn
        assert "run␛[31m" in drawn, drawn  # (the box is narrower than the path)
        assert f"{tmp_path}/run␛[31m.weights.pth".startswith(drawn.strip())
        box.focus()
        await pilot.press("end", "left", "left", "left", "left")  # on the `.` of `.pth`
        assert box._cursor_offset == len(f"{tmp_path}/run␛[31m.weights")
        await pilot.press("enter")
        await finish(pilot)
    assert torch.load(box.value, weights_only=True).keys() == TinyNet().state_dict().keys()
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name, "run\x1b[31m.weights.pth"]
