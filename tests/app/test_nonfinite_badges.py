"""NaN / Inf badges: once the panel has read a tensor's values and found non-finite ones, its row
says so (in words, so NO_COLOR shows it), and keeps saying so after the cursor moves on."""

from __future__ import annotations

from pathlib import Path

import torch
from rich.style import Style

from ckptui.app.app import CkptApp
from tests.app.test_browse import opened, settle


def row_text(tree, path: tuple) -> str:
    row = tree.reveal(path)
    assert row is not None
    return tree.render_label(row, Style(), Style()).plain


async def test_rows_of_tensors_with_nan_or_inf_get_a_badge(tmp_path: Path) -> None:
    nan = torch.ones(8)
    nan[3] = float("nan")
    both = torch.ones(4, 4)
    both[0, 0], both[1, 1] = float("nan"), float("-inf")
    p = tmp_path / "bad.pth"
    torch.save({"model": {"ok": torch.ones(8), "nan": nan, "both": both}}, p)
    app = CkptApp(str(p))
    async with app.run_test(size=(80, 24)) as pilot:
        tree = await opened(pilot)
        assert "⚠" not in row_text(tree, ("model", "nan"))  # values not read yet: no claim
        await pilot.press("j", "l", "j")  # ok
        await settle(pilot)
        await pilot.press("j")  # nan
        await settle(pilot)
        await pilot.press("j")  # both
        await settle(pilot)
        await pilot.press("k", "k")  # back up: the badges stay
        await settle(pilot)
        assert "⚠" not in row_text(tree, ("model", "ok"))
        nan_row = row_text(tree, ("model", "nan"))
        assert nan_row.startswith("nan ⚠ NaN ") and nan_row.endswith("32 B")
        assert row_text(tree, ("model", "both")).startswith("both ⚠ NaN Inf ")
        await pilot.press("m")  # the module view shows the same rows: badge kept
        await settle(pilot)
        assert "⚠ NaN" in row_text(tree, ("model", "nan"))
