"""Terminal escapes in the browser (issue 21): a class name and a key made of cursor-up +
erase-line + CR show in the tree rows and the detail panel as escapes, never as raw bytes."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

from ckptui.app.app import CkptApp
from tests.app.test_browse import opened, settle, text_of

WIPE = "\x1b[1A\x1b[2K\r"
SHOWN = r"\x1b[1A\x1b[2K\r"
CLASS = f"Wipe{WIPE}Net"


@pytest.fixture
def hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real `torch.save` of a whole module whose class name holds the sequence, beside a key
    holding it."""
    module = types.ModuleType("evilpkg")
    cls = type(CLASS, (torch.nn.Module,), {"__module__": "evilpkg", "__qualname__": CLASS})
    setattr(module, CLASS, cls)
    monkeypatch.setitem(sys.modules, "evilpkg", module)
    net = cls()
    net.fc = torch.nn.Linear(2, 2)
    p = tmp_path / "hostile.pth"
    torch.save({"model": net, f"w{WIPE}x": torch.ones(2)}, p)
    return p


async def test_tree_rows_and_panel_show_the_escaped_form(hostile: Path) -> None:
    app = CkptApp(str(hostile))
    async with app.run_test(size=(120, 30)) as pilot:
        tree = await opened(pilot)
        rows = {n.data.path: n.label.plain for n in tree.root.children if n.data is not None}
        model_row = rows[("model",)]
        assert f"evilpkg.Wipe{SHOWN}Net" in model_row, model_row
        assert "\x1b" not in model_row and "\r" not in model_row
        key_row = rows[(f"w{WIPE}x",)]
        assert key_row.startswith(f"w{SHOWN}x"), key_row
        assert "\x1b" not in key_row and "\r" not in key_row
        await pilot.press("j")  # the model row: its class in the panel
        await settle(pilot)
        facts = text_of(app, "#facts")
        assert f"evilpkg.Wipe{SHOWN}Net" in facts, facts
        assert "\x1b" not in facts and "\r" not in facts
