"""The optimizer card on `['optimizer']` (and on each optimizer the roles find): kind, step,
hyper-parameters per param group, how many parameters and how many bytes of state.

Real optimizers stepped once and saved with `torch.save` in tmp_path.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from rich.console import Console

from ckptui.app.app import CkptApp
from ckptui.report.text.training import hyper_text, optimizer_card
from tests.app.test_browse import opened, settle, text_of
from tests.conftest import TinyNet, training_checkpoint


def stepped(opt: torch.optim.Optimizer, net: torch.nn.Module, steps: int = 1) -> None:
    for _ in range(steps):
        opt.zero_grad()
        net(torch.randn(2, 3, 8, 8)).sum().backward()
        opt.step()


def card_of(app: CkptApp) -> str:
    return " ".join(text_of(app, "#facts").split())


async def card_at(pilot, path: tuple) -> str:
    """The panel's text once the tree is open, settled, and its cursor on `path`."""
    tree = await opened(pilot)
    await settle(pilot)
    tree.select_path(path)
    await settle(pilot)
    return card_of(pilot.app)


async def test_adam_card_names_kind_step_hyper_parameters_and_state_bytes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = TinyNet()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.05)
    stepped(opt, net, steps=3)
    p = tmp_path / "train.pth"
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict()}, p)
    n_params = len(list(net.parameters()))
    state_bytes = sum(
        v.numel() * v.element_size()
        for s in opt.state_dict()["state"].values()
        for v in s.values()
        if isinstance(v, torch.Tensor)
    )
    app = CkptApp(str(p))
    async with app.run_test(size=(110, 40)) as pilot:
        card = await card_at(pilot, ("optimizer",))
        assert "kind Adam-style" in card
        assert "step 3" in card
        assert f"parameters {n_params} in 1 group · {n_params} named from model" in card
        kib = f"{state_bytes / 1024:.1f} KiB"
        assert f"state {kib} · exp_avg, exp_avg_sq" in card
        assert "group 0 lr 0.0003 · betas 0.9, 0.95 · eps 1e-08 · weight decay 0.05" in card
        assert "decoupled weight decay" in card  # AdamW's flag, on
        # not an optimizer: no card
        assert "kind Adam-style" not in await card_at(pilot, ("model",))


async def test_sgd_card_lists_each_param_group(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = TinyNet()
    decay = [p for n, p in net.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in net.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=0.1,
        momentum=0.9,
        nesterov=True,
    )
    stepped(opt, net)
    p = tmp_path / "sgd.pth"
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": 1}, p)
    app = CkptApp(str(p))
    async with app.run_test(size=(110, 40)) as pilot:
        card = await card_at(pilot, ("optimizer",))
        assert "kind SGD with momentum" in card
        assert "in 2 groups" in card
        assert "group 0 lr 0.1 · momentum 0.9 · weight decay 0.0001 · nesterov" in card
        assert f"· {len(decay)} params" in card and f"· {len(no_decay)} params" in card
        assert "group 1 lr 0.1 · momentum 0.9 · weight decay 0 · nesterov" in card


async def test_an_optimizer_state_dict_saved_alone_has_its_card_on_the_root(
    tmp_path: Path,
) -> None:
    p = tmp_path / "optim.pth"
    torch.save(training_checkpoint("sgd")["optimizer"], p)
    app = CkptApp(str(p))
    async with app.run_test(size=(110, 40)) as pilot:
        await opened(pilot)
        await settle(pilot)
        card = card_of(app)
        assert "kind SGD with momentum" in card and "momentum_buffer" in card
        assert "lr 0.1 · momentum 0.9" in card


@pytest.mark.parametrize(
    ("hyper", "text"),
    [
        (
            {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8},
            "lr 0.001 · betas 0.9, 0.999 · eps 1e-08",
        ),
        ({"lr": 0.123456789, "amsgrad": True, "maximize": False}, "lr 0.1235 · amsgrad"),
        ({}, "no hyper-parameters recorded"),
    ],
)
def test_hyper_text(hyper: dict, text: str) -> None:
    assert hyper_text(hyper) == text


def test_card_without_weights_or_step_says_so() -> None:
    mapping = {
        "kind": "unknown optimizer",
        "step": None,
        "weights_path": None,
        "notes": [],
        "lines": [{"groups": [0], "hyper": {"lr": 0.5}, "params": [None, None]}],
    }
    console = Console(width=80, record=True, color_system=None)
    console.print(optimizer_card(mapping, 0, 0))
    text = " ".join(console.export_text().split())
    assert "kind unknown optimizer" in text and "step" not in text
    assert "parameters 2 in 1 group state no tensors group 0 lr 0.5" in text


async def test_a_weights_key_that_looks_like_markup_is_shown_literally(tmp_path: Path) -> None:
    # The card's parameters line quotes the weights path; given to the table as a str it was
    # read as markup, and a key `[/x]` killed the browser with a MarkupError (issue 21).
    torch.manual_seed(0)
    net = TinyNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    stepped(opt, net)
    p = tmp_path / "odd.pth"
    torch.save({"[/x]": net.state_dict(), "optimizer": opt.state_dict()}, p)
    n_params = len(list(net.parameters()))
    app = CkptApp(str(p))
    async with app.run_test(size=(110, 40)) as pilot:
        assert f"{n_params} named from [/x]" in await card_at(pilot, ("optimizer",))
