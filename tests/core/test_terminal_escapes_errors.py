"""Terminal escapes in stderr (issue 21): every error and warning line that quotes text from the
file (a key, a class name, a file or shard name) shows each control character as an escape, so
it stays one line and the terminal obeys none of it.

One escaping serves them all, `core.units.printable`: `CkptError` applies it to its path and
message, and the CLI to the few lines it prints itself (`skipped`, `not exported`, the browser's
error). The names here hold cursor-up + erase-line, CR/LF, a tab, NEL, a line separator, a bidi
override and C1's one-byte CSI; the folders are real `save_file` shards with a hostile index.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ckptui.cli import main as cli
from ckptui.core import errors
from ckptui.core.units import printable

NASTY = "\x1b[1A\x1b[2K\r\n\t\x85\u2028\u202e\x9b"
SHOWN = r"\x1b[1A\x1b[2K\r\n\t\x85\u2028\u202e\x9b"
SHARD = f"evil{NASTY}.safetensors"
"""A shard file name: Linux takes every byte but `/` and NUL."""
CONTROL = {*map(chr, range(0x20)), *map(chr, range(0x7F, 0xA0)), "\u2028", "\u2029", "\u202e"}


def assert_clean(err: str, lines: int = 1) -> None:
    """`err` is `lines` lines, and no control character but their ends came from the file."""
    assert err.endswith("\n") and err.count("\n") == lines, repr(err)
    assert not CONTROL & set(err.replace("\n", "")), repr(err)
    assert "Traceback" not in err


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 2) -> str:
    capsys.readouterr()
    assert cli.main(argv) == code
    err = capsys.readouterr().err
    assert_clean(err)
    return err


@pytest.mark.parametrize(
    "cls",
    [
        errors.CkptError,
        errors.NotFound,
        errors.NotReadable,
        errors.NotACheckpoint,
        errors.CorruptFile,
        errors.Unsupported,
        errors.TimedOut,
        errors.Redirected,
    ],
)
def test_every_error_escapes_its_path_and_message(cls: type[errors.CkptError]) -> None:
    e = cls(f"dir/{SHARD}", f"key {NASTY!s} of class Wipe{NASTY}Net")
    assert e.path == f"dir/evil{SHOWN}.safetensors"
    assert e.message == f"key {SHOWN} of class Wipe{SHOWN}Net"
    assert str(e) == f"{e.path}: {e.message}"
    again = cls(e.path, e.message)  # escaping twice changes nothing
    assert (again.path, again.message) == (e.path, e.message)


def test_printable_is_the_one_escaping() -> None:
    assert printable(NASTY) == SHOWN
    assert printable("model.layers.0.weight ü 中 \\x1b") == "model.layers.0.weight ü 中 \\x1b"
    assert printable("\u2029\u2066\u2069\u200f\u061c") == r"\u2029\u2066\u2069\u200f\u061c"


@pytest.fixture
def outside_link(tmp_path: Path) -> Path:
    """A sharded folder whose index names a shard that is a symlink leading out of it: refused
    by name, before anything is read (exit 2)."""
    folder = tmp_path / "model"
    folder.mkdir()
    save_file({"ok": torch.ones(2)}, str(folder / "good.safetensors"))
    save_file({"x": torch.ones(2)}, str(tmp_path / "outside.safetensors"))
    (folder / SHARD).symlink_to(tmp_path / "outside.safetensors")
    index = {"metadata": {}, "weight_map": {"ok": "good.safetensors", f"k{NASTY}": SHARD}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder / "model.safetensors.index.json"


@pytest.mark.parametrize(
    "argv",
    [
        ["inspect", "{p}"],
        ["inspect", "--json", "{p}"],
        ["why", "{p}"],
        ["why", "--json", "{p}"],
        ["export", "{p}", "-o", "{out}"],
        ["diff", "{p}", "{other}"],
        ["diff", "{other}", "{p}"],
    ],
)
def test_each_subcommand_prints_a_shard_name_escaped(
    capsys: pytest.CaptureFixture[str], outside_link: Path, tmp_path: Path, argv: list[str]
) -> None:
    other = tmp_path / "other.safetensors"
    save_file({"ok": torch.ones(2)}, str(other))
    out = tmp_path / "out.safetensors"
    args = [a.format(p=outside_link, out=out, other=other) for a in argv]
    err = one_line_error(capsys, args)
    shown = f"{outside_link.parent}/evil{SHOWN}.safetensors"
    assert (
        err
        == f"ckptui: {shown}: a symlink leading outside the folder (to {tmp_path}/outside.safetensors): not read\n"
    )
    assert not out.exists()


def test_the_browser_prints_its_error_escaped(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, outside_link: Path
) -> None:
    """`ckptui PATH`: the open fails in the app's worker; the CLI prints the app's message once
    the terminal is restored (run headless here)."""
    from textual.app import App

    from ckptui.app.app import CkptApp

    monkeypatch.setattr(CkptApp, "run", functools.partialmethod(App.run, headless=True))
    err = one_line_error(capsys, [str(outside_link)])
    assert f"evil{SHOWN}.safetensors: a symlink leading outside the folder" in err, err


def test_an_export_names_skipped_keys_escaped(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A sparse tensor cannot be exported: it is skipped with one stderr line naming its key."""
    src = tmp_path / "sd.pth"
    torch.save({f"w{NASTY}": torch.eye(3).to_sparse(), "ok": torch.ones(2)}, src)
    capsys.readouterr()
    assert cli.main(["export", str(src), "-o", str(tmp_path / "out.pth")]) == 0
    err = capsys.readouterr().err
    assert_clean(err)
    assert err.startswith(f"ckptui: skipped w{SHOWN}: "), err


def test_missing_shards_are_named_escaped(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A shard the index names but the folder lacks: the refusal and, with --allow-missing,
    the line per tensor left out, both quote the key and the shard name escaped."""
    folder = tmp_path / "model"
    folder.mkdir()
    save_file({"ok": torch.ones(2)}, str(folder / "good.safetensors"))
    index = {"metadata": {}, "weight_map": {"ok": "good.safetensors", f"k{NASTY}": SHARD}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    out = tmp_path / "out.safetensors"
    err = one_line_error(capsys, ["export", str(folder), "-o", str(out)])
    assert f"evil{SHOWN}.safetensors" in err and "--allow-missing" in err, err
    capsys.readouterr()
    assert cli.main(["export", str(folder), "-o", str(out), "--allow-missing"]) == 0
    err = capsys.readouterr().err
    assert_clean(err)
    assert err.startswith(f"ckptui: not exported k{SHOWN}: "), err
    assert f"evil{SHOWN}.safetensors" in err, err
