"""The browser on a Hugging Face folder made by the real save_pretrained: `config.json` and the
other small text files show as rows after the weights (issue 18), are never marked for export,
and stay there in the module view."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ckptui.app.app import CkptApp
from tests.app.test_browse import cursor_path, opened, settle, text_of
from tests.core.test_folders import tiny_gpt2

SIZE = (80, 24)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    out = tmp_path / "gpt2"
    tiny_gpt2().save_pretrained(out)
    return out


def root_labels(tree) -> list[str]:
    return [str(row.label) for row in tree.root.children]


async def test_config_rows_follow_the_weights(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    app = CkptApp(str(folder))
    async with app.run_test(size=SIZE) as pilot:
        tree = await opened(pilot)
        labels = root_labels(tree)
        assert labels[-2].startswith(f"config.json  JSON · {len(config)} keys")
        assert labels[-1].startswith("generation_config.json  JSON")
        # G lands on the last row: the text file; enter opens it on its values
        await pilot.press("G")
        await settle(pilot)
        assert cursor_path(tree) == ("generation_config.json",)
        await pilot.press("k", "l")
        await settle(pilot)
        row = tree.cursor_node
        assert cursor_path(tree) == ("config.json",) and row.is_expanded
        values = {str(c.label).split("  ")[0]: str(c.label) for c in row.children}
        assert values["n_embd"] == f"n_embd  int {config['n_embd']}"
        facts = " ".join(text_of(app, "#facts").split())
        assert "not in the checkpoint: never exported" in facts
        # space: nothing to export there, nothing marked
        await pilot.press("space")
        await pilot.pause()
        assert tree.marks == {}


async def test_module_view_keeps_the_text_rows_last(folder: Path) -> None:
    app = CkptApp(str(folder))
    async with app.run_test(size=SIZE) as pilot:
        tree = await opened(pilot)
        await pilot.press("m")
        await settle(pilot)
        assert tree.module_view
        labels = root_labels(tree)
        assert labels[0].startswith("transformer") or labels[0].startswith("lm_head")
        assert labels[-2].startswith("config.json  JSON")
        assert labels[-1].startswith("generation_config.json  JSON")
