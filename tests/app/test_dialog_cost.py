"""What opening a dialog (`x`, `w`) costs the screen behind it, and the dialog itself.

Issue 16: at 100,000 keys `x` stalled the UI thread for 300-800 ms. Part of it was work nobody
sees: the browser's footer rebuilt under the dialog (and each change behind a dialog repaints
the whole dialog), and a hidden progress bar styled and laid out with the rest. These tests pin
those savings on real checkpoints; the timings are in tests/benchmarks/bench_ui.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import Button, ProgressBar

from ckptui.app.app import CkptApp
from ckptui.app.screens.browse import BrowseScreen
from ckptui.app.screens.export import ExportScreen
from ckptui.app.screens.why import WhyScreen
from ckptui.app.widgets.keys_footer import KeysFooter
from tests.app.test_browse import opened
from tests.app.test_export import finish


def footer_keys(screen) -> list:
    return list(screen.query_one(KeysFooter).query("FooterKey"))


async def test_footer_is_not_rebuilt_under_a_dialog_nor_after_it(train_ckpt: Path) -> None:
    app = CkptApp(str(train_ckpt))
    async with app.run_test(size=(100, 30)) as pilot:
        await opened(pilot)
        browse = app.screen
        assert isinstance(browse, BrowseScreen)
        before = footer_keys(browse)
        assert before, "the browser's footer shows its keys"
        shown = [key.description for key in before]
        assert "Export" in shown
        for key, dialog in (("x", ExportScreen), ("w", WhyScreen)):
            await pilot.press(key)
            await finish(pilot)
            assert isinstance(app.screen, dialog)
            assert footer_keys(browse) == before  # the same widgets: nothing rebuilt behind
            await pilot.press("escape")
            await finish(pilot)
            assert app.screen is browse
            assert footer_keys(browse) == before  # same keys as before: not rebuilt either
        assert [key.description for key in footer_keys(browse)] == shown


class _Keyed(Button):
    BINDINGS: ClassVar = [Binding("k", "press", "Keyed key")]


class _Plain(Button):
    pass


class _FooterApp(App[None]):
    def compose(self) -> ComposeResult:
        yield _Keyed("keyed", id="keyed")
        yield _Plain("plain", id="plain")
        yield KeysFooter()


async def test_footer_still_follows_keys_that_change() -> None:
    app = _FooterApp()
    async with app.run_test(size=(80, 10)) as pilot:
        app.query_one("#keyed").focus()
        await pilot.pause()
        await pilot.pause()
        assert "Keyed key" in [k.description for k in app.query("FooterKey")]
        app.query_one("#plain").focus()
        await pilot.pause()
        await pilot.pause()
        assert "Keyed key" not in [k.description for k in app.query("FooterKey")]


async def test_export_dialog_mounts_its_progress_bar_only_to_write(
    train_ckpt: Path, tmp_path: Path
) -> None:
    app = CkptApp(str(train_ckpt))
    async with app.run_test(size=(100, 30)) as pilot:
        await opened(pilot)
        await pilot.press("x")
        await finish(pilot)
        screen = app.screen
        assert isinstance(screen, ExportScreen)
        assert not screen.query(ProgressBar)
        assert not screen.has_class("-wide") and not screen.has_class("-narrow")
        target = screen.query_one("#export-target")
        target.value = str(tmp_path / "out.pth")  # type: ignore[attr-defined]
        await pilot.pause()
        await pilot.press("enter")
        await finish(pilot)
        assert (tmp_path / "out.pth").exists()
