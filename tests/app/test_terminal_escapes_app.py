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


# --- the compare screen: markup and escapes from the file ---------------------------------------

RED = "w[red]x[/red]"
"""A key that is rich markup: shown literally, never red."""
LINK = "[link=https://evil.example/]click[/link]"
"""A value that is a rich link: shown literally, never a link."""


def _styles(renderable: object) -> list[object]:
    from rich.console import Console

    console = Console(width=200, color_system="truecolor")
    return [s.style for s in console.render(renderable) if s.style is not None]


@pytest.fixture
def hostile_pair(tmp_path: Path) -> tuple[Path, Path]:
    """Two real `torch.save` files whose keys and values are markup and escapes; A's name holds
    both too. A has a key B lacks (so the panel's `in file` row names it)."""
    a = tmp_path / f"a{WIPE}[red].pth"
    b = tmp_path / "b.pth"
    common = {RED: torch.ones(2), f"e{WIPE}": torch.zeros(3)}
    torch.save({"model": {**common, "only[bold]": torch.ones(1)}, "cfg": {"name": LINK}}, a)
    torch.save({"model": {**common, RED: torch.ones(2) * 2}, "cfg": {"name": "[i]b[/i]"}}, b)
    return a, b


async def test_compare_shows_markup_and_escapes_from_the_file_literally(
    hostile_pair: tuple[Path, Path],
) -> None:
    from ckptui.app.widgets.diff_rows import find
    from ckptui.app.widgets.diff_tree import DiffTree

    a, b = hostile_pair
    app = CkptApp(str(a), str(b))
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        tree = app.screen.query_one(DiffTree)
        assert tree.merged is not None
        header = text_of(app, "#header")
        assert f"a{SHOWN}[red].pth" in header and "\x1b" not in header, header

        async def facts_of(*path: object) -> tuple[str, list[object]]:
            row = find(tree.merged, path)
            assert row is not None, path
            assert tree.select_row(row)
            await pilot.pause()
            await pilot.pause(0.1)
            static = app.screen.query_one("#cmp-facts")
            label = tree._rows[id(row)].label
            assert "\x1b" not in label.plain and "\r" not in label.plain, label.plain
            return text_of(app, "#cmp-facts"), [*_styles(static.content), *_styles(label)]

        facts, styles = await facts_of("model", RED)
        assert f"model.{RED}" in facts, facts  # the title, and the shape rows below it
        facts, styles = await facts_of("model", "only[bold]")
        assert "['model']['only[bold]']" in facts, facts  # `in file`: the path as written
        facts, styles = await facts_of("cfg", "name")
        assert LINK in facts and "[i]b[/i]" in facts, facts
        assert not any(s.link for s in styles), styles
        assert not any(s.italic for s in styles), styles
        facts, styles = await facts_of("model", f"e{WIPE}")
        assert f"model.e{SHOWN}" in facts and "\x1b" not in facts and "\r" not in facts, facts
        for path in (("model", RED), ("model", "only[bold]")):
            _, styles = await facts_of(*path)
            assert not any(s.color and s.color.name == "red" for s in styles), (path, styles)
        # y copies the key path: its notice shows it as written, never as markup
        await facts_of("model", RED)
        await pilot.press("y")
        await pilot.pause()
        notes = list(app._notifications)
        assert notes, "no notice"
        note = notes[-1]
        assert note.message == f"copied ['model']['{RED}']" and note.markup is False, note


# --- the browser and why screens: file names and keys are never markup -------------------------


def _plain(app: CkptApp, selector: str) -> str:
    """What a Static shows, as Textual itself renders its content (markup or not)."""
    from textual.widgets import Static

    return app.screen.query_one(selector, Static).render().plain


@pytest.fixture
def markup_named(tmp_path: Path) -> Path:
    """A real `torch.save` under a path that is bad rich markup: `[/x]` closes no tag (it raised
    MarkupError and the browser died with a traceback) and `[val=0.3]` is a style (it vanished
    from the header). Its key is markup too."""
    folder = tmp_path / "best[val=0.3][link=https:e.x]" / "["
    folder.mkdir(parents=True)
    path = folder / f"x]{WIPE}.pth"
    torch.save({RED: torch.ones(2), "b": torch.zeros(3)}, path)
    return path


async def test_browser_header_why_headline_and_notices_show_the_name_literally(
    markup_named: Path,
) -> None:
    shown = str(markup_named).replace(WIPE, SHOWN)
    app = CkptApp(str(markup_named))
    async with app.run_test(size=(160, 30)) as pilot:
        tree = await opened(pilot)
        header = _plain(app, "#header")
        assert header.startswith(f"{shown} · torch-zip"), header
        rows = {n.data.path: n for n in tree.root.children if n.data is not None}
        tree.move_cursor(rows[(RED,)])
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
        note = list(app._notifications)[-1]
        assert note.message == f"copied ['{RED}']" and note.markup is False, note
        await pilot.press("w")  # its headline names the file until the breakdown is made
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        assert type(app.screen).__name__ == "WhyScreen"
        assert "weights alone would be" in _plain(app, "#why-headline")
        assert app.return_code is None  # still running: no MarkupError
