"""Tensor subclasses and non-dense tensors (issue 19): a DTensor's `__slots__` state (its
`_local_tensor` and `_spec`) is shown with its placement and mesh and exported as the plain
tensor it stands for when the file holds all of it; sparse and nested tensors are refused by
name, never written as invented keys (`coo.indices`, `nt.buffer`); quantized ones are written as
torch writes them."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ckptui.export import make_plan
from ckptui.formats import open_checkpoint

from ..conftest import run_cli

_DTENSOR_SAVE = """
import sys, torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
dist.init_process_group("gloo", init_method="file://" + sys.argv[1] + ".pg", rank=0, world_size=1)
mesh = init_device_mesh("cpu", (1,))
torch.manual_seed(0)
model = torch.nn.Linear(6, 4)
sd = {"weight": distribute_tensor(model.weight.detach(), mesh, [Shard(0)]),
      "bias": distribute_tensor(model.bias.detach(), mesh, [Replicate()])}
torch.save(sd, sys.argv[1])
half = model.weight.detach()[:2].clone()  # one rank's half of an [4, 6] weight sharded in two
torch.save({"weight": DTensor.from_local(half, mesh, [Shard(0)], shape=(4, 6),
                                         stride=(6, 1), run_check=False)}, sys.argv[1] + ".shard")
torch.save(model.state_dict(), sys.argv[1] + ".truth")
dist.destroy_process_group()
"""


@pytest.fixture(scope="module")
def dtensor_file(tmp_path_factory) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """(a DTensor state dict of nn.Linear(6, 4) saved by a gloo world of one, a file with one
    rank's shard only, the plain state dict)."""
    p = tmp_path_factory.mktemp("dtensor") / "dt.pt"
    subprocess.run([sys.executable, "-c", _DTENSOR_SAVE, str(p)], check=True, timeout=120)
    return p, Path(f"{p}.shard"), torch.load(f"{p}.truth", weights_only=True)


def test_dtensor_shows_its_local_tensor_placement_and_mesh(dtensor_file) -> None:
    path, *_ = dtensor_file
    r = run_cli("inspect", str(path), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    w = next(c for c in doc["tree"]["children"] if c["key"] == "weight")
    assert w["type"] == "torch.distributed.tensor.DTensor" and w["shape"] == [4, 6]
    fields = {c["key"]: c for c in w["children"]}
    assert fields["placements"]["value"] == "Shard(0)"
    assert fields["mesh"]["value"] == "cpu · 1 rank"
    assert fields["_local_tensor"]["kind"] == "tensor" and fields["_local_tensor"]["shape"] == [
        4,
        6,
    ]
    b = next(c for c in doc["tree"]["children"] if c["key"] == "bias")
    assert {c["key"]: c.get("value") for c in b["children"]}["placements"] == "Replicate()"
    local = [t for t in doc["tensors"] if t["path"][-1] == "_local_tensor"]
    assert {tuple(t["path"]) for t in local} == {
        ("weight", "_local_tensor"),
        ("bias", "_local_tensor"),
    }
    assert all(t["storage_key"] is not None for t in local)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_dtensor_exports_the_plain_tensor(dtensor_file, tmp_path: Path, fmt: str) -> None:
    path, _, truth = dtensor_file
    out = tmp_path / f"w.{fmt}"
    r = run_cli("export", str(path), "-o", str(out))
    assert r.returncode == 0, r.stderr
    got = torch.load(out, weights_only=True) if fmt == "pth" else load_file(out)
    assert sorted(got) == sorted(truth)  # no weight._local_tensor, no _spec._rank_map
    torch.nn.Linear(6, 4).load_state_dict(got, strict=True)
    for k, v in truth.items():
        assert torch.equal(got[k], v)


def test_a_dtensor_shard_is_refused_by_name(dtensor_file) -> None:
    _, shard, _ = dtensor_file
    plan_error = run_cli("export", str(shard), "-o", str(shard) + ".out.pth")
    assert plan_error.returncode == 2 and not Path(str(shard) + ".out.pth").exists()
    assert "weight" in plan_error.stderr and "DTensor" in plan_error.stderr
    assert "shard" in plan_error.stderr


def _non_dense() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sparse CSR and nested tensors are "beta"
        sd = {
            "coo": torch.sparse_coo_tensor(torch.tensor([[0, 1], [1, 0]]), torch.ones(2), (2, 2)),
            "csr": torch.eye(3).to_sparse_csr(),
            "nt": torch.nested.nested_tensor([torch.ones(2), torch.ones(3)]),
            "q": torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8),
            "qc": torch.quantize_per_channel(
                torch.randn(2, 3), torch.tensor([0.1, 0.2]), torch.tensor([0, 0]), 0, torch.qint8
            ),
            "w": torch.randn(3),
        }
    return sd


def test_non_dense_tensors_are_refused_not_split_into_parts(tmp_path: Path) -> None:
    sd = _non_dense()
    src = tmp_path / "nd.pt"
    torch.save(sd, src)
    plan = make_plan(open_checkpoint(src), keep=[()])
    # quantized tensors are written as torch writes them (tests/core/test_quantized.py)
    assert [it.name for it in plan.items if it.part_of is None] == ["q", "qc", "w"]
    assert {p[0] for p, _ in plan.skipped} == {"coo", "csr", "nt"}
    out = tmp_path / "o.pth"
    r = run_cli("export", str(src), "-o", str(out), "--keep", ".")
    assert r.returncode == 0, r.stderr
    for name in ("coo", "csr", "nt"):
        assert f"skipped {name}: a " in r.stderr and "only dense tensors" in r.stderr
    got = torch.load(out, weights_only=True)
    assert list(got) == ["q", "qc", "w"] and torch.equal(got["w"], sd["w"])
    assert torch.equal(got["qc"].int_repr(), sd["qc"].int_repr())


def test_a_kept_tensor_is_named_by_its_key(tmp_path: Path) -> None:
    """`--keep coo --keep w`: each kept tensor under its own key (it was `w.`)."""
    src = tmp_path / "two.pt"
    torch.save({"a": torch.ones(2), "w": torch.zeros(3), "m": {"x": torch.ones(1)}}, src)
    plan = make_plan(open_checkpoint(src), keep=[("w",), ("m",)])
    assert [it.name for it in plan.items] == ["w", "m.x"]
    assert [it.name for it in make_plan(open_checkpoint(src), keep=[("w",)]).items] == ["w"]


def test_diff_of_non_dense_tensors_compares_their_parts(dtensor_file, tmp_path: Path) -> None:
    """Same file, same bytes: equal (it exited 1); parts that differ: not compared, differs."""
    sd = _non_dense()
    a = tmp_path / "a.pt"
    torch.save(sd, a)
    same = run_cli("diff", str(a), str(a), "--values", "--json")
    assert same.returncode == 0, same.stdout + same.stderr
    doc = json.loads(same.stdout)
    assert doc["not_compared"] == [] and doc["values_equal"] == len(sd)
    _, shard, _ = dtensor_file
    assert run_cli("diff", str(shard), str(shard), "--values").returncode == 0
    other = dict(sd)
    other["coo"] = torch.sparse_coo_tensor(
        torch.tensor([[0, 1], [1, 0]]), torch.tensor([1.0, 5.0]), (2, 2)
    )
    other["q"] = torch.quantize_per_tensor(sd["q"].dequantize() + 1, 0.1, 0, torch.qint8)
    b = tmp_path / "b.pt"
    torch.save(other, b)
    r = run_cli("diff", str(a), str(b), "--values", "--json")
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert {e["path"][0] for e in doc["not_compared"]} == {"coo", "q"}
    assert doc["values_equal"] == len(sd) - 2


def test_wrapper_bytes_are_counted_once_by_their_parts(dtensor_file, tmp_path: Path) -> None:
    """A wrapper's logical size and its parts were both counted (13.1 KiB for a 6.5 KiB file)."""
    from ckptui.analysis.index import bytes_below

    nd = tmp_path / "nd.pt"
    torch.save(_non_dense(), nd)
    for path in (nd, dtensor_file[0]):
        ckpt = open_checkpoint(path)
        stored = sum(t.nbytes for _, t in ckpt.tensors() if t.storage_key is not None)
        assert bytes_below(ckpt.root) == stored, path  # the views with bytes of their own
