"""Nested jagged tensors (issue 19): `torch.nested.nested_tensor(..., layout=torch.jagged)` saved by
torch.save pickles `_rebuild_from_type_v2(_rebuild_njt, NestedTensor, ({values, offsets,
lengths, _ragged_idx, _metadata_cache},), state)`. It is listed as one tensor with its values,
offsets and logical shape (`[2, j1, 5]`), its bytes are counted once, and export writes it to
`.pth` as torch.save does, or refuses it by name for safetensors (its parts are never written as
invented keys).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import torch._dynamo  # torch.load wants it imported before it reads a jagged tensor

from ckptui.analysis.index import bytes_below
from ckptui.analysis.params import params_at
from ckptui.export import make_plan
from ckptui.formats import open_checkpoint

from ..conftest import run_cli


@pytest.fixture(scope="module")
def njt_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("njt") / "njt.pt"
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nested tensors are a prototype
        nt = torch.nested.nested_tensor([torch.randn(2, 5), torch.randn(3, 5)], layout=torch.jagged)
    assert nt.shape[0] == 2 and nt.values().shape == (5, 5)
    torch.save({"nt": nt, "w": torch.ones(2)}, p)
    return p


def test_a_jagged_tensor_is_one_tensor_with_its_parts(njt_file) -> None:
    r = run_cli("inspect", str(njt_file), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    nt = next(c for c in doc["tree"]["children"] if c["key"] == "nt")
    assert nt["kind"] == "tensor" and nt["type"].endswith("NestedTensor")
    assert nt["dtype"] == "float32" and nt["shape"] == [5, 5]  # the elements it holds
    parts = {c["key"]: c for c in nt["children"]}
    assert parts["logical_shape"]["value"] == "[2, j1, 5]"
    assert parts["values"]["shape"] == [5, 5] and parts["offsets"]["shape"] == [3]
    assert parts["min_seqlen"]["value"] == 2 and parts["max_seqlen"]["value"] == 3
    assert "lengths" not in parts  # None: offsets alone delimit the rows
    assert doc["resume"]["weights"]["path"] == []  # {nt, w} is a state dict


def test_its_bytes_and_elements_count_once(njt_file) -> None:
    ckpt = open_checkpoint(njt_file)
    assert bytes_below(ckpt.root) == 25 * 4 + 3 * 8 + 2 * 4  # values, offsets, w
    p = params_at(ckpt.root, ())
    assert p is not None and p.total == 25 + 2  # the values' elements, not values and wrapper
    why = run_cli("why", str(njt_file), "--json")
    assert why.returncode == 0, why.stderr
    doc = json.loads(why.stdout)
    assert doc["categories"]["tensor_data"] == 132


def test_export_writes_it_as_torch_loads_it(njt_file, tmp_path) -> None:
    """`.pth`: written as torch.save writes it (`_rebuild_njt` over its values and offsets),
    which `torch.load(weights_only=True)` loads back equal."""
    plan = make_plan(open_checkpoint(njt_file))
    assert [it.name for it in plan.items if it.part_of is None] == ["nt", "w"]
    assert plan.data_bytes == 25 * 4 + 3 * 8 + 2 * 4  # the values and offsets, once
    out = tmp_path / "o.pth"
    r = run_cli("export", str(njt_file), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "skipped" not in r.stderr
    want = torch.load(njt_file, weights_only=True)
    got = torch.load(out, weights_only=True)
    assert list(got) == ["nt", "w"] and got["nt"].layout == torch.jagged
    assert got["nt"]._ragged_idx == 1 and torch.equal(got["nt"].offsets(), want["nt"].offsets())
    assert torch.equal(got["nt"].values(), want["nt"].values())
    why = json.loads(run_cli("why", str(njt_file), "--json").stdout)
    assert why["weights_only_bytes"] == out.stat().st_size


def test_safetensors_refuses_it_by_name(njt_file, tmp_path) -> None:
    plan = make_plan(open_checkpoint(njt_file), fmt="safetensors")
    assert [it.name for it in plan.items] == ["w"]
    assert [p for p, _ in plan.skipped] == [("nt",)]
    out = tmp_path / "o.safetensors"
    r = run_cli("export", str(njt_file), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "skipped nt: a jagged tensor" in r.stderr


def test_benign_and_equal_to_itself(njt_file) -> None:
    assert run_cli("inspect", str(njt_file), "--fail-on-unsafe").returncode == 0
    r = run_cli("diff", str(njt_file), str(njt_file), "--values")
    assert r.returncode == 0, r.stdout + r.stderr
