"""Checkpoints of many files in the JSON and in export: each tensor names its shard, and a
folder with a shard deleted still exports what it holds, saying what is missing.

The folders are real `save_pretrained(max_shard_size=...)` output (see test_folders.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ckptui.export import export, make_plan
from ckptui.formats import open_checkpoint

from ..conftest import run_cli
from .test_folders import sharded  # noqa: F401  (a fixture: a real save_pretrained folder)


def test_json_names_each_tensors_shard(sharded) -> None:  # noqa: F811
    folder, _ = sharded
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    result = run_cli("inspect", str(folder), "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    files = {t["path"][0]: t["file"] for t in doc["tensors"]}
    assert files == index["weight_map"]
    held = {}
    for s in doc["storages"]:
        held.setdefault(s["file"], set()).add(s["key"])
    assert set(held) == set(index["weight_map"].values())
    for name, shard in index["weight_map"].items():  # the shard really holds those bytes
        assert name in load_file(folder / shard)
    single = run_cli("inspect", str(folder / next(iter(held))), "--json")
    assert all(t["file"] is None for t in json.loads(single.stdout)["tensors"])


@pytest.fixture
def holed_folder(sharded, tmp_path: Path):  # noqa: F811
    """The sharded folder with its second shard deleted: (folder, shard gone, names lost,
    the tensors still present as torch reads them)."""
    src, truth = sharded
    folder = tmp_path / "gpt2"
    shutil.copytree(src, folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    gone = sorted(set(index["weight_map"].values()))[1]
    (folder / gone).unlink()
    lost = {k for k, v in index["weight_map"].items() if v == gone}
    return folder, gone, lost, {k: v for k, v in truth.items() if k not in lost}


def test_a_missing_shard_still_has_weights(holed_folder) -> None:
    folder, _, lost, present = holed_folder
    ckpt = open_checkpoint(folder)
    plan = make_plan(ckpt)  # the weights are still the weights
    assert {it.name for it in plan.items} == set(present)
    assert {p[0] for p, _ in plan.missing} == lost
    doc = json.loads(run_cli("inspect", str(folder), "--json").stdout)
    weights = doc["resume"]["weights"]  # the resume card agrees
    assert weights["tensors"] == len(present) and weights["missing"] == len(lost)
    assert doc["resume"]["reason"] != "no model weights found"


def test_export_with_a_missing_shard_asks_then_exports_what_is_present(
    holed_folder, tmp_path: Path
) -> None:
    folder, gone, lost, present = holed_folder
    out = tmp_path / "m.safetensors"
    refused = run_cli("export", str(folder), "-o", str(out))
    assert refused.returncode == 2 and not out.exists()
    [line] = refused.stderr.strip().splitlines()
    assert gone in line and f"{len(lost)} tensors" in line and "--allow-missing" in line
    done = run_cli("export", str(folder), "-o", str(out), "--allow-missing")
    assert done.returncode == 0, done.stderr
    assert f"{len(lost)} missing tensors not exported" in done.stdout
    assert all(name in done.stderr for name in lost)  # each named on stderr
    got = load_file(out)
    assert set(got) == set(present)
    for k, v in present.items():
        assert torch.equal(got[k], v)


def test_the_core_export_writes_what_the_plan_holds(holed_folder, tmp_path: Path) -> None:
    folder, *_, present = holed_folder
    plan = make_plan(open_checkpoint(folder))  # the CLI asks first; the core writes the plan
    export(plan, tmp_path / "w.pth")
    got = torch.load(tmp_path / "w.pth", weights_only=True)
    assert set(got) == set(present)
