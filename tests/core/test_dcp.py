"""DCP folders written by the real `torch.distributed.checkpoint.save`, read by ckptui without torch.

Producers: a single-process gloo group on 127.0.0.1 saving a real training state (model + Adam
via `get_state_dict`, plus `step`), a `no_dist=True` save through `FileSystemWriter` with four
threads (four `.distcp` files), and two gloo ranks (torch.multiprocessing) saving DTensors sharded
across them (tensors in chunks across files). torch itself is the oracle: its own metadata
reader for the chunk placement, its own loader for the values.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import shutil
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint._nested_dict import flatten_state_dict
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import get_state_dict

from ckptui.analysis.roles import Role
from ckptui.analysis.sizes.dcp import breakdown_dcp
from ckptui.core.errors import CorruptFile, ExportError
from ckptui.core.tree import Checkpoint, NodeKind, Severity
from ckptui.export.dcp import export_dcp
from ckptui.formats.dcp import metadata as dcp_metadata
from ckptui.formats.dcp.fast_unpickler import FAST_GLOBALS
from ckptui.formats.dcp.interpretation import DcpMetadata
from ckptui.formats.dcp.listing import looks_like_dcp
from ckptui.formats.dcp.metadata import load_fast, load_inert
from ckptui.formats.dcp.reader import read_dcp
from ckptui.formats.source import Source
from ckptui.tensors.values import tensor_stats
from ckptui.unpickler.inert import Global, classify_global
from ckptui.unpickler.recorders import CONSTANTS, RECORDERS
from ckptui.unpickler.safety import judge
from tests.conftest import run_cli, run_python
from tests.core.test_values import expect

pytestmark = pytest.mark.filterwarnings("ignore")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(10, 6)
        self.norm = torch.nn.LayerNorm(6)
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(self.emb(x)))


def training_state() -> dict[str, Any]:
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.tensor([1, 2, 3])).sum().backward()
    opt.step()
    msd, osd = get_state_dict(model, opt)
    return {"model": msd, "optim": osd, "step": 7}


def sharded_truth() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {"w": torch.randn(6, 4), "b": torch.randn(5), "r": torch.arange(10.0)}


def _sharded_worker(rank: int, port: int, out: str) -> None:  # pragma: no cover - in a child
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        mesh = init_device_mesh("cpu", (2,))
        t = sharded_truth()
        sd = {
            "model": {
                "w": distribute_tensor(t["w"], mesh, [Shard(0)]),
                "b": distribute_tensor(t["b"], mesh, [Shard(0)]),
                "r": distribute_tensor(t["r"], mesh, [Replicate()]),
            },
            "step": 3,
        }
        dcp.save(sd, checkpoint_id=out)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def gloo_dcp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A training state saved by dcp.save under a one-rank gloo group."""
    folder = tmp_path_factory.mktemp("dcp") / "gloo"
    sd = training_state()
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    try:
        dcp.save(sd, checkpoint_id=folder)
    finally:
        dist.destroy_process_group()
    return folder, sd


@pytest.fixture(scope="module")
def threaded_dcp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A no_dist save through four writer threads: four .distcp files; odd dtypes and a
    non-contiguous (transposed) tensor, which torch saves with its strides."""
    folder = tmp_path_factory.mktemp("dcp") / "threads"
    sd = training_state()
    torch.manual_seed(2)
    sd["extra"] = {
        "transposed": torch.randn(5, 7).t(),
        "half": torch.randn(4, 4).to(torch.bfloat16),
        "ids": torch.arange(-3, 9, dtype=torch.int64),
        "scalar": torch.tensor(2.5),
        "big": torch.randn(64, 33),
    }
    dcp.save(sd, storage_writer=FileSystemWriter(folder, thread_count=4), no_dist=True)
    return folder, sd


@pytest.fixture(scope="module")
def sharded_dcp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DTensors sharded across two gloo ranks: tensors split in chunks across two files."""
    import torch.multiprocessing as mp

    folder = tmp_path_factory.mktemp("dcp") / "sharded"
    mp.spawn(_sharded_worker, args=(free_port(), str(folder)), nprocs=2)
    return folder


def tensors_of(sd: Any) -> dict[tuple[Any, ...], torch.Tensor]:
    """Every tensor of a nested state dict by its key path (as DCP's flatten_state_dict)."""
    _, mapping = flatten_state_dict(sd)
    out = {}
    for path in mapping.values():
        v: Any = sd
        for k in path:
            v = v[k]
        if isinstance(v, torch.Tensor):
            out[tuple(path)] = v
    return out


def torch_dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def check_tree(ckpt: Checkpoint, sd: dict[str, Any]) -> None:
    _, mapping = flatten_state_dict(sd)
    for path in mapping.values():  # every leaf of the state dict, objects included
        assert ckpt.find(tuple(path)) is not None, path
    truth = tensors_of(sd)
    got = dict(ckpt.tensors())
    assert set(got) == set(truth)
    for path, t in truth.items():
        assert got[path].shape == tuple(t.shape), path
        assert got[path].dtype == torch_dtype(t), path


def chunk_bytes_per_file(folder: Path) -> dict[str, int]:
    """Raw tensor bytes per data file, from the chunks torch's own metadata reader places there."""
    md = FileSystemReader(folder).read_metadata()
    expected: dict[str, int] = {}
    for index, info in md.storage_data.items():
        entry = md.state_dict_metadata[index.fqn]
        if isinstance(entry, TensorStorageMetadata):
            chunk = next(c for c in entry.chunks if c.offsets == index.offset)
            n = chunk.sizes.numel() * entry.properties.dtype.itemsize
            expected[info.relative_path] = expected.get(info.relative_path, 0) + n
    return expected


def check_files(ckpt: Checkpoint, folder: Path) -> None:
    """Storage bytes per file = what torch's metadata places in that file for tensor chunks."""
    expected = chunk_bytes_per_file(folder)
    got: dict[str, int] = {}
    for st in ckpt.storages.values():
        assert st.file is not None and st.data_offset is not None
        got[st.file] = got.get(st.file, 0) + st.nbytes
        assert st.data_offset + st.nbytes <= (folder / st.file).stat().st_size
    assert got == expected
    for f, n in got.items():
        assert n <= ckpt.info["files"][f]


def check_values(ckpt: Checkpoint, sd: dict[str, Any]) -> int:
    truth = tensors_of(sd)
    n = 0
    for path, t in ckpt.tensors():
        if t.storage_key is not None:
            expect(truth[path], tensor_stats(ckpt, t))
            n += 1
    return n


# -- reading ---------------------------------------------------------------------------------
def test_looks_like_dcp(gloo_dcp: tuple[Path, dict], tmp_path: Path) -> None:
    folder, _ = gloo_dcp
    assert looks_like_dcp(str(folder))
    (tmp_path / ".metadata").write_bytes(b"\x80\x04N.")
    assert not looks_like_dcp(str(tmp_path))  # no .distcp beside it
    (tmp_path / "__0_0.distcp").write_bytes(b"")
    assert looks_like_dcp(str(tmp_path))
    (tmp_path / ".metadata").write_bytes(b"{}")
    assert not looks_like_dcp(str(tmp_path))  # not a pickle
    assert not looks_like_dcp(str(tmp_path / "nowhere"))


def test_gloo_training_state(gloo_dcp: tuple[Path, dict]) -> None:
    folder, sd = gloo_dcp
    ckpt = read_dcp(str(folder))
    assert ckpt.format == "dcp" and not ckpt.findings
    check_tree(ckpt, sd)
    # state-dict keys stay whole, as in a torch.save'd state dict
    assert [c.key for c in ckpt.find(("model",)).children] == list(sd["model"])
    assert ckpt.find(("optim", "state", "fc.weight", "exp_avg")).kind is NodeKind.TENSOR
    # pickled objects are read inertly: ints, floats, lists of names
    assert ckpt.find(("step",)).value == 7
    assert ckpt.find(("optim", "param_groups", 0, "lr")).value == 1e-3
    params = ckpt.find(("optim", "param_groups", 0, "params"))
    assert [c.value for c in params.children] == sd["optim"]["param_groups"][0]["params"]
    files = {p.name: p.stat().st_size for p in folder.iterdir()}
    assert ckpt.info["files"] == files and ckpt.file_bytes == sum(files.values())
    assert ckpt.info["dcp_version"] == "1.0.0" and ckpt.info["planner_data"] is True
    assert ckpt.info["folder"] == str(folder.absolute())
    check_files(ckpt, folder)
    assert check_values(ckpt, sd) == len(tensors_of(sd))


def test_threaded_no_dist_save(threaded_dcp: tuple[Path, dict]) -> None:
    folder, sd = threaded_dcp
    ckpt = read_dcp(str(folder))
    assert not ckpt.findings
    assert len([f for f in ckpt.info["files"] if f.endswith(".distcp")]) == 4
    check_tree(ckpt, sd)
    check_files(ckpt, folder)
    assert len({st.file for st in ckpt.storages.values()}) == 4
    assert check_values(ckpt, sd) == len(tensors_of(sd))
    t = ckpt.find(("extra", "transposed")).tensor
    assert t.shape == (7, 5) and t.stride == (1, 7)  # the saved view, read as saved


def test_sharded_dtensors(sharded_dcp: Path) -> None:
    ckpt = read_dcp(str(sharded_dcp))
    assert not ckpt.findings
    truth = sharded_truth()
    w = ckpt.find(("model", "w"))
    assert w.tensor.shape == (6, 4) and w.tensor.storage_key is None
    assert w.tensor.layout == "chunked"
    chunks = dict(w.attrs)["chunks"]
    assert [(o, s) for o, s, _ in chunks] == [((0, 0), (3, 4)), ((3, 0), (3, 4))]
    assert {f for _, _, f in chunks} == {"__0_0.distcp", "__1_0.distcp"}
    for key in dict(w.attrs)["chunk_storages"]:
        assert ckpt.storages[key].nbytes == 3 * 4 * 4
    b = ckpt.find(("model", "b")).tensor
    assert b.shape == (5,) and b.layout == "chunked"
    r = ckpt.find(("model", "r"))  # replicated: saved once, whole
    assert r.tensor.storage_key is not None
    expect(truth["r"], tensor_stats(ckpt, r.tensor))
    assert ckpt.find(("step",)).value == 3
    check_files(ckpt, sharded_dcp)


def test_read_dcp_never_imports_torch(gloo_dcp: tuple[Path, dict]) -> None:
    folder, _ = gloo_dcp
    code = (
        "import sys; from ckptui.formats.dcp.reader import read_dcp; "
        f"c = read_dcp({str(folder)!r}); assert len(c.storages) > 10; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    r = run_python(code)
    assert r.returncode == 0, r.stderr


# -- export ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_export_consolidates(gloo_dcp: tuple[Path, dict], tmp_path: Path, fmt: str) -> None:
    folder, sd = gloo_dcp
    ckpt = read_dcp(str(folder))
    out = tmp_path / f"weights.{fmt}"
    seen: list[int] = []
    res = export_dcp(ckpt, out, fmt=fmt, progress=lambda done, total, name: seen.append(done))
    assert res.verified and res.kept_paths == (("model",),) and res.tensors == len(sd["model"])
    if fmt == "pth":
        back = torch.load(out, weights_only=True)
    else:
        from safetensors import safe_open
        from safetensors.torch import load_file

        back = load_file(out)
        with safe_open(out, "pt") as f:
            assert f.metadata() == {"format": "pt", "step": "7"}
    assert set(back) == set(sd["model"])  # safetensors sorts its names
    for k, v in sd["model"].items():
        assert torch.equal(back[k], v), k
    assert seen and seen[-1] == res.predicted_bytes
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary file left


def test_export_sharded_cast_and_keep(sharded_dcp: Path, tmp_path: Path) -> None:
    ckpt = read_dcp(str(sharded_dcp))
    out = tmp_path / "w.pth"
    export_dcp(ckpt, out, dtype="bf16")
    back = torch.load(out, weights_only=True)
    truth = sharded_truth()
    assert set(back) == set(truth)
    for k, v in truth.items():
        assert back[k].dtype == torch.bfloat16 and torch.equal(back[k], v.to(torch.bfloat16))
    with pytest.raises(ExportError, match="already exists"):
        export_dcp(ckpt, out)
    export_dcp(ckpt, out, keep=[("model", "w")], force=True)
    assert list(torch.load(out, weights_only=True)) == ["w"]
    with pytest.raises(ExportError, match="source"):
        export_dcp(ckpt, sharded_dcp)
    with pytest.raises(ExportError, match="source"):
        export_dcp(ckpt, sharded_dcp / "__0_0.distcp", force=True)


def test_export_optimizer_subtree(threaded_dcp: tuple[Path, dict], tmp_path: Path) -> None:
    folder, sd = threaded_dcp
    ckpt = read_dcp(str(folder))
    out = tmp_path / "opt.safetensors"
    export_dcp(ckpt, out, keep=[("optim", "state"), ("extra",)], fmt="safetensors")
    from safetensors.torch import load_file

    back = load_file(out)
    assert torch.equal(
        back["state.fc.weight.exp_avg"], sd["optim"]["state"]["fc.weight"]["exp_avg"]
    )
    assert torch.equal(back["extra.transposed"], sd["extra"]["transposed"])
    assert back["extra.half"].dtype == torch.bfloat16


# -- damage and hostility ------------------------------------------------------------------------
def copy_of(folder: Path, tmp_path: Path) -> Path:
    dst = tmp_path / folder.name
    shutil.copytree(folder, dst)
    return dst


def test_missing_distcp_file(threaded_dcp: tuple[Path, dict], tmp_path: Path) -> None:
    folder, sd = threaded_dcp
    dst = copy_of(folder, tmp_path)
    (dst / "__0_2.distcp").unlink()
    ckpt = read_dcp(str(dst))
    missing = [f for f in ckpt.findings if f.kind == "missing_file"]
    assert len(missing) == 1 and missing[0].message.startswith("__0_2.distcp is missing")
    check_tree(ckpt, sd)  # the whole tree still opens
    gone = [p for p, t in ckpt.tensors() if ckpt.storages[t.storage_key].missing]
    here = [p for p, t in ckpt.tensors() if not ckpt.storages[t.storage_key].missing]
    assert gone and here
    assert all(ckpt.storages[ckpt.find(p).tensor.storage_key].file == "__0_2.distcp" for p in gone)
    truth = tensors_of(sd)
    for p in here:
        expect(truth[p], tensor_stats(ckpt, ckpt.find(p).tensor))
    with pytest.raises(ExportError, match="missing"):
        export_dcp(ckpt, tmp_path / "out.pth", keep=[()])
    assert not (tmp_path / "out.pth").exists()


def test_short_distcp_file(gloo_dcp: tuple[Path, dict], tmp_path: Path) -> None:
    folder, sd = gloo_dcp
    dst = copy_of(folder, tmp_path)
    data = dst / "__0_0.distcp"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    ckpt = read_dcp(str(dst))
    (short,) = [f for f in ckpt.findings if f.kind == "short_file"]
    assert "__0_0.distcp is shorter than .metadata says" in short.message
    check_tree(ckpt, sd)


def test_corrupt_item(gloo_dcp: tuple[Path, dict], tmp_path: Path) -> None:
    folder, _ = gloo_dcp
    dst = copy_of(folder, tmp_path)
    data = dst / "__0_0.distcp"
    data.write_bytes(b"\0" * data.stat().st_size)
    ckpt = read_dcp(str(dst))
    assert {f.kind for f in ckpt.findings} == {"corrupt_item"}
    assert all(t.storage_key is None for _, t in ckpt.tensors())


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "not_metadata"])
def test_corrupt_metadata(gloo_dcp: tuple[Path, dict], tmp_path: Path, damage: str) -> None:
    folder, _ = gloo_dcp
    dst = copy_of(folder, tmp_path)
    meta = dst / ".metadata"
    body = meta.read_bytes()
    meta.write_bytes(
        {
            "truncate": body[: len(body) // 2],
            "garbage": b"\x80\x04" + os.urandom(64),
            "empty": b"",
            "not_metadata": pickle.dumps({"a": 1}),
        }[damage]
    )
    with pytest.raises(CorruptFile) as e:
        read_dcp(str(dst))
    assert "\n" not in str(e.value) and str(e.value).startswith(str(meta))


class _Evil:
    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.cmd,))


def test_metadata_calling_os_system(tmp_path: Path, gloo_dcp: tuple[Path, dict]) -> None:
    marker = tmp_path / "pwned"
    folder, _ = gloo_dcp
    # 1. .metadata is nothing but a call of os.system
    dst = copy_of(folder, tmp_path)
    (dst / ".metadata").write_bytes(pickle.dumps(_Evil(f"touch {marker}")))
    with pytest.raises(CorruptFile, match=r"os\.system|posix\.system"):
        read_dcp(str(dst))
    # 2. a real Metadata carrying the call inside: opens, with a danger finding
    md = FileSystemReader(folder).read_metadata()
    md.storage_meta.save_id = _Evil(f"touch {marker}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (dst / ".metadata").write_bytes(pickle.dumps(md))
    ckpt = read_dcp(str(dst))
    danger = [f for f in ckpt.findings if f.severity is Severity.DANGER]
    assert danger and danger[0].kind == "dangerous_call" and "system" in danger[0].message
    assert len(ckpt.storages) > 10
    with pytest.raises(ExportError, match="refusing"):
        export_dcp(ckpt, tmp_path / "w.pth")
    assert not marker.exists()


def test_without_planner_data_keys_stay_flat(tmp_path: Path) -> None:
    """flatten_state_dict=False records no planner data: DCP loads every FQN as a top-level
    key, so ckptui shows them flat and whole (not split at dots)."""
    from torch.distributed.checkpoint import DefaultSavePlanner

    torch.manual_seed(3)
    sd = {"layer.weight": torch.randn(3, 2), "layer.bias": torch.randn(3), "epoch": 4}
    folder = tmp_path / "flat"
    dcp.save(
        sd,
        storage_writer=FileSystemWriter(folder),
        planner=DefaultSavePlanner(flatten_state_dict=False),
        no_dist=True,
    )
    assert FileSystemReader(folder).read_metadata().planner_data is None
    ckpt = read_dcp(str(folder))
    assert ckpt.info["planner_data"] is False and not ckpt.findings
    assert [c.key for c in ckpt.root.children] == list(sd)
    assert ckpt.find(("epoch",)).value == 4
    assert check_values(ckpt, sd) == 2
    export_dcp(ckpt, tmp_path / "w.pth", keep=[()])
    back = torch.load(tmp_path / "w.pth", weights_only=True)
    assert set(back) == {"layer.weight", "layer.bias"}
    assert all(torch.equal(back[k], sd[k]) for k in back)


# -- the .metadata fast path (dcp_metadata) ------------------------------------------------------
def _metadata_of(folder: Path) -> tuple[DcpMetadata | None, DcpMetadata]:
    """(fast path's result or None, inert loop's result) for a folder's .metadata."""
    src = Source.open(str(folder / ".metadata"))
    try:
        return load_fast(src.read_at(0, src.size)), load_inert(src)
    finally:
        src.close()


@pytest.mark.parametrize("fixture", ["gloo_dcp", "threaded_dcp", "sharded_dcp"])
def test_fast_and_inert_metadata_agree(
    fixture: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    got = request.getfixturevalue(fixture)
    folder = got if isinstance(got, Path) else got[0]
    fast, inert = _metadata_of(folder)
    assert fast is not None and fast.fast and not inert.fast
    for f in ("tensors", "objects", "order", "planner", "storage", "info"):
        assert getattr(fast, f) == getattr(inert, f), f
    assert fast.globals == {} and all(g.full in FAST_GLOBALS for g in inert.globals.values())
    ckpt = read_dcp(str(folder))
    monkeypatch.setattr(dcp_metadata, "load_fast", lambda data: None)
    assert read_dcp(str(folder)) == ckpt  # the same tree, storages, findings and facts


def test_fast_globals_are_harmless() -> None:
    """Everything the fast path accepts is judged harmless by the inert loop too, so taking the
    fast path can never hide a finding."""
    for full in FAST_GLOBALS:
        module, name = full.rsplit(".", 1)
        data = full in RECORDERS or full in CONSTANTS or full in dcp_metadata.DCP_GLOBALS
        assert data or classify_global(Global(full, judge(module, name))) is None, full


def _evil_target(*args: Any) -> None:  # pragma: no cover - only ever named, never called
    raise AssertionError("called")


class _CallOf:
    """Pickles as a call of `_evil_target(*args)`, renamed afterwards to any global."""

    def __init__(self, *args: Any) -> None:
        self.args = args

    def __reduce__(self) -> tuple[Any, ...]:
        return (_evil_target, self.args)


def _unframed(data: bytes) -> bytes:
    """The pickle without FRAME opcodes (optional), so strings can change length."""
    out, last = bytearray(), 0
    for op, _, pos in pickletools.genops(data):
        if op.name == "FRAME":
            out += data[last:pos]
            last = pos + 9
    return bytes(out + data[last:])


def _s(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def hostile_metadata(folder: Path, module: str, name: str, *args: Any) -> bytes:
    """The folder's real Metadata, pickled by protocol 4 with `module.name(*args)` inside."""
    md = FileSystemReader(folder).read_metadata()
    md.storage_meta.save_id = _CallOf(*args)
    data = _unframed(pickle.dumps(md, protocol=4))
    target = _s(_evil_target.__module__) + b"\x94" + _s(_evil_target.__name__)
    assert data.count(target) == 1
    return data.replace(target, _s(module) + b"\x94" + _s(name))


@pytest.mark.parametrize(
    ("module", "name", "shown"),
    [
        ("os", "system", "os.system"),
        ("posix", "system", "posix.system"),
        ("builtins", "exec", "builtins.exec"),
        ("torch", "load", "torch.load"),
        # an allow-listed module, a name that is not: a dotted walk to os.system
        ("torch.distributed.checkpoint.metadata", "os.system", "metadata.os.system"),
        ("torch.serialization", "os.system", "serialization.os.system"),
    ],
)
def test_fast_path_refuses_other_globals(
    gloo_dcp: tuple[Path, dict], tmp_path: Path, module: str, name: str, shown: str
) -> None:
    folder, _ = gloo_dcp
    marker = tmp_path / "pwned"
    code = f"open({str(marker)!r}, 'w').close()"
    arg = code if name == "exec" else f"touch {marker}"
    data = hostile_metadata(folder, module, name, arg)
    assert load_fast(data) is None  # declined: find_class raised before anything ran
    dst = copy_of(folder, tmp_path)
    (dst / ".metadata").write_bytes(data)
    ckpt = read_dcp(str(dst))  # the inert loop reads it and says what it would have run
    danger = [f for f in ckpt.findings if f.severity is Severity.DANGER]
    assert danger and shown in danger[0].message and danger[0].kind == "dangerous_call"
    assert len(ckpt.storages) > 10
    assert not marker.exists()


def test_fast_path_refuses_extension_codes(gloo_dcp: tuple[Path, dict], tmp_path: Path) -> None:
    """EXT1 fetches a global from copyreg's process-wide cache without asking find_class: the
    opcode walk refuses it before the C unpickler runs."""
    import copyreg

    folder, _ = gloo_dcp
    marker = tmp_path / "pwned"
    data = hostile_metadata(folder, "os", "system", f"touch {marker}")
    ext = data.replace(_s("os") + b"\x94" + _s("system") + b"\x94\x93", b"\x82\xf0" + b"\x94")
    assert ext != data
    copyreg.add_extension("os", "system", 0xF0)
    copyreg._extension_cache[0xF0] = os.system  # type: ignore[attr-defined]
    try:
        assert load_fast(ext) is None
        dst = copy_of(folder, tmp_path)
        (dst / ".metadata").write_bytes(ext)
        with pytest.raises(CorruptFile, match="extension codes"):
            read_dcp(str(dst))
    finally:
        copyreg.remove_extension("os", "system", 0xF0)
    assert not marker.exists()


def test_fast_path_refuses_persistent_ids(gloo_dcp: tuple[Path, dict], tmp_path: Path) -> None:
    folder, _ = gloo_dcp
    data = _unframed(pickle.dumps(FileSystemReader(folder).read_metadata(), protocol=4))
    pid = data.replace(_s("1.0.0"), _s("1.0.0") + b"\x94" + _s("x") + b"Q", 1)  # BINPERSID
    assert pid != data and load_fast(pid) is None
    dst = copy_of(folder, tmp_path)
    (dst / ".metadata").write_bytes(pid)
    with pytest.raises(CorruptFile, match="persistent id"):
        read_dcp(str(dst))


def test_fast_path_bounds_memory_and_depth() -> None:
    """Two pickles that make the C unpickler itself misbehave are refused: a LONG_BINPUT of a
    huge memo index (4 GiB allocated and zeroed), and a million-deep tuple used as a dict key
    (hashing it overflows the C stack: the interpreter dies). The second runs in a child."""
    t0 = time.perf_counter()
    assert load_fast(b"\x80\x04Nr\x00\x00\x00\x10.") is None
    assert time.perf_counter() - t0 < 0.5
    code = (
        "import sys; from ckptui.formats.dcp.metadata import load_fast; "
        "deep = b'\\x80\\x04}' + b'K\\x01' + b'\\x85' * 1_000_000 + b'K\\x02s.'; "
        "assert load_fast(deep) is None; print('declined')"
    )
    r = run_python(code)
    assert r.returncode == 0 and r.stdout.strip() == "declined", (r.returncode, r.stderr)


# -- size breakdown (dcp_sizes) ------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["gloo_dcp", "threaded_dcp", "sharded_dcp"])
def test_breakdown_attributes_bytes_to_files(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    got = request.getfixturevalue(fixture)
    folder = copy_of(got if isinstance(got, Path) else got[0], tmp_path)
    (folder / "notes.txt").write_text("not part of the checkpoint\n")
    files = {p.name: p.stat().st_size for p in folder.iterdir()}
    ckpt = read_dcp(str(folder))
    b = breakdown_dcp(ckpt)
    # every byte of the folder, exactly once
    assert sum(b.categories.values()) == b.file_bytes == sum(files.values())
    assert b.categories["unaccounted"] == 0
    assert b.categories["other_files"] == files["notes.txt"]
    assert b.metadata_detail[".metadata"] == files[".metadata"]
    # per file: the chunks' raw bytes torch's metadata places there, and nothing else
    expected = chunk_bytes_per_file(folder)
    assert b.categories["tensor_data"] == sum(expected.values())
    assert dict(b.top_level) == {(name,): expected.get(name, 0) for name in files}
    assert [n for _, n in b.top_level] == sorted((n for _, n in b.top_level), reverse=True)
    # every other path is a path of the tree (the app jumps there)
    paths = [g.path for g in b.groups] + [x.path for x in b.largest]
    paths += [p for f in b.findings for p in f.paths] + list(b.path_bytes)
    assert paths and all(ckpt.find(p) is not None for p in paths)


def test_breakdown_roles_are_whole_tensors(gloo_dcp: tuple[Path, dict], sharded_dcp: Path) -> None:
    folder, sd = gloo_dcp
    ckpt = read_dcp(str(folder))
    b = breakdown_dcp(ckpt)
    tensors = tensors_of(sd)

    def nbytes(top: str) -> int:
        return sum(t.numel() * t.element_size() for p, t in tensors.items() if p[0] == top)

    assert b.roles[Role.WEIGHTS] == nbytes("model")
    assert b.roles[Role.OPTIMIZER] == nbytes("optim")
    groups = {g.path: (g.role, g.bytes) for g in b.groups}
    assert groups[("model",)] == (Role.WEIGHTS, nbytes("model"))
    assert groups[("optim",)] == (Role.OPTIMIZER, nbytes("optim"))
    assert b.weights_path == ("model",)
    assert any(f.kind == "optimizer_state" for f in b.findings)
    # chunks of DTensors sharded across ranks count as their tensor's, at its tree path
    ckpt = read_dcp(str(sharded_dcp))
    b = breakdown_dcp(ckpt)
    truth = sharded_truth()
    assert b.roles[Role.WEIGHTS] == sum(t.numel() * 4 for t in truth.values())
    largest = {x.path: x.bytes for x in b.largest}
    assert largest[("model", "w")] == 6 * 4 * 4 and largest[("model", "b")] == 5 * 4
    assert b.dtypes == {"float32": b.roles[Role.WEIGHTS]}
    per_file = dict(b.top_level)
    assert per_file[("__0_0.distcp",)] > 0 and per_file[("__1_0.distcp",)] > 0


# -- hostile folders (issue 20) ----------------------------------------------------------------
def _tensor_item(folder: Path, fqn: str) -> tuple[str, int, int]:
    """(file, offset, length) of the item holding the tensor `fqn`, as torch's reader has it."""
    md = FileSystemReader(folder).read_metadata()
    for index, info in md.storage_data.items():
        if index.fqn == fqn and index.offset is not None:
            return info.relative_path, info.offset, info.length
    raise AssertionError(fqn)


def test_an_item_whose_directory_count_lies_is_a_finding_not_a_traceback(
    gloo_dcp: tuple[Path, dict], tmp_path: Path
) -> None:
    """The reported input: a `.distcp` item whose end-of-directory record counts more entries
    than its central directory holds made `parse_zip` raise `struct.error` (unpack_from past
    the buffer). Now it is a damaged item of that file, the rest opens, and an export skips
    that tensor, saying so in one line."""
    folder, sd = gloo_dcp
    dst = copy_of(folder, tmp_path)
    rel, at, length = _tensor_item(dst, "model.fc.weight")
    data = bytearray((dst / rel).read_bytes())
    eocd = data.rfind(b"PK\x05\x06", at, at + length)
    assert eocd > 0
    data[eocd + 8 : eocd + 12] = (60).to_bytes(2, "little") * 2  # entries on disk, in total
    (dst / rel).write_bytes(bytes(data))
    ckpt = read_dcp(str(dst))
    (bad,) = [f for f in ckpt.findings if f.kind == "corrupt_item"]
    assert bad.message.startswith(f"{rel} holds 1 items") and "model.fc.weight" in bad.message
    check_tree(ckpt, sd)
    r = run_cli("inspect", str(dst))
    assert r.returncode == 0 and "Traceback" not in r.stderr and "corrupt_item" in r.stdout
    r = run_cli("why", str(dst), "--json")
    assert r.returncode == 0 and "Traceback" not in r.stderr
    r = run_cli("export", str(dst), "-o", str(tmp_path / "w.pth"))
    assert r.returncode == 0 and r.stderr == "ckptui: skipped model.fc.weight: " + (
        "its storage is missing from the file\n"
    )
    back = torch.load(tmp_path / "w.pth", weights_only=True)
    assert "fc.weight" not in back and torch.equal(back["fc.bias"], sd["model"]["fc.bias"])


def test_a_data_file_symlinked_out_of_the_folder_is_never_read(
    gloo_dcp: tuple[Path, dict], tmp_path: Path
) -> None:
    folder, sd = gloo_dcp
    dst = copy_of(folder, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (dst / "__0_0.distcp").rename(elsewhere / "__0_0.distcp")
    (dst / "__0_0.distcp").symlink_to(elsewhere / "__0_0.distcp")
    ckpt = read_dcp(str(dst))
    (out,) = [f for f in ckpt.findings if f.kind == "outside_folder"]
    assert out.message.startswith("__0_0.distcp is a symlink leading outside the folder")
    assert "__0_0.distcp" not in ckpt.info["files"]
    assert all(st.data_offset is None for st in ckpt.storages.values())  # nothing located
    check_tree(ckpt, sd)
    # .metadata itself symlinked out: refused by name, one line
    (dst / ".metadata").rename(elsewhere / ".metadata")
    (dst / ".metadata").symlink_to(elsewhere / ".metadata")
    r = run_cli("inspect", str(dst))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert ".metadata: a symlink leading outside the folder" in r.stderr


def test_a_fifo_as_metadata_is_one_line_not_a_hang(gloo_dcp: tuple[Path, dict], tmp_path: Path):
    folder, _ = gloo_dcp
    dst = copy_of(folder, tmp_path)
    (dst / ".metadata").unlink()
    os.mkfifo(dst / ".metadata")
    r = run_cli("inspect", str(dst))
    assert r.returncode == 2 and r.stderr == f"ckptui: {dst / '.metadata'}: is not a regular file\n"


def test_a_class_name_with_a_form_feed_is_still_one_line(
    gloo_dcp: tuple[Path, dict], tmp_path: Path
) -> None:
    """Found by bench_fuzz_folders: a mutated .metadata naming `torch.d\\x0e\\x0ctributed...`
    printed a form feed, which breaks the line (str.splitlines, terminals) as \\n does."""
    folder, _ = gloo_dcp
    dst = copy_of(folder, tmp_path)
    module = "torch.d\x0e\x0ctributed.checkpoint.metadata\u2028".encode()
    pk = b"\x80\x04\x8c" + bytes([len(module)]) + module + b"\x8c\x08Metadata\x93)\x81."
    (dst / ".metadata").write_bytes(pk)
    r = run_cli("inspect", str(dst))
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, repr(r.stderr)
    assert "torch.d\\x0e\\x0ctributed.checkpoint.metadata\\u2028.Metadata" in r.stderr
