"""The browser on a folder: a sharded Hugging Face model made by the real save_pretrained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ckptui.app.app import CkptApp
from tests.app.test_browse import cursor_path, opened, settle, text_of
from tests.core.test_folders import tiny_gpt2


@pytest.fixture
def sharded(tmp_path: Path) -> Path:
    folder = tmp_path / "gpt2"
    tiny_gpt2().save_pretrained(folder, max_shard_size="100KB")
    return folder


async def test_a_sharded_folder_browses_as_one_state_dict(sharded: Path) -> None:
    weight_map = json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]
    app = CkptApp(str(sharded))
    async with app.run_test(size=(120, 40)) as pilot:
        tree = await opened(pilot)
        header = text_of(app, "#header")
        assert "hf-sharded" in header and f"{len(weight_map)} tensors" in header
        await pilot.press("j")
        await settle(pilot)
        key = cursor_path(tree)[0]
        facts = " ".join(text_of(app, "#facts").split())
        assert f"file {weight_map[key]}" in facts  # the shard holding the tensor
        assert "mean" in text_of(app, "#stats")  # values read from the shard's bytes
        # the size breakdown has a row per shard
        await pilot.press("w")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        shards = {p[0] for p, _ in app.screen.cache.breakdown.top_level}
        assert set(weight_map.values()) <= shards
        await pilot.press("escape")
        await pilot.pause()
        assert cursor_path(tree)[0] == key
