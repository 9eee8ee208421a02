"""`ckptui A B`: the compare screen driven with keys, on pairs saved by real torch.save in the test.

The truth for values is computed with torch (float64), never with ckptui's own code.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from textual.widgets import ProgressBar

from ckptui.app import compare_values as compare_mod
from ckptui.app.app import CkptApp
from ckptui.app.screens.compare import CompareScreen
from ckptui.app.screens.help import HelpScreen
from ckptui.app.widgets.diff_rows import Kind, Row, find, leaves, number
from ckptui.app.widgets.diff_tree import DiffTree
from ckptui.cli.main import main
from tests.app.test_browse import text_of
from tests.conftest import TinyNet

SIZE = (80, 24)


def state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in TinyNet().state_dict().items()}


def save(obj: object, path: Path) -> str:
    torch.save(obj, path)
    return str(path)


def truth(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


async def opened(pilot) -> tuple[CompareScreen, DiffTree]:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    screen = pilot.app.screen
    assert isinstance(screen, CompareScreen)
    tree = screen.query_one(DiffTree)
    assert tree.merged is not None
    return screen, tree


async def settle(pilot) -> None:
    await pilot.pause(0.05)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


@pytest.fixture
def by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """Values are compared only on v / a, as for files too big (or remote) to compare at once."""
    from ckptui.app.screens import compare

    monkeypatch.setattr(compare, "AUTO_COMPARE_BYTES", -1)


def row_at(tree: DiffTree, *path: object) -> Row:
    assert tree.merged is not None
    row = find(tree.merged, tuple(path))
    assert row is not None, path
    return row


def label(tree: DiffTree, row: Row) -> str:
    """The row's text as the tree shows it (the row must be loaded)."""
    node = tree._rows[id(row)]
    return node.label.plain


def shown_rows(tree: DiffTree) -> list[Row]:
    """Every row the tree holds right now (loaded), groups excluded."""
    out, stack = [], [tree.root]
    while stack:
        node = stack.pop()
        if node.data is not None and node.data.group is None:
            out.append(node.data.row)
        stack.extend(node.children)
    return out


async def goto(pilot, tree: DiffTree, row: Row) -> None:
    assert tree.select_row(row)
    await pilot.pause()
    assert tree.current_row() is row


# --- prefix, keys, shapes, dtypes -------------------------------------------------------------


async def test_module_prefix_is_stripped_and_said_so(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dp = torch.nn.DataParallel(TinyNet()).state_dict()
    plain = {k.removeprefix("module."): v.clone() for k, v in dp.items()}
    a, b = save(dp, tmp_path / "ddp.pth"), save(plain, tmp_path / "plain.pth")
    app = CkptApp(a, b)
    async with app.run_test(size=SIZE) as pilot:
        _, tree = await opened(pilot)
        header = " ".join(text_of(app, "#header").split())
        assert "A has 'module.'; stripped" in header
        assert "B has" not in header
        assert text_of(app, "#header").startswith("match ·")  # one line, the verdict first
        assert f"{len(plain)} equal" in header
        assert tree.merged.changed == 0
        assert sorted(r.path for r in leaves(tree.merged)) == sorted((k,) for k in plain)
        assert all(r.kind is Kind.EQUAL for r in leaves(tree.merged))
        # the panel names where each side keeps the tensor
        row = row_at(tree, "fc.weight")
        await goto(pilot, tree, row)
        facts = " ".join(text_of(app, "#cmp-facts").split())
        assert "['module.fc.weight'] ['fc.weight']" in facts


async def test_missing_and_extra_keys_are_marked_only_in_a_and_b(tmp_path: Path) -> None:
    sd = state_dict()
    other = dict(sd)
    del other["fc.bias"]
    other["head.weight"] = torch.zeros(2, 8)
    app = CkptApp(save(sd, tmp_path / "a.pth"), save(other, tmp_path / "b.pth"))
    async with app.run_test(size=SIZE) as pilot:
        _, tree = await opened(pilot)
        gone, new = row_at(tree, "fc.bias"), row_at(tree, "head.weight")
        assert (gone.kind, new.kind) == (Kind.ONLY_A, Kind.ONLY_B)
        assert label(tree, gone).startswith("- ") and "only in A" in label(tree, gone)
        assert label(tree, new).startswith("+ head.weight") and "only in B" in label(tree, new)
        fc = gone.parent
        assert (
            fc is not None
            and label(tree, fc).startswith("• fc")
            and "1 of 2 differ" in label(tree, fc)
        )
        others = [r for r in leaves(tree.merged) if r not in (gone, new)]
        assert others and all(r.kind is Kind.EQUAL for r in others)
        header = " ".join(text_of(app, "#header").split())
        assert "- 1 only A · + 1 only B" in header and f"{len(others)} equal" in header
        await goto(pilot, tree, gone)
        facts = " ".join(text_of(app, "#cmp-facts").split())
        assert "only in A" in facts and "shape [4] -" in facts


async def test_shape_and_dtype_mismatches(tmp_path: Path) -> None:
    sd = state_dict()
    other = dict(sd)
    other["fc.weight"] = torch.zeros(5, 8)
    other["conv1.weight"] = sd["conv1.weight"].half()
    app = CkptApp(save(sd, tmp_path / "a.pth"), save(other, tmp_path / "b.pth"))
    async with app.run_test(size=SIZE) as pilot:
        _, tree = await opened(pilot)
        shape, dtype = row_at(tree, "fc.weight"), row_at(tree, "conv1.weight")
        assert (shape.kind, dtype.kind) == (Kind.SHAPE, Kind.DTYPE)
        assert label(tree, shape).startswith("≠ ") and "[4, 8] → [5, 8]" in label(tree, shape)
        assert label(tree, dtype).startswith("~ ") and "float32 → float16" in label(tree, dtype)
        await goto(pilot, tree, shape)
        facts = " ".join(text_of(app, "#cmp-facts").split())
        assert "shape [4, 8] [5, 8]" in facts and "dtype float32 float32" in facts
        await goto(pilot, tree, dtype)
        facts = " ".join(text_of(app, "#cmp-facts").split())
        assert "dtype float32 float16" in facts and "bytes 864 B 432 B" in facts
        # the values of a dtype mismatch are compared after casting, on request
        await pilot.press("v")
        await settle(pilot)
        expected = truth(sd["conv1.weight"], sd["conv1.weight"].half())
        assert expected > 0 and dtype.max_abs == expected
        assert dtype.kind is Kind.DTYPE and f"max |a-b| {number(expected)}" in label(tree, dtype)


# --- values -----------------------------------------------------------------------------------


async def test_v_computes_the_true_max_abs_difference(tmp_path: Path, by_hand) -> None:
    sd = state_dict()
    other = {k: v.clone() for k, v in sd.items()}
    torch.manual_seed(7)
    other["fc.weight"] += torch.randn(4, 8) * 1e-3
    app = CkptApp(save(sd, tmp_path / "a.pth"), save(other, tmp_path / "b.pth"))
    async with app.run_test(size=SIZE) as pilot:
        _, tree = await opened(pilot)
        row = row_at(tree, "fc.weight")
        assert row.kind is Kind.PENDING and row.max_abs is None  # metadata alone cannot tell
        assert label(tree, row).startswith("? weight") and "not compared" in label(tree, row)
        await goto(pilot, tree, row)
        assert "press v" in text_of(app, "#cmp-values")
        await pilot.press("v")
        await settle(pilot)
        expected = truth(sd["fc.weight"], other["fc.weight"])
        assert expected > 0
        assert row.max_abs == expected and row.kind is Kind.VALUES
        assert label(tree, row).startswith("Δ weight")  # below the `fc` row
        assert f"max |a-b| {number(expected)}" in label(tree, row)
        assert f"max |a-b| {number(expected)}" in text_of(app, "#cmp-values")
        assert "1 of 2 differ" in label(tree, row.parent)
        header = " ".join(text_of(app, "#header").split())
        assert "Δ 1 values" in header and "values 1/" in header
        # an unchanged tensor: 0, and still equal
        bias = row_at(tree, "fc.bias")
        await goto(pilot, tree, bias)
        await pilot.press("v")
        await settle(pilot)
        assert bias.max_abs == 0 and bias.kind is Kind.EQUAL
        assert "identical" in label(tree, bias)


async def test_a_compares_every_tensor_and_marks_each_row(tmp_path: Path) -> None:
    sd = state_dict()
    other = {k: v.clone() for k, v in sd.items()}
    other["conv1.weight"][0, 0, 0, 0] += 2.5
    other["bn1.running_var"] *= 3
    other["bn1.num_batches_tracked"] += 5
    app = CkptApp(save(sd, tmp_path / "a.pth"), save(other, tmp_path / "b.pth"))
    async with app.run_test(size=SIZE) as pilot:
        screen, tree = await opened(pilot)
        await pilot.press("a")
        await settle(pilot)
        for key in sd:
            row = row_at(tree, key)
            assert row.max_abs == truth(sd[key], other[key]), key
            expected = Kind.VALUES if row.max_abs else Kind.EQUAL
            assert row.kind is expected, key
        assert row_at(tree, "conv1.weight").max_abs == pytest.approx(2.5, abs=1e-6)
        assert row_at(tree, "bn1.num_batches_tracked").max_abs == 5
        header = " ".join(text_of(app, "#header").split())
        assert f"values all {len(sd)} compared" in header and "Δ 3 values" in header
        assert not screen.query_one("#cmp-progress").display


async def test_esc_cancels_compare_all_and_keeps_the_results_so_far(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, by_hand
) -> None:
    sd = {f"w{i}": torch.full((64,), float(i)) for i in range(40)}
    other = {k: v + 1 for k, v in sd.items()}
    real = compare_mod.iter_values

    def slow(*args, **kwargs):
        for result in real(*args, **kwargs):
            time.sleep(0.05)
            yield result

    monkeypatch.setattr(compare_mod, "iter_values", slow)
    app = CkptApp(save(sd, tmp_path / "a.pth"), save(other, tmp_path / "b.pth"))
    async with app.run_test(size=SIZE) as pilot:
        screen, tree = await opened(pilot)
        await pilot.press("a")
        await pilot.pause(0.3)
        bar = screen.query_one("#cmp-all-progress", ProgressBar)
        assert screen.query_one("#cmp-progress").display
        assert bar.total is not None and 0 < bar.progress < bar.total
        await pilot.press("escape")
        await settle(pilot)
        done = [r for r in leaves(tree.merged) if r.max_abs is not None]
        assert 0 < len(done) < len(sd)
        assert all(r.max_abs == 1.0 and r.kind is Kind.VALUES for r in done)
        assert not screen.query_one("#cmp-progress").display
        assert f"values {len(done)}/{len(sd)} compared" in " ".join(text_of(app, "#header").split())


# --- the only-differences filter, keys, layout --------------------------------------------------


async def test_d_shows_only_the_differences(tmp_path: Path, by_hand) -> None:
    sd = state_dict()
    other = {k: v.clone() for k, v in sd.items()}
    del other["bn1.bias"]
    other["fc.weight"] = torch.zeros(3, 8)
    other["conv1.bias"] += 1
    app = CkptApp(save(sd, tmp_path / "a.pth"), save(other, tmp_path / "b.pth"))
    async with app.run_test(size=SIZE) as pilot:
        _, tree = await opened(pilot)
        everything = {r.path for r in shown_rows(tree) if r.leaf}
        assert everything == {(k,) for k in sd}
        await pilot.press("d")
        await pilot.pause()
        kept = {r.path for r in shown_rows(tree) if r.leaf}
        assert kept == {("bn1.bias",), ("fc.weight",)}  # values not compared yet
        assert "only differences shown" in text_of(app, "#header")
        await pilot.press("a")  # a value difference found later appears too
        await settle(pilot)
        kept = {r.path for r in shown_rows(tree) if r.leaf}
        assert kept == {("bn1.bias",), ("fc.weight",), ("conv1.bias",)}
        await pilot.press("d")
        await pilot.pause()
        assert {r.path for r in shown_rows(tree) if r.leaf} == everything


async def test_keys_walk_the_tree_and_the_panel_sits_below_it_at_80x24(tmp_path: Path) -> None:
    sd = state_dict()
    other = {k: v.clone() for k, v in sd.items()}
    other["fc.bias"] += 1
    app = CkptApp(save(sd, tmp_path / "a.pth"), save(other, tmp_path / "b.pth"))
    async with app.run_test(size=SIZE) as pilot:
        screen, tree = await opened(pilot)
        assert tree.current_row() is tree.merged
        await pilot.press("j")
        assert tree.current_row().key == "conv1"
        await pilot.press("j")
        assert tree.current_row().path == ("conv1.weight",)
        await pilot.press("h")  # to the parent
        assert tree.current_row().key == "conv1"
        await pilot.press("G")
        await pilot.pause()
        assert tree.current_row().path == ("fc.bias",)
        await pilot.press("g")
        assert tree.current_row() is tree.merged
        panel, tree_region = screen.query_one("#detail").region, tree.region
        assert panel.y >= tree_region.bottom and panel.x == tree_region.x
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen) and app.screen.which == "compare"
        await pilot.press("escape", "q")
        await pilot.pause()
    assert app.return_code == 0


# --- bad input ----------------------------------------------------------------------------------


async def exited(pilot) -> None:
    """Wait for the app to exit (waiting on a failed worker would raise its error here)."""
    for _ in range(200):
        if pilot.app.return_code is not None:
            return
        await pilot.pause(0.05)


async def test_a_bad_second_path_exits_2_with_one_line(tmp_path: Path) -> None:
    a = save(state_dict(), tmp_path / "a.pth")
    nope = tmp_path / "nope.pth"
    app = CkptApp(a, str(nope))
    async with app.run_test(size=SIZE) as pilot:
        await exited(pilot)
    assert app.return_code == 2
    assert app.error_message == f"ckptui: {nope}: no such file or directory"
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    app = CkptApp(a, str(text))
    async with app.run_test(size=SIZE) as pilot:
        await exited(pilot)
    assert app.return_code == 2
    assert app.error_message is not None and "\n" not in app.error_message
    assert app.error_message.startswith(f"ckptui: {text}: ")


def test_cli_fails_fast_on_a_missing_second_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = save(state_dict(), tmp_path / "a.pth")
    nope = tmp_path / "nope.pth"
    assert main([a, str(nope)]) == 2  # before any terminal is taken over
    err = capsys.readouterr().err
    assert err == f"ckptui: {nope}: no such file or directory\n"


async def test_slash_filters_keys_and_esc_brings_them_back(tmp_path: Path) -> None:
    sd = state_dict()
    other = {k: v.clone() for k, v in sd.items()}
    other["fc.bias"] = torch.zeros(5)
    app = CkptApp(save(sd, tmp_path / "a.pth"), save(other, tmp_path / "b.pth"))
    async with app.run_test(size=SIZE) as pilot:
        _, tree = await opened(pilot)
        await pilot.press("slash", *"bn1.run", "enter")
        await pilot.pause()
        kept = {r.path for r in shown_rows(tree) if r.leaf}
        assert kept == {("bn1.running_mean",), ("bn1.running_var",)}
        await pilot.press("d")  # both filters at once: nothing differs among those
        await pilot.pause()
        assert not [r for r in shown_rows(tree) if r.leaf]
        await pilot.press("d", "escape")
        await pilot.pause()
        assert {r.path for r in shown_rows(tree) if r.leaf} == {(k,) for k in sd}


def test_the_palette_offers_only_what_the_screen_can_do() -> None:
    from ckptui.app.commands import applies
    from ckptui.app.screens.browse import BrowseScreen

    compare = CompareScreen("a", "b")
    assert applies(compare, "screen.compare_all") and applies(compare, "screen.only_changes")
    assert not applies(compare, "screen.why") and not applies(compare, "tree_toggle_mark")
    browse = BrowseScreen("a")
    assert applies(browse, "screen.why") and not applies(browse, "screen.compare_all")


# --- never `=` for a pair that was not compared (issue 18) ---------------------------------------


async def test_local_files_have_their_values_compared_as_they_open(tmp_path: Path) -> None:
    sd = state_dict()
    other = {k: v.clone() for k, v in sd.items()}
    other["conv1.weight"][0, 0, 0, 0] += 1.0
    app = CkptApp(save(sd, tmp_path / "a.pth"), save(other, tmp_path / "b.pth"))
    async with app.run_test(size=SIZE) as pilot:
        _, tree = await opened(pilot)  # waits for the comparison the screen started itself
        for key in sd:
            row = row_at(tree, key)
            assert row.max_abs == truth(sd[key], other[key]), key
        assert row_at(tree, "conv1.weight").kind is Kind.VALUES
        assert row_at(tree, "fc.bias").kind is Kind.EQUAL
        header = " ".join(text_of(app, "#header").split())
        assert f"values all {len(sd)} compared" in header and "not compared" not in header


async def test_pairs_not_compared_are_marked_question_never_equal(tmp_path: Path, by_hand) -> None:
    sd = state_dict()
    other = {k: v.clone() for k, v in sd.items()}
    other["conv1.weight"] += 1.0  # differs, though its metadata is the same
    del other["fc.bias"]
    app = CkptApp(save(sd, tmp_path / "a.pth"), save(other, tmp_path / "b.pth"))
    async with app.run_test(size=SIZE) as pilot:
        _, tree = await opened(pilot)
        pending = [r for r in leaves(tree.merged) if r.path != ("fc.bias",)]
        assert pending and all(r.kind is Kind.PENDING for r in pending)
        for row in pending:
            assert label(tree, row).startswith("? "), label(tree, row)
            assert "not compared" in label(tree, row)
        # no row, leaf or module, claims `=` for values nobody read
        rows = shown_rows(tree)
        assert rows and not [label(tree, r) for r in rows if label(tree, r).startswith("=")]
        header = " ".join(text_of(app, "#header").split())
        assert f"? {len(pending)} not compared" in header
        assert "= 0 equal" in header and "1 of" not in header
        assert header.split(" · ")[1:2] != ["match"]


async def test_a_tied_weight_only_in_a_says_what_it_is_tied_to_and_counts_once(
    tmp_path: Path,
) -> None:
    # what save_pretrained writes to a .bin: lm_head.weight is wte.weight saved under two names
    torch.manual_seed(0)
    wte = torch.nn.Embedding(50, 16)
    head = torch.nn.Linear(16, 50, bias=False)
    head.weight = wte.weight
    model = torch.nn.ModuleDict({"wte": wte, "lm_head": head})
    a = model.state_dict()
    b = {"wte.weight": a["wte.weight"].clone()}  # model.safetensors keeps one name
    app = CkptApp(save(a, tmp_path / "pytorch_model.bin"), save(b, tmp_path / "b.pth"))
    async with app.run_test(size=SIZE) as pilot:
        _, tree = await opened(pilot)
        head_row = row_at(tree, "lm_head.weight")
        assert head_row.kind is Kind.ONLY_A
        assert "tied to wte.weight" in label(tree, head_row)
        one = a["wte.weight"].numel() * 4
        assert tree.merged.bytes_a == one == tree.merged.bytes_b
        await goto(pilot, tree, head_row)
        facts = " ".join(text_of(app, "#cmp-facts").split())
        assert "tied to wte.weight -" in facts
