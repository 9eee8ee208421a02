"""Typed text and file text in the app's notices and panels is never markup (issue 21).

A filter query is typed by the user and a file name, a key or a device string comes from the
file; each reached rich/Textual markup somewhere: `no key matches '[/x]'` raised MarkupError
when its toast was drawn (the app died with a traceback), `copied <path>` did the same for a
path holding `[/x]`, and a storage location `[/x]gpu` killed the browser's detail panel. The
export dialog escaped markup in the names it shows but left ESC, CR and bidi overrides raw.

Toasts are only drawn with `run_test(notifications=True)` (off by default), which is what
makes the MarkupError show here as it did in a terminal.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from textual.widgets import Input, Static
from textual.widgets._toast import Toast

from ckptui.app.app import CkptApp
from ckptui.app.screens.export import ExportDoneScreen, ExportScreen
from ckptui.app.widgets.ckpt_tree import CkptTree
from ckptui.core.units import printable
from tests.app.test_browse import cursor_path, opened, settle, text_of
from tests.app.test_export import finish, open_dialog
from tests.app.test_terminal_escapes_app import SHOWN, WIPE
from tests.conftest import save_with_location

RLO = "\u202e"
"""Right-to-left override: makes what follows it read backwards."""
HOSTILE = f"{WIPE}{RLO}"
"""ESC cursor-up + erase-line, CR, then a bidi override."""
HOSTILE_SHOWN = SHOWN + r"\u202e"


def _toasts(app: CkptApp) -> list[str]:
    """The text of every toast drawn on the current screen (drawing is what raised)."""
    return [toast.render().plain for toast in app.screen.query(Toast)]


def _last_note(app: CkptApp):
    notes = list(app._notifications)
    assert notes, "no notice"
    return notes[-1]


def _static(app: CkptApp, selector: str) -> str:
    return app.screen.query_one(selector, Static).render().plain


@pytest.fixture
def small(tmp_path: Path) -> Path:
    p = tmp_path / "small.pth"
    torch.save({"model": {"w": torch.ones(2), "b": torch.zeros(2)}}, p)
    return p


@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("[/x]zz", "no key matches '[/x]zz'"),
        ("[red]w[/red]", "no key matches '[red]w[/red]'"),
        ("[link=https://evil.example]w[/link]", "no key matches '[link=https://evil.example]w[/link]'"),
        ("w[/]?", "1 match for 'w[/]?' · n/N to step · esc clears"),
        ("(?P<[/x]>a)", "not a valid regex: bad character in group name '[/x]' at position 4"),
        ("[red]x[/", "not a valid regex: unterminated character set at position 6"),
        (f"(?P<{WIPE}>a)", rf"not a valid regex: bad character in group name '{SHOWN}' at position 4"),
    ],
)  # fmt: skip
async def test_a_typed_filter_shows_literally_in_its_notice(
    small: Path, query: str, said: str
) -> None:
    app = CkptApp(str(small))
    async with app.run_test(size=(100, 30), notifications=True) as pilot:
        await opened(pilot)
        await pilot.press("slash")
        app.screen.query_one("#filter", Input).value = query
        await pilot.press("enter")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        await pilot.pause(0.1)
        note = _last_note(app)
        assert note.message == said and note.markup is False, note
        toasts = _toasts(app)
        assert any(said in t for t in toasts), toasts
        assert not any("\x1b" in t or "\r" in t for t in toasts), toasts
        assert app.return_code is None  # still running: no MarkupError


@pytest.fixture
def markup_source(tmp_path: Path) -> Path:
    """A real `torch.save` whose path is bad markup (`…/best[/x]…`: a folder `best[` holding a
    file `x]…`) and holds ESC, CR and U+202E, with a key holding them too."""
    (tmp_path / "best[").mkdir()
    p = tmp_path / "best[" / f"x]{HOSTILE}.pth"
    torch.save({"model": {f"w{HOSTILE}": torch.ones(3), "b": torch.zeros(2)}}, p)
    return p


async def test_the_export_screens_show_names_and_paths_escaped(
    markup_source: Path, tmp_path: Path
) -> None:
    """The dialog's keep line (a marked key), the done screen's `Wrote` and its `copied`
    notice: markup shown literally, control characters as escapes, and the app keeps running
    (`copied best[/x]…` raised MarkupError)."""
    app = CkptApp(str(markup_source))
    async with app.run_test(size=(120, 34), notifications=True) as pilot:
        tree = await opened(pilot)
        await pilot.press("j", "l", "j")  # model, open it, its first key
        assert cursor_path(tree) == ("model", f"w{HOSTILE}")
        await pilot.press("space")
        screen = await open_dialog(pilot)
        keep = _static(app, "#export-keep")
        assert f"1 marked: model.w{HOSTILE_SHOWN}" in keep, keep
        assert "\x1b" not in keep and "\r" not in keep and RLO not in keep
        target = screen.query_one("#export-target", Input).value
        assert target == str(tmp_path / "best[" / f"x]{HOSTILE}.slim.pth")  # the real name
        await pilot.press("enter")
        await finish(pilot)
        done = app.screen
        assert isinstance(done, ExportDoneScreen), done
        out = Path(done.result.output)
        assert out.name == f"x]{HOSTILE}.slim.pth" and out.exists()
        said = " ".join(w.render().plain for w in done.query(Static))
        assert printable(str(out.absolute())) in said, said
        assert "\x1b" not in said and "\r" not in said and RLO not in said
        await pilot.press("y")
        await pilot.pause()
        await pilot.pause(0.1)
        note = _last_note(app)
        assert note.message == f"copied {printable(str(out.absolute()))}", note
        assert note.markup is False
        toasts = _toasts(app)
        assert any("copied" in t and "[/x]" in t for t in toasts), toasts
        assert not any("\x1b" in t or "\r" in t or RLO in t for t in toasts), toasts
        assert app.return_code is None


async def test_a_typed_target_shows_escaped_in_the_dialogs_note(
    small: Path, tmp_path: Path
) -> None:
    """A target typed (or pasted) with ESC, CR and U+202E in it: the note naming it, for a
    file that exists and for a folder that does not, shows the escapes, never the raw bytes."""
    existing = tmp_path / f"out[x]{HOSTILE}.pth"
    existing.write_bytes(b"old")
    app = CkptApp(str(small))
    async with app.run_test(size=(120, 34)) as pilot:
        await opened(pilot)
        screen = await open_dialog(pilot)
        assert isinstance(screen, ExportScreen)
        box = screen.query_one("#export-target", Input)
        for typed, words in (
            (str(existing), "exists: Export will ask before replacing it"),
            (str(tmp_path / f"no{HOSTILE}" / "w.pth"), "no folder"),
        ):
            box.value = typed
            await pilot.pause()
            note = _static(app, "#export-note")
            assert printable(typed) in note and words in note, note
            assert "\x1b" not in note and "\r" not in note and RLO not in note, note
        assert app.return_code is None


async def test_a_device_from_the_file_is_shown_literally_in_the_panel(tmp_path: Path) -> None:
    """The storage location is any string the file says: `[/x]gpu` killed the browser with a
    MarkupError, and ESC/CR/U+202E went to the terminal raw."""
    p = tmp_path / "dev.pth"
    save_with_location({"w": torch.ones(2)}, p, f"[/x]gpu{HOSTILE}")
    app = CkptApp(str(p))
    async with app.run_test(size=(120, 30)) as pilot:
        await opened(pilot)
        await pilot.press("j")
        await settle(pilot)
        facts = text_of(app, "#facts")
        assert f"[/x]gpu{HOSTILE_SHOWN}  (opens on CPU here" in facts, facts
        assert "\x1b" not in facts and "\r" not in facts and RLO not in facts
        tree = app.screen.query_one(CkptTree)  # the row's dtype column names the device too
        rows = [tree.render_line(y).text for y in range(tree.size.height)]
        assert any(f"[/x]gpu{HOSTILE_SHOWN}" in row for row in rows), rows
        assert not any("\x1b" in row or "\r" in row or RLO in row for row in rows), rows
        assert app.return_code is None


async def test_the_why_tree_shows_keys_escaped(tmp_path: Path) -> None:
    """The size breakdown's rows name the largest keys: their control characters show as
    escapes (a `Text` is never markup, but it passed ESC through)."""
    p = tmp_path / "big.pth"
    torch.save({f"big{HOSTILE}": torch.ones(4096), "small": torch.ones(2)}, p)
    app = CkptApp(str(p))
    async with app.run_test(size=(120, 34)) as pilot:
        await opened(pilot)
        await pilot.press("w")
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()
        assert type(app.screen).__name__ == "WhyScreen"
        tree = app.screen.query_one("#why-groups")
        labels = []
        stack = [tree.root]
        while stack:
            node = stack.pop()
            labels.append(node.label.plain)
            stack.extend(node.children)
        assert any(f"big{HOSTILE_SHOWN}" in label for label in labels), labels
        assert not any("\x1b" in s or "\r" in s or RLO in s for s in labels), labels
