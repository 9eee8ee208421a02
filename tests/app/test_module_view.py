"""The module view (`m`) driven with keys: a whole-module ResNet pickle whose classes cannot be
imported, a DataParallel training checkpoint, and a 100,000-key state dict (issue 18)."""

from __future__ import annotations

from pathlib import Path

import torch
from rich.style import Style

from ckptui.analysis.modules import INTERNALS
from ckptui.analysis.params import count
from ckptui.app.app import CkptApp
from ckptui.app.widgets.ckpt_tree import CkptTree
from tests.app.test_browse import cursor_path, opened, settle, text_of
from tests.core.test_modules import gone_module_pickle


def labels(row) -> list[str]:
    return [c.label.plain for c in row.children]


def child(row, name: str):
    found = [c for c in row.children if c.label.plain.split("  ")[0] == name]
    assert found, (name, labels(row))
    return found[0]


async def test_a_whole_module_pickle_opens_on_its_layers(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    model = gone_module_pickle(path)
    weights = sum(t.numel() for t in model.parameters())
    app = CkptApp(str(path))
    async with app.run_test(size=(80, 24)) as pilot:
        tree = await opened(pilot)
        assert tree.module_view  # on by default for a whole-module pickle
        top = labels(tree.root)
        assert [t.split("  ")[0] for t in top] == [*dict(model.named_children()), INTERNALS]
        conv1 = child(tree.root, "conv1").label.plain
        assert "Conv2d(3, 8, kernel_size=7, stride=2, padding=3, bias=False)" in conv1
        assert "1,176 params" in conv1
        assert f"{count(weights)} params" in " ".join(text_of(app, "#header").split())
        # the root card counts the model's parameters
        facts = " ".join(text_of(app, "#facts").split())
        assert f"parameters {count(weights)} ({weights:,})" in facts
        # j l j: conv1, open it, its weight: a tensor with its state_dict name
        await pilot.press("j", "l", "j")
        await settle(pilot)
        assert cursor_path(tree) == ("_modules", "conv1", "_parameters", "weight")
        assert "state_dict key conv1.weight" in " ".join(text_of(app, "#facts").split())
        # the nn.Module internals are one key away, as recorded
        await pilot.press("j", "l")
        await pilot.pause()
        internals = tree.cursor_node
        assert internals.label.plain.startswith(INTERNALS)
        names = [t.split("  ")[0] for t in labels(internals)]
        assert "_backward_hooks" in names and "_parameters" in names
        # m: the same file as recorded, cursor kept on its key
        await pilot.press("k", "m")
        await pilot.pause()
        assert not tree.module_view
        assert cursor_path(tree) == ("_modules", "conv1", "_parameters", "weight")


async def test_m_groups_a_state_dict_and_m_again_restores_it(dp_ckpt) -> None:
    path, ck = dp_ckpt
    app = CkptApp(str(path))
    async with app.run_test(size=(80, 24)) as pilot:
        tree = await opened(pilot)
        assert not tree.module_view
        await pilot.press("j", "l", "j")  # model, its first key
        assert cursor_path(tree) == ("model", "module.conv1.weight")
        await pilot.press("m")
        await pilot.pause()
        assert tree.module_view
        assert cursor_path(tree) == ("model", "module.conv1.weight")  # kept, inside its module
        model_row = child(tree.root, "model")
        assert "276 params" in model_row.label.plain
        (module,) = model_row.children
        assert module.label.plain.startswith("module  276 params")
        assert [t.split("  ")[0] for t in labels(module)] == ["conv1", "bn1", "fc"]
        assert cursor_node_label(tree).startswith("weight  ")
        # a module row's card: its parameters, buffers and dtypes
        await pilot.press("k")
        await settle(pilot)
        facts = " ".join(text_of(app, "#facts").split())
        assert facts.startswith("module.conv1") and "parameters 224" in facts
        await pilot.press("m")
        await pilot.pause()
        assert not tree.module_view
        assert [t.split("  ")[0] for t in labels(child(tree.root, "model"))] == list(ck["model"])
        assert cursor_path(tree) == ("model", "module.conv1.weight")  # the module's first key


def cursor_node_label(tree: CkptTree) -> str:
    assert tree.cursor_node is not None
    # as drawn: a tensor row's shape | dtype | size columns are added when it is rendered
    return tree.render_label(tree.cursor_node, Style(), Style()).plain


async def test_a_100000_key_state_dict_becomes_a_few_rows(tmp_path: Path) -> None:
    sd = {f"transformer.h.{i // 100}.p{i % 100}.weight": torch.zeros(1) for i in range(100_000)}
    sd["transformer.wte.weight"] = torch.zeros(4, 2)
    sd["lm_head.weight"] = torch.zeros(4, 2)
    path = tmp_path / "wide.pth"
    torch.save(sd, path)
    app = CkptApp(str(path))
    async with app.run_test(size=(80, 24)) as pilot:
        tree = await opened(pilot)
        await pilot.press("m")
        await pilot.pause()
        top = labels(tree.root)
        assert [t.split("  ")[0] for t in top] == ["transformer", "lm_head"]
        assert "100 k params" in top[0]
        assert tree.select_path(("transformer.h.7.p3.weight",))
        await pilot.pause()
        assert cursor_path(tree) == ("transformer.h.7.p3.weight",)
        shown = tree.last_line + 1
        assert shown < 1200  # root, 2 modules, h, its 1,000 blocks, one block's 100 names
