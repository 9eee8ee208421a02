"""Terminal escapes in file text (issue 21): keys and class names from the file reach the
terminal with every control character shown as an escape, never as the raw byte.

A class name of cursor-up + erase-line sequences, printed raw, wiped the danger line above it.
The checkpoint here is a real `torch.save` of a whole module whose class has such a name, and of
a state dict whose key holds the same sequence.
"""

from __future__ import annotations

import io
import os
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from rich.console import Console

from ckptui.cli import main as cli
from ckptui.core.units import printable
from ckptui.report.text import inspect as render

from ..conftest import run_cli

WIPE = "\x1b[1A\x1b[2K\r"
"""Cursor up, erase the line, back to its start: what hid the danger line."""
SHOWN = r"\x1b[1A\x1b[2K\r"
"""The same, as ckptui must print it."""
CLASS = f"Wipe{WIPE}Net"
KEY = f"w{WIPE}x"
RAW = ("\x1b", "\r")
"""No raw byte of these may come from the file (rich's own styles on a terminal use ESC, so the
terminal-console tests compare plain text; the piped runs must have no ESC at all)."""


@pytest.fixture
def hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A whole module of class `evilpkg.Wipe<ESC…>Net`, a state dict key with the same bytes,
    and `os.system` stored as a value (a danger finding that must stay visible)."""
    module = types.ModuleType("evilpkg")
    cls = type(CLASS, (torch.nn.Module,), {"__module__": "evilpkg", "__qualname__": CLASS})
    setattr(module, CLASS, cls)
    monkeypatch.setitem(sys.modules, "evilpkg", module)  # pickle finds the class by its name
    net = cls()
    net.fc = torch.nn.Linear(2, 2)
    p = tmp_path / "hostile.pth"
    torch.save(
        {"model": net, "state_dict": {KEY: torch.ones(2), "b": torch.zeros(3)}, "run": os.system},
        p,
    )
    return p


@pytest.fixture
def other(tmp_path: Path) -> Path:
    p = tmp_path / "other.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}}, p)
    return p


def test_printable_escapes_controls_as_repr_does() -> None:
    text = "a\x00\t\n\r\x1b\x7f\x85\x9b\u202e\u2066b"
    assert printable(text) == r"a\x00\t\n\r\x1b\x7f\x85\x9b\u202e\u2066b"
    assert printable(text) == repr(text)[1:-1]
    for ordinary in ("model.layer1.0.weight", "ümlaut 中文 ✓", "back\\slash", ""):
        assert printable(ordinary) == ordinary  # ordinary keys print as before
    assert printable(3) == "3"


@pytest.mark.parametrize("command", ["inspect", "why", "diff"])
def test_piped_output_has_no_raw_control_bytes(command: str, hostile: Path, other: Path) -> None:
    """Piped, rich writes no styles: any ESC or CR in stdout would be the file's."""
    args = (command, str(hostile), *((str(other),) if command == "diff" else ()))
    result = run_cli(*args)
    assert result.returncode in (0, 1), result.stderr
    assert "Traceback" not in result.stderr
    for byte in RAW:
        assert byte not in result.stdout, (command, byte)
    assert f"w{SHOWN}x" in result.stdout  # the key, visibly escaped
    if command == "inspect":
        assert f"evilpkg.Wipe{SHOWN}Net" in result.stdout  # the class name
        assert "dangerous_call" in result.stdout and "posix.system" in result.stdout


def terminal_run(monkeypatch: pytest.MonkeyPatch, *argv: str) -> tuple[int, str]:
    """cli.main with stdout a colour terminal (styles on), its output recorded."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200, color_system="standard")
    monkeypatch.setattr(render, "stdout_console", lambda: console)
    code = cli.main(list(argv))
    return code, out.getvalue()


def _without_styles(text: str) -> str:
    """The output with rich's own SGR sequences (ESC [ digits/; m) taken out."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


@pytest.mark.parametrize("command", ["inspect", "why", "diff"])
def test_terminal_output_keeps_the_danger_line(
    command: str, hostile: Path, other: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal only rich's colour codes are written: no cursor movement, no erase, no CR."""
    argv = (command, str(hostile), *((str(other),) if command == "diff" else ()))
    code, out = terminal_run(monkeypatch, *argv)
    assert code in (0, 1)
    assert "\x1b[" in out  # styles are on: the console really is a terminal
    plain = _without_styles(out)
    for byte in RAW:
        assert byte not in plain, (command, byte)
    assert f"w{SHOWN}x" in plain
    if command == "inspect":
        lines = plain.splitlines()
        assert any(f"model  evilpkg.Wipe{SHOWN}Net" in line for line in lines), plain
        danger = [line for line in lines if "dangerous_call" in line and "posix.system" in line]
        assert danger, plain  # the danger line is there, whole


def test_training_text_escapes_file_names() -> None:
    """The weights_only verdict names globals from the file: shown escaped, never as markup."""
    from ckptui.analysis.training.weights_only import RefusedGlobal, WeightsOnlyReport
    from ckptui.report.text.training import weights_only_verdict

    refused = RefusedGlobal(f"evil.[bold]{WIPE}", benign=False, kind="user", why="")
    report = WeightsOnlyReport(loads=False, refused_globals=(refused,))
    out = io.StringIO()
    Console(file=out, force_terminal=True, width=200, color_system=None).print(
        weights_only_verdict(report)
    )
    text = out.getvalue()
    assert "\x1b" not in text and "\r" not in text
    assert f"evil.[bold]{SHOWN}" in text  # `[bold]` stayed text, not a style
