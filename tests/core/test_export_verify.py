"""A `.safetensors` export is verified by reading its header back from the disk with the
reader's rules and comparing every tensor's bytes (issue 16: without building the tree of the
written file). Each way of writing it wrong must still fail the export and leave no file."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ckptui.core.errors import CkptError
from ckptui.export import ExportError, export, make_plan
from ckptui.export import run as run_mod
from ckptui.export import writers as writers_mod
from ckptui.formats import open_checkpoint

from .test_export import flip_a_chunk, leftovers


@pytest.fixture
def plan(tmp_path: Path):
    sd = {f"layer.{i}.weight": torch.randn(4, 3) for i in range(6)}
    sd["layer.0.bias"] = torch.arange(5, dtype=torch.int64)
    src = tmp_path / "src.pt"
    torch.save(sd, src)
    return make_plan(open_checkpoint(src), fmt="safetensors"), sd


def test_a_good_export_verifies_and_loads(plan, tmp_path: Path) -> None:
    p, sd = plan
    out = tmp_path / "out" / "w.safetensors"
    out.parent.mkdir()
    result = export(p, out)
    assert result.verified and out.stat().st_size == result.predicted_bytes
    got = load_file(str(out))
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)
    assert leftovers(out.parent) == []


def test_a_flipped_data_byte_fails(plan, tmp_path: Path, monkeypatch) -> None:
    p, _ = plan
    flip_a_chunk(monkeypatch, 3)
    out = tmp_path / "w.safetensors"
    with pytest.raises(ExportError, match=r"verification failed: .* differs from the source"):
        export(p, out)
    assert not out.exists() and leftovers(tmp_path) == []


def test_a_header_not_matching_the_plan_fails(plan, tmp_path: Path, monkeypatch) -> None:
    p, _ = plan
    real = run_mod.safetensors_header

    def swapped(pl):  # a header naming one tensor's shape wrong, of the same length
        raw = real(pl)
        header = json.loads(raw)
        header["layer.2.weight"]["shape"] = [3, 4]
        text = json.dumps(header, separators=(",", ":")).encode()
        return text + b" " * (len(raw) - len(text))

    monkeypatch.setattr(run_mod, "safetensors_header", swapped)
    out = tmp_path / "w.safetensors"
    with pytest.raises(ExportError, match=r"layer\.2\.weight was not written as planned"):
        export(p, out)
    assert not out.exists() and leftovers(tmp_path) == []


def test_a_truncated_file_fails(plan, tmp_path: Path, monkeypatch) -> None:
    p, _ = plan
    real = writers_mod._write

    def short(pl, f, progress, src, header=None):
        real(pl, f, progress, src, header)
        f.truncate(f.tell() - 4)  # the last tensor's last 4 bytes never reach the disk
        f.seek(0, 2)

    monkeypatch.setattr(writers_mod, "_write", short)
    out = tmp_path / "w.safetensors"
    with pytest.raises(CkptError, match="are outside the data"):
        export(p, out)
    assert not out.exists() and leftovers(tmp_path) == []


def test_a_damaged_header_length_fails(plan, tmp_path: Path, monkeypatch) -> None:
    p, _ = plan
    real = writers_mod._write

    def damaged(pl, f, progress, src, header=None):
        real(pl, f, progress, src, header)
        end = f.tell()
        f.seek(0)
        f.write(struct.pack("<Q", 1 << 40))
        f.seek(end)

    monkeypatch.setattr(writers_mod, "_write", damaged)
    out = tmp_path / "w.safetensors"
    with pytest.raises(CkptError, match="larger than the file allows"):
        export(p, out)
    assert not out.exists() and leftovers(tmp_path) == []
