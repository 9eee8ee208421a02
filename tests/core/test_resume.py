"""The resume card on real training checkpoints: what is there, and where it disagrees.

Files are written by real training loops in tmp (a seed-style `{model, optimizer, scheduler,
iteration}` loop, a real Lightning fit); the truth is what those loops did, and what
`torch.load` reads back from the same file.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from ckptui.analysis.training.resume import resume_card
from ckptui.formats import open_checkpoint
from ckptui.report.json.training import resume_json
from tests.conftest import TinyNet, training_checkpoint


def train(model, opt, sched, iterations: int) -> None:
    for _ in range(iterations):
        opt.zero_grad()
        model(torch.randn(2, 3, 8, 8)).sum().backward()
        opt.step()
        sched.step()


def seed_style(iterations: int = 5):
    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)
    train(model, opt, sched, iterations)
    return model, opt, sched


def card_json(path: Path) -> dict:
    card = resume_card(open_checkpoint(str(path)))
    out = resume_json(card)
    assert json.loads(json.dumps(out, allow_nan=False)) == out  # the JSON contract is plain
    return out


def test_seed_style_checkpoint_whose_parts_agree(tmp_path: Path) -> None:
    model, opt, sched = seed_style(5)
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "iteration": 5,
    }
    torch.save(state, p := tmp_path / "ckpt_0000005.pth")
    card = card_json(p)
    assert card["resumable"] is True
    assert card["reason"] == "model weights and optimizer state present"
    assert card["weights"] == {
        "path": ["model"],
        "kind": "state_dict",
        "tensors": len(model.state_dict()),
        "bytes": sum(t.nbytes for t in model.state_dict().values()),
    }
    assert card["optimizers"] == [
        {"path": ["optimizer"], "kind": "SGD with momentum", "step": None, "param_groups": 1}
    ]
    assert card["schedulers"] == [
        {"path": ["scheduler"], "kind": "CosineAnnealingLR", "last_epoch": sched.last_epoch}
    ]
    assert sched.last_epoch == 5
    assert card["counters"] == [{"name": "iteration", "path": ["iteration"], "value": 5}]
    assert card["warnings"] == []
    assert card["scaler"] is None and card["rng"] == [] and card["versions"] == []


def test_stale_scheduler_after_a_resume_is_warned(tmp_path: Path) -> None:
    """Resume at iteration 5 loading model and optimizer but re-creating the scheduler, train 3
    more, save: the scheduler says 3 where the loop says 8 -- the classic mistake."""
    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    train(model, opt, torch.optim.lr_scheduler.StepLR(opt, step_size=10), 5)
    saved = {"model": model.state_dict(), "optimizer": opt.state_dict(), "iteration": 5}
    model2 = TinyNet()
    model2.load_state_dict(saved["model"])
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-3)
    opt2.load_state_dict(saved["optimizer"])
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=10)  # new, its state never loaded
    train(model2, opt2, sched2, 3)
    state = {
        "model": model2.state_dict(),
        "optimizer": opt2.state_dict(),
        "scheduler": sched2.state_dict(),
        "iteration": 8,
        "epoch": 0,
    }
    torch.save(state, p := tmp_path / "ckpt_0000008.pth")
    card = card_json(p)
    assert card["resumable"] is True
    assert card["schedulers"] == [{"path": ["scheduler"], "kind": "StepLR", "last_epoch": 3}]
    assert card["optimizers"][0]["step"] == 8  # Adam's own step tensor, read from the file
    (warning,) = card["warnings"]
    assert warning == (
        "scheduler at `scheduler` has last_epoch 3, which matches none of iteration 8, "
        "epoch 0, Adam-style step 8 (nor +-1): it was likely re-created on a resume without "
        "loading its state or setting last_epoch (the classic mistake), so its LR schedule "
        "restarted there"
    )


def test_conftest_seed_checkpoint(tmp_path: Path) -> None:
    torch.save(state := training_checkpoint(), p := tmp_path / "ckpt_0099999.pth")
    card = card_json(p)
    assert card["resumable"] is True
    assert card["optimizers"][0]["kind"] == "Adam-style" and card["optimizers"][0]["step"] == 1
    assert card["schedulers"] == [
        {
            "path": ["scheduler"],
            "kind": "MultiStepLR",
            "last_epoch": state["scheduler"]["last_epoch"],
        }
    ]
    assert {c["name"]: c["value"] for c in card["counters"]} == {"epoch": 3, "iteration": 99999}
    assert card["warnings"] == []  # last_epoch 1 is the optimizer's step 1


def test_weights_only_file_is_not_resumable_and_says_so(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    torch.save(model.state_dict(), p := tmp_path / "weights.pth")
    card = card_json(p)
    assert card["resumable"] is False
    assert card["reason"].startswith("weights only: no optimizer state")
    assert card["weights"]["path"] == [] and card["weights"]["tensors"] == 9
    assert card["optimizers"] == [] and card["schedulers"] == [] and card["counters"] == []


def test_no_weights_at_all(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "args": {"lr": 0.1}}, p := tmp_path / "meta.pth")
    card = card_json(p)
    assert card["resumable"] is False and card["reason"] == "no model weights found"


def test_scaler_rng_and_versions_are_found(tmp_path: Path) -> None:
    model, opt, sched = seed_style(2)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    random.seed(1)
    np.random.seed(1)
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "epoch": 2,
        "scaler": scaler.state_dict(),
        "rng_states": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "cpu": torch.get_rng_state(),
            "cuda": [torch.zeros(16, dtype=torch.uint8)] * 2,  # what get_rng_state_all() gives
        },
        "torch_version": torch.__version__,
        "meta": {"mmcv_version": "2.1.0", "iter": 2},
    }
    torch.save(state, p := tmp_path / "amp.pth")
    card = card_json(p)
    assert card["scaler"] == {"path": ["scaler"], "scale": 1024.0, "empty": False}
    assert [(r["kind"], r["path"]) for r in card["rng"]] == [
        ("python", ["rng_states", "python"]),
        ("numpy", ["rng_states", "numpy"]),
        ("torch", ["rng_states", "cpu"]),
        ("cuda", ["rng_states", "cuda"]),
    ]
    assert {v["name"]: v["value"] for v in card["versions"]} == {
        "torch_version": torch.__version__,
        "mmcv_version": "2.1.0",
    }
    assert {c["name"]: c["value"] for c in card["counters"]} == {"epoch": 2, "iteration": 2}
    assert card["warnings"] == []


def test_scheduler_and_optimizer_from_different_setups(tmp_path: Path) -> None:
    model, _, sched = seed_style(2)
    other = torch.optim.SGD(
        [{"params": model.conv1.parameters()}, {"params": model.fc.parameters()}], lr=0.1
    )
    state = {
        "model": model.state_dict(),
        "optimizer": other.state_dict(),
        "scheduler": sched.state_dict(),
        "iteration": 2,
    }
    torch.save(state, p := tmp_path / "mixed.pth")
    (warning,) = card_json(p)["warnings"]
    assert warning == (
        "scheduler at `scheduler` has 1 base_lrs but optimizer at `optimizer` has 2 param groups: "
        "they come from different setups"
    )


def test_initial_lr_without_a_saved_scheduler(tmp_path: Path) -> None:
    model, opt, _ = seed_style(2)
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict()}, p := tmp_path / "c.pth"
    )
    card = card_json(p)
    assert card["resumable"] is True
    assert card["reason"].endswith("(no scheduler or epoch/iteration counter found)")
    (warning,) = card["warnings"]
    assert warning == (
        "optimizer at `optimizer` has initial_lr in its param groups (a scheduler was attached) "
        "but no scheduler state is saved"
    )


def test_lightning_checkpoint(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    from tests.core.test_lightning import lightning_checkpoint

    path, _ = lightning_checkpoint(tmp_path)
    loaded = torch.load(path, weights_only=False)
    card = card_json(path)
    assert card["resumable"] is True and card["warnings"] == []
    assert card["weights"]["path"] == ["state_dict"]
    assert card["weights"]["tensors"] == len(loaded["state_dict"])
    assert [(o["path"], o["kind"]) for o in card["optimizers"]] == [
        (["optimizer_states", 0], "Adam-style"),
        (["optimizer_states", 1], "SGD with momentum"),
    ]
    adam_step = loaded["optimizer_states"][0]["state"][0]["step"].item()
    assert card["optimizers"][0]["step"] == adam_step == 2
    (sched,) = loaded["lr_schedulers"]
    assert card["schedulers"] == [
        {"path": ["lr_schedulers", 0], "kind": "StepLR", "last_epoch": sched["last_epoch"]}
    ]
    counters = {c["name"]: c["value"] for c in card["counters"]}
    assert counters["epoch"] == loaded["epoch"]
    assert counters["global_step"] == loaded["global_step"] == 4
    assert counters["batches_that_stepped"] == 2
    assert card["versions"] == [
        {
            "name": "pytorch-lightning_version",
            "path": ["pytorch-lightning_version"],
            "value": loaded["pytorch-lightning_version"],
        }
    ]


def test_lightning_mixed_precision_scaler_state(tmp_path: Path) -> None:
    """Lightning 2 keeps the GradScaler's state under the precision plugin's class name."""
    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**14)
    state = {
        "epoch": 1,
        "global_step": 10,
        "pytorch-lightning_version": "2.6.0",
        "state_dict": model.state_dict(),
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [],
        "MixedPrecision": scaler.state_dict(),
    }
    torch.save(state, p := tmp_path / "amp.ckpt")
    card = card_json(p)
    assert card["scaler"] == {"path": ["MixedPrecision"], "scale": 2.0**14, "empty": False}
    assert card["optimizers"][0]["path"] == ["optimizer_states", 0]
    assert card["optimizers"][0]["kind"] == "optimizer without state"
    assert card["schedulers"] == [] and card["resumable"] is True
