"""The plain command line as a newcomer meets it: piped output that `grep` can read, help that
names the subcommands, a typo'd subcommand named, and the LICENSE the package names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ..conftest import run_cli

LONG = "encoder.layers.11.attention.self_attention.query_key_value_projection_with_bias.weight"


def test_piped_rows_are_never_wrapped(tmp_path: Path) -> None:
    """stdout is a pipe here: every row stays on one line, however long (rich wraps at 80)."""
    a = tmp_path / ("a_checkpoint_with_a_rather_long_name_" * 2 + ".pth")
    torch.save({LONG: torch.zeros(3, 5), "b": torch.ones(2)}, a)
    b = tmp_path / "b.pth"
    torch.save({"b": torch.ones(2)}, b)
    for args in (("inspect", str(a)), ("why", str(a)), ("diff", str(a), str(b))):
        result = run_cli(*args)
        assert result.returncode in (0, 1), result.stderr
        rows = [line for line in result.stdout.splitlines() if LONG in line]
        assert rows, (args, result.stdout)
        if args[0] == "inspect":
            assert "float32" in rows[0] and "60 B" in rows[0]
        if args[0] == "why":  # the largest-tensors row: path, shape, dtype and bytes together
            assert any("[3, 5]" in r and "float32" in r for r in rows), rows
        heads = [line for line in result.stdout.splitlines() if str(a) in line]
        assert heads, args  # the file's long path is not cut either


def test_plain_inspect_shows_the_resume_card_and_the_weights_only_verdict(tmp_path: Path) -> None:
    import argparse
    import pickle

    from ..conftest import training_checkpoint

    ck = training_checkpoint()
    ck["args"] = argparse.Namespace(lr=1e-3, epochs=10)
    p = tmp_path / "train.pth"
    torch.save(ck, p)
    try:  # torch is the oracle: weights_only refuses the Namespace
        torch.load(p, weights_only=True)
        raise AssertionError("expected torch.load(weights_only=True) to refuse the file")
    except pickle.UnpicklingError as e:
        assert "argparse.Namespace" in str(e)
    out = run_cli("inspect", str(p))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "resume" in lines and "torch.load(weights_only=True)" in lines
    assert any(line.startswith("resumable") and "yes" in line for line in lines)
    assert any("benign" in line and "argparse.Namespace" in line for line in lines)
    assert any("safe_globals" in line for line in lines)
    assert lines[-1].startswith("torch-zip · ")  # the one-line total stays last
    plain = tmp_path / "weights.pth"
    torch.save(ck["model"], plain)
    torch.load(plain, weights_only=True)
    out = run_cli("inspect", str(plain)).stdout
    assert "loads: nothing it would refuse" in out and "resumable no" in out


def test_a_typo_of_a_subcommand_is_named(tmp_path: Path) -> None:
    ckpt = tmp_path / "f.pth"
    torch.save({"w": torch.ones(2)}, ckpt)
    for typo, meant in (("inpsect", "inspect"), ("expotr", "export"), ("dif", "diff")):
        r = run_cli(typo, str(ckpt), cwd=tmp_path)
        assert r.returncode == 2
        assert r.stderr.strip() == (
            f"ckptui: {typo}: no such file or directory; did you mean 'ckptui {meant}'?"
        )
    r = run_cli("nosuch.pth", cwd=tmp_path)  # not close to any: the plain message
    assert r.returncode == 2 and r.stderr.strip() == "ckptui: nosuch.pth: no such file or directory"
    (tmp_path / "inpsect").write_bytes(ckpt.read_bytes())  # a real path wins over the guess
    r = run_cli("inspect", "inpsect", cwd=tmp_path)
    assert r.returncode == 0 and "float32" in r.stdout


def test_help_lists_subcommands_and_what_a_path_is() -> None:
    r = run_cli("--help")
    assert r.returncode == 0
    sub = r.stdout.split("subcommands", 1)[1]
    for name in ("inspect", "why", "export", "diff"):
        assert any(line.strip().startswith(name) for line in sub.splitlines()), name
    for args in (("--help",), ("inspect", "--help"), ("why", "--help"), ("export", "--help")):
        text = " ".join(run_cli(*args).stdout.split())
        assert "file, folder" in text and "URL" in text, args
    export_help = " ".join(run_cli("export", "--help").stdout.split())
    assert "--dtype {keep,bf16,fp16} cast floating-point tensors to bf16 or fp16" in export_help
    assert "--allow-missing" in export_help


def test_the_license_pyproject_names_is_shipped() -> None:
    from ..conftest import ROOT

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text
    # hatchling puts LICEN[CS]E* into the wheel's .dist-info/licenses (checked by hand with
    # `pip wheel . --no-deps`: ckptui-0.1.0.dist-info/licenses/LICENSE, License-File: LICENSE).
