"""Checkpoints of many files: sharded Hugging Face models and folders of checkpoint files.

Sharded folders come from the real `transformers` `save_pretrained(max_shard_size=...)` on a tiny
random-init GPT-2 (no download); the tests check the merged tree against the model's own
`state_dict()`, each tensor's shard against the index, and values and exports against torch.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ckptui.analysis.sizes.folder import breakdown_of, tree_path
from ckptui.export import ExportError, export, make_plan
from ckptui.formats import open_checkpoint
from ckptui.tensors.values import tensor_stats

from ..conftest import run_cli


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_embd=64, n_layer=2, n_head=2, vocab_size=1000, n_positions=64, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    folder = tmp_path_factory.mktemp("hf") / "gpt2"
    model = tiny_gpt2()
    model.save_pretrained(folder, max_shard_size="100KB")
    truth = {}
    for f in sorted(folder.glob("*.safetensors")):
        truth.update(load_file(f))
    return folder, truth


def test_sharded_folder_opens_as_one_state_dict(sharded) -> None:
    folder, truth = sharded
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 3  # really sharded
    ckpt = open_checkpoint(folder)
    assert ckpt.format == "hf-sharded" and not ckpt.findings
    tensors = {p[0]: t for p, t in ckpt.tensors()}
    assert set(tensors) == set(truth) == set(index["weight_map"])
    for name, t in tensors.items():
        assert t.shape == tuple(truth[name].shape) and t.dtype == "float32"
        st = ckpt.storages[t.storage_key]
        assert st.file == index["weight_map"][name]  # the shard that holds it
    assert ckpt.file_bytes == sum(
        (folder / f).stat().st_size for f in set(index["weight_map"].values())
    )
    # values are read from the right shard
    name = "transformer.h.1.mlp.c_fc.weight"
    stats = tensor_stats(ckpt, tensors[name])
    assert stats.mean == pytest.approx(truth[name].double().mean().item(), rel=1e-9)
    # the index file opens the same tree
    via_index = open_checkpoint(folder / "model.safetensors.index.json")
    assert [p for p, _ in via_index.tensors()] == [p for p, _ in ckpt.tensors()]


def test_sharded_export_writes_one_loadable_file(sharded, tmp_path: Path) -> None:
    folder, truth = sharded
    ckpt = open_checkpoint(folder)
    out = tmp_path / "one.safetensors"
    result = export(make_plan(ckpt, fmt="safetensors"), out)
    assert result.bytes == out.stat().st_size == result.predicted_bytes
    back = load_file(out)
    assert set(back) == set(truth)
    assert all(torch.equal(back[k], v) for k, v in truth.items())
    # .pth in bf16: the real model takes it (lm_head is tied to wte, so it is not saved)
    pth = tmp_path / "one.pth"
    export(make_plan(ckpt, dtype="bf16"), pth)
    model = tiny_gpt2()
    result = model.load_state_dict(torch.load(pth, weights_only=True), strict=False)
    assert result.unexpected_keys == [] and result.missing_keys == ["lm_head.weight"]
    wte = truth["transformer.wte.weight"].to(torch.bfloat16).float()
    assert torch.equal(model.transformer.wte.weight, wte)


def test_the_export_never_overwrites_a_shard(sharded) -> None:
    folder, _ = sharded
    shard = min(folder.glob("model-*.safetensors"))
    before = shard.read_bytes()
    r = run_cli("export", str(folder), "-o", str(shard), "--force")
    assert r.returncode == 2 and "is the source checkpoint" in r.stderr
    assert shard.read_bytes() == before


def test_a_missing_shard_is_reported_and_the_rest_opens(sharded, tmp_path: Path) -> None:
    src, truth = sharded
    folder = tmp_path / "gpt2"
    shutil.copytree(src, folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    gone = sorted(set(index["weight_map"].values()))[1]
    (folder / gone).unlink()
    ckpt = open_checkpoint(folder)
    [finding] = [f for f in ckpt.findings if f.kind == "missing_shard"]
    lost = {k for k, v in index["weight_map"].items() if v == gone}
    assert gone in finding.message and f"{len(lost)} tensors" in finding.message
    present = {p[0] for p, _ in ckpt.tensors()}
    assert present == set(truth) - lost
    missing_rows = {c.key for c in ckpt.root.children if c.type == "missing"}
    assert missing_rows == lost
    r = run_cli("inspect", str(folder))
    assert r.returncode == 0 and gone in r.stdout + r.stderr


def test_the_breakdown_groups_by_shard(sharded) -> None:
    folder, truth = sharded
    ckpt = open_checkpoint(folder)
    b = breakdown_of(ckpt)
    shards = set(ckpt.info["files"])
    rows = {p[0]: n for p, n in b.top_level}
    assert shards <= set(rows)  # one row per shard, besides config.json and the index
    assert all(rows[s] > 0 for s in shards)
    assert b.categories["tensor_data"] == sum(v.numel() * 4 for v in truth.values())
    assert sum(b.categories.values()) == b.file_bytes
    assert b.file_bytes == sum(p.stat().st_size for p in folder.iterdir())
    largest = b.largest[0].path
    assert largest[0] in shards and tree_path(ckpt, largest) == largest[1:]
    assert ckpt.find(tree_path(ckpt, largest)) is not None


def test_bin_shards_keep_their_storages_apart(tmp_path: Path) -> None:
    """Hand-made `pytorch_model-*.bin` shards (transformers 5 writes safetensors only): each
    shard numbers its storages from 0, so the merged table must tell them apart."""
    torch.manual_seed(0)
    a = {"a.weight": torch.randn(8, 4), "a.bias": torch.randn(8)}
    b = {"b.weight": torch.randn(3, 8), "b.bias": torch.randn(3)}
    torch.save(a, tmp_path / "pytorch_model-00001-of-00002.bin")
    torch.save(b, tmp_path / "pytorch_model-00002-of-00002.bin")
    weight_map = {k: "pytorch_model-00001-of-00002.bin" for k in a}
    weight_map |= {k: "pytorch_model-00002-of-00002.bin" for k in b}
    (tmp_path / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map})
    )
    (tmp_path / "config.json").write_text("{}")
    ckpt = open_checkpoint(tmp_path)
    keys = [t.storage_key for _, t in ckpt.tensors()]
    assert len(set(keys)) == 4
    out = tmp_path / "out" / "merged.pth"
    out.parent.mkdir()
    export(make_plan(ckpt), out)
    back = torch.load(out, weights_only=True)
    for k, v in (a | b).items():
        assert torch.equal(back[k], v)


def test_a_deepspeed_style_folder_has_one_node_per_file(tmp_path: Path) -> None:
    """A folder laid out as DeepSpeed's (`latest`, `global_step10/`, model and optimizer state
    files, `zero_to_fp32.py`); the files are made with torch.save, not by DeepSpeed."""
    torch.manual_seed(0)
    flat = torch.randn(100)
    module = {"fc.weight": flat[:80].view(10, 8), "fc.bias": flat[80:90]}
    step = tmp_path / "global_step10"
    step.mkdir()
    torch.save(
        {"module": module, "ds_version": "0.19.0", "global_steps": 10},
        step / "mp_rank_00_model_states.pt",
    )
    torch.save(
        {"optimizer_state_dict": {"fp32_flat_groups": [flat.clone()]}, "ds_version": "0.19.0"},
        step / "zero_pp_rank_0_mp_rank_00_optim_states.pt",
    )
    (tmp_path / "latest").write_text("global_step10")
    (tmp_path / "zero_to_fp32.py").write_text("# converts ZeRO shards\n" * 10)
    ckpt = open_checkpoint(tmp_path)
    assert ckpt.format == "folder" and ckpt.info.get("producer") == "deepspeed"
    assert [c.key for c in ckpt.root.children] == [
        "global_step10/mp_rank_00_model_states.pt",
        "global_step10/zero_pp_rank_0_mp_rank_00_optim_states.pt",
    ]
    assert set(ckpt.info["other_files"]) == {"latest", "zero_to_fp32.py"}
    path = ("global_step10/mp_rank_00_model_states.pt", "module", "fc.weight")
    t = ckpt.find(path).tensor
    assert ckpt.storages[t.storage_key].file == "global_step10/mp_rank_00_model_states.pt"
    stats = tensor_stats(ckpt, t)
    assert stats.mean == pytest.approx(module["fc.weight"].double().mean().item(), rel=1e-9)
    out = tmp_path.parent / "ds_module.pth"
    export(make_plan(ckpt, [path[:2]]), out)
    back = torch.load(out, weights_only=True)
    assert torch.equal(back["fc.weight"], module["fc.weight"])


def test_a_folder_without_checkpoints_is_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    r = run_cli("inspect", str(tmp_path))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "no checkpoint files" in r.stderr


def test_reshard_writes_shards_and_an_index_transformers_loads(sharded, tmp_path: Path) -> None:
    from transformers import GPT2LMHeadModel

    from ckptui.export.shards import export_sharded, parse_size

    folder, truth = sharded
    assert parse_size("200KB") == 200_000 and parse_size("2GiB") == 2 << 30
    out = tmp_path / "resharded"
    out.mkdir()
    shutil.copy(folder / "config.json", out)
    plan = make_plan(open_checkpoint(folder), fmt="safetensors")
    results, index = export_sharded(plan, str(out / "model.safetensors"), parse_size("200KB"))
    assert len(results) >= 3 and all(r.verified for r in results)
    body = json.loads(Path(index).read_text())
    assert set(body["weight_map"]) == set(truth)
    assert body["metadata"]["total_size"] == sum(v.numel() * 4 for v in truth.values())
    for r in results:  # no shard over the limit unless one tensor alone is larger
        assert r.bytes < 200_000 + 256_000 + 4096
    model = GPT2LMHeadModel.from_pretrained(out)
    for k, v in truth.items():
        assert torch.equal(model.state_dict()[k], v)
    # a failure after the shards (the index cannot be written) leaves none of them behind
    from ckptui.export import shards as shards_mod

    def full_disk(path: str, data: bytes) -> None:
        raise OSError(28, "No space left on device")

    again = tmp_path / "failing"
    again.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(shards_mod, "_write_atomic", full_disk)
        with pytest.raises(ExportError, match="No space left"):
            export_sharded(plan, str(again / "model.safetensors"), parse_size("200KB"))
    assert list(again.iterdir()) == []


# -- hostile indexes and folders (issue 20) ----------------------------------------------------
def _with_shard_name(src: Path, dst: Path, name: str) -> str:
    """A copy of the sharded folder whose index sends its first tensor to shard `name`."""
    shutil.copytree(src, dst)
    index_path = dst / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = name
    index_path.write_text(json.dumps(index))
    return first


def test_a_shard_name_with_a_nul_byte_is_one_line(sharded, tmp_path: Path) -> None:
    """The reported input: `weight_map` naming a shard with a NUL byte made pathlib's `stat`
    raise `ValueError: embedded null byte`."""
    folder = tmp_path / "m"
    _with_shard_name(sharded[0], folder, "model-00001\u0000-of-00003.safetensors")
    r = run_cli("inspect", str(folder))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"ckptui: {folder}/model.safetensors.index.json: shard ")
    assert r.stderr.endswith("holds a NUL byte\n")


class _Opened:
    """Every path this process opens through os.open or open(), while it is installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import builtins
        import os

        self.paths: list[str] = []
        real_os_open, real_open = os.open, builtins.open

        def os_open(path, *a, **k):  # type: ignore[no-untyped-def]
            self.paths.append(os.fspath(path))
            return real_os_open(path, *a, **k)

        def open_(file, *a, **k):  # type: ignore[no-untyped-def]
            if isinstance(file, str | os.PathLike):
                self.paths.append(os.fspath(file))
            return real_open(file, *a, **k)

        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(builtins, "open", open_)


OUTSIDE_NAMES = {
    "absolute": "{outside}",
    "dotdot": "../outside/secret.safetensors",
    "dotdot_inside": "sub/../../outside/secret.safetensors",
    "backslash_dotdot": "..\\outside\\secret.safetensors",
    "url": "file://{outside}",
    "double_slash": "//outside/secret.safetensors",
    "drive": "C:\\outside\\secret.safetensors",
    "empty": "",
    "dot": ".",
    "dot_slash": "./",
    "the_index": "model.safetensors.index.json",
    "the_index_slash": "model.safetensors.index.json/",
    "the_index_dot": "./model.safetensors.index.json",
    "lone_surrogate": "\ud800.safetensors",
    "symlink_out": "link.safetensors",
    "through_symlinked_dir": "linkdir/secret.safetensors",
    "symlinked_dir_loop": "loop",
    "a_subfolder": "sub",
}


@pytest.mark.parametrize("case", list(OUTSIDE_NAMES))
def test_shard_names_outside_the_folder_are_refused_by_name(
    sharded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """Names that are absolute, climb with `..`, are URLs, name the folder or the index itself
    (opening it again would recurse), or lead out through a symlink: one CkptError naming the
    shard, and no file outside the folder is opened."""
    from ckptui.core.errors import CkptError

    outside = tmp_path / "outside" / "secret.safetensors"
    outside.parent.mkdir()
    shutil.copy(min(sharded[0].glob("model-*.safetensors")), outside)
    folder = tmp_path / "m"
    name = OUTSIDE_NAMES[case].format(outside=outside)
    _with_shard_name(sharded[0], folder, name)
    (folder / "sub").mkdir()
    (folder / "link.safetensors").symlink_to(outside)
    (folder / "linkdir").symlink_to(outside.parent)
    (folder / "loop").symlink_to(folder)
    opened = _Opened(monkeypatch)
    with pytest.raises(CkptError) as e:
        open_checkpoint(folder)
    monkeypatch.undo()
    shown = name.encode("utf-8", "backslashreplace").decode()
    assert repr(name) in e.value.message or e.value.path.endswith(shown), e.value
    assert "\n" not in str(e.value)
    assert not [p for p in opened.paths if "outside" in p and "secret" in p]
    # the CLI says the same in one line, exit 2
    r = run_cli("inspect", str(folder))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_a_hub_cache_snapshot_follows_its_blob_symlinks(sharded, tmp_path: Path) -> None:
    """huggingface_hub's cache keeps files in `blobs/` and links them from `snapshots/<rev>/`:
    those links leave the snapshot folder but stay in the model's cache, so they are read."""
    src, truth = sharded
    repo = tmp_path / "models--tiny--gpt2"
    snap = repo / "snapshots" / "abc123"
    (repo / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        blob = repo / "blobs" / f"blob-{f.name}"
        shutil.copy(f, blob)
        (snap / f.name).symlink_to(Path("../..") / "blobs" / blob.name)
    ckpt = open_checkpoint(snap)
    assert ckpt.format == "hf-sharded" and not ckpt.findings
    assert {p[0] for p, _ in ckpt.tensors()} == set(truth)


def test_a_generic_folder_lists_symlinks_out_and_reads_none(tmp_path: Path) -> None:
    """A folder of checkpoint files: a symlink leading out is a finding, never opened; one
    that stays inside is read like the file it leads to."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    torch.save({"w": torch.ones(2)}, elsewhere / "secret.pt")
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save({"w": torch.zeros(3)}, folder / "epoch1.pt")
    torch.save({"w": torch.zeros(4)}, folder / "epoch2.pt")
    (folder / "best.pt").symlink_to("epoch2.pt")
    (folder / "stolen.pt").symlink_to(elsewhere / "secret.pt")
    ckpt = open_checkpoint(folder)
    assert [c.key for c in ckpt.root.children] == ["best.pt", "epoch1.pt", "epoch2.pt"]
    (out,) = [f for f in ckpt.findings if f.kind == "outside_folder"]
    assert out.message.startswith("stolen.pt: a symlink leading outside the folder")
    assert "stolen.pt" not in ckpt.info["other_files"]


def test_an_index_symlinked_out_of_the_folder_is_not_read(sharded, tmp_path: Path) -> None:
    folder = tmp_path / "m"
    shutil.copytree(sharded[0], folder)
    elsewhere = tmp_path / "elsewhere.json"
    (folder / "model.safetensors.index.json").rename(elsewhere)
    (folder / "model.safetensors.index.json").symlink_to(elsewhere)
    r = run_cli("inspect", str(folder))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith(f"ckptui: {folder}/model.safetensors.index.json: a symlink leading")


# -- a folder of one checkpoint file (issue 19) ------------------------------------------------
def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(1)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        vocab_size=100, max_position_embeddings=32,
    )  # fmt: skip
    return BertModel(config)


def test_a_folder_of_one_safetensors_file_exports_that_files_names(tmp_path: Path) -> None:
    """The reported input: `save_file({'w': ...}, 'd/model.safetensors')`, then
    `ckptui export d -o o.safetensors` wrote `model.safetensors.w`."""
    from safetensors.torch import save_file

    d = tmp_path / "d"
    d.mkdir()
    w = torch.randn(3, 2)
    save_file({"w": w}, str(d / "model.safetensors"))
    (d / "config.json").write_text("{}")
    r = run_cli("export", str(d), "-o", str(tmp_path / "o.safetensors"))
    assert r.returncode == 0, r.stderr
    back = load_file(tmp_path / "o.safetensors")
    assert list(back) == ["w"] and torch.equal(back["w"], w)
    ckpt = open_checkpoint(d)
    assert ckpt.info["single_file"] == "model.safetensors"
    assert [p for p, _ in ckpt.tensors()] == [("w",)]
    assert ckpt.storages[ckpt.find(("w",)).tensor.storage_key].file == "model.safetensors"


@pytest.mark.parametrize("layout", ["save_pretrained", "pytorch_model.bin"])
@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_a_save_pretrained_folder_exports_a_state_dict_the_model_loads(
    tmp_path: Path, layout: str, fmt: str
) -> None:
    """transformers' own `save_pretrained` (config.json + model.safetensors), and the
    `pytorch_model.bin` layout of older releases (transformers 5 writes safetensors only, so
    the .bin is torch.save of the state dict): the export loads with strict=True."""
    model = tiny_bert()
    d = tmp_path / "bert"
    if layout == "save_pretrained":
        model.save_pretrained(d)
        assert (d / "model.safetensors").exists()
    else:
        d.mkdir()
        model.config.save_pretrained(d)
        torch.save(model.state_dict(), d / "pytorch_model.bin")
    out = tmp_path / f"o.{fmt}"
    r = run_cli("export", str(d), "-o", str(out))
    assert r.returncode == 0, r.stderr
    sd = load_file(out) if fmt == "safetensors" else torch.load(out, weights_only=True)
    fresh = tiny_bert()
    torch.nn.init.zeros_(fresh.embeddings.word_embeddings.weight)
    fresh.load_state_dict(sd, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    # the size breakdown's rows map to the tree (no file-name level in it)
    b = breakdown_of(open_checkpoint(d))
    largest = b.largest[0].path
    assert largest[0] in ("model.safetensors", "pytorch_model.bin")
    assert open_checkpoint(d).find(tree_path(open_checkpoint(d), largest)) is not None


def test_a_folder_nested_a_thousand_deep_is_walked_without_recursion(tmp_path: Path) -> None:
    """os.walk recursed once per level: 1,200 nested folders raised RecursionError."""
    folder = tmp_path / "deep"
    folder.mkdir()
    torch.save({"w": torch.ones(2)}, folder / "top.pt")
    deep = folder
    for _ in range(1200):  # one level at a time: mkdir(parents=True) recurses too
        deep = deep / "d"
        deep.mkdir()
    torch.save({"w": torch.zeros(3)}, deep / "m.pt")
    try:
        r = run_cli("why", str(folder), "--json")  # it opens the folder, then walks it again
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-500:]
        ckpt = open_checkpoint(folder)
        assert [c.key for c in ckpt.root.children] == ["top.pt", "d/" * 1200 + "m.pt"]
    finally:  # from the bottom up: shutil.rmtree (pytest's clean-up) recurses as well
        (deep / "m.pt").unlink()
        while deep != folder:
            deep.rmdir()
            deep = deep.parent


@pytest.mark.parametrize("name", ["model.safetensors.index.json", "a_shard"])
def test_a_fifo_in_place_of_a_file_is_one_line_not_a_hang(sharded, tmp_path: Path, name) -> None:
    """Opening a FIFO for reading waits for a writer forever: an index or shard that is one is
    refused (a shard by `check_openable`, the index by its reader) without opening it."""
    folder = tmp_path / "m"
    shutil.copytree(sharded[0], folder)
    if name == "a_shard":
        name = min(p.name for p in folder.glob("model-*.safetensors"))
    (folder / name).unlink()
    os.mkfifo(folder / name)
    r = run_cli("inspect", str(folder), "--json")
    if name.endswith(".index.json"):
        assert r.returncode == 2 and r.stderr == f"ckptui: {folder / name}: is not a regular file\n"
    else:
        assert r.returncode == 0, r.stderr
        messages = [f["message"] for f in json.loads(r.stdout)["findings"]]
        assert any(m.startswith(f"shard {name} cannot be read (is not a regular") for m in messages)


def test_an_index_naming_too_many_shards_is_one_line_at_once(sharded, tmp_path: Path) -> None:
    """Each shard name costs a stat and an open: 100,000 names took 35 s before the cap."""
    folder = tmp_path / "m"
    shutil.copytree(sharded[0], folder)
    names = {f"t{i}": f"model-{i:06d}.safetensors" for i in range(100_000)}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": names}))
    r = run_cli("inspect", str(folder))
    assert r.returncode == 2
    assert r.stderr.endswith("index.json: names more than 10,000 shard files\n")


def test_a_bin_beside_its_safetensors_twin_is_not_a_second_copy(tmp_path: Path) -> None:
    """Hub repos often ship `model.safetensors` and `pytorch_model.bin`: from_pretrained loads
    the safetensors one, so the folder is that file's tree and exports each weight once."""
    model = tiny_bert()
    d = tmp_path / "bert"
    model.save_pretrained(d)
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    ckpt = open_checkpoint(d)
    assert ckpt.info["single_file"] == "model.safetensors"
    assert "pytorch_model.bin" in ckpt.info["other_files"]
    (twin,) = [f for f in ckpt.findings if f.kind == "alternative_weights"]
    assert twin.message.startswith("pytorch_model.bin: not opened: model.safetensors")
    out = tmp_path / "o.safetensors"
    r = run_cli("export", str(d), "-o", str(out))
    assert r.returncode == 0, r.stderr
    tiny_bert().load_state_dict(load_file(out), strict=True)
