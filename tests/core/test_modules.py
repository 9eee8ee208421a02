"""The module view's core: dotted state-dict names grouped into modules, whole-module pickles
shown as their layers, and parameter counts, on files written by real torch.save.

The truth for every count is torch's own (`numel()` over `parameters()` / `buffers()`), and for
every layer title the attributes the real torch.nn module was built with.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from ckptui.analysis.modules import INTERNALS, Module, ModuleEntry, describe, module_rows
from ckptui.analysis.params import count, count_params, params_at
from ckptui.analysis.roles import weights_path
from ckptui.formats import open_checkpoint


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )


class ResNet(nn.Module):
    """torchvision's resnet18 layout, narrower (torchvision is not installed here)."""

    def __init__(self, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        w = width
        self.layer1 = nn.Sequential(BasicBlock(w, w), BasicBlock(w, w))
        self.layer2 = nn.Sequential(BasicBlock(w, 2 * w, 2), BasicBlock(2 * w, 2 * w))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2 * w, classes)


def gone_module_pickle(path: Path) -> nn.Module:
    """torch.save(model) of a ResNet whose classes are pickled as members of a module that is
    removed right after, so nothing can import them when the file is opened (as on a box without
    the model's code). Returns the model, for the truth."""
    name = "zoo_not_importable"
    mod = types.ModuleType(name)
    classes = (BasicBlock, ResNet)
    for cls in classes:
        setattr(mod, cls.__name__, cls)
        cls.__module__ = name
    sys.modules[name] = mod
    try:
        torch.manual_seed(0)
        model = ResNet()
        torch.save(model, path)
    finally:
        del sys.modules[name]
        for cls in classes:
            cls.__module__ = __name__
    with pytest.raises(ModuleNotFoundError):
        torch.load(path, weights_only=False)  # truly not importable now
    return model


@pytest.fixture
def resnet(tmp_path: Path) -> tuple[Path, nn.Module]:
    p = tmp_path / "resnet.pth"
    return p, gone_module_pickle(p)


def by_name(rows) -> dict:
    return {r.name: r for r in rows}


def test_a_whole_module_pickle_shows_its_layers_titled_as_torch_builds_them(resnet) -> None:
    path, model = resnet
    ck = open_checkpoint(path)
    rows = module_rows(ck.root, ())
    assert [r.name for r in rows] == [*dict(model.named_children()), INTERNALS]
    top = by_name(rows)
    assert top["conv1"].title == "Conv2d(3, 8, kernel_size=7, stride=2, padding=3, bias=False)"
    assert top["bn1"].title == "BatchNorm2d(8)"
    assert top["relu"].title == "ReLU(inplace=True)"
    assert top["maxpool"].title == "MaxPool2d(3, stride=2, padding=1)"
    assert top["avgpool"].title == "AdaptiveAvgPool2d(1)"
    assert top["fc"].title == "Linear(16, 10)"
    assert top["layer1"].title == "Sequential(2)"
    block = by_name(top["layer2"].rows())["0"]
    assert isinstance(block, Module) and block.title == "BasicBlock"
    inner = by_name(block.rows())
    assert inner["conv1"].title == "Conv2d(8, 16, kernel_size=3, stride=2, padding=1, bias=False)"
    assert by_name(inner["downsample"].rows())["0"].title == (
        "Conv2d(8, 16, kernel_size=1, stride=2, bias=False)"
    )
    assert "downsample" not in by_name(by_name(top["layer1"].rows())["0"].rows())  # None
    # parameters and buffers are the leaves, the internals one row away
    conv = by_name(top["conv1"].rows())
    assert list(conv) == ["weight", INTERNALS]
    assert isinstance(conv["weight"], ModuleEntry) and conv["weight"].node.tensor.shape == (
        8,
        3,
        7,
        7,
    )
    assert conv[INTERNALS].internals and conv[INTERNALS].node.child("_backward_hooks") is not None
    bn = by_name(top["bn1"].rows())
    assert list(bn) == [
        "weight",
        "bias",
        "running_mean",
        "running_var",
        "num_batches_tracked",
        INTERNALS,
    ]


def test_parameter_counts_match_torch(resnet) -> None:
    path, model = resnet
    ck = open_checkpoint(path)
    p = count_params(ck.root)
    assert p.weights == sum(t.numel() for t in model.parameters())
    assert p.buffers == sum(t.numel() for t in model.buffers())
    assert p.nbytes == sum(t.numel() * t.element_size() for t in model.state_dict().values())
    counters = sum(1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert dict(p.dtypes) == {"float32": p.total - counters, "int64": counters}
    top = by_name(module_rows(ck.root, ()))
    for name, sub in model.named_children():
        row = top[name]
        assert row.params.weights == sum(t.numel() for t in sub.parameters()), name
        assert row.params.buffers == sum(t.numel() for t in sub.buffers()), name


def test_a_state_dict_groups_into_modules_with_counts(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = nn.DataParallel(
        nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    )
    sd = net.state_dict()
    p = tmp_path / "dp.pth"
    torch.save({"model": sd, "epoch": 1}, p)
    ck = open_checkpoint(p)
    assert module_rows(ck.root, ()) is None  # a training checkpoint's root is not a state dict
    model_node = ck.root.child("model")
    rows = module_rows(model_node, ("model",))
    assert [r.name for r in rows] == ["module"]
    module = rows[0]
    assert isinstance(module, Module) and module.prefix == "module"
    layers = by_name(module.rows())
    assert list(layers) == ["0", "1", "3"]
    assert layers["1"].prefix == "module.1"
    assert layers["1"].params.weights == 8 and layers["1"].params.buffers == 4 + 4 + 1
    leaves = by_name(layers["3"].rows())
    assert list(leaves) == ["weight", "bias"]
    assert leaves["weight"].path == ("model", "module.3.weight")
    assert module.params.weights == sum(t.numel() for t in net.parameters())
    assert params_at(ck.root, weights_path(ck)).weights == module.params.weights


def test_tied_weights_count_once(tmp_path: Path) -> None:
    emb = nn.Embedding(100, 8)
    head = nn.Linear(8, 100, bias=False)
    head.weight = emb.weight
    sd = nn.ModuleDict({"wte": emb, "lm_head": head}).state_dict()
    p = tmp_path / "tied.bin"
    torch.save(sd, p)
    ck = open_checkpoint(p)
    params = count_params(ck.root)
    assert params.weights == 800 and params.nbytes == 3200 and params.tensors == 1


def test_a_100000_key_state_dict_opens_as_a_few_rows(tmp_path: Path) -> None:
    sd = {}
    for layer in range(1000):
        for j in range(100):
            sd[f"transformer.h.{layer}.p{j}.weight"] = torch.zeros(1)
    sd["lm_head.weight"] = torch.zeros(3)
    p = tmp_path / "wide.pth"
    torch.save(sd, p)
    ck = open_checkpoint(p)
    rows = module_rows(ck.root, ())
    assert [r.name for r in rows] == ["transformer", "lm_head"]
    assert rows[0].params.weights == 100_000 and rows[0].params.tensors == 100_000
    (h,) = rows[0].rows()
    blocks = h.rows()
    assert len(blocks) == 1000 and blocks[7].prefix == "transformer.h.7"
    assert blocks[7].params.weights == 100


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0"),
        (9_408, "9,408"),
        (25_557, "25.6 k"),
        (11_689_512, "11.7 M"),
        (1_540_000_000, "1.54 B"),
    ],
)
def test_counts_read_as_a_person_says_them(n: int, text: str) -> None:
    assert count(n) == text


def test_unknown_module_classes_are_named_not_guessed(resnet) -> None:
    path, _ = resnet
    ck = open_checkpoint(path)
    assert describe(ck.root) == "ResNet"
