"""Behaviour that large checkpoints depend on (issue 16): O(1) key lookups, a duplicate search
that reads each candidate once and can be cancelled, and results identical to the slow paths."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import pytest
import torch

from ckptui.analysis.sizes.breakdown import breakdown
from ckptui.analysis.sizes.duplicates import find_duplicates
from ckptui.core.cancel import Cancelled
from ckptui.core.tree import Node, NodeKind
from ckptui.formats import open_checkpoint
from ckptui.formats.layout import read_layout


def _mapping(keys: list) -> Node:
    children = tuple(Node.make(NodeKind.VALUE, "int", k, value=i) for i, k in enumerate(keys))
    return Node.make(NodeKind.MAPPING, "dict", None, children)


def test_child_of_a_large_mapping_finds_the_first_child_with_the_key() -> None:
    node = _mapping([f"k{i % 50}" for i in range(200)])  # every key four times
    assert node.child("k7").value == 7
    assert node.child("k49").value == 49
    assert node.child("nope") is None
    small = _mapping(["a", "b", "a"])
    assert small.child("a").value == 0


def test_child_index_is_not_carried_into_a_replaced_node() -> None:
    node = _mapping([f"k{i}" for i in range(100)])
    assert node.child("k3").value == 3  # builds the index
    other = dataclasses.replace(node, children=_mapping(["k3"] * 40).children)
    assert other.child("k3").value == 0
    assert other.child("k4") is None
    assert node == dataclasses.replace(node)  # the cache takes no part in equality


def _dup_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    a = torch.randn(25_000)  # 100 kB: between one and two 64 KiB edges
    near = a.clone()
    near[-1] += 1  # differs only past the first 64 KiB
    big = torch.randn(300_000)
    sd = {f"small.{i}": torch.randn(10) for i in range(500)}  # many keys: the index path
    sd.update({"a": a, "a_copy": a.clone(), "near": near, "big": big, "big_copy": big.clone()})
    p = tmp_path / "dups.pt"
    torch.save(sd, p)
    return p


def test_duplicates_in_a_large_state_dict_and_not_a_near_copy(tmp_path: Path) -> None:
    c = open_checkpoint(_dup_file(tmp_path))
    b = breakdown(c, read_layout(c))
    seen: list[tuple[int, int]] = []
    found = find_duplicates(c, b, lambda done, total: seen.append((done, total)))
    assert sorted(sorted(f.paths) for f in found) == [
        [("a",), ("a_copy",)],
        [("big",), ("big_copy",)],
    ]
    # the last report is the whole-tensor stage: only the two 1.2 MB tensors are read again
    assert seen[-1] == (2 * 300_000 * 4, 2 * 300_000 * 4)


def test_duplicate_search_stops_when_cancelled(tmp_path: Path) -> None:
    c = open_checkpoint(_dup_file(tmp_path))
    b = breakdown(c, read_layout(c))
    with pytest.raises(Cancelled):
        find_duplicates(c, b, cancelled=lambda: True)


def test_central_directory_walk_matches_zipfile(tmp_path: Path) -> None:
    import zipfile

    from ckptui.formats.zipdir import read_central_directory

    p = tmp_path / "sd.pt"
    torch.save({f"w{i}": torch.zeros(3) for i in range(300)}, p)
    data = p.read_bytes()
    cd = read_central_directory(lambda at, n: data[at : at + n], len(data))
    assert cd is not None
    with zipfile.ZipFile(p) as zf:
        infos = zf.infolist()
        assert cd.names == [i.filename for i in infos]
        assert cd.start_dir == zf.start_dir
    fields = ("filename", "header_offset", "compress_size", "file_size", "compress_type", "CRC")
    for i, zi in enumerate(infos):
        assert [getattr(cd[i], f) for f in fields] == [getattr(zi, f) for f in fields]


def test_central_directory_leaves_unusual_archives_to_zipfile(tmp_path: Path) -> None:
    from ckptui.formats.zipdir import read_central_directory

    p = tmp_path / "sd.pt"
    torch.save({"w": torch.zeros(3)}, p)
    plain = p.read_bytes()
    commented = plain[:-2] + b"\x03\x00abc"  # an archive comment
    prepended = b"junk" + plain  # data before the archive: zipfile's offset fix-up
    for data in (commented, prepended, plain[:-1]):
        assert read_central_directory(lambda at, n, d=data: d[at : at + n], len(data)) is None
    p.write_bytes(commented)
    c = open_checkpoint(p)  # zipfile's path still reads it
    assert [path for path, _ in c.tensors()] == [("w",)]


def test_resume_counts_the_weights_tensors_as_the_tree_walk_does(tmp_path: Path) -> None:
    from ckptui.analysis.roles import weights_path
    from ckptui.analysis.training.resume import resume_card

    emb = torch.randn(4, 3)
    model = {"embed.weight": emb, "head.weight": emb, "bias": torch.zeros(3)}  # a tied pair
    p = tmp_path / "train.pt"
    torch.save({"model": model, "extra": {"again": emb}, "epoch": 1}, p)
    c = open_checkpoint(p)
    wpath = weights_path(c)
    assert wpath == ("model",)
    walked = sum(1 for path, _ in c.tensors() if path[: len(wpath)] == wpath)
    assert walked == 3
    assert resume_card(c).weights["tensors"] == walked


def test_checkpoint_memo_is_computed_once_and_not_copied_by_replace(tmp_path: Path) -> None:
    p = tmp_path / "sd.pt"
    torch.save({"w": torch.zeros(2)}, p)
    c = open_checkpoint(p)
    calls: list[int] = []
    assert c.memo("x", lambda: calls.append(1) or 7) == 7
    assert c.memo("x", lambda: calls.append(1) or 8) == 7
    assert calls == [1]
    assert dataclasses.replace(c).memo("x", lambda: 9) == 9


def test_inspect_json_is_the_same_document_with_or_without_orjson(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from ckptui.report.json import inspect as jsonview

    p = tmp_path / "sd.pt"
    sd = {f"layer{i}.weight": torch.zeros(i + 1) for i in range(2500)}  # more than one batch
    sd["big"] = torch.zeros(1)
    torch.save(sd, p)
    c = open_checkpoint(p)
    fast = json.loads(b"".join(jsonview.iter_json(c)))
    monkeypatch.setattr(jsonview, "_orjson_dumps", None)
    slow = json.loads(b"".join(jsonview.iter_json(c)))
    assert fast == slow
    assert len(fast["tensors"]) == 2501 and len(fast["storages"]) == 2501


def _shard_folder(tmp_path: Path) -> Path:
    """Three safetensors shards and a `.bin` one (torch.save), named by a weight map."""
    from safetensors.torch import save_file

    folder = tmp_path / "sharded"
    folder.mkdir()
    weight_map: dict[str, str] = {}
    for s in range(3):
        name = f"model-{s + 1:05d}-of-00004.safetensors"
        tensors = {f"layers.{s}.{j}.weight": torch.full((2, 3), float(j)) for j in range(5)}
        tensors[f"layers.{s}.norm"] = torch.ones(3, dtype=torch.bfloat16)
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
    torch.save({"lm_head.weight": torch.zeros(4, 3)}, folder / "pytorch_model-00004-of-00004.bin")
    weight_map["lm_head.weight"] = "pytorch_model-00004-of-00004.bin"
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def test_shards_keyed_by_their_reader_match_the_renamed_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ckptui.formats import sharded as sharded_mod
    from ckptui.report.json.inspect import checkpoint_json

    path = _shard_folder(tmp_path)
    one_pass = open_checkpoint(path)
    monkeypatch.setattr(sharded_mod, "naming_storages", lambda open_file, *_: open_file)
    renamed = open_checkpoint(path)
    assert one_pass.storages == renamed.storages
    assert one_pass.root == renamed.root
    assert checkpoint_json(one_pass) == checkpoint_json(renamed)
    st = one_pass.storages["model-00002-of-00004.safetensors:layers.1.4.weight"]
    assert st.file == "model-00002-of-00004.safetensors" and st.nbytes == 24
    t = one_pass.find(("layers.1.4.weight",)).tensor
    assert t.storage_key == st.key and t.shape == (2, 3) and t.stride == (3, 1)
    assert one_pass.storages["pytorch_model-00004-of-00004.bin:0"].file.endswith(".bin")


def _safetensors_bytes(header: dict | str, data_len: int) -> bytes:
    raw = (header if isinstance(header, str) else json.dumps(header)).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * data_len


@pytest.mark.parametrize(
    ("dims", "problem"),
    [
        ("[1.0, 4]", "shape must be a list of non-negative ints"),  # 1.0 == 1 as a dict key
        ("[true, 4]", "shape must be a list of non-negative ints"),  # True == 1 too
        ("[-1, 4]", "shape must be a list of non-negative ints"),
        ("[2, 4]", "bytes do not hold shape"),
    ],
)
def test_a_shape_seen_before_does_not_pass_an_entry_the_full_check_refuses(
    tmp_path: Path, dims: str, problem: str
) -> None:
    from ckptui.core.errors import CorruptFile

    header = (
        '{"a": {"dtype": "F32", "shape": [1, 4], "data_offsets": [0, 16]},'
        f' "b": {{"dtype": "F32", "shape": {dims}, "data_offsets": [16, 32]}}}}'
    )
    p = tmp_path / "x.safetensors"
    p.write_bytes(_safetensors_bytes(header, 32))
    with pytest.raises(CorruptFile, match=problem) as e:
        open_checkpoint(p)
    assert "'b'" in e.value.message


def test_offsets_of_a_known_shape_are_still_checked(tmp_path: Path) -> None:
    from ckptui.core.errors import CorruptFile

    entry = {"dtype": "F32", "shape": [4]}
    for offsets, problem in (([16, 40], "outside the data"), ([16, 16.0], "outside the data")):
        header = {"a": {**entry, "data_offsets": [0, 16]}, "b": {**entry, "data_offsets": offsets}}
        p = tmp_path / "x.safetensors"
        p.write_bytes(_safetensors_bytes(header, 32))
        with pytest.raises(CorruptFile, match=problem):
            open_checkpoint(p)


def test_headers_orjson_refuses_are_read_as_json_reads_them(tmp_path: Path) -> None:
    # a 70-bit int and a lone surrogate: orjson refuses both, the stdlib parser takes them
    header = (
        f'{{"\\ud800w": {{"dtype": "F32", "shape": [4], "data_offsets": [0, 16], "x": {2**70}}}}}'
    )
    p = tmp_path / "x.safetensors"
    p.write_bytes(_safetensors_bytes(header, 16))
    c = open_checkpoint(p)
    assert [n.key for n in c.root.children] == ["\ud800w"]
    assert c.storages["\ud800w"].nbytes == 16


def test_tree_json_is_the_same_whatever_the_leaf_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ckptui.report.json import inspect as jsonview

    p = tmp_path / "mixed.pt"
    sd: dict = {f"t{i}": torch.zeros(i % 3 + 1) for i in range(7)}
    sd["nested"] = {"a": torch.ones(2), "n": 3, "b": torch.ones(1)}
    sd["sparse"] = torch.eye(3).to_sparse()  # a tensor row with children
    sd.update({f"u{i}": torch.zeros(1) for i in range(5)})
    sd["n"] = 1.5
    torch.save(sd, p)
    c = open_checkpoint(p)
    whole = jsonview.checkpoint_json(c)
    monkeypatch.setattr(jsonview, "_BATCH", 2)
    assert jsonview.checkpoint_json(c) == whole
    monkeypatch.setattr(jsonview, "_orjson_dumps", None)
    assert jsonview.checkpoint_json(c) == whole
    keys = [n["key"] for n in whole["tree"]["children"]]
    assert keys == list(sd)
    assert whole["tree"]["children"][0] == {
        "key": "t0",
        "kind": "tensor",
        "type": "torch.Tensor",
        "shape": [1],
        "dtype": "float32",
        "device": "cpu",
        "nbytes": 4,
    }


def test_side_by_side_regions_are_attributed_as_the_heap_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ckptui.analysis.sizes import regions as sizes

    p = tmp_path / "sd.pt"
    torch.save({f"w{i}": torch.zeros(i + 1) for i in range(300)}, p)
    c = open_checkpoint(p)
    regions = read_layout(c)
    spans = sorted((r.offset, -(r.offset + r.nbytes), i) for i, r in enumerate(regions))
    assert sizes._disjoint(spans)  # a torch zip's regions lie side by side
    fast = list(sizes.attribute(regions, c.file_bytes + 7))  # 7 bytes no region covers
    assert fast[-1] == (None, 7)
    assert len(fast) == len(regions) + 1
    monkeypatch.setattr(sizes, "_disjoint", lambda spans: False)
    assert list(sizes.attribute(regions, c.file_bytes + 7)) == fast
    assert sum(n for _, n in fast) == c.file_bytes + 7


def test_integers_past_64_bits_are_refused_as_json_reads_them(tmp_path: Path) -> None:
    from ckptui.core.errors import CorruptFile

    # orjson reads these as floats; the messages name json's ints
    p = tmp_path / "x.safetensors"
    header = f'{{"a": {{"dtype": "F32", "shape": [{2**64}], "data_offsets": [0, 16]}}}}'
    p.write_bytes(_safetensors_bytes(header, 16))
    with pytest.raises(CorruptFile, match="torch holds at most"):
        open_checkpoint(p)
    header = f'{{"a": {{"dtype": "F32", "shape": [4], "data_offsets": [{-(2**63) - 1}, 16]}}}}'
    p.write_bytes(_safetensors_bytes(header, 16))
    with pytest.raises(CorruptFile, match=str(-(2**63) - 1)):
        open_checkpoint(p)


def test_an_index_total_size_past_64_bits_is_kept(tmp_path: Path) -> None:
    folder = _shard_folder(tmp_path)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["metadata"]["total_size"] = 2**64 + 1
    index_path.write_text(json.dumps(index))
    assert open_checkpoint(folder).info["index_total_size"] == 2**64 + 1
