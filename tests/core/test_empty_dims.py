"""Tensors with a zero-size dimension anywhere (`torch.empty(2, 0)`, `x[:, 2:2]`) export and
compare like any other: no elements, no bytes, no ZeroDivisionError (issue 19)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ckptui.formats import open_checkpoint
from ckptui.tensors.values import tensor_stats

from ..conftest import run_cli


def _empties() -> dict[str, torch.Tensor]:
    base = torch.arange(12.0).view(3, 4)
    return {
        "last": torch.empty(2, 0),
        "first": torch.empty(0, 3),
        "middle": torch.empty(2, 0, 4, dtype=torch.bfloat16),
        "flat": torch.empty(0, dtype=torch.int64),
        "cols": base[:, 2:2],  # a non-contiguous empty view at an offset
        "offset": base.view(-1)[5:5],
        "transposed": base.t()[0:0],
        "w": base,
    }


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_zero_size_dimensions_export(tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "e.pt"
    truth = _empties()
    torch.save(truth, src)
    out = tmp_path / f"o.{fmt}"
    r = run_cli("export", str(src), "-o", str(out))
    assert r.returncode == 0, r.stderr
    got = torch.load(out, weights_only=True) if fmt == "pth" else load_file(out)
    for k, v in truth.items():
        assert got[k].shape == v.shape and got[k].dtype == v.dtype and torch.equal(got[k], v), k


def test_zero_size_dimensions_diff_and_values(tmp_path: Path) -> None:
    truth = _empties()
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(truth, a)
    other = {k: v.clone() for k, v in truth.items()}
    other["w"][0, 0] = 9.0
    torch.save(other, b)
    same = run_cli("diff", str(a), str(a), "--values", "--json")
    assert same.returncode == 0, same.stderr
    assert json.loads(same.stdout)["values_equal"] == len(truth)
    changed = run_cli("diff", str(a), str(b), "--values", "--json")
    assert changed.returncode == 1, changed.stderr
    doc = json.loads(changed.stdout)
    assert doc["value_diff"] == [{"path": ["w"], "max_abs": 9.0, "max_rel": 9.0 / 11.0}]
    assert doc["values_equal"] == len(truth) - 1 and doc["not_compared"] == []
    ckpt = open_checkpoint(a)
    for path, t in ckpt.tensors():
        assert tensor_stats(ckpt, t).count == truth[path[0]].numel()


@pytest.mark.parametrize("shape", [(), (0,), (2, 0), (0, 3), (2, 0, 3), (4, 1, 0, 5), (3, 4, 5)])
def test_contiguous_strides_are_torchs(shape: tuple[int, ...]) -> None:
    """One rule for a new tensor's strides (issue 15): a zero-size dimension counts as 1, as
    torch counts it; the safetensors reader and the export used to disagree on it."""
    from ckptui.core.dtypes import contiguous_strides

    assert contiguous_strides(shape) == torch.empty(shape).stride()


def test_safetensors_empty_tensor_has_torchs_strides(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from ckptui.formats import open_checkpoint

    p = tmp_path / "e.safetensors"
    save_file({"e": torch.empty(2, 0, 3)}, str(p))
    (t,) = [n.tensor for n in open_checkpoint(p).root.children]
    assert t.stride == torch.empty(2, 0, 3).stride() == (3, 3, 1)
