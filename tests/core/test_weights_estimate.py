""" "weights alone would be" is the exact size of the file `ckptui export` writes with its
default options, for every kind of source (the headline used to be an estimate: 199.6 KiB on
the demo, whose export is 194.5 KiB)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ckptui.analysis.sizes.folder import breakdown_of
from ckptui.core.units import size
from ckptui.export.size import exported_size
from ckptui.formats import open_checkpoint

from ..conftest import TinyNet, run_cli, training_checkpoint


def _training(p: Path) -> Path:
    torch.save(training_checkpoint(), p / "train.pth")
    return p / "train.pth"


def _legacy(p: Path) -> Path:
    torch.save(training_checkpoint(), p / "old.pth", _use_new_zipfile_serialization=False)
    return p / "old.pth"


def _module(p: Path) -> Path:
    torch.save(TinyNet(), p / "module.pt")
    return p / "module.pt"


def _safetensors(p: Path) -> Path:
    save_file(TinyNet().state_dict(), p / "model.safetensors")
    return p / "model.safetensors"


def _ddp(p: Path) -> Path:
    torch.save(training_checkpoint(parallel=True), p / "ddp.pth")  # module. stripped by default
    return p / "ddp.pth"


def _sharded(p: Path) -> Path:
    from .test_folders import tiny_gpt2

    tiny_gpt2().save_pretrained(p / "gpt2", max_shard_size="100KB")
    return p / "gpt2"


def _dcp(p: Path) -> Path:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter

    dcp.save(
        {"model": TinyNet().state_dict()},
        storage_writer=FileSystemWriter(p / "dcp", thread_count=2),
        no_dist=True,
    )
    return p / "dcp"


SOURCES = [_training, _legacy, _module, _safetensors, _ddp, _sharded, _dcp]
"""A real checkpoint of every kind of source, each made in a tmp folder (`test_exported_size`
uses them too)."""


@pytest.mark.parametrize("make", SOURCES, ids=lambda f: f.__name__)
def test_weights_alone_is_the_exported_size(tmp_path: Path, make) -> None:
    torch.manual_seed(0)
    src = make(tmp_path)
    b = breakdown_of(open_checkpoint(src), weights_size=exported_size)
    out = tmp_path / "out" / "w.pth"
    out.parent.mkdir()
    result = run_cli("export", str(src), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert b.weights_only_bytes == out.stat().st_size
    assert f"weights alone would be {size(out.stat().st_size)}" in b.headline
