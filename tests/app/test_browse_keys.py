"""Keys as a laggy terminal delivers them: several in one batch, and rows opened at the fold.

The batches are posted to the app as the terminal driver posts them (no pause between keys), which
is what `tmux send-keys j l j j` or a slow SSH link does; `pilot.press` waits after each key and
would hide the bug.
"""

from __future__ import annotations

from pathlib import Path

import torch
from textual import events

from ckptui.app.app import CkptApp
from tests.app.test_browse import cursor_path, opened


def send_batch(app: CkptApp, keys: str) -> None:
    """Post every key before any is handled, as the driver does for one read of the terminal."""
    for k in keys:
        app.post_message(events.Key(k, k))


async def test_keys_sent_in_one_batch_act_on_the_tree_as_each_leaves_it(dp_ckpt) -> None:
    path, ck = dp_ckpt
    app = CkptApp(str(path))
    async with app.run_test(size=(80, 24)) as pilot:
        tree = await opened(pilot)
        send_batch(app, "jljj")  # model, expand it, its second key
        await pilot.pause()
        await pilot.pause()
        second = list(ck["model"])[1]
        assert second == "module.conv1.bias"
        assert cursor_path(tree) == ("model", second)


async def test_enter_then_keys_in_one_batch_land_inside_the_opened_row(dp_ckpt) -> None:
    path, ck = dp_ckpt
    app = CkptApp(str(path))
    async with app.run_test(size=(80, 24)) as pilot:
        tree = await opened(pilot)
        app.post_message(events.Key("j", "j"))
        app.post_message(events.Key("enter", "\r"))
        send_batch(app, "jjj")
        await pilot.pause()
        await pilot.pause()
        assert cursor_path(tree) == ("model", list(ck["model"])[2])


async def test_expanding_the_last_visible_row_scrolls_its_children_into_view(
    tmp_path: Path,
) -> None:
    p = tmp_path / "many.pth"
    torch.save({f"block{i:02d}": {f"w{j}": torch.zeros(2) for j in range(6)} for i in range(40)}, p)
    app = CkptApp(str(p))
    async with app.run_test(size=(80, 24)) as pilot:
        tree = await opened(pilot)
        height = tree.scrollable_content_region.height
        # down to the last row that shows
        for _ in range(height - 1):
            await pilot.press("j")
        row = tree.cursor_node
        assert row is not None and row.line == tree.scroll_offset.y + height - 1
        await pilot.press("l")
        await pilot.pause()
        top, bottom = tree.scroll_offset.y, tree.scroll_offset.y + height - 1
        children = [c.line for c in row.children]
        assert len(children) == 6
        assert top <= row.line <= bottom  # the row itself stays in view
        assert all(top <= line <= bottom for line in children), (top, bottom, children)


async def test_the_command_palette_lists_ckptuis_commands_when_it_opens(dp_ckpt) -> None:
    from textual.command import CommandList, CommandPalette

    path, _ = dp_ckpt
    app = CkptApp(str(path))
    async with app.run_test(size=(80, 24)) as pilot:
        await opened(pilot)
        await pilot.press("ctrl+p")
        for _ in range(50):  # the hits arrive from the providers' tasks
            await pilot.pause(0.05)
            if isinstance(app.screen, CommandPalette):
                options = app.screen.query_one(CommandList)
                shown = [
                    str(options.get_option_at_index(i).prompt) for i in range(options.option_count)
                ]
                if any("Module view" in s for s in shown):
                    break
        assert isinstance(app.screen, CommandPalette)
        assert any("Module view" in s for s in shown), shown
        assert any("Why so big" in s for s in shown)
        assert not any("bf16" in s for s in shown)  # the default export keeps the dtype
        assert not any("Only differences" in s for s in shown)  # the compare screen's


async def test_the_filter_filters_as_you_type_with_the_count_in_the_bar(train_ckpt) -> None:
    from textual.widgets import Static

    from ckptui.app.widgets.ckpt_tree import CkptTree
    from ckptui.app.widgets.filter_bar import FilterBar

    app = CkptApp(str(train_ckpt))
    async with app.run_test(size=(80, 24)) as pilot:
        tree = await opened(pilot)
        await pilot.press("slash", *"exp_avg_sq")  # no enter
        for _ in range(40):
            await pilot.pause(0.05)
            if tree.filtered:
                break
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        assert tree.filtered
        n = len(tree.matches)
        assert n == 6 and all(p[-1] == "exp_avg_sq" for p in tree.matches)
        count = app.screen.query_one("#filter-count", Static)
        assert str(count.render()) == "6 matches"
        bar = app.screen.query_one(FilterBar)
        assert bar.has_focus  # typing goes on in the bar
        await pilot.press("enter")
        await pilot.pause()
        assert not bar.display and not app.screen.query_one("#filter-row").display
        assert tree.filtered and isinstance(app.focused, CkptTree)
        # esc gives the whole tree back
        await pilot.press("escape")
        await pilot.pause()
        assert not tree.filtered


async def test_z_zooms_the_panel_onto_values_and_histogram_at_80x24(train_ckpt) -> None:
    from ckptui.app.widgets.ckpt_tree import CkptTree
    from ckptui.app.widgets.detail import DetailPanel
    from tests.app.test_browse import settle

    app = CkptApp(str(train_ckpt))
    async with app.run_test(size=(80, 24)) as pilot:
        tree = await opened(pilot)
        await pilot.press("j", "l", "j")  # model.conv1.weight
        await settle(pilot)
        panel = app.screen.query_one(DetailPanel)
        hist = app.screen.query_one("#histogram")
        bottom = panel.region.y + panel.region.height
        assert hist.region.y >= bottom or hist.region.height == 0  # below the fold unzoomed
        await pilot.press("z")
        await pilot.pause()
        assert not tree.display or tree.region.height == 0
        assert panel.region.height >= 20
        assert hist.region.height == 3 and hist.region.y + 3 <= panel.region.y + panel.region.height
        await pilot.press("z")
        await pilot.pause()
        assert tree.region.height > 0 and isinstance(app.focused, CkptTree)
        # J scrolls the panel; a new row starts its card at the top
        await pilot.press("J")
        await pilot.pause()
        assert panel.scroll_y > 0
        await pilot.press("j")
        await settle(pilot)
        assert panel.scroll_y == 0
