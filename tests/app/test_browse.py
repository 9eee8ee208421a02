"""The browser driven with keys, as a person would, on real checkpoints made in the test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from rich.console import Console
from textual.widgets import Static

from ckptui.app.app import CkptApp
from ckptui.app.widgets.ckpt_tree import CkptTree
from ckptui.core.keypath import path_expr
from tests.conftest import holed_checkpoint, save_with_location, training_checkpoint


def text_of(app: CkptApp, selector: str) -> str:
    """Plain text of a Static's content, as rendered at a generous width."""
    console = Console(width=200, record=True, color_system=None)
    console.print(app.screen.query_one(selector, Static).content)
    return console.export_text()


async def opened(pilot) -> CkptTree:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    tree = pilot.app.screen.query_one(CkptTree)
    assert tree.ckpt is not None
    return tree


async def settle(pilot) -> None:
    """Let the throttled panel catch up and its values worker finish."""
    await pilot.pause(0.25)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def cursor_path(tree: CkptTree) -> tuple:
    assert tree.cursor_node is not None and tree.cursor_node.data is not None
    return tree.cursor_node.data.path


@pytest.fixture
def gpu_ckpt(tmp_path: Path) -> Path:
    p = tmp_path / "train.pth"
    save_with_location(training_checkpoint(), p, "cuda:0")
    return p


async def test_navigate_to_nested_tensor_shows_its_facts(gpu_ckpt: Path) -> None:
    app = CkptApp(str(gpu_ckpt))
    async with app.run_test(size=(80, 24)) as pilot:
        tree = await opened(pilot)
        header = text_of(app, "#header")
        assert "torch-zip" in header and "tensors" in header
        await pilot.press("j")  # model
        assert cursor_path(tree) == ("model",)
        await pilot.press("l", "j")  # expand model, first key
        await settle(pilot)
        assert cursor_path(tree) == ("model", "conv1.weight")
        facts = text_of(app, "#facts")
        assert "['model']['conv1.weight']" in facts
        assert "[8, 3, 3, 3]" in facts and "float32" in facts
        assert "cuda:0" in facts and "opens on CPU" in facts
        assert "elements 216" in " ".join(facts.split())
        assert "bytes 864 B" in " ".join(facts.split())
        await pilot.press("h", "h")  # back to the parent, collapse it
        assert cursor_path(tree) == ("model",)
        assert not tree.cursor_node.is_expanded


async def test_panel_catches_up_with_the_cursor_and_keeps_values_with_their_tensor(
    gpu_ckpt: Path,
) -> None:
    app = CkptApp(str(gpu_ckpt))
    async with app.run_test(size=(100, 30)) as pilot:
        tree = await opened(pilot)
        await pilot.press("j", "l", "j", "j", "j", "j")  # model, expand, fourth tensor
        await settle(pilot)
        assert path_expr(cursor_path(tree)) in text_of(app, "#facts")
        assert "min / max" in text_of(app, "#stats")
        assert app.screen.query_one("#histogram").display
        await pilot.press("h")  # back to model: a container has no values
        await settle(pilot)
        assert cursor_path(tree) == ("model",)
        assert "tensor bytes" in text_of(app, "#facts")
        assert text_of(app, "#stats").strip() == ""
        assert not app.screen.query_one("#histogram").display


async def test_filter_finds_deep_key_and_hides_the_rest(gpu_ckpt: Path) -> None:
    app = CkptApp(str(gpu_ckpt))
    async with app.run_test(size=(100, 30)) as pilot:
        tree = await opened(pilot)
        await pilot.press("slash", *"exp_avg_sq", "enter")
        await pilot.pause()
        assert tree.filtered
        shown = []
        stack = [tree.root]
        while stack:
            node = stack.pop()
            if node.data is not None:
                shown.append(node.data.path)
            stack.extend(node.children)
        leaves = [p for p in shown if p and p[-1] == "exp_avg_sq"]
        assert len(leaves) == len(tree.matches) > 0
        assert all(p[:2] == ("optimizer", "state") for p in leaves)
        assert ("model",) not in shown and ("scheduler",) not in shown
        assert cursor_path(tree) == tree.matches[0]
        await pilot.press("n")
        await pilot.pause()
        assert cursor_path(tree) == tree.matches[1]
        await pilot.press("N")
        await pilot.pause()
        assert cursor_path(tree) == tree.matches[0]
        first, second = tree.matches[:2]
        await pilot.press("escape")
        await pilot.pause()
        assert not tree.filtered
        assert cursor_path(tree) == first  # the cursor keeps its key in the whole tree
        assert any(c.data.path == ("model",) for c in tree.root.children)
        await pilot.press("n")  # matches still step in the whole tree
        await pilot.pause()
        assert cursor_path(tree) == second


async def test_regex_filter(gpu_ckpt: Path) -> None:
    app = CkptApp(str(gpu_ckpt))
    async with app.run_test(size=(100, 30)) as pilot:
        tree = await opened(pilot)
        await pilot.press("slash", *r"bn1\.running_(mean|var)$", "enter")
        await pilot.pause()
        assert sorted(p[-1] for p in tree.matches) == ["bn1.running_mean", "bn1.running_var"]


async def test_copy_puts_key_path_on_clipboard(gpu_ckpt: Path) -> None:
    app = CkptApp(str(gpu_ckpt))
    async with app.run_test(size=(80, 24)) as pilot:
        await opened(pilot)
        await pilot.press("j", "l", "j", "j", "y")
        assert app.clipboard == "['model']['conv1.bias']"


async def test_values_show_correct_min_max(tmp_path: Path) -> None:
    t = torch.linspace(-3.5, 7.25, 1000).reshape(10, 100)
    t[3, 4] = float("nan")
    p = tmp_path / "known.pt"
    torch.save({"w": t}, p)
    app = CkptApp(str(p))
    async with app.run_test(size=(100, 30)) as pilot:
        await opened(pilot)
        await pilot.press("j")
        await settle(pilot)
        stats = text_of(app, "#stats")
        assert "-3.5 / 7.25" in stats
        assert "1 NaN" in stats
        assert app.screen.query_one("#histogram").display


async def test_hundred_thousand_keys_open_and_reach_the_last_key(tmp_path: Path) -> None:
    sd = {f"blocks.{i}.weight": torch.zeros(1) for i in range(100_000)}
    p = tmp_path / "huge.pt"
    torch.save(sd, p)
    app = CkptApp(str(p))
    async with app.run_test(size=(80, 24)) as pilot:
        tree = await opened(pilot)
        assert len(tree.root.children) == 100  # groups of 1,000, not 100,000 rows
        await pilot.press("G")
        await pilot.pause()
        assert cursor_path(tree) == ("blocks.99999.weight",)
        await pilot.press("g")
        assert tree.cursor_node is tree.root


async def test_missing_file_exits_2_with_one_line(tmp_path: Path) -> None:
    app = CkptApp(str(tmp_path / "nope.pt"))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
    assert app.return_code == 2
    assert app.error_message == f"ckptui: {tmp_path / 'nope.pt'}: no such file or directory"


async def test_help_lists_keys_and_closes(gpu_ckpt: Path) -> None:
    app = CkptApp(str(gpu_ckpt))
    async with app.run_test(size=(80, 24)) as pilot:
        await opened(pilot)
        await pilot.press("question_mark")
        assert type(app.screen).__name__ == "HelpScreen"
        await pilot.press("escape")
        assert type(app.screen).__name__ == "BrowseScreen"


async def test_danger_is_shown_in_header_and_panel(tmp_path: Path) -> None:
    p = tmp_path / "evil.pkl"
    p.write_bytes(b"\x80\x02}X\x03\x00\x00\x00runcos\nsystem\nX\x04\x00\x00\x00true\x85Rs.")
    app = CkptApp(str(p))
    async with app.run_test(size=(100, 30)) as pilot:
        await opened(pilot)
        assert "dangerous call" in text_of(app, "#header")
        await pilot.press("j")
        await settle(pilot)
        assert "would call os.system" in text_of(app, "#warning")


async def test_missing_storage_is_shown_in_the_panel(tmp_path: Path) -> None:
    p = holed_checkpoint(tmp_path)
    app = CkptApp(str(p))
    async with app.run_test(size=(100, 30)) as pilot:
        await opened(pilot)
        await pilot.press("j", "j")
        await settle(pilot)
        assert "storage 1 is missing from the file" in text_of(app, "#warning")
        assert "values:" in text_of(app, "#stats")  # says why there are no values
