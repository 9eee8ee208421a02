"""The export flow in the app: space marks, x opens the dialog, enter writes a verified copy.

Driven with keys on real checkpoints made in the test; the written files are loaded back with
the real loaders (`torch.load(weights_only=True)`, `safetensors`, `load_state_dict(strict)`).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from textual.content import Content
from textual.widgets import Button, Checkbox, Input, ProgressBar, RadioSet, Static
from textual.worker import WorkerFailed

from ckptui.app.app import CkptApp
from ckptui.app.screens.export import ExportDoneScreen, ExportScreen
from ckptui.app.widgets.ckpt_tree import CkptTree
from ckptui.core import units
from ckptui.export import make_plan
from ckptui.formats import open_checkpoint
from ckptui.tensors import reader as source_mod
from tests.app.test_browse import cursor_path, opened, text_of
from tests.conftest import TinyNet, digest
from tests.core.test_dcp import sharded_dcp, sharded_truth  # noqa: F401  (2-rank DTensors)


def files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


async def open_dialog(pilot) -> ExportScreen:
    await pilot.press("x")
    await finish(pilot)  # the plan is made in a worker
    screen = pilot.app.screen
    assert isinstance(screen, ExportScreen)
    return screen


async def finish(pilot) -> None:
    with contextlib.suppress(WorkerFailed):  # a stopped or failed export is shown, not raised
        await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    await pilot.pause()


def shown(app: CkptApp, selector: str) -> str:
    """Plain text of a Static that holds Textual markup (theme variables such as $warning)."""
    content = app.screen.query_one(selector, Static).content
    return content.plain if isinstance(content, Content) else Content.from_markup(content).plain


def row_text(tree: CkptTree, path: tuple) -> str:
    row = tree.reveal(path)
    assert row is not None
    return row.label.plain


async def test_mark_then_export_writes_a_strictly_loadable_state_dict(dp_ckpt, tmp_path) -> None:
    src, ck = dp_ckpt
    before = digest(src)
    app = CkptApp(str(src))
    async with app.run_test(size=(100, 32)) as pilot:
        tree = await opened(pilot)
        await pilot.press("j")
        assert cursor_path(tree) == ("model",)
        await pilot.press("space")
        assert list(tree.marks) == [("model",)]
        assert row_text(tree, ("model",)).startswith("● model")
        assert "1 marked for export" in text_of(app, "#header")
        # the rows below a mark take its colour (no bullet of their own)
        await pilot.press("l")
        await pilot.pause()
        child = tree.cursor_node.children[0]
        assert child.label.style or any(s.style for s in child.label.spans)
        assert not child.label.plain.startswith("●")

        screen = await open_dialog(pilot)
        assert "1 marked: model" in shown(app, "#export-keep")
        strip = screen.query_one("#export-strip", Checkbox)
        assert strip.value and "'module.'" in str(strip.label)
        target = screen.query_one("#export-target", Input)
        assert target.value == str(tmp_path / "train.slim.pth")
        plan = make_plan(open_checkpoint(src), [("model",)])
        assert plan.strip_prefix == "module."
        expected = units.size_change(src.stat().st_size, plan.predicted_bytes)
        assert expected in shown(app, "#export-size")
        assert app.focused is screen.query_one("#export-go", Button)

        await pilot.press("enter")
        await finish(pilot)
        done = app.screen
        assert isinstance(done, ExportDoneScreen)
        assert done.result.verified
        assert done.result.bytes == plan.predicted_bytes
        out = tmp_path / "train.slim.pth"
        assert out.stat().st_size == plan.predicted_bytes
        said = " ".join(Content.from_markup(str(w.content)).plain for w in done.query(Static))
        assert str(out) in said and "bit for bit" in said and units.size(out.stat().st_size) in said
        await pilot.press("enter")
        assert not isinstance(app.screen, ExportDoneScreen | ExportScreen)

    sd = torch.load(out, weights_only=True)
    net = TinyNet()
    net.load_state_dict(sd, strict=True)
    for k, v in ck["model"].items():
        assert torch.equal(sd[k.removeprefix("module.")], v)
    assert digest(src) == before
    assert files(tmp_path) == {"train.pth", "train.slim.pth"}


async def test_defaults_bf16_and_safetensors_follow_the_choices(dp_ckpt, tmp_path) -> None:
    src, ck = dp_ckpt
    app = CkptApp(str(src))
    async with app.run_test(size=(100, 32)) as pilot:
        await opened(pilot)
        screen = await open_dialog(pilot)  # no marks: the detected weights
        assert "the detected weights: model" in shown(app, "#export-keep")
        keep_bytes = screen.plan.predicted_bytes
        screen.query_one("#export-dtype", RadioSet).query("RadioButton")[1].value = True  # bf16
        await finish(pilot)
        assert screen.plan.dtype == "bf16"
        assert screen.plan.predicted_bytes < keep_bytes
        screen.query_one("#export-format", RadioSet).query("RadioButton")[1].value = True
        await finish(pilot)
        target = screen.query_one("#export-target", Input)
        # the detected weights: named as the root panel's export command names them (issue 18)
        assert target.value.endswith("train.weights.safetensors")
        assert screen.plan.format == "safetensors"
        size_text = shown(app, "#export-size")
        assert units.size(screen.plan.predicted_bytes) in size_text
        await pilot.click("#export-go")
        await finish(pilot)
        assert isinstance(app.screen, ExportDoneScreen)
    out = tmp_path / "train.weights.safetensors"
    loaded = load_file(out)
    for k, v in ck["model"].items():
        got = loaded[k.removeprefix("module.")]
        if v.is_floating_point():
            assert got.dtype == torch.bfloat16 and torch.equal(got, v.to(torch.bfloat16))
        else:  # num_batches_tracked stays int64
            assert got.dtype == v.dtype and torch.equal(got, v)


async def test_an_existing_target_is_replaced_only_after_asking(dp_ckpt, tmp_path) -> None:
    src, _ = dp_ckpt
    out = tmp_path / "train.weights.pth"
    out.write_bytes(b"precious")
    app = CkptApp(str(src))
    async with app.run_test(size=(100, 32)) as pilot:
        await opened(pilot)
        screen = await open_dialog(pilot)
        assert "exists" in shown(app, "#export-note")
        await pilot.press("enter")
        await finish(pilot)
        assert isinstance(app.screen, ExportScreen)  # it asked: nothing written yet
        assert out.read_bytes() == b"precious"
        assert str(screen.query_one("#export-go", Button).label) == "Replace"
        await pilot.pause(0.3)  # a Button ignores presses during its 0.2 s press effect
        await pilot.press("enter")
        await finish(pilot)
        assert isinstance(app.screen, ExportDoneScreen), shown(app, "#export-note")
    assert torch.load(out, weights_only=True)["fc.weight"].shape == (4, 8)


async def test_the_source_cannot_be_the_target(dp_ckpt, tmp_path) -> None:
    src, _ = dp_ckpt
    before = digest(src)
    app = CkptApp(str(src))
    async with app.run_test(size=(100, 32)) as pilot:
        await opened(pilot)
        screen = await open_dialog(pilot)
        target = screen.query_one("#export-target", Input)
        target.value = str(src)
        await pilot.pause()
        assert "source checkpoint" in shown(app, "#export-note")
        assert screen.query_one("#export-go", Button).disabled
        target.focus()
        await pilot.press("enter")
        await finish(pilot)
        assert isinstance(app.screen, ExportScreen)
        target.value = str(tmp_path / "no" / "such" / "dir.pth")
        await pilot.pause()
        assert "no folder" in shown(app, "#export-note")
    assert digest(src) == before
    assert files(tmp_path) == {"train.pth"}


async def test_esc_while_writing_stops_and_leaves_nothing(dp_ckpt, tmp_path, monkeypatch) -> None:
    src, _ = dp_ckpt
    real = source_mod.SourceBytes.chunks

    def slow_chunks(self, item):  # 9 tensors at 0.2 s each: time to press esc midway
        for chunk in real(self, item):
            time.sleep(0.2)
            yield chunk

    monkeypatch.setattr(source_mod.SourceBytes, "chunks", slow_chunks)
    app = CkptApp(str(src))
    async with app.run_test(size=(100, 32)) as pilot:
        await opened(pilot)
        screen = await open_dialog(pilot)
        await pilot.press("enter")
        await pilot.pause(0.3)
        assert screen.query_one(ProgressBar).display
        assert screen.query_one(ProgressBar).progress > 0
        assert "writing" in shown(app, "#export-note")
        await pilot.press("escape")
        await finish(pilot)
        assert app.screen is screen  # still open, saying what happened
        assert "nothing was written" in shown(app, "#export-note")
        assert not screen.query_one("#export-go", Button).disabled
    assert files(tmp_path) == {"train.pth"}


async def test_marks_fold_toggle_and_refuse_empty_subtrees(dp_ckpt) -> None:
    src, _ = dp_ckpt
    app = CkptApp(str(src))
    async with app.run_test(size=(100, 32)) as pilot:
        tree = await opened(pilot)
        await pilot.press("j", "l", "j")  # model -> its first key
        first = cursor_path(tree)
        await pilot.press("space")
        assert list(tree.marks) == [first]
        await pilot.press("h", "h")  # back to model
        assert cursor_path(tree) == ("model",)
        await pilot.press("space")  # the subtree's mark folds the one below it
        assert list(tree.marks) == [("model",)]
        tree.select_path(first)
        await pilot.pause()
        await pilot.press("space")  # inside a marked subtree: explained, not changed
        assert list(tree.marks) == [("model",)]
        tree.select_path(("epoch",))
        await pilot.pause()
        await pilot.press("space")  # a plain value: nothing to export
        assert list(tree.marks) == [("model",)]
        tree.select_path(("model",))
        await pilot.pause()
        await pilot.press("space")
        assert tree.marks == {}
        assert not row_text(tree, ("model",)).startswith("●")
        # marks survive the filter
        await pilot.press("space")
        await pilot.press("slash", *"fc.weight", "enter")
        await pilot.pause()
        assert row_text(tree, ("model",)).startswith("● model")
        screen = await open_dialog(pilot)
        assert screen.plan is not None
        assert screen.plan.items[0].name == "conv1.weight"  # the marked model, prefix stripped


async def test_a_dcp_folder_with_chunked_tensors_exports_from_the_dialog(
    sharded_dcp,  # noqa: F811
    tmp_path: Path,
) -> None:
    app = CkptApp(str(sharded_dcp))
    async with app.run_test(size=(100, 32)) as pilot:
        await opened(pilot)
        screen = await open_dialog(pilot)
        size_text = shown(app, "#export-size")
        assert "saved in chunks" in size_text and "≈" in size_text
        target = screen.query_one("#export-target", Input)
        target.value = str(tmp_path / "w.pth")
        await pilot.pause(0.3)
        await pilot.click("#export-go")
        await finish(pilot)
        assert isinstance(app.screen, ExportDoneScreen), shown(app, "#export-note")
    back = torch.load(tmp_path / "w.pth", weights_only=True)
    for k, v in sharded_truth().items():
        assert torch.equal(back[k], v)
