"""Values the pickle memo shares (two AdamW param groups given one `betas` tuple) show their
value at every path that reaches them: tree rows, `param_groups` in the JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ..conftest import run_cli


@pytest.fixture
def adamw_ckpt(tmp_path: Path) -> Path:
    """A training checkpoint whose AdamW param groups share one betas tuple."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2), torch.nn.Linear(2, 2))
    betas = (0.9, 0.95)
    opt = torch.optim.AdamW(
        [
            {"params": model[0].parameters(), "betas": betas},
            {"params": model[1].parameters(), "betas": betas, "weight_decay": 0.0},
            {"params": model[2].parameters(), "betas": betas},
        ],
        lr=1e-3,
    )
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    p = tmp_path / "adamw.pt"
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, p)
    return p


def test_shared_betas_show_their_value_in_param_groups(adamw_ckpt: Path) -> None:
    groups = torch.load(adamw_ckpt, weights_only=True)["optimizer"]["param_groups"]
    result = run_cli("inspect", str(adamw_ckpt), "--json")
    assert result.returncode == 0, result.stderr
    (opt,) = json.loads(result.stdout)["param_groups"]
    by_group = {g: line["hyper"] for line in opt["lines"] for g in line["groups"]}
    for i, group in enumerate(groups):
        assert by_group[i]["betas"] == list(group["betas"])
        assert by_group[i]["weight_decay"] == group["weight_decay"]
    # Groups 0 and 2 differ in nothing but their params: one line, as for unshared values.
    assert [line["groups"] for line in opt["lines"]] == [[0, 2], [1]]


def test_shared_betas_row_shows_the_value(adamw_ckpt: Path) -> None:
    result = run_cli("inspect", str(adamw_ckpt))
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "── betas  " in line]
    assert len(rows) == 3
    assert all("(0.9, 0.95)" in r for r in rows[1:]), rows
    assert all("same object as optimizer.param_groups.0.betas" in r for r in rows[1:]), rows
