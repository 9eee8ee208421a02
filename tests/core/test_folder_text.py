"""A Hugging Face folder's small text files (`config.json` & co., issue 18) as nodes beside the
weights: real `save_pretrained` folders of a tiny GPT-2 and a real fast tokenizer, and
hand-written damaged and hostile files. The weights' tree, the size breakdown and the export
must not change."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from ckptui.core import units
from ckptui.core.tree import Node, NodeKind, walk
from ckptui.formats import open_checkpoint
from ckptui.formats.folder_text import TEXT_CAP
from ckptui.unpickler.treebuild import MAX_DEPTH

from ..conftest import run_cli

transformers = pytest.importorskip("transformers")


def as_python(node: Node) -> Any:
    """A JSON file's node back as the value json.load gives."""
    if node.kind is NodeKind.MAPPING:
        return {c.key: as_python(c) for c in node.children}
    if node.kind is NodeKind.SEQUENCE:
        return [as_python(c) for c in node.children]
    if node.type == "int" and node.text is not None:  # past 64 bits: kept as its digits
        return int(node.text)
    return node.value


def text_nodes(path: Path) -> dict[str, Node]:
    ckpt = open_checkpoint(str(path))
    files = ckpt.info.get("text_files")
    assert isinstance(files, Node)
    return {c.key: c for c in files.children}


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GPT-2 (tiny, random) and a fast tokenizer whose tokenizer.json is over the cap."""
    from tokenizers import Tokenizer, models

    folder = tmp_path_factory.mktemp("hf") / "gpt2"
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100, n_positions=64)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    vocab = {"[UNK]": 0, **{f"word{i:05d}": i + 1 for i in range(30_000)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    fast.save_pretrained(folder)
    return folder


def test_config_files_are_nodes_of_their_values(hf_folder: Path) -> None:
    nodes = text_nodes(hf_folder)
    for name in ("config.json", "generation_config.json", "tokenizer_config.json"):
        assert name in nodes, sorted(nodes)
        truth = json.loads((hf_folder / name).read_text())
        assert as_python(nodes[name]) == truth, name
        assert nodes[name].type == "JSON"
    assert as_python(nodes["config.json"])["n_embd"] == 32


def test_a_large_tokenizer_is_listed_with_its_size_not_read(hf_folder: Path) -> None:
    size = (hf_folder / "tokenizer.json").stat().st_size
    assert size > TEXT_CAP  # 30,000 words: a real tokenizer.json past the cap
    node = text_nodes(hf_folder)["tokenizer.json"]
    assert node.kind is NodeKind.VALUE and not node.children
    assert node.text == f"{units.size(size)} · not read (over 256.0 KiB)"


def test_the_weights_tree_breakdown_and_export_ignore_them(hf_folder: Path, tmp_path: Path) -> None:
    ckpt = open_checkpoint(str(hf_folder))
    saved = load_file(hf_folder / "model.safetensors")
    keys = {c.key for c in ckpt.root.children if c.key != "__metadata__"}
    assert keys == set(saved)  # no config.json key in the checkpoint's own tree
    assert not any(str(k).endswith(".json") for p, _ in walk(ckpt.root) for k in p)
    # why: the tensor bytes are the tensors', the text files stay other files
    why = json.loads(run_cli("why", str(hf_folder), "--json").stdout)
    assert why["categories"]["tensor_data"] == sum(t.nbytes for t in saved.values())
    assert not any("config.json" in json.dumps(f) for f in why["findings"])
    # listed as the folder's other files (0 tensor bytes, metadata), as before
    texts = [g for g in why["groups"] if ".json" in str(g["path"])]
    assert all(g["role"] == "metadata" and g["bytes"] == 0 for g in texts)
    # export keeps exactly the weights
    out = tmp_path / "w.safetensors"
    r = run_cli("export", str(hf_folder), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert set(load_file(out)) == set(saved)
    # inspect --json stays JSON (the nodes live outside it)
    doc = json.loads(run_cli("inspect", str(hf_folder), "--json").stdout)
    assert "text_files" not in doc.get("info", {})


def test_a_sharded_folder_shows_its_config_too(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=100)
    folder = tmp_path / "sharded"
    transformers.GPT2LMHeadModel(config).save_pretrained(folder, max_shard_size="20KB")
    assert (folder / "model.safetensors.index.json").exists()
    nodes = text_nodes(folder)
    assert as_python(nodes["config.json"]) == json.loads((folder / "config.json").read_text())
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert as_python(nodes["model.safetensors.index.json"]) == index


def weights_folder(tmp_path: Path, name: str, data: bytes | str) -> Path:
    folder = tmp_path / "f"
    folder.mkdir(exist_ok=True)
    torch.save({"w": torch.ones(3)}, folder / "pytorch_model.bin")
    target = folder / name
    if isinstance(data, str):
        target.write_text(data)
    else:
        target.write_bytes(data)
    return folder


def test_damaged_json_is_one_finding_never_a_crash(tmp_path: Path) -> None:
    folder = weights_folder(tmp_path, "config.json", '{"hidden_size": 32,')
    ckpt = open_checkpoint(str(folder))
    found = [f for f in ckpt.findings if f.kind == "damaged_text_file"]
    assert len(found) == 1 and "config.json is not valid JSON" in found[0].message
    node = text_nodes(folder)["config.json"]
    assert node.kind is NodeKind.VALUE and node.text.startswith("not valid JSON")
    r = run_cli("inspect", str(folder))
    assert r.returncode == 0, r.stderr
    assert "config.json is not valid JSON" in r.stdout and "Traceback" not in r.stderr


def test_json_nested_100000_deep_is_refused_quickly(tmp_path: Path) -> None:
    """Nested past Python's stack, and still under the size cap (200,000 `[` would be)."""
    deep = "[" * 100_000 + "]" * 100_000
    assert len(deep) < TEXT_CAP
    folder = weights_folder(tmp_path, "config.json", deep)
    start = time.perf_counter()
    ckpt = open_checkpoint(str(folder))
    assert time.perf_counter() - start < 5
    (f,) = [f for f in ckpt.findings if f.kind == "damaged_text_file"]
    assert "nests too deep" in f.message
    r = run_cli("inspect", str(folder))
    assert r.returncode == 0 and "Traceback" not in r.stderr
    # 200,000 levels opened and never closed (200 KB: under the cap, so parsed)
    (folder / "config.json").write_text("[" * 200_000)
    (f,) = [f for f in open_checkpoint(str(folder)).findings if f.kind == "damaged_text_file"]
    assert "nests too deep" in f.message or "not valid JSON" in f.message


def test_nesting_is_bounded_by_the_unpicklers_depth(tmp_path: Path) -> None:
    """500 levels parse (below Python's stack), and are shown down to MAX_DEPTH only."""
    deep = '{"a": ' * 500 + "1" + "}" * 500
    folder = weights_folder(tmp_path, "config.json", deep)
    node = text_nodes(folder)["config.json"]
    depth = max(len(p) for p, _ in walk(node))
    assert depth == MAX_DEPTH
    last = next(n for p, n in walk(node) if len(p) == MAX_DEPTH)
    assert "deeper than 200 levels" in last.text


def test_text_files_show_as_lines(tmp_path: Path) -> None:
    folder = weights_folder(tmp_path, "README.md", "# tiny\n\nweights for a test\n")
    (folder / "latest").write_text("global_step10")
    (folder / "notes.txt").write_bytes(b"\xff\xfe not utf-8")
    nodes = text_nodes(folder)
    assert [c.text for c in nodes["README.md"].children] == ["# tiny", "", "weights for a test"]
    assert [c.text for c in nodes["latest"].children] == ["global_step10"]
    assert nodes["notes.txt"].kind is NodeKind.VALUE and "not UTF-8" in nodes["notes.txt"].text
    ckpt = open_checkpoint(str(folder))
    assert [f.message for f in ckpt.findings if f.kind == "damaged_text_file"] == [
        "notes.txt is not UTF-8 text"
    ]


def test_inspect_lists_the_text_files_after_the_tree(hf_folder: Path) -> None:
    r = run_cli("inspect", str(hf_folder))
    assert r.returncode == 0, r.stderr
    (line,) = [x for x in r.stdout.splitlines() if x.startswith("text files")]
    n = len(json.loads((hf_folder / "config.json").read_text()))
    assert f"config.json (JSON · {n} keys)" in line
    assert "tokenizer.json (file " in line and "not read" in line
