"""`s` sorts every container's rows: as stored, by name, by size, by parameters, and back.

Real checkpoints made by `torch.save` in tmp_path; the pilot presses keys as a person would.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ckptui.app.app import CkptApp
from ckptui.app.widgets.ckpt_tree import GROUP, CkptTree
from ckptui.app.widgets.tree_order import natural_key
from tests.app.test_browse import cursor_path, opened, settle


def shown_keys(tree: CkptTree, row=None) -> list:
    row = row or tree.root
    return [c.data.path[-1] for c in row.children if c.data is not None and c.data.group is None]


def footer_keys(app: CkptApp) -> dict[str, str]:
    return {
        b.binding.key: b.binding.description
        for b in app.screen.active_bindings.values()
        if b.binding.show
    }


def test_natural_key_puts_layer2_before_layer10() -> None:
    names = ["layer10", "Layer2", "layer1", "fc", "layer2.bias"]
    assert sorted(names, key=natural_key) == ["fc", "layer1", "Layer2", "layer2.bias", "layer10"]
    assert sorted([10, 2, 1], key=natural_key) == [1, 2, 10]


def make_mixed(path: Path) -> None:
    torch.save(
        {
            "b_small": torch.zeros(4),  # 16 B, 4 elements
            "a_wide": torch.zeros(100, dtype=torch.int8),  # 100 B, 100 elements
            "c_big": torch.zeros(64),  # 256 B, 64 elements
            "layer10": torch.zeros(2),
            "layer2": torch.zeros(1),
        },
        path,
    )


async def test_s_cycles_name_size_params_and_back_with_the_footer_saying_which(
    tmp_path: Path,
) -> None:
    p = tmp_path / "mixed.pth"
    make_mixed(p)
    app = CkptApp(str(p))
    async with app.run_test(size=(80, 24)) as pilot:
        tree = await opened(pilot)
        stored = ["b_small", "a_wide", "c_big", "layer10", "layer2"]
        assert shown_keys(tree) == stored
        assert footer_keys(app)["s"] == "Sort"
        await pilot.press("s")
        assert shown_keys(tree) == ["a_wide", "b_small", "c_big", "layer2", "layer10"]
        assert footer_keys(app)["s"] == "By name"
        await pilot.press("s")
        assert shown_keys(tree) == ["c_big", "a_wide", "b_small", "layer10", "layer2"]
        assert footer_keys(app)["s"] == "By size"
        await pilot.press("s")  # elements: int8's 100 beat float32's 64
        assert shown_keys(tree) == ["a_wide", "c_big", "b_small", "layer10", "layer2"]
        assert footer_keys(app)["s"] == "By params"
        await pilot.press("s")
        assert shown_keys(tree) == stored
        assert footer_keys(app)["s"] == "Sort"


async def test_sorting_keeps_the_cursor_on_its_key_and_sorts_nested_rows(
    tmp_path: Path,
) -> None:
    p = tmp_path / "nested.pth"
    torch.save({"model": {"z": torch.zeros(1), "m": torch.zeros(50), "a": torch.zeros(9)}}, p)
    app = CkptApp(str(p))
    async with app.run_test(size=(80, 24)) as pilot:
        tree = await opened(pilot)
        await pilot.press("j", "l", "j", "j")  # model, open, its second key
        assert cursor_path(tree) == ("model", "m")
        await pilot.press("s")  # by name
        await settle(pilot)
        assert cursor_path(tree) == ("model", "m")
        model_row = tree.root.children[0]
        assert shown_keys(tree, model_row) == ["a", "m", "z"]
        await pilot.press("s")  # by size
        await settle(pilot)
        assert shown_keys(tree, tree.root.children[0]) == ["m", "a", "z"]
        assert cursor_path(tree) == ("model", "m")


async def test_size_order_spans_groups_of_a_big_container(tmp_path: Path) -> None:
    """The biggest tensor of 2,500 lands in the first group row, and G still reaches the last."""
    p = tmp_path / "many.pth"
    sd = {f"t{i}": torch.zeros(1) for i in range(2500)}
    sd["t2400"] = torch.zeros(1000)
    torch.save(sd, p)
    app = CkptApp(str(p))
    async with app.run_test(size=(80, 24)) as pilot:
        tree = await opened(pilot)
        await pilot.press("s", "s")  # by size
        await settle(pilot)
        groups = tree.root.children
        assert len(groups) == 3 and groups[0].data.group == (0, GROUP)
        assert str(groups[0].label).split()[3] == "t2400"  # `[0 … 999]  t2400 … t…`
        await pilot.press("j", "l", "j")  # into the first group: its first row
        await settle(pilot)
        assert cursor_path(tree) == ("t2400",)
        await pilot.press("G")
        await settle(pilot)
        assert cursor_path(tree) == ("t2499",)  # the last of the equal ones, in stored order


async def test_sort_in_the_module_view_orders_modules_by_size(tmp_path: Path) -> None:
    p = tmp_path / "sd.pth"
    sd = {
        "enc.small.weight": torch.zeros(2),
        "enc.big.weight": torch.zeros(300),
        "dec.weight": torch.zeros(10),
    }
    torch.save(sd, p)
    app = CkptApp(str(p))
    async with app.run_test(size=(80, 24)) as pilot:
        tree = await opened(pilot)
        await pilot.press("m")
        await settle(pilot)
        assert [c.data.module.name for c in tree.root.children] == ["enc", "dec"]
        await pilot.press("s")  # by name
        await settle(pilot)
        assert [c.data.module.name for c in tree.root.children] == ["dec", "enc"]
        await pilot.press("s")  # by size
        await settle(pilot)
        enc = tree.root.children[0]
        assert enc.data.module.name == "enc"
        tree._open(enc)
        await pilot.pause()
        assert [c.data.module.name for c in enc.children] == ["big", "small"]


async def test_sorting_a_filtered_tree_keeps_only_the_matches(tmp_path: Path) -> None:
    p = tmp_path / "mixed.pth"
    make_mixed(p)
    app = CkptApp(str(p))
    async with app.run_test(size=(80, 24)) as pilot:
        tree = await opened(pilot)
        await pilot.press("slash", *"_", "enter")
        await settle(pilot)
        assert shown_keys(tree) == ["b_small", "a_wide", "c_big"]
        await pilot.press("s", "s")  # by size
        await settle(pilot)
        assert tree.filtered
        assert shown_keys(tree) == ["c_big", "a_wide", "b_small"]
        assert tree.matches == [("c_big",), ("a_wide",), ("b_small",)]  # n/N in shown order
