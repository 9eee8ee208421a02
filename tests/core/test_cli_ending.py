"""The console's quick ending (`cli.ending`): the process ends by `os._exit` after a command
kept its checkpoint, and nothing of the output, the exit code or a pipe's end is lost."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch

from ckptui.cli import ending
from ckptui.cli.main import main
from tests.conftest import child_env, run_cli


@pytest.fixture
def flat(tmp_path: Path) -> Path:
    p = tmp_path / "flat.pt"
    torch.save({f"layer.{i}.weight": torch.full((3,), float(i)) for i in range(300)}, p)
    return p


def test_output_through_the_console_is_main_s_whole_output(flat: Path) -> None:
    # in-process main() is the reference: same text, to the last byte, through os._exit
    ref = io.StringIO()
    with redirect_stdout(ref):
        assert main(["inspect", str(flat), "--json"]) == 0
    r = run_cli("inspect", str(flat), "--json")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ref.getvalue()
    assert len(json.loads(r.stdout)["tensors"]) == 300


def test_output_redirected_to_a_file_is_complete(flat: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    env = child_env()
    with out.open("w") as f:
        code = subprocess.run(
            [sys.executable, "-m", "ckptui", "inspect", str(flat), "--json"],
            stdout=f,
            env=env,
            check=False,
            timeout=120,
        ).returncode
    assert code == 0
    assert out.read_text().endswith("}\n")
    assert len(json.loads(out.read_text())["tensors"]) == 300


def test_a_closed_pipe_ends_quietly_with_exit_0(flat: Path) -> None:
    env = child_env()
    p = subprocess.Popen(
        [sys.executable, "-m", "ckptui", "inspect", str(flat), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert p.stdout is not None and p.stderr is not None
    p.stdout.read(10)
    p.stdout.close()  # the reader stops, as `| head -c 10` does
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0
    assert "Exception" not in err and "Broken" not in err


def test_exit_codes_are_kept(flat: Path, tmp_path: Path) -> None:
    assert run_cli("inspect", str(tmp_path / "nope.pt"), "--json").returncode == 2
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 not a zip")
    r = run_cli("inspect", str(bad), "--json")
    assert r.returncode == 2 and r.stderr.startswith("ckptui: ")
    r = run_cli("why", str(flat), "--json")
    assert r.returncode == 0 and "weights_path" in json.loads(r.stdout)
    out = tmp_path / "w.safetensors"
    r = run_cli("export", str(flat), "-o", str(out))
    assert r.returncode == 0 and out.stat().st_size > 300 * 12
    assert "verified" in r.stdout


def test_main_in_a_process_keeps_nothing(flat: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # not armed (a test, a user's script calling main): the checkpoint is freed as usual
    monkeypatch.setattr(ending, "_armed", False)
    monkeypatch.setattr(ending, "_kept", [])
    with redirect_stdout(io.StringIO()):
        main(["inspect", str(flat), "--json"])
    assert ending._kept == []
    monkeypatch.setattr(ending, "_armed", True)
    with redirect_stdout(io.StringIO()):
        main(["inspect", str(flat), "--json"])
    assert len(ending._kept) == 1 and ending._kept[0].format == "torch-zip"


def test_end_without_anything_kept_is_a_plain_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ending, "_kept", [])
    with pytest.raises(SystemExit) as e:
        ending.end(3)
    assert e.value.code == 3


def test_the_browser_leaves_its_app_to_the_exit(
    flat: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # after `q` the terminal is back; freeing the tree and the widgets is left to os._exit
    from ckptui.app.app import CkptApp

    ran: list[CkptApp] = []
    monkeypatch.setattr(CkptApp, "run", lambda self: ran.append(self))
    monkeypatch.setattr(ending, "_armed", True)
    monkeypatch.setattr(ending, "_kept", [])
    assert main([str(flat)]) == 0
    assert ran and ending._kept == ran
