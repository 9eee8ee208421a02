"""The plain command line as a newcomer meets it: piped output that `grep` can read, help that
names the subcommands, a typo'd subcommand named, and the LICENSE the package names."""

from __future__ import annotations

from pathlib import Path

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
