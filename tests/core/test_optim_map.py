"""Optimizer entries named: every mapping equals the truth from the real model and optimizer.

Each test trains a real model a step with a real optimizer, saves it with `torch.save` in tmp,
and builds the truth from `named_parameters()` and the optimizer's own `param_groups`: the
name of the parameter behind each index. ckptui's answer must equal it wherever it says
`exact`/`by-shape`, and where it says `ambiguous` it must give no name and say why.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ckptui.analysis.training.optim_map import OptimizerEntry, OptimizerMapping, map_optimizers
from ckptui.formats import open_checkpoint
from ckptui.report.json.training import optimizer_params_json, param_groups_json
from tests.conftest import TinyNet


class Backbone(torch.nn.Module):
    """conv + bn + conv + bn: parameters interleaved with BatchNorm buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 6, 3)
        self.bn1 = torch.nn.BatchNorm2d(6)
        self.conv2 = torch.nn.Conv2d(6, 5, 1)
        self.bn2 = torch.nn.BatchNorm2d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.bn1(self.conv1(x))))


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.head = torch.nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x).mean((2, 3)))


def truth(model: torch.nn.Module, opt: torch.optim.Optimizer) -> list[str]:
    """The name of the parameter behind each index, from the optimizer's own groups."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of[id(p)] for g in opt.param_groups for p in g["params"]]


def step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    torch.manual_seed(0)
    opt.zero_grad()
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()


def mapping_of(path: Path) -> OptimizerMapping:
    (m,) = map_optimizers(open_checkpoint(str(path)))
    return m


def assert_named(m: OptimizerMapping, expected: list[str], sure: str = "by-shape") -> None:
    """Every entry sure and equal to the truth, in index order, covering every index."""
    assert [e.index for e in m.entries] == list(range(len(expected)))
    assert [e.param for e in m.entries] == expected
    assert {e.confidence for e in m.entries} == {sure}


OPTIMIZERS = {
    "sgd-momentum": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-3),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.05),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_whole_model_with_batchnorm(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    model = Net()
    opt = OPTIMIZERS[name](model.parameters())
    step(model, opt)
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 1},
        p := tmp_path / "c.pth",
    )
    m = mapping_of(p)
    expected = truth(model, opt)
    assert len(expected) == 10 and len(model.state_dict()) == 16  # 6 buffers interleaved
    assert_named(m, expected)
    assert m.params_from == "convention" and m.weights_path == ("model",)
    assert m.kind == {"sgd-momentum": "SGD with momentum"}.get(name, "Adam-style")
    assert m.step == (None if name == "sgd-momentum" else 1)
    (line,) = m.groups
    assert line.groups == (0,) and list(line.params) == expected
    assert line.hyper["lr"] == opt.param_groups[0]["lr"]
    if name == "adamw":
        assert line.hyper["weight_decay"] == 0.05 and line.hyper["betas"] == [0.9, 0.999]


@pytest.mark.parametrize("head_first", [False, True])
def test_two_param_groups_backbone_and_head(tmp_path: Path, head_first: bool) -> None:
    torch.manual_seed(0)
    model = Net()
    groups = [
        {"params": model.backbone.parameters(), "lr": 1e-4},
        {"params": model.head.parameters(), "lr": 1e-2},
    ]
    opt = torch.optim.Adam(groups[::-1] if head_first else groups)
    step(model, opt)
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict()}, p := tmp_path / "c.pth"
    )
    m = mapping_of(p)
    expected = truth(model, opt)
    assert expected[0] == ("head.weight" if head_first else "backbone.conv1.weight")
    assert_named(m, expected)
    assert [e.group for e in m.entries] == [
        gi for gi, g in enumerate(opt.param_groups) for _ in g["params"]
    ]
    lines = {line.hyper["lr"]: list(line.params) for line in m.groups}
    assert lines == {
        1e-4: [n for n in expected if n.startswith("backbone.")],
        1e-2: ["head.weight", "head.bias"],
    }


def test_data_parallel_prefix_keeps_the_files_names(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.DataParallel(Net())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step(model, opt)
    torch.save(
        {"state_dict": model.state_dict(), "optimizer": opt.state_dict()}, p := tmp_path / "c.pth"
    )
    m = mapping_of(p)
    expected = truth(model, opt)
    assert expected[0] == "module.backbone.conv1.weight"
    assert_named(m, expected)


def test_whole_module_pickle_knows_its_buffers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    # A float buffer with a parameter's shape, named against convention: only the module's own
    # `_buffers` can tell it is not a parameter.
    model.register_buffer("fc_shadow", torch.zeros(4, 8))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt.zero_grad()
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    torch.save({"model": model, "optimizer": opt.state_dict()}, p := tmp_path / "whole.pth")
    m = mapping_of(p)
    assert m.params_from == "module" and m.weights_path == ("model",)
    assert_named(m, truth(model, opt))


def test_frozen_backbone_subset_aligns_by_shape(tmp_path: Path) -> None:
    """Only the head is trained; the optimizer's two entries must land on head.*, not on
    a backbone parameter (all shapes in the head are unique in the model)."""
    torch.manual_seed(0)
    model = Net()
    model.head = torch.nn.Linear(5, 7)
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    step(model, opt)
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict()}, p := tmp_path / "c.pth"
    )
    m = mapping_of(p)
    assert_named(m, truth(model, opt))
    assert truth(model, opt) == ["head.weight", "head.bias"]


def test_frozen_subset_that_shapes_cannot_place_is_ambiguous(tmp_path: Path) -> None:
    """Two identical Linear layers, the first frozen: the state [4, 4] + [4] fits either layer.
    Nothing may be guessed: both entries ambiguous, naming both fits."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    model[0].requires_grad_(False)
    opt = torch.optim.Adam(model[1].parameters(), lr=1e-3)
    opt.zero_grad()
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict()}, p := tmp_path / "c.pth"
    )
    m = mapping_of(p)
    assert [e.confidence for e in m.entries] == ["ambiguous", "ambiguous"]
    assert [e.param for e in m.entries] == [None, None]
    assert (
        m.entries[0].why is not None
        and "index 0: state shape [4, 4], fits 0.weight or 1.weight;" in m.entries[0].why
    )
    assert (
        m.entries[1].why is not None
        and "index 1: state shape [4], fits 0.bias or 1.bias;" in m.entries[1].why
    )
    assert "several order-preserving placements of 2 entries on 4" in m.entries[0].why


def test_weights_from_another_model_break_with_the_index_named(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    step(model, opt)
    other = Net()
    other.head = torch.nn.Linear(5, 9)
    torch.save(
        {"model": other.state_dict(), "optimizer": opt.state_dict()}, p := tmp_path / "c.pth"
    )
    m = mapping_of(p)
    assert {e.confidence for e in m.entries} == {"ambiguous"}
    assert {e.param for e in m.entries} == {None}
    assert m.entries[0].why == "index 8: state shape [3, 5] vs parameter head.weight [9, 5]"


def test_more_entries_than_parameters_is_a_count_mismatch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    step(model, opt)
    torch.save(
        {"model": model.backbone.state_dict(), "optimizer": opt.state_dict()},
        p := tmp_path / "c.pth",
    )
    m = mapping_of(p)
    assert m.entries[0].confidence == "ambiguous"
    assert m.entries[0].why is not None
    assert m.entries[0].why.startswith("count mismatch: 10 params in groups vs 8 candidate")


def test_no_step_yet_maps_by_order_and_says_so(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)  # never stepped: `state` is empty
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict()}, p := tmp_path / "c.pth"
    )
    m = mapping_of(p)
    assert_named(m, truth(model, opt))
    assert {e.why for e in m.entries} == {"no state to check its shape; placed by order"}
    assert m.step is None


def test_fqn_keyed_state_is_exact(tmp_path: Path) -> None:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    step(model, opt)
    msd, osd = get_state_dict(model, opt)
    torch.save({"model": msd, "optim": osd}, p := tmp_path / "c.pth")
    m = mapping_of(p)
    assert m.params_from == "names"
    assert [(e.key, e.param) for e in m.entries] == [(n, n) for n in truth(model, opt)]
    assert {e.confidence for e in m.entries} == {"exact"} and {e.why for e in m.entries} == {None}


def test_old_files_keyed_by_object_id(tmp_path: Path) -> None:
    """Before torch 0.4 `state` was keyed by id(param); order still comes from `params`."""
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step(model, opt)
    sd = opt.state_dict()
    ids = {i: 140566644061240 + 48 * (9 - i) for i in sd["state"]}  # not in index order
    old = {
        "state": {ids[i]: s for i, s in sd["state"].items()},
        "param_groups": [
            {**g, "params": [ids[i] for i in g["params"]]} for g in sd["param_groups"]
        ],
    }
    torch.save({"model": model.state_dict(), "optimizer": old}, p := tmp_path / "c.pth")
    m = mapping_of(p)
    assert_named(m, truth(model, opt))
    assert [e.key for e in m.entries] == [ids[i] for i in range(10)]


def test_lightning_two_optimizers_each_map_to_their_part(tmp_path: Path) -> None:
    from tests.core.test_lightning import lightning_checkpoint

    path, model = lightning_checkpoint(tmp_path)
    opts, _ = model.configure_optimizers()  # same parameter lists as the trained ones
    found = map_optimizers(open_checkpoint(str(path)))
    assert [m.optimizer_path for m in found] == [("optimizer_states", 0), ("optimizer_states", 1)]
    for m, opt in zip(found, opts, strict=True):
        assert m.weights_path == ("state_dict",)
        assert_named(m, truth(model, opt))
    assert [e.param for e in found[1].entries] == ["head.weight", "head.bias"]
    assert [m.kind for m in found] == ["Adam-style", "SGD with momentum"]
    assert found[0].step == 2  # each optimizer stepped twice: read from the 0-d step tensor


def test_many_groups_differing_only_in_params_are_one_line(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Net()
    named = list(model.named_parameters())
    # one group per parameter (as per-parameter LR decay code does), two distinct settings
    groups = [{"params": [p], "lr": 1e-3 if n.startswith("backbone") else 1e-2} for n, p in named]
    opt = torch.optim.SGD(groups, momentum=0.9)
    step(model, opt)
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict()}, p := tmp_path / "c.pth"
    )
    m = mapping_of(p)
    assert_named(m, truth(model, opt))
    assert [(len(line.groups), line.hyper["lr"]) for line in m.groups] == [(8, 1e-3), (2, 1e-2)]
    assert list(m.groups[1].params) == ["head.weight", "head.bias"]
    js = param_groups_json([m])
    assert js[0]["lines"][1] == {
        "groups": [8, 9],
        "hyper": m.groups[1].hyper,
        "params": ["head.weight", "head.bias"],
    }


def test_json_forms(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    step(model, opt)
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict()}, p := tmp_path / "c.pth"
    )
    ms = map_optimizers(open_checkpoint(str(p)))
    rows = optimizer_params_json(ms)
    assert rows[0] == {
        "optimizer_path": ["optimizer"],
        "index": 0,
        "key": 0,
        "group": 0,
        "param": "backbone.conv1.weight",
        "confidence": "by-shape",
        "why": None,
    }
    assert len(rows) == 10
    (g,) = param_groups_json(ms)
    assert g["kind"] == "Adam-style" and g["step"] == 1 and g["weights_path"] == ["model"]
    assert isinstance(ms[0].entries[0], OptimizerEntry)


class GAN(torch.nn.Module):
    def __init__(self, same: bool) -> None:
        super().__init__()
        self.generator = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Linear(6, 4))
        shape = (4, 6, 4) if same else (4, 5, 1)
        self.discriminator = torch.nn.Sequential(
            torch.nn.Linear(shape[0], shape[1]), torch.nn.Linear(shape[1], shape[2])
        )


@pytest.mark.parametrize("same", [False, True])
def test_gan_optimizers_over_generator_and_discriminator(tmp_path: Path, same: bool) -> None:
    """Two optimizers, each over one half of the weights. Halves of different shapes place
    each optimizer by shape; identical halves cannot be told apart and must not be guessed."""
    torch.manual_seed(0)
    model = GAN(same)
    opt_g = torch.optim.Adam(model.generator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999))
    x = torch.randn(3, 4)
    model.discriminator(model.generator(x)).sum().backward()
    opt_g.step()
    opt_d.step()
    state = {"model": model.state_dict(), "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict()}
    torch.save(state, p := tmp_path / "gan.pth")
    found = map_optimizers(open_checkpoint(str(p)))
    assert [m.optimizer_path for m in found] == [("opt_g",), ("opt_d",)]
    if not same:
        for m, opt in zip(found, (opt_g, opt_d), strict=True):
            assert_named(m, truth(model, opt))
        return
    for m, opt in zip(found, (opt_g, opt_d), strict=True):
        assert {e.confidence for e in m.entries} == {"ambiguous"}
        assert {e.param for e in m.entries} == {None}
        first = truth(model, opt)[0].split(".", 1)[1]  # "0.weight"
        assert m.entries[0].why is not None
        assert f"fits generator.{first} or discriminator.{first}" in m.entries[0].why
