"""The browser's training answers: optimizer entries name their parameter, the root panel shows
the resume card and the weights_only verdict. Real checkpoints made in the test."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ckptui.app.app import CkptApp
from tests.app.test_browse import opened, settle, text_of
from tests.conftest import TinyNet, training_checkpoint


async def test_optimizer_entries_name_their_parameters_and_root_shows_the_card(
    tmp_path: Path,
) -> None:
    p = tmp_path / "train.pth"
    torch.save(training_checkpoint(), p)
    names = [n for n, _ in TinyNet().named_parameters()]  # the optimizer's order, the truth
    app = CkptApp(str(p))
    async with app.run_test(size=(110, 40)) as pilot:
        tree = await opened(pilot)
        await settle(pilot)  # the training worker ran
        facts = " ".join(text_of(app, "#facts").split())
        assert "resumable yes" in facts and "Adam-style at optimizer, step 1" in facts
        assert "MultiStepLR" in facts and "epoch 3" in facts
        assert "loads: nothing it would refuse" in facts
        row = tree.reveal(("optimizer", "state", 4))
        assert row is not None and row.label.plain.endswith(f"— {names[4]}")
        tree.select_path(("optimizer", "state", 4, "exp_avg"))
        await settle(pilot)
        facts = " ".join(text_of(app, "#facts").split())
        assert f"parameter {names[4]} (by-shape)" in facts
        row = tree.reveal(("optimizer", "param_groups", 0, "params", 2))
        assert row is not None and row.label.plain.endswith(f"— {names[2]}")


async def test_root_panel_of_a_weights_only_refusal(tmp_path: Path) -> None:
    p = tmp_path / "args.pth"
    torch.save({"model": TinyNet().state_dict(), "args": argparse.Namespace(lr=0.1)}, p)
    app = CkptApp(str(p))
    async with app.run_test(size=(110, 40)) as pilot:
        await opened(pilot)
        await settle(pilot)
        facts = " ".join(text_of(app, "#facts").split())
        assert "refuses this file" in facts and "argparse.Namespace" in facts
        assert "resumable no" in facts  # weights only, no optimizer
