"""The CLI's wording (issue 18): plurals, finding kinds as words, tensor rows without
`torch.Tensor`, one precision for numbers and shares. Real torch.save files, the CLI run as a
user runs it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ckptui.core.units import kind_words, number, percent, plural

from ..conftest import run_cli, training_checkpoint


def test_inspect_tree_rows_read_shape_dtype_size(tmp_path: Path) -> None:
    p = tmp_path / "m.pth"
    net = torch.nn.Linear(4, 3)
    torch.save({"sd": net.state_dict(), "p": torch.nn.Parameter(torch.zeros(2))}, p)
    r = run_cli("inspect", str(p))
    assert r.returncode == 0, r.stderr
    assert "torch.Tensor" not in r.stdout
    row = next(line for line in r.stdout.splitlines() if "weight" in line)
    assert row.split("weight", 1)[1].split() == ["[3,", "4]", "float32", "·", "48", "B"]
    # a type other than a plain tensor still says so
    assert any("Parameter [2] float32" in line for line in r.stdout.splitlines())


def test_inspect_total_has_proper_plurals(tmp_path: Path) -> None:
    one, two = tmp_path / "one.pth", tmp_path / "two.pth"
    torch.save({"w": torch.zeros(3)}, one)
    torch.save({"w": torch.zeros(3), "v": torch.zeros(2)}, two)
    assert "1 tensor in 1 storage ·" in run_cli("inspect", str(one)).stdout
    assert "2 tensors in 2 storages ·" in run_cli("inspect", str(two)).stdout


def test_why_table_says_kinds_in_words(tmp_path: Path) -> None:
    p = tmp_path / "train.pth"
    torch.save(training_checkpoint(), p)
    r = run_cli("why", str(p), "--no-duplicates")
    assert r.returncode == 0, r.stderr
    findings = r.stdout.split("Findings", 1)[1]
    assert "optimizer state" in findings
    assert "optimizer_state" not in findings
    # shares are written one way: `66 %`, not `66.4` here and `66 %` elsewhere
    category = r.stdout.split("By category", 1)[1].split("\n\n", 1)[0]
    assert all(line.split()[-2] == "%" or "%" in line for line in category.splitlines()[1:])


def test_diff_text_says_one_value_differs(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    torch.save({"w": torch.zeros(3), "v": torch.ones(2)}, a)
    torch.save({"w": torch.ones(3), "v": torch.ones(2)}, b)
    r = run_cli("diff", str(a), str(b), "--values")
    assert r.returncode == 1, r.stderr
    assert "1 value differs" in r.stdout and "1 values" not in r.stdout


@pytest.mark.parametrize(
    ("x", "text"),
    [
        (0.0, "0"),
        (0.000012345678, "1.235e-05"),
        (3.14159265, "3.142"),
        (2048.0, "2048"),
        (-0.5, "-0.5"),
        (math.nan, "nan"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
    ],
)
def test_number_has_one_precision(x: float, text: str) -> None:
    assert number(x) == text


@pytest.mark.parametrize(
    ("part", "whole", "text"),
    [
        (0, 10, "0 %"),
        (664, 1000, "66 %"),
        (42, 1000, "4.2 %"),
        (31, 10_000, "0.31 %"),
        (1, 1, "100 %"),
        (5, 0, "0 %"),
        (9.96, 100, "10 %"),
    ],
)
def test_percent_has_two_significant_digits(part: float, whole: float, text: str) -> None:
    assert percent(part, whole) == text


def test_plural_and_kind_words() -> None:
    assert plural(1, "tensor") == "1 tensor"
    assert plural(0, "tensor") == "0 tensors"
    assert plural(100_000, "key") == "100,000 keys"
    assert plural(2, "entry", "entries") == "2 entries"
    assert kind_words("optimizer_state") == "optimizer state"


def test_export_says_one_tensor(tmp_path: Path) -> None:
    src, out = tmp_path / "one.pth", tmp_path / "out.safetensors"
    torch.save({"w": torch.zeros(3)}, src)
    r = run_cli("export", str(src), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert ": 1 tensor, " in r.stdout and "1 tensors" not in r.stdout
