"""The size breakdown screen (`w`), driven with keys on real checkpoints made in the test."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from textual.widgets import ProgressBar, Static

from ckptui.app.app import CkptApp
from ckptui.app.screens.browse import BrowseScreen
from ckptui.app.screens.why import BarTree, FindingList, WhyScreen
from tests.app.test_browse import cursor_path, opened, text_of
from tests.conftest import training_checkpoint


@pytest.fixture
def fat_ckpt(tmp_path: Path) -> Path:
    """A training checkpoint plus an untied copy of a 1 MB tensor and a tiny view of 16 MB."""
    ck = training_checkpoint()
    torch.manual_seed(1)
    emb = torch.randn(1024, 256)
    ck["model"]["embed.weight"] = emb
    ck["model"]["head.weight"] = emb.clone()
    ck["anchors"] = torch.randn(4_000_000)[:10]
    p = tmp_path / "fat.pth"
    torch.save(ck, p)
    return p


async def open_why(pilot) -> WhyScreen:
    await opened(pilot)
    await pilot.press("w")
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()  # the duplicates worker starts after
    await pilot.pause()
    screen = pilot.app.screen
    assert isinstance(screen, WhyScreen)
    return screen


def finding_kinds(screen: WhyScreen) -> list[str]:
    return [f.kind for f in screen._findings]


async def test_breakdown_headline_groups_and_findings(fat_ckpt: Path) -> None:
    app = CkptApp(str(fat_ckpt))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_why(pilot)
        headline = text_of(app, "#why-headline")
        assert "optimizer state (Adam-style)" not in headline  # the 16 MB view dominates
        assert "% other tensors" in headline and "weights alone would be" in headline
        kinds = finding_kinds(screen)
        # the duplicate search ran in its worker and added its finding; largest savings first
        assert {"view_waste", "optimizer_state", "duplicate", "float_weights"} <= set(kinds)
        savings = [f.saving_bytes for f in screen._findings]
        assert savings == sorted(savings, reverse=True)
        assert not app.screen.query_one(ProgressBar).display
        assert "1 group(s) of identical tensors" in text_of(app, "#why-dup-label")
        tree = app.screen.query_one(BarTree)
        labels = [str(n.label) for n in tree.root.children]
        assert labels[0].startswith("By role") and any("module prefix" in x for x in labels)
        roles = [str(n.label).split("  ")[0].strip() for n in tree.root.children[0].children]
        assert roles[:3] == ["other tensors", "model weights", "optimizer state"]


async def test_enter_on_a_finding_jumps_to_its_subtree(fat_ckpt: Path) -> None:
    app = CkptApp(str(fat_ckpt))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_why(pilot)
        target = finding_kinds(screen).index("optimizer_state")
        await pilot.press("tab")
        assert isinstance(app.screen.focused, FindingList)
        for _ in range(target):
            await pilot.press("j")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, BrowseScreen)
        tree = await opened(pilot)
        assert cursor_path(tree) == ("optimizer",)


async def test_enter_on_a_group_row_jumps_and_w_reopens_from_cache(fat_ckpt: Path) -> None:
    app = CkptApp(str(fat_ckpt))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_why(pilot)
        first = screen.cache.breakdown
        tree = app.screen.query_one(BarTree)
        # By role -> first row (other tensors: the `anchors` view), then enter
        await pilot.press("j", "enter")
        await pilot.pause()
        assert isinstance(app.screen, BrowseScreen)
        browse_tree = await opened(pilot)
        assert cursor_path(browse_tree) == ("anchors",)
        await pilot.press("w")
        await pilot.pause()
        again = app.screen
        assert isinstance(again, WhyScreen) and again.cache.breakdown is first
        assert "duplicate" in finding_kinds(again)  # not searched again, kept
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, BrowseScreen)
        assert cursor_path(browse_tree) == ("anchors",)
        del tree


async def test_breakdown_of_a_file_changed_meanwhile_says_so(tmp_path: Path) -> None:
    p = tmp_path / "w.pth"
    torch.save({"w": torch.zeros(10)}, p)
    app = CkptApp(str(p))
    async with app.run_test(size=(100, 30)) as pilot:
        await opened(pilot)
        with p.open("ab") as f:
            f.write(b"x" * 10)
        await pilot.press("w")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        assert "changed size since it was opened" in text_of(app, "#why-headline")
        assert app.screen.query_one("#why-dup-label", Static) is not None


async def test_a_folder_of_checkpoints_is_searched_for_duplicates_file_by_file(
    tmp_path: Path,
) -> None:
    """`w` on a folder searches each checkpoint file as `ckptui why` does (it used to search the
    folder as one file and find nothing); the finding is named under its file."""
    torch.manual_seed(0)
    emb = torch.randn(256, 256)  # 256 KiB: above the search's 64 KiB minimum
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save({"embed.weight": emb, "head.weight": emb.clone()}, folder / "last.pth")
    torch.save({"w": torch.randn(8)}, folder / "first.pth")
    app = CkptApp(str(folder))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_why(pilot)
        dups = [f for f in screen._findings if f.kind == "duplicate"]
        assert [f.paths for f in dups] == [
            (("last.pth", "embed.weight"), ("last.pth", "head.weight"))
        ]
        assert dups[0].message.startswith("last.pth: 2 identical float32 [256, 256] tensors")
        assert "1 group(s) of identical tensors" in text_of(app, "#why-dup-label")
