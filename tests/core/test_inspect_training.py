"""`inspect --json`'s training fields: optimizer_params, param_groups, resume, weights_only."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..conftest import TinyNet, run_cli, training_checkpoint


def test_inspect_json_names_parameters_and_reports_resume_and_weights_only(
    tmp_path: Path,
) -> None:
    p = tmp_path / "train.pth"
    ck = training_checkpoint(optim="sgd", parallel=True)
    torch.save(ck, p)
    r = run_cli("inspect", str(p), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    for old in ("path", "format", "file_bytes", "tree", "tensors", "findings", "storages"):
        assert old in doc  # existing fields stay
    names = ["module." + n for n, _ in TinyNet().named_parameters()]
    got = [
        (e["optimizer_path"], e["index"], e["param"], e["confidence"])
        for e in doc["optimizer_params"]
    ]
    assert got == [(["optimizer"], i, n, "by-shape") for i, n in enumerate(names)]
    [group] = doc["param_groups"]
    assert group["kind"].startswith("SGD") and group["lines"][0]["hyper"]["lr"] == 0.1
    assert group["lines"][0]["params"] == names
    resume = doc["resume"]
    assert resume["resumable"] is True and resume["weights"]["path"] == ["model"]
    assert {c["name"]: c["value"] for c in resume["counters"]} == {"epoch": 3, "iteration": 99999}
    assert doc["weights_only"]["loads"] is True and doc["weights_only"]["refused_globals"] == []
    assert doc["weights_only"]["fix"] is None
