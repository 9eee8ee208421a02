"""Tensor rows at 80 columns: shape | dtype | size right-aligned at the tree's edge, no
`torch.Tensor`, and a key too long for the line loses its middle, never the numbers."""

from __future__ import annotations

from pathlib import Path

import torch
from rich.style import Style
from rich.text import Text

from ckptui.app.app import CkptApp
from ckptui.app.widgets.row_columns import KEY_MIN, fit
from tests.app.test_browse import opened, settle


def drawn(tree) -> list[str]:
    return [tree.render_line(y).text.rstrip() for y in range(tree.size.height)]


async def test_tensor_rows_line_up_their_sizes_at_80_columns(tmp_path: Path) -> None:
    long_key = "backbone.encoder.layers.11.self_attention.in_proj_weight_extra_long_name"
    sd = {
        "a.weight": torch.zeros(64, 3, 7, 7),
        "a.bias": torch.zeros(64, dtype=torch.bfloat16),
        "count": torch.zeros((), dtype=torch.int64),
        long_key: torch.zeros(12, 4),
    }
    p = tmp_path / "sd.pth"
    torch.save({"model": sd}, p)
    app = CkptApp(str(p))
    async with app.run_test(size=(80, 24)) as pilot:
        tree = await opened(pilot)
        await pilot.press("j", "l")
        await settle(pilot)
        lines = [
            line
            for line in drawn(tree)
            if line.endswith("B") and ("float" in line or "int64" in line)
        ]
        assert len(lines) == 4, drawn(tree)
        rows = {line.split()[1]: line for line in lines}
        assert "torch.Tensor" not in "".join(lines)
        assert len({len(line) for line in lines}) == 1, lines  # sizes end in one column
        assert all(len(line) <= 80 for line in lines)
        weight = rows["a.weight"]
        assert "[64, 3, 7, 7] float32" in weight and weight.rstrip().endswith("36.8 KiB")
        assert "[64] bfloat16" in rows["a.bias"] and rows["a.bias"].rstrip().endswith("128 B")
        assert "[] int64" in rows["count"]
        (cut,) = [line for line in lines if "…" in line]
        assert "backbone.enc" in cut and cut.rstrip().endswith("192 B")
        assert "[12, 4]" not in cut and "float32" in cut  # the shape gave way first


async def test_rows_are_one_run_of_text_where_there_is_no_room(tmp_path: Path) -> None:
    p = tmp_path / "deep.pth"
    node: dict = {"w": torch.zeros(3)}
    for i in range(30):  # 30 levels: 60 cells of guides leave no room for columns
        node = {f"l{i}": node}
    torch.save(node, p)
    app = CkptApp(str(p))
    async with app.run_test(size=(80, 24)) as pilot:
        tree = await opened(pilot)
        row = tree.reveal((*(f"l{i}" for i in reversed(range(30))), "w"))
        assert row is not None
        assert tree.render_label(row, Style(), Style()).plain == "w  [3] float32 12 B"


def test_fit_cuts_the_middle_of_a_long_key() -> None:
    columns = Text("[8] float32       32 B")
    out = fit(Text("module.layer1.0.bn1.running_mean"), columns, 40)
    assert out is not None and out.cell_len == 40
    assert out.plain.startswith("module.…ing_mean  ")
    assert out.plain.endswith("[8] float32       32 B")
    assert fit(Text("x" * 40), columns, columns.cell_len + KEY_MIN - 1) is None
    wide = fit(Text("重み" * 20), columns, 50)  # wide characters: still exactly 50 cells
    assert wide is not None and wide.cell_len <= 50 and wide.plain.endswith("32 B")


async def test_counts_of_one_are_singular(tmp_path: Path) -> None:
    """`1 key`, `1 item`, `1 tensor`: a one-entry container is not `1 keys`."""
    p = tmp_path / "one.pth"
    torch.save({"model": {"w": torch.zeros(3)}, "groups": [{"lr": 0.1}]}, p)
    app = CkptApp(str(p))
    async with app.run_test(size=(100, 30)) as pilot:
        tree = await opened(pilot)
        rows = [tree.render_label(c, Style(), Style()).plain for c in tree.root.children]
        assert "dict · 1 key ·" in rows[0] and "list · 1 item" in rows[1]
        header = app.screen.query_one("#header").render()
        assert "· 1 tensor ·" in str(header) or str(header).rstrip().endswith("1 tensor")


async def test_a_key_that_fits_without_the_shape_is_shown_whole(tmp_path: Path) -> None:
    key = "module.layer1.0.bn1.num_batches_tracked.extra"  # 45 cells: too long with the shape
    p = tmp_path / "sd.pth"
    torch.save({"model": {key: torch.zeros(3, 3, 3, 3, 3)}}, p)
    app = CkptApp(str(p))
    async with app.run_test(size=(80, 24)) as pilot:
        tree = await opened(pilot)
        row = tree.reveal(("model", key))
        assert row is not None
        text = tree.render_label(row, Style(), Style()).plain
        assert text.startswith(key) and "[3, 3" not in text and text.endswith("972 B")
