"""The compare screen at 80x24 (issue 18): a one-line header, verdict first, and the relative
difference beside max |a-b| in the rows and the panel. Real torch.save pairs."""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console

from ckptui.app.app import CkptApp
from ckptui.app.widgets.diff_rows import find
from tests.app.test_browse import text_of
from tests.app.test_compare import label, opened, save

SIZE = (80, 24)


def shown(app: CkptApp, selector: str) -> str:
    """A Static's text as the screen draws it (its own width)."""
    widget = app.screen.query_one(selector)
    console = Console(width=widget.content_region.width, record=True, color_system=None)
    console.print(widget.render())
    return console.export_text()


async def test_header_is_one_line_verdict_first(tmp_path: Path) -> None:
    torch.manual_seed(0)
    sd = {f"layer{i}.weight": torch.randn(8, 8) for i in range(6)}
    other = {k: v.clone() for k, v in sd.items()}
    other["layer2.weight"][0, 0] += 1.0
    long = tmp_path / ("a_rather_long_directory_name_for_a_run" * 2)
    long.mkdir()
    a, b = save(sd, long / "step_000100.pth"), save(other, long / "step_000200.pth")
    async with CkptApp(a, b).run_test(size=SIZE) as pilot:
        await opened(pilot)
        header = pilot.app.screen.query_one("#header")
        assert header.region.height == 1  # was 4 lines at 80 columns
        drawn = shown(pilot.app, "#header").splitlines()
        assert len([line for line in drawn if line.strip()]) == 1
        assert drawn[0].lstrip("▌ ").startswith("differ · Δ 1 values · = 5 equal")
        # the whole text is still there for a wider terminal, file names included
        full = " ".join(text_of(pilot.app, "#header").split())
        assert "step_000100.pth" in full and "step_000200.pth" in full
        # the tree starts right below it: one line, not four
        tree = pilot.app.screen.query_one("#tree")
        assert tree.region.y <= 2


async def test_weights_roots_are_named_once(tmp_path: Path) -> None:
    """A training checkpoint against a bare state dict: `the root`, never `(root)` twice."""
    sd = {"w": torch.ones(3)}
    a = save({"model": sd, "epoch": 1}, tmp_path / "train.pth")
    b = save(sd, tmp_path / "w.pth")
    async with CkptApp(a, b).run_test(size=SIZE) as pilot:
        await opened(pilot)
        full = " ".join(text_of(pilot.app, "#header").split())
        assert "weights: A model, B the root" in full
        assert "(root)" not in full


async def test_relative_difference_beside_max_abs(tmp_path: Path) -> None:
    a_sd = {"big": torch.full((4, 4), 100.0), "small": torch.full((4,), 0.01)}
    b_sd = {k: v.clone() for k, v in a_sd.items()}
    b_sd["big"][1, 1] += 0.5
    b_sd["small"][0] += 0.005
    a, b = save(a_sd, tmp_path / "a.pth"), save(b_sd, tmp_path / "b.pth")
    async with CkptApp(a, b).run_test(size=SIZE) as pilot:
        _, tree = await opened(pilot)
        big, small = find(tree.merged, ("big",)), find(tree.merged, ("small",))
        # max |a| is A's largest magnitude: the same 0.5 is small on 100, large on 0.01
        assert big.max_rel == 0.005
        assert abs(small.max_rel - 0.5) < 1e-5
        assert "max |a-b| 0.5 (rel 0.005)" in label(tree, big)
        assert "(rel 0.5)" in label(tree, small)
        assert tree.select_row(big)
        await pilot.pause()
        await pilot.pause(0.1)
        values = " ".join(text_of(pilot.app, "#cmp-values").split())
        assert "max |a-b| 0.5 · relative 0.005" in values
