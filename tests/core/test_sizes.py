"""The size breakdown: exact accounting, groupings, findings and `ckptui why`, on real files."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ckptui.analysis.roles import Role
from ckptui.analysis.sizes.breakdown import Breakdown, breakdown
from ckptui.analysis.sizes.duplicates import find_duplicates
from ckptui.analysis.sizes.prefixes import prefix_tree
from ckptui.analysis.sizes.regions import attribute
from ckptui.core.tree import Part, Region
from ckptui.export import make_plan
from ckptui.export.size import exported_size
from ckptui.formats import open_checkpoint
from ckptui.formats.layout import read_layout

from ..conftest import TinyNet, run_cli, training_checkpoint


def analyse(path: Path) -> Breakdown:
    ckpt = open_checkpoint(path)
    return breakdown(ckpt, read_layout(ckpt), exported_size)  # exact, as `ckptui why` asks


def kinds(b: Breakdown) -> dict[str, list]:
    out: dict[str, list] = {}
    for f in b.findings:
        out.setdefault(f.kind, []).append(f)
    return out


# -- exact accounting ------------------------------------------------------------------------


def test_attribute_gives_each_byte_to_the_innermost_region() -> None:
    regions = [
        Region(0, 100, Part.PICKLE, "outer"),
        Region(10, 20, Part.STORAGE, "inner"),
        Region(15, 5, Part.OVERHEAD, "innermost"),
        Region(120, 10, Part.METADATA, "after a gap"),
    ]
    runs = [(r.name if r else None, n) for r, n in attribute(regions, 140)]
    assert runs == [
        ("outer", 10),
        ("inner", 5),
        ("innermost", 5),
        ("inner", 10),
        ("outer", 70),
        (None, 20),
        ("after a gap", 10),
        (None, 10),
    ]
    assert sum(n for _, n in runs) == 140


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_categories_sum_to_the_file_size_for_torch_save(tmp_path: Path, legacy: bool) -> None:
    p = tmp_path / "train.pt"
    torch.save(training_checkpoint(), p, _use_new_zipfile_serialization=not legacy)
    ckpt = open_checkpoint(p)
    b = breakdown(ckpt, read_layout(ckpt))
    assert sum(b.categories.values()) == p.stat().st_size == b.file_bytes
    assert b.categories["unaccounted"] == 0
    # every storage's bytes land in tensor_data, once
    assert b.categories["tensor_data"] == sum(s.nbytes for s in ckpt.storages.values())
    if legacy:
        assert b.overhead_detail == {"storage headers": 8 * len(ckpt.storages)}
    else:
        with zipfile.ZipFile(p) as z:
            pkl = z.getinfo(f"{ckpt.info['archive_name']}/data.pkl").compress_size
            assert b.categories["pickle"] == pkl
            cd_start = min(i.header_offset for i in z.infolist())  # 0
            assert cd_start == 0
        assert {"zip local headers", "alignment padding", "zip central directory"} <= set(
            b.overhead_detail
        )


def test_categories_sum_for_safetensors(tmp_path: Path) -> None:
    p = tmp_path / "w.safetensors"
    save_file(TinyNet().state_dict(), p, metadata={"epoch": "3"})
    b = analyse(p)
    assert sum(b.categories.values()) == p.stat().st_size
    assert b.categories["overhead"] == 8
    assert b.categories["unaccounted"] == 0
    assert b.categories["tensor_data"] == sum(t.nbytes for t in TinyNet().state_dict().values())
    assert b.weights_path == ()


def test_categories_sum_for_torchscript_and_plain_pickle(tmp_path: Path) -> None:
    ts = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(TinyNet()), ts)
    b = analyse(ts)
    assert sum(b.categories.values()) == ts.stat().st_size
    assert b.categories["unaccounted"] == 0
    assert b.categories["metadata"] > 0  # the TorchScript code records
    plain = tmp_path / "plain.pkl"
    with plain.open("wb") as f:
        pickle.dump({"w": torch.arange(1000, dtype=torch.float32)}, f)
    b = analyse(plain)
    assert sum(b.categories.values()) == plain.stat().st_size
    # the storage is embedded inside the pickle: its 4000 bytes are tensor data, not pickle
    assert b.categories["tensor_data"] == 4000
    assert b.categories["unaccounted"] == 0


def test_trailing_garbage_is_unaccounted(tmp_path: Path) -> None:
    p = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(100)}, p, _use_new_zipfile_serialization=False)
    with p.open("ab") as f:
        f.write(b"\0" * 123)
    b = analyse(p)
    assert b.categories["unaccounted"] == 123
    assert sum(b.categories.values()) == p.stat().st_size


# -- sharing, views, duplicates --------------------------------------------------------------


def test_shared_storage_is_counted_once_and_owned_by_the_first_tensor(tmp_path: Path) -> None:
    base = torch.randn(1000)
    p = tmp_path / "shared.pt"
    torch.save({"a": base, "b": base[100:], "c": base.view(10, 100)}, p)
    b = analyse(p)
    assert b.categories["tensor_data"] == 4000
    assert b.owner == {"0": ("a",)}
    assert b.shared == [(("b",), ("a",)), (("c",), ("a",))]
    assert b.path_bytes == {("a",): 4000}
    assert sum(g.bytes for g in b.groups) == 4000
    assert "view_waste" not in kinds(b)  # the storage is wholly viewed


def test_a_small_view_of_a_big_storage_is_reported(tmp_path: Path) -> None:
    x = torch.randn(4_000_000)
    p = tmp_path / "view.pt"
    torch.save({"model": {"w": torch.randn(4)}, "x": x[:10]}, p)
    b = analyse(p)
    (f,) = kinds(b)["view_waste"]
    assert f.paths == (("x",),)
    assert f.saving_bytes == 16_000_000 - 40
    assert f.bytes == 16_000_000


def _touched(views: dict[str, torch.Tensor], numel: int) -> int:
    """Elements of the storage the views touch, as torch itself indexes them."""
    mark = torch.zeros(numel, dtype=torch.bool)
    for v in views.values():
        mark.as_strided(v.shape, v.stride(), v.storage_offset()).fill_(True)
    return int(mark.sum())


@pytest.mark.parametrize(
    "make",
    [
        lambda t: {"a": t.view(2000, 2000)[::2], "b": t[:10]},  # half the rows, and a slice
        lambda t: {"a": t.view(2000, 2000)[:, ::4]},  # a quarter of each row
        lambda t: {"a": t.view(2000, 2000)[:500].T},  # permuted: the first quarter
        lambda t: {"a": t.view(2000, 2000).T, "b": t[:10]},  # all of it, transposed
    ],
    ids=["rows", "columns", "permuted", "transposed"],
)
def test_view_waste_counts_the_elements_views_touch(tmp_path: Path, make) -> None:
    t = torch.randn(4_000_000)
    views = make(t)
    p = tmp_path / "views.pt"
    torch.save(views, p)
    b = analyse(p)
    used = _touched(views, t.numel()) * 4
    found = kinds(b).get("view_waste", [])
    if 16_000_000 - used < 64 << 10:
        assert not found
        return
    (f,) = found
    assert f.bytes == 16_000_000 and f.saving_bytes == 16_000_000 - used


def test_identical_tensors_in_different_storages_are_duplicates(tmp_path: Path) -> None:
    torch.manual_seed(0)
    emb = torch.randn(1000, 256)
    ckpt = {
        "model": {
            "embed.weight": emb,
            "head.weight": emb.clone(),  # untied copy: same values, own storage
            "tied.weight": emb,  # shared storage: not a duplicate
            "other": torch.randn(1000, 256),  # same shape, different values
            "zeros_a": torch.zeros(100, 1000),
        },
        "optimizer": {"state": {0: {"exp_avg": torch.zeros(100, 1000)}}, "param_groups": []},
    }
    p = tmp_path / "dup.pt"
    torch.save(ckpt, p)
    c = open_checkpoint(p)
    b = breakdown(c, read_layout(c))
    seen: list[tuple[int, int]] = []
    found = find_duplicates(c, b, lambda done, total: seen.append((done, total)))
    assert len(found) == 1  # optimizer zeros are not compared with zeros_a
    (f,) = found
    assert f.kind == "duplicate"
    assert set(f.paths) == {("model", "embed.weight"), ("model", "head.weight")}
    assert f.saving_bytes == 1000 * 256 * 4
    assert seen and seen[-1][0] == seen[-1][1] == 2 * 1000 * 256 * 4
    b.add_findings(found)
    assert b.findings[0].saving_bytes >= b.findings[-1].saving_bytes


# -- roles and weights -----------------------------------------------------------------------


def test_adam_state_is_about_twice_the_weights(tmp_path: Path) -> None:
    p = tmp_path / "train.pt"
    torch.save(training_checkpoint(), p)
    b = analyse(p)
    assert b.weights_path == ("model",)
    roles = {g.path: g.role for g in b.groups}
    assert roles[("model",)] is Role.WEIGHTS
    assert roles[("optimizer",)] is Role.OPTIMIZER
    assert roles[("scheduler",)] is Role.SCHEDULER
    assert roles[("epoch",)] is Role.METADATA
    params = list(TinyNet().parameters())
    param_bytes = sum(t.numel() * 4 for t in params)
    # exp_avg + exp_avg_sq per parameter, plus one 4-byte `step` each (BN buffers have none)
    assert b.roles[Role.OPTIMIZER] == 2 * param_bytes + 4 * len(params)
    assert b.roles[Role.OPTIMIZER] / param_bytes == pytest.approx(2, rel=0.02)
    (f,) = kinds(b)["optimizer_state"]
    assert "Adam-style" in f.message and f.saving_bytes == b.roles[Role.OPTIMIZER]
    assert b.optimizer_kind == "Adam-style"
    assert "optimizer state (Adam-style)" in b.headline


def test_sgd_momentum_is_named(tmp_path: Path) -> None:
    p = tmp_path / "sgd.pt"
    torch.save(training_checkpoint("sgd"), p)
    b = analyse(p)
    assert b.optimizer_kind == "SGD with momentum"


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda sd: {"model": sd, "epoch": 1}, ("model",)),
        (lambda sd: {"state_dict": sd, "global_step": 5}, ("state_dict",)),
        (lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {}}, ("model_state_dict",)),
        (lambda sd: sd, ()),
        (lambda sd: {"ema": {k: v.clone() for k, v in sd.items()}, "net": sd}, ("net",)),
        (
            # Lightning's layout (keys as Trainer.save_checkpoint writes them)
            lambda sd: {
                "epoch": 0,
                "global_step": 3,
                "pytorch-lightning_version": "2.4.0",
                "state_dict": {f"model.{k}": v for k, v in sd.items()},
                "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 1}}}},
                "callbacks": {"ModelCheckpoint": {"best_model_score": None}},
                "optimizer_states": [
                    {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1.0}]}
                ],
                "lr_schedulers": [{"last_epoch": 3, "base_lrs": [1.0], "_last_lr": [1.0]}],
                "hyper_parameters": {"lr": 1.0},
            },
            ("state_dict",),
        ),
    ],
    ids=["model", "state_dict", "model_state_dict", "flat", "net-over-ema", "lightning"],
)
def test_weights_path(tmp_path: Path, make, expected) -> None:
    p = tmp_path / "c.pt"
    torch.save(make(TinyNet().state_dict()), p)
    b = analyse(p)
    assert b.weights_path == expected
    if expected == ("state_dict",) and "optimizer_states" in make({}):
        roles = {g.path: g.role for g in b.groups}
        assert roles[("optimizer_states",)] is Role.OPTIMIZER
        assert roles[("lr_schedulers",)] is Role.SCHEDULER


def test_whole_module_pickle(tmp_path: Path) -> None:
    net = TinyNet()
    p = tmp_path / "module.pt"
    torch.save(net, p)
    b = analyse(p)
    assert b.weights_path == ()
    assert "whole_module" in kinds(b)
    names = set()

    def collect(prefix, node):
        for c in node.children.values():
            names.add(f"{prefix}{c.name}")
            collect(f"{prefix}{c.name}.", c)

    collect("", b.modules)
    assert {k.rsplit(".", 1)[0] for k in net.state_dict()} <= names
    p2 = tmp_path / "inside.pt"
    torch.save({"model": net, "epoch": 1}, p2)
    assert analyse(p2).weights_path == ("model",)


def test_weights_only_estimate_is_the_export_size(tmp_path: Path) -> None:
    """Issue 17: the headline is what `ckptui export` writes (test_weights_estimate.py covers
    every format); torch.save of the same weights adds `_metadata` and is a little larger."""
    p = tmp_path / "train.pt"
    ck = training_checkpoint()
    torch.save(ck, p)
    out = tmp_path / "w.pt"
    torch.save(ck["model"], out)
    b = analyse(p)
    real = out.stat().st_size
    assert b.weights_only_bytes == make_plan(open_checkpoint(p)).predicted_bytes
    assert 0.8 * real < b.weights_only_bytes <= real
    assert "weights alone would be" in b.headline


def test_prefix_tree_counts_every_prefix_in_first_seen_order() -> None:
    """Names with empty parts, a leading dot, no dot, and prefixes that are also parents: each
    prefix counts the bytes and tensors below it, first met (and ordered) at its first tensor."""
    named = [
        ("b.x.w", 1, ("b.x.w",)),
        ("a.y.w", 2, ("a.y.w",)),
        ("a.w", 4, ("a.w",)),
        ("a.x.z.w", 8, ("a.x.z.w",)),
        ("top", 16, ("top",)),
        ("a..w", 32, ("a..w",)),
        (".lead", 64, (".lead",)),
        ("b.x.v", 128, ("b.x.v",)),
    ]
    root = prefix_tree(named)

    def shape(node) -> list:
        return [(c.name, c.bytes, c.tensors, c.first, shape(c)) for c in node.children.values()]

    assert (root.bytes, root.tensors, root.first) == (255, 8, ("b.x.w",))
    assert shape(root) == [
        ("b", 129, 2, ("b.x.w",), [("x", 129, 2, ("b.x.w",), [])]),
        (
            "a",
            46,
            4,
            ("a.y.w",),
            [
                ("y", 2, 1, ("a.y.w",), []),
                ("x", 8, 1, ("a.x.z.w",), [("z", 8, 1, ("a.x.z.w",), [])]),
                ("", 32, 1, ("a..w",), []),
            ],
        ),
        ("", 64, 1, (".lead",), []),
    ]
    assert prefix_tree([]).children == {} and prefix_tree([]).first is None


def test_module_prefixes_and_dtypes(tmp_path: Path) -> None:
    sd = {
        "backbone.layer1.conv.weight": torch.zeros(100, dtype=torch.float32),
        "backbone.layer1.bn.weight": torch.zeros(50, dtype=torch.float32),
        "backbone.layer2.conv.weight": torch.zeros(10, dtype=torch.float64),
        "head.weight": torch.zeros(25, dtype=torch.float16),
        "head.steps": torch.zeros(5, dtype=torch.int64),
    }
    p = tmp_path / "sd.pt"
    torch.save({"model": sd}, p)
    b = analyse(p)
    backbone = b.modules.children["backbone"]
    assert backbone.bytes == 400 + 200 + 80
    assert backbone.children["layer1"].bytes == 600
    assert backbone.children["layer1"].children["conv"].bytes == 400
    assert b.modules.children["head"].bytes == 50 + 40
    assert b.dtypes == {"float32": 600, "float64": 80, "int64": 40, "float16": 50}
    (f,) = kinds(b)["float_weights"]
    assert f.bytes == 680 and f.saving_bytes == 300 + 60
    assert [x.path for x in b.largest[:2]] == [
        ("model", "backbone.layer1.conv.weight"),
        ("model", "backbone.layer1.bn.weight"),
    ]


def test_inline_data_is_reported(tmp_path: Path) -> None:
    p = tmp_path / "inline.pt"
    torch.save(
        {
            "model": {"w": torch.zeros(3)},
            "losses": [float(i) for i in range(20_000)],
            "table": np.zeros((100, 200), dtype=np.float64),
        },
        p,
    )
    b = analyse(p)
    found = {f.paths[0]: f for f in kinds(b)["inline_data"]}
    assert found[("table",)].bytes == 160_000
    assert found[("losses",)].bytes == 20_000 * 9  # an estimate: 9 bytes per pickled float
    assert b.path_bytes[("table",)] == 160_000


# -- the command line ------------------------------------------------------------------------


def test_why_json_contract(tmp_path: Path) -> None:
    p = tmp_path / "train.pt"
    torch.save(training_checkpoint(), p)
    r = run_cli("why", str(p), "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert set(data) >= {
        "file_bytes",
        "categories",
        "groups",
        "findings",
        "weights_path",
        "weights_only_bytes",
    }
    assert data["file_bytes"] == p.stat().st_size == sum(data["categories"].values())
    assert {"tensor_data", "pickle", "overhead"} <= set(data["categories"])
    assert data["weights_path"] == ["model"]
    assert {"path": ["optimizer"], "role": "optimizer"}.items() <= {
        k: v for g in data["groups"] if g["path"] == ["optimizer"] for k, v in g.items()
    }.items()
    for f in data["findings"]:
        assert set(f) == {"kind", "bytes", "saving_bytes", "paths", "message"}


def test_why_renders_and_fails_cleanly(tmp_path: Path) -> None:
    p = tmp_path / "train.pt"
    torch.save(training_checkpoint(), p)
    r = run_cli("why", str(p))
    assert r.returncode == 0, r.stderr
    assert "optimizer state (Adam-style)" in r.stdout
    assert "By role" in r.stdout and "Findings" in r.stdout
    bad = tmp_path / "bad.pt"
    bad.write_text("hello\n")
    r = run_cli("why", str(bad))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "bad.pt" in r.stderr


# -- folders ---------------------------------------------------------------------------------


def sharded_folder(folder: Path) -> dict[str, torch.Tensor]:
    """A Hugging Face-style sharded folder: two safetensors shards, one .bin, index, config."""
    torch.manual_seed(0)
    sd = {f"encoder.layer.{i}.weight": torch.randn(64, 64) for i in range(4)}
    sd["lm_head.weight"] = torch.randn(100, 64)
    names = list(sd)
    save_file({k: sd[k] for k in names[:2]}, folder / "model-00001-of-00002.safetensors")
    save_file({k: sd[k] for k in names[2:4]}, folder / "model-00002-of-00002.safetensors")
    (folder / "extra").mkdir()
    torch.save({"lm_head.weight": sd["lm_head.weight"]}, folder / "extra" / "head.bin")
    index = {"weight_map": {k: "model-00001-of-00002.safetensors" for k in names[:2]}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text('{"hidden_size": 64}\n')
    return sd


def test_folder_categories_sum_to_the_files(tmp_path: Path) -> None:
    from ckptui.analysis.sizes.folder import breakdown_folder

    sd = sharded_folder(tmp_path)
    b = breakdown_folder(str(tmp_path))
    total = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert b.file_bytes == total == sum(b.categories.values())
    jsons = sum(p.stat().st_size for p in tmp_path.glob("*.json"))
    assert b.categories["other_files"] == jsons
    assert b.categories["tensor_data"] == sum(t.nbytes for t in sd.values())
    shard_bytes = {g.path: g.bytes for g in b.groups if g.role is Role.WEIGHTS}
    assert shard_bytes == {
        ("model-00001-of-00002.safetensors",): 2 * 64 * 64 * 4,
        ("model-00002-of-00002.safetensors",): 2 * 64 * 64 * 4,
        ("extra/head.bin",): 100 * 64 * 4,
    }
    assert b.weights_path == ()
    # one .pth holding all shards' weights: their bytes plus a little framing
    assert 0 < b.weights_only_bytes - b.categories["tensor_data"] < 3000
    # module prefixes merge across shards
    assert b.modules.children["encoder"].children["layer"].tensors == 4


def test_why_on_a_folder(tmp_path: Path) -> None:
    sharded_folder(tmp_path)
    (tmp_path / "broken.pt").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    r = run_cli("why", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    total = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file())
    assert data["file_bytes"] == total == sum(data["categories"].values())
    assert data["categories"]["unaccounted"] == 104
    (bad,) = [f for f in data["findings"] if f["kind"] == "unreadable"]
    assert bad["paths"] == [["broken.pt"]]
    r = run_cli("why", str(tmp_path))
    assert r.returncode == 0 and "(other files)" in r.stdout


def test_bytes_below_counts_tied_weights_once() -> None:
    """The browser's sizes: a view saved under two names (lm_head tied to the embedding) is one
    set of bytes, at the root and in every subtree holding both names."""
    from ckptui.analysis.index import bytes_below, bytes_below_all
    from ckptui.formats import open_checkpoint

    emb = torch.randn(100, 8)
    sd = {"enc": {"embed.weight": emb, "x": torch.zeros(3)}, "head": {"w": emb.view(100, 8)}}
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "tied.pth"
        torch.save({"model": sd}, p)
        ckpt = open_checkpoint(p)
    model = ckpt.find(("model",))
    assert bytes_below(model) == 100 * 8 * 4 + 3 * 4
    every = bytes_below_all(ckpt.root)
    assert every[id(model)] == every[id(ckpt.root)] == 100 * 8 * 4 + 3 * 4
    assert every[id(ckpt.find(("model", "head")))] == 100 * 8 * 4  # its own copy, alone
    assert all(every[id(n)] == bytes_below(n) for _, n in walk_all(ckpt.root))


def walk_all(root):
    from ckptui.core.tree import walk

    yield (), root
    yield from walk(root)
