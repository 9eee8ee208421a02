"""The command line on checkpoints of many files: open, why, export (one file, re-sharded, DCP)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..conftest import run_cli
from .test_dcp import sharded_dcp, sharded_truth  # noqa: F401  (a fixture: DTensors on 2 ranks)
from .test_folders import sharded  # noqa: F401  (a fixture: a real save_pretrained folder)


def test_why_json_on_a_shard_index_sums_to_the_folder(sharded) -> None:  # noqa: F811
    folder, truth = sharded
    index = folder / "model.safetensors.index.json"
    r = run_cli("why", str(index), "--json")
    assert r.returncode == 0, r.stderr
    b = json.loads(r.stdout)
    assert sum(b["categories"].values()) == b["file_bytes"]
    assert b["file_bytes"] == sum(p.stat().st_size for p in folder.iterdir())
    assert b["categories"]["tensor_data"] == sum(v.numel() * 4 for v in truth.values())


def test_export_max_shard_size_json(sharded, tmp_path: Path) -> None:  # noqa: F811
    folder, truth = sharded
    out = tmp_path / "model.safetensors"
    r = run_cli("export", str(folder), "-o", str(out), "--max-shard-size", "250KB", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["verified"] and doc["output"] == str(tmp_path / "model.safetensors.index.json")
    assert len(doc["shards"]) >= 2 and doc["bytes"] == doc["predicted_bytes"]
    assert doc["bytes"] == sum(Path(s).stat().st_size for s in doc["shards"])
    weight_map = json.loads(Path(doc["output"]).read_text())["weight_map"]
    back: dict[str, torch.Tensor] = {}
    for s in doc["shards"]:
        back.update(load_file(s))
    assert set(back) == set(weight_map) == set(truth)
    assert all(torch.equal(back[k], v) for k, v in truth.items())
    bad = run_cli("export", str(folder), "-o", str(tmp_path / "x.pth"), "--max-shard-size", "lots")
    assert bad.returncode == 2 and "not a size" in bad.stderr
    assert not (tmp_path / "x.pth").exists()


def test_export_of_a_dcp_folder_with_chunked_tensors_uses_torchs_reader(
    sharded_dcp,  # noqa: F811
    tmp_path: Path,
) -> None:
    out = tmp_path / "w.pth"
    r = run_cli("export", str(sharded_dcp), "-o", str(out), "--json")
    assert r.returncode == 0, r.stderr
    assert "skipped" not in r.stderr  # the chunked tensors are stitched, not skipped
    doc = json.loads(r.stdout)
    assert doc["verified"] and doc["tensors"] == len(sharded_truth())
    back = torch.load(out, weights_only=True)
    for k, v in sharded_truth().items():
        assert torch.equal(back[k], v)


def test_why_on_a_dcp_folder_attributes_bytes_to_its_files(sharded_dcp) -> None:  # noqa: F811
    from ckptui.analysis.sizes.folder import breakdown_of, tree_path
    from ckptui.formats import open_checkpoint

    r = run_cli("why", str(sharded_dcp), "--json")
    assert r.returncode == 0, r.stderr
    b = json.loads(r.stdout)
    assert sum(b["categories"].values()) == b["file_bytes"]
    assert b["file_bytes"] == sum(p.stat().st_size for p in sharded_dcp.iterdir())
    ckpt = open_checkpoint(sharded_dcp)
    rows = breakdown_of(ckpt).top_level
    distcp = {p.name for p in sharded_dcp.glob("*.distcp")}
    assert {p[0] for p, _ in rows if p[0] in distcp} == distcp  # a row per data file
    assert all(tree_path(ckpt, p) == () for p, _ in rows if p[0] in distcp)
    assert b["categories"]["tensor_data"] == sum(
        v.numel() * v.element_size() for v in sharded_truth().values()
    )
