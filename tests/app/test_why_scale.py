"""The size breakdown screen on many module prefixes (issue 16): collapsed prefix rows are made
when they are opened, not all at once on the UI thread."""

from __future__ import annotations

from pathlib import Path

import torch
from textual.widgets import Tree

from ckptui.app.app import CkptApp
from tests.app.test_why import open_why


def _labels(node) -> list[str]:
    return [str(c.label).split()[0] for c in node.children]


async def test_collapsed_prefix_rows_are_made_when_opened(tmp_path: Path) -> None:
    sd = {f"blocks.{i}.{name}.weight": torch.zeros(4) for i in range(12) for name in "abc"}
    p = tmp_path / "sd.pt"
    torch.save(sd, p)
    app = CkptApp(str(p))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_why(pilot)
        tree = screen.query_one("#why-groups", Tree)
        mods = next(n for n in tree.root.children if "module prefix" in str(n.label))
        (blocks,) = mods.children  # one prefix: shown open
        assert blocks.is_expanded and _labels(blocks)[:3] == ["0", "1", "2"]
        row = blocks.children[0]  # twelve below it: each starts collapsed, its rows not made
        assert not row.is_expanded and row.allow_expand and not row.children
        row.expand()
        await pilot.pause()
        assert _labels(row) == ["a", "b", "c"]
        assert all("(1)" in str(c.label) for c in row.children)
        row.collapse()
        row.expand()
        await pilot.pause()
        assert _labels(row) == ["a", "b", "c"]  # made once
