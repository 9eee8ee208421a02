"""`diff --values`: the relative difference beside max |a-b| (issue 18), checked against torch.

max_rel = max |a - b| / max |a|, with max |b| as the scale where A is all zeros, 0 where both
are; NaN where the difference is NaN. Real torch.save files; the multi-chunk cases shrink the
read size so that identical leading chunks are skipped unmeasured and measured again.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
from rich.console import Console

from ckptui.analysis.diff import values as diff_values
from ckptui.analysis.diff.compare import diff_checkpoints
from ckptui.formats import open_checkpoint
from ckptui.report.diff import diff_json, render_diff
from ckptui.tensors import reader as source_mod

from ..conftest import run_cli


def save(sd: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save(sd, path)
    return path


def truth(a: torch.Tensor, b: torch.Tensor) -> float:
    """The relative difference as the docstring defines it, computed with torch."""
    if a.is_complex():
        x, y = torch.view_as_real(a.cdouble()), torch.view_as_real(b.cdouble())
        diff = torch.linalg.vector_norm(x - y, dim=-1).max().item()
        scale_a = torch.linalg.vector_norm(x, dim=-1).max().item()
        scale_b = torch.linalg.vector_norm(y, dim=-1).max().item()
    else:
        x, y = a.double(), b.double()
        diff = (x - y).abs().max().item()
        scale_a, scale_b = x.abs().max().item(), y.abs().max().item()
    return 0.0 if diff == 0 else diff / (scale_a or scale_b)


def relative(tmp_path: Path, a: dict, b: dict) -> dict[str, float]:
    d = diff_checkpoints(
        open_checkpoint(save(a, tmp_path / "a.pth")),
        open_checkpoint(save(b, tmp_path / "b.pth")),
        values=True,
    )
    assert set(d.value_rel) == {p for p, _ in d.value_diff}
    return {p[0]: r for p, r in d.value_rel.items()}


def test_relative_difference_matches_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    a = {
        "big": torch.randn(300, 40) * 100,
        "small": torch.randn(50) * 0.01,
        "half": torch.randn(64).half(),
        "bf16": torch.randn(64).bfloat16(),
        "ints": torch.tensor([-128, 5, 7], dtype=torch.int8),  # |-128| overflows int8
        "cplx": torch.randn(16, dtype=torch.complex64),
        "same": torch.randn(8),
    }
    b = {k: v.clone() for k, v in a.items()}
    b["big"][7, 3] += 0.5
    b["small"][10] += 0.001
    b["half"][3] = 1.5
    b["bf16"][0] = -2.0
    b["ints"][1] = 100
    b["cplx"][2] += 1j
    got = relative(tmp_path, a, b)
    for k, x in a.items():
        assert got[k] == pytest.approx(truth(x, b[k]), rel=1e-12), k
    assert got["same"] == 0.0
    assert got["ints"] == 95 / 128
    # the same absolute change is noise on weights of 100, a large change on weights of 0.01
    assert got["big"] < 1e-2 < got["small"]


def test_a_all_zeros_is_measured_against_b(tmp_path: Path) -> None:
    a = {"bias": torch.zeros(10), "both": torch.zeros(4)}
    b = {"bias": torch.zeros(10), "both": torch.zeros(4)}
    b["bias"][3] = -0.25
    got = relative(tmp_path, a, b)
    assert got == {"bias": 1.0, "both": 0.0}


def test_nan_difference_gives_nan_relative(tmp_path: Path) -> None:
    a = {"w": torch.ones(5)}
    b = {"w": torch.ones(5)}
    b["w"][2] = float("nan")
    got = relative(tmp_path, a, b)
    assert math.isnan(got["w"])


def test_identical_leading_chunks_still_count_in_the_scale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The largest |a| sits in the first chunk, whose bytes are identical (not measured while
    streaming); the difference sits in the last chunk: max |a| is the whole tensor's."""
    monkeypatch.setattr(source_mod, "CHUNK", 4096)
    monkeypatch.setattr(diff_values, "PIECE", 100)
    a = {"w": torch.ones(10_000), "c": torch.ones(4000, dtype=torch.complex64)}
    a["w"][0] = 50.0
    a["c"][0] = 30 + 40j  # |z| = 50
    b = {k: v.clone() for k, v in a.items()}
    b["w"][-1] += 2.0
    b["c"][-1] += 2.0
    got = relative(tmp_path, a, b)
    assert got == {"w": pytest.approx(2 / 50), "c": pytest.approx(2 / 50)}


def test_json_and_text_show_max_rel(tmp_path: Path) -> None:
    a = {"w": torch.full((3, 3), 4.0), "v": torch.ones(2)}
    b = {"w": torch.full((3, 3), 4.0), "v": torch.ones(2)}
    b["w"][1, 1] = 5.0
    pa, pb = save(a, tmp_path / "a.pth"), save(b, tmp_path / "b.pth")
    r = run_cli("diff", str(pa), str(pb), "--values", "--json")
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert doc["value_diff"] == [{"path": ["w"], "max_abs": 1.0, "max_rel": 0.25}]
    d = diff_checkpoints(open_checkpoint(pa), open_checkpoint(pb), values=True)
    assert diff_json(d)["value_diff"][0]["max_rel"] == 0.25
    out = io.StringIO()
    render_diff(d, Console(file=out, width=80))
    text = out.getvalue()
    assert "relative" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("w "))
    assert row.split() == ["w", "1", "0.25"]


def test_nan_max_rel_is_a_json_string(tmp_path: Path) -> None:
    a, b = {"w": torch.ones(3)}, {"w": torch.ones(3)}
    b["w"][0] = float("nan")
    pa, pb = save(a, tmp_path / "a.pth"), save(b, tmp_path / "b.pth")
    r = run_cli("diff", str(pa), str(pb), "--values", "--json")
    doc = json.loads(r.stdout)
    assert doc["value_diff"] == [{"path": ["w"], "max_abs": "nan", "max_rel": "nan"}]
