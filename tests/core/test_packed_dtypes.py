"""Sub-byte dtypes: sizes come from the bytes the file holds, not from element counts.

safetensors' `F4` header counts 4-bit values (`[2, 6]` for 6 bytes); torch loads it as
`[2, 3]` of `float4_e2m1fn_x2`, whose element is the packed pair. F6 has no torch dtype."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ckptui.analysis.sizes.folder import breakdown_of
from ckptui.export import export, make_plan
from ckptui.formats import open_checkpoint

from ..conftest import run_cli


def _packed(rows: int, pairs: int) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randint(0, 256, (rows, pairs), dtype=torch.uint8).view(torch.float4_e2m1fn_x2)


@pytest.fixture
def f4_file(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    p = tmp_path / "f4.safetensors"
    save_file({"w": _packed(2, 6), "b": torch.ones(3)}, p)
    return p, load_file(p)


def test_f4_shows_what_torch_loads_and_the_bytes_it_has(f4_file) -> None:
    path, truth = f4_file
    header = json.loads(path.read_bytes()[8 : 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]])
    assert header["w"]["dtype"] == "F4" and header["w"]["shape"] == [2, 12]  # 4-bit values
    doc = json.loads(run_cli("inspect", str(path), "--json").stdout)
    w = next(t for t in doc["tensors"] if t["path"] == ["w"])
    assert w["shape"] == list(truth["w"].shape) == [2, 6]
    assert w["dtype"] == "float4_e2m1fn_x2"
    assert w["nbytes"] == truth["w"].untyped_storage().nbytes() == 12
    assert w["storage_nbytes"] == 12
    b = breakdown_of(open_checkpoint(path))
    assert b.categories["tensor_data"] == 12 + 12 and sum(b.categories.values()) == b.file_bytes


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_f4_exports_bit_for_bit(f4_file, tmp_path: Path, fmt: str) -> None:
    path, truth = f4_file
    out = tmp_path / f"o.{fmt}"
    export(make_plan(open_checkpoint(path), fmt=fmt), out)
    got = load_file(out) if fmt == "safetensors" else torch.load(out, weights_only=True)
    for k, v in truth.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape
        assert torch.equal(got[k].view(torch.uint8), v.view(torch.uint8))


def test_newer_dtypes_export_to_a_pth_torch_loads_weights_only(tmp_path: Path) -> None:
    """float8/float4/uint16 storages are untyped: named as torch.save names them."""
    src = tmp_path / "new.pt"
    sd = {
        "f8": torch.randn(4, 4).to(torch.float8_e4m3fn),
        "f4": _packed(3, 2),
        "u16": torch.tensor([1, 2, 60000], dtype=torch.int32).to(torch.uint16),
    }
    torch.save(sd, src)
    out = tmp_path / "o.pth"
    export(make_plan(open_checkpoint(src)), out)
    got = torch.load(out, weights_only=True)
    for k, v in sd.items():
        assert got[k].dtype == v.dtype and torch.equal(
            got[k].view(torch.uint8), v.view(torch.uint8)
        )


def test_f6_sizes_count_bits_and_export_refuses_it(tmp_path: Path) -> None:
    """safetensors can describe F6 (6-bit values, no torch dtype): 8 values are 6 bytes."""
    header = json.dumps(
        {
            "a": {"dtype": "F6_E2M3", "shape": [2, 4], "data_offsets": [0, 6]},
            "b": {"dtype": "F32", "shape": [2], "data_offsets": [6, 14]},
        }
    ).encode()
    p = tmp_path / "f6.safetensors"
    p.write_bytes(struct.pack("<Q", len(header)) + header + bytes(range(6)) + bytes(8))
    ckpt = open_checkpoint(p)
    tensors = dict(ckpt.tensors())
    assert tensors[("a",)].shape == (2, 4) and tensors[("a",)].nbytes == 6
    plan = make_plan(ckpt, keep=[()])
    assert [i.name for i in plan.items] == ["b"]
    assert [p for p, _ in plan.skipped] == [("a",)]
