"""Whole-module pickles with tied weights: every `_modules`/`_parameters`/`_buffers` path that
reaches a tensor is a state-dict key, as `model.state_dict()` lists it.

The model's class lives in a module file that is deleted after `torch.save(model)`, so the file
opens as a user without the model's code would open it; real torch is the oracle."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ckptui.export import export, make_plan
from ckptui.formats import open_checkpoint

from ..conftest import run_cli

_SOURCE = '''
import torch

class TiedLM(torch.nn.Module):
    """A tiny language model whose output head is its input embedding."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)
        self.body = torch.nn.Linear(4, 4)
        self.norm = torch.nn.BatchNorm1d(4)
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight
'''


@pytest.fixture
def tied_module(tmp_path: Path):
    """(path of `torch.save(model)`, the model's class): the class's module file is gone."""
    src = tmp_path / "tied_lm_gone.py"
    src.write_text(_SOURCE)
    spec = importlib.util.spec_from_file_location("tied_lm_gone", src)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["tied_lm_gone"] = mod
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    model = mod.TiedLM()
    out = tmp_path / "tied.pt"
    torch.save(model, out)
    del sys.modules["tied_lm_gone"]
    src.unlink()
    with pytest.raises(ModuleNotFoundError):  # the class is really not importable
        torch.load(out, weights_only=False)
    return out, mod.TiedLM, model.state_dict()


def test_every_path_to_a_tied_weight_is_a_state_dict_key(tied_module) -> None:
    path, _, sd = tied_module
    ckpt = open_checkpoint(path)
    names = [t.state_dict_key for _, t in ckpt.tensors() if t.state_dict_key]
    assert names == list(sd)  # head.weight included, in state_dict() order
    result = run_cli("inspect", str(path), "--json")
    assert result.returncode == 0, result.stderr
    listed = [t.get("state_dict_key") for t in json.loads(result.stdout)["tensors"]]
    assert [n for n in listed if n] == list(sd)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_tied_weights_export_loads_strictly(tied_module, tmp_path: Path, fmt: str) -> None:
    path, cls, sd = tied_module
    out = tmp_path / f"w.{fmt}"
    export(make_plan(open_checkpoint(path), fmt=fmt), out)
    got = torch.load(out, weights_only=True) if fmt == "pth" else load_file(out)
    assert list(got) == list(sd)
    fresh = cls()
    fresh.load_state_dict(got, strict=True)
    for k, v in sd.items():
        assert torch.equal(got[k], v), k
    if fmt == "pth":  # tied weights stay one storage in .pth, as torch.save writes them
        assert got["head.weight"].data_ptr() == got["emb.weight"].data_ptr()


def test_tied_weights_export_from_the_cli(tied_module, tmp_path: Path) -> None:
    path, cls, _ = tied_module
    out = tmp_path / "w.pth"
    result = run_cli("export", str(path), "-o", str(out))
    assert result.returncode == 0, result.stderr
    cls().load_state_dict(torch.load(out, weights_only=True), strict=True)
