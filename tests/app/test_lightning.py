"""The browser on a real Lightning `.ckpt`: the header names Lightning, its version and counters,
and each top-level row carries its part's label, whole, at 80 columns."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console
from textual.widgets import Static

from ckptui.app.app import CkptApp
from ckptui.app.widgets.ckpt_tree import CkptTree
from tests.conftest import training_checkpoint

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning")

from tests.core.test_lightning import lightning_checkpoint


@pytest.fixture(scope="module")
def ckpt_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, _ = lightning_checkpoint(tmp_path_factory.mktemp("lightning"))
    return path


def header_text(app: CkptApp) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(app.screen.query_one("#header", Static).content)
    return console.export_text()


def screen_rows(tree: CkptTree) -> list[str]:
    """The tree's rows as drawn (cut at the widget's width, as a person sees them)."""
    return [tree.render_line(y).text.rstrip() for y in range(tree.size.height)]


async def test_header_and_row_labels_show_at_80_columns(ckpt_file: Path) -> None:
    global_step = torch.load(ckpt_file, weights_only=False)["global_step"]
    app = CkptApp(str(ckpt_file))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        tree = app.screen.query_one(CkptTree)
        header = header_text(app)
        assert f"Lightning {L.__version__} · epoch 0, step {global_step}" in header
        rows = screen_rows(tree)
        drawn = "\n".join(rows)
        for key, label in [
            ("state_dict", "model weights"),
            ("optimizer_states", "optimizer states"),
            ("lr_schedulers", "LR schedulers"),
            ("callbacks", "state of EarlyStopping, ModelCheckpoint"),
            ("hyper_parameters", "hyper-parameters"),
            ("loops", "loop progress"),
        ]:
            (row,) = [r for r in rows if f" {key}  " in r]
            assert row.endswith(f"— {label}"), (row, drawn)  # whole, not cut at the edge
        await pilot.press("j", "j", "j", "j")  # epoch, global_step, version, state_dict
        entry = tree.cursor_node.data
        assert entry is not None and entry.path == ("state_dict",)
        await pilot.press("l", "j")  # open the weights: their rows carry no part label
        assert tree.cursor_node.data.path == ("state_dict", "enc.weight")
        assert "—" not in str(tree.cursor_node.label)


async def test_plain_checkpoint_has_no_labels_or_framework(tmp_path: Path) -> None:
    p = tmp_path / "train.pth"
    torch.save({**training_checkpoint(), "state_dict": {"w": torch.ones(2)}}, p)
    app = CkptApp(str(p))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        tree = app.screen.query_one(CkptTree)
        assert "Lightning" not in header_text(app)
        # no framework part labels (optimizer entries may still name their parameters)
        assert {p: label for p, label in tree.parts.items() if len(p) == 1} == {}
        top = [tree.reveal((c.key,)) for c in tree.ckpt.root.children]
        assert not [r for r in top if r is not None and "—" in r.label.plain]
