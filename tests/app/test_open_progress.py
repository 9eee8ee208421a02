"""What the browser says while a checkpoint opens (issue 16: 100,000 tensors take seconds).

Real files: `torch.save` checkpoints and a sharded folder made by the real `save_pretrained`.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
import torch

from ckptui.app.app import CkptApp
from ckptui.app.open_progress import OpenProgress
from ckptui.core import units
from ckptui.formats import open_checkpoint
from tests.app.test_browse import opened, text_of
from tests.app.test_folder_app import sharded  # noqa: F401  (a save_pretrained folder)


def test_a_file_says_its_size_and_stage(tmp_path: Path) -> None:
    path = tmp_path / "sd.pth"
    torch.save({"w": torch.zeros(64)}, path)
    progress = OpenProgress(str(path))
    assert (
        progress.text()
        == f"ckptui · opening {path} · {units.size(path.stat().st_size)} · reading …"
    )
    progress.stage = "indexing"
    progress.started -= 3.2
    assert progress.text().endswith(" · indexing … 3 s")
    assert progress.open().root == open_checkpoint(str(path)).root
    assert progress.files == 0  # one file: no count


def test_a_folder_counts_the_files_it_has_read(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    for step in range(3):
        torch.save({"step": step, "w": torch.full((4,), float(step))}, folder / f"s{step}.pth")
    progress = OpenProgress(str(folder))
    assert progress.size is None  # a folder: no size before opening
    ckpt = progress.open()
    assert ckpt.root == open_checkpoint(str(folder)).root
    assert progress.files == 3
    assert " · 3 files read · reading …" in progress.text()


def test_a_sharded_folder_counts_its_shards(sharded: Path) -> None:  # noqa: F811
    shards = set(
        json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"].values()
    )
    assert len(shards) > 1
    progress = OpenProgress(str(sharded))
    ckpt = progress.open()
    assert ckpt.root == open_checkpoint(str(sharded)).root
    assert progress.files == len(shards)


@pytest.mark.parametrize("name", ["missing.pth"])
def test_a_missing_path_still_opens_to_its_one_line(tmp_path: Path, name: str) -> None:
    progress = OpenProgress(str(tmp_path / name))
    assert progress.size is None
    with pytest.raises(Exception, match="no such file"):
        progress.open()


async def test_the_header_follows_the_open_then_shows_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sd.pth"
    torch.save({"w": torch.zeros(8)}, path)
    release = threading.Event()
    real = OpenProgress.open

    def slow_open(self: OpenProgress):  # an open that takes as long as the test says
        release.wait(10)
        return real(self)

    monkeypatch.setattr(OpenProgress, "open", slow_open)
    app = CkptApp(str(path))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(1.2)  # the header is refreshed twice a second
        header = text_of(app, "#header")
        assert header.startswith(f"ckptui · opening {path} · ")
        assert re.search(r" · reading … [1-9][0-9]* s$", header.strip()), header
        release.set()
        await opened(pilot)
        header = text_of(app, "#header")
        assert "opening" not in header and "1 tensor" in header
        await pilot.pause(0.6)  # the refresh has stopped: it does not come back
        assert text_of(app, "#header") == header
