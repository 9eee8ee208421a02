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

from ckptui.export import ExportError, export, make_plan
from ckptui.formats import open_checkpoint

from ..conftest import run_cli
from .test_folders import sharded  # noqa: F401  (a fixture: a real save_pretrained folder)


def test_json_names_each_tensors_shard(sharded) -> None:  # noqa: F811
    folder, truth = sharded
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
