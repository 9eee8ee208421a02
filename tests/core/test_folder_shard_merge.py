"""How a sharded folder's shards merge into one tree (`formats.sharded.open_sharded`), on real
`safetensors.torch.save_file` shards: the usual shard (every tensor new and listed) takes a
fast path of set operations (issue 16); a tensor in two shards, a tensor the index does not
list and safetensors' `__metadata__` take the checked loop, with the same findings and order."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ckptui.core.tree import NodeKind
from ckptui.formats import open_checkpoint


def _folder(tmp_path: Path, shards: dict[str, dict[str, torch.Tensor]], index: dict) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    for name, tensors in shards.items():
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
    doc = {"metadata": {"total_size": 0}, "weight_map": index}
    (folder / "model.safetensors.index.json").write_text(json.dumps(doc))
    return folder


def _t(n: int) -> torch.Tensor:
    return torch.full((n,), float(n))


def test_usual_shards_merge_in_shard_then_header_order(tmp_path: Path) -> None:
    a = {"b.weight": _t(2), "a.weight": _t(3)}
    b = {"d.weight": _t(4), "c.weight": _t(5)}
    index = {k: "model-00001-of-00002.safetensors" for k in a}
    index |= {k: "model-00002-of-00002.safetensors" for k in b}
    folder = _folder(
        tmp_path,
        {"model-00001-of-00002.safetensors": a, "model-00002-of-00002.safetensors": b},
        index,
    )
    ckpt = open_checkpoint(str(folder))
    keys = [c.key for c in ckpt.root.children]
    # each shard's header lists names sorted; the metadata strings once, last
    assert keys == ["a.weight", "b.weight", "c.weight", "d.weight", "__metadata__"]
    assert ckpt.root.children[-1].kind is NodeKind.MAPPING
    assert not ckpt.findings
    assert {st.file for st in ckpt.storages.values()} == set(index.values())
    assert ckpt.storages["model-00002-of-00002.safetensors:c.weight"].nbytes == 20


def test_a_tensor_in_two_shards_keeps_the_first_and_says_so(tmp_path: Path) -> None:
    first, second = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    folder = _folder(
        tmp_path,
        {first: {"x": _t(2), "y": _t(3)}, second: {"x": _t(7), "z": _t(4)}},
        {"x": first, "y": first, "z": second},
    )
    ckpt = open_checkpoint(str(folder))
    keys = [c.key for c in ckpt.root.children]
    assert keys == ["x", "y", "z", "__metadata__"]
    x = ckpt.root.child("x").tensor
    assert x.shape == (2,) and x.storage_key == f"{first}:x"
    kinds = [(f.kind, f.path) for f in ckpt.findings]
    # the second copy is hidden and, as the index names the first shard, also unlisted
    assert ("duplicate_key", ("x",)) in kinds
    assert all(p == ("x",) for _, p in kinds)


def test_a_tensor_the_index_does_not_list_is_shown_with_a_finding(tmp_path: Path) -> None:
    first, second = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    folder = _folder(
        tmp_path,
        {first: {"a": _t(2)}, second: {"b": _t(3), "extra": _t(1)}},
        {"a": first, "b": second},
    )
    ckpt = open_checkpoint(str(folder))
    assert [c.key for c in ckpt.root.children] == ["a", "b", "extra", "__metadata__"]
    assert [(f.kind, f.path) for f in ckpt.findings] == [("unlisted_tensor", ("extra",))]
    assert f"{second}:extra" in ckpt.storages
