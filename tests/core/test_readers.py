"""Readers against real files from real `torch.save`/`torch.jit.save`/safetensors/pickle calls.

torch is the oracle: shapes, dtypes, strides, offsets and sharing must match what torch.load
gives, and every storage's recorded data offset must point at exactly the bytes torch reads.
"""

from __future__ import annotations

import pickle
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from ckptui.core.tree import Checkpoint, NodeKind
from ckptui.formats import open_checkpoint
from tests.conftest import TinyNet, holed_checkpoint, save_with_location, training_checkpoint

ALL_DTYPES = [
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.complex64,
    torch.complex128, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.bool, torch.uint16, torch.uint32, torch.uint64, torch.float8_e4m3fn,
    torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz, torch.float8_e8m0fnu,
    torch.complex32,
]  # fmt: skip


def raw(t: torch.Tensor) -> bytes:
    """A tensor's bytes as torch holds them."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def tensors_by_path(ckpt: Checkpoint) -> dict:
    return {p: t for p, t in ckpt.tensors()}


def file_bytes_of(ckpt: Checkpoint, path: tuple) -> bytes:
    """The view's bytes as they lie in the file, read via the storage table (contiguous only)."""
    t = tensors_by_path(ckpt)[path]
    st = ckpt.storages[t.storage_key]
    raw = Path(ckpt.path).read_bytes()
    start = st.data_offset + t.storage_offset * t.itemsize
    return raw[start : start + t.nbytes]


def assert_matches_torch(ckpt: Checkpoint, loaded: object, prefix: tuple = ()) -> int:
    """Every tensor torch loads appears with the same metadata and bytes; returns the count."""
    count = 0
    items = loaded.items() if isinstance(loaded, dict) else enumerate(loaded)
    seen = tensors_by_path(ckpt)
    for k, v in items:
        path = (*prefix, k)
        if isinstance(v, torch.Tensor):
            t = seen[path]
            assert t.shape == tuple(v.shape), path
            assert t.dtype == str(v.dtype).removeprefix("torch."), path
            assert t.stride == v.stride(), path
            assert t.storage_offset == v.storage_offset(), path
            assert ckpt.storages[t.storage_key].nbytes == v.untyped_storage().nbytes()
            if v.is_contiguous() and v.numel():
                assert file_bytes_of(ckpt, path) == raw(v), path
            count += 1
        elif isinstance(v, dict | list | tuple):
            count += assert_matches_torch(ckpt, v, path)
    return count


def test_zip_training_checkpoint_matches_torch(train_ckpt: Path) -> None:
    ckpt = open_checkpoint(train_ckpt)
    assert ckpt.format == "torch-zip"
    assert ckpt.info["archive_name"] == "ckpt_0099999"
    assert ckpt.info["byteorder"] == "little"
    assert ckpt.file_bytes == train_ckpt.stat().st_size
    loaded = torch.load(train_ckpt, weights_only=True)
    n = assert_matches_torch(ckpt, loaded)
    assert n == len(list(ckpt.tensors())) > 10
    assert [c.key for c in ckpt.root.children] == list(loaded)
    assert ckpt.find(("epoch",)).value == 3
    assert ckpt.find(("iteration",)).value == 99999
    # Adam state is keyed by int parameter index, as optimizer.state_dict() writes it
    state = ckpt.find(("optimizer", "state"))
    assert [c.key for c in state.children] == list(loaded["optimizer"]["state"])
    assert {c.key for c in state.children[0].children} == {"step", "exp_avg", "exp_avg_sq"}
    # MultiStepLR milestones are a Counter: shown as a mapping, no danger
    milestones = ckpt.find(("scheduler", "milestones"))
    assert milestones.kind is NodeKind.MAPPING and milestones.type == "collections.Counter"
    assert not [f for f in ckpt.findings if f.severity.value != "info"]


def test_sgd_momentum_state(tmp_path: Path) -> None:
    p = tmp_path / "sgd.pt"
    torch.save(training_checkpoint("sgd"), p)
    ckpt = open_checkpoint(p)
    state0 = ckpt.find(("optimizer", "state", 0))
    assert [c.key for c in state0.children] == ["momentum_buffer"]
    assert_matches_torch(ckpt, torch.load(p, weights_only=True))


def test_dataparallel_module_prefix(tmp_path: Path) -> None:
    p = tmp_path / "dp.pth"
    torch.save(training_checkpoint(parallel=True), p)
    ckpt = open_checkpoint(p)
    keys = [c.key for c in ckpt.find(("model",)).children]
    assert keys and all(k.startswith("module.") for k in keys)
    assert "module.bn1.running_mean" in keys


def test_detects_by_content_not_extension(tmp_path: Path) -> None:
    p = tmp_path / "weights.definitely-not-a-checkpoint"
    torch.save({"w": torch.ones(2)}, p)
    renamed = tmp_path / "renamed.bin"
    p.rename(renamed)
    ckpt = open_checkpoint(renamed)
    assert ckpt.format == "torch-zip"
    assert ckpt.info["archive_name"] == "weights"  # the name at save time


def test_views_share_one_storage(tmp_path: Path) -> None:
    base = torch.arange(100, dtype=torch.float32).reshape(10, 10)
    p = tmp_path / "views.pt"
    torch.save(
        {
            "base": base,
            "row": base[3],
            "col": base[:, 2],
            "tail": base.view(-1)[90:],
            "t": base.t(),
            "same": base,
        },
        p,
    )
    ckpt = open_checkpoint(p)
    ts = tensors_by_path(ckpt)
    keys = {ts[(k,)].storage_key for k in ("base", "row", "col", "tail", "t")}
    assert len(keys) == 1 and len(ckpt.storages) == 1
    assert ts[("col",)].stride == (10,) and ts[("col",)].storage_offset == 2
    assert not ts[("col",)].is_contiguous
    assert ts[("tail",)].storage_offset == 90 and ts[("tail",)].nbytes == 40
    assert ckpt.storages[ts[("row",)].storage_key].nbytes == 400
    # the same tensor object twice: a ref node, listed under both paths
    assert ckpt.find(("same",)).kind is NodeKind.REF
    assert ckpt.find(("same",)).target == ("base",)
    assert ts[("same",)] == ts[("base",)]
    assert_matches_torch(ckpt, torch.load(p, weights_only=True))


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_every_dtype(tmp_path: Path, dtype: torch.dtype) -> None:
    p = tmp_path / "d.pt"
    t = torch.zeros(3, 5).to(dtype)
    torch.save({"t": t, "v": t[1:]}, p)
    ckpt = open_checkpoint(p)
    info = tensors_by_path(ckpt)[("t",)]
    assert info.dtype == str(dtype).removeprefix("torch.")
    assert info.nbytes == t.numel() * t.element_size()
    assert ckpt.storages[info.storage_key].nbytes == t.untyped_storage().nbytes()
    assert tensors_by_path(ckpt)[("v",)].storage_offset == 5
    assert_matches_torch(ckpt, torch.load(p, weights_only=True))


def test_float4_packed(tmp_path: Path) -> None:
    p = tmp_path / "f4.pt"
    t = torch.zeros(4, 8, dtype=torch.uint8).view(torch.float4_e2m1fn_x2)
    torch.save({"t": t}, p)
    info = tensors_by_path(open_checkpoint(p))[("t",)]
    assert info.dtype == "float4_e2m1fn_x2" and info.nbytes == 32


def test_device_recorded_as_saved(tmp_path: Path) -> None:
    p = tmp_path / "gpu.pt"
    save_with_location({"w": torch.ones(4), "b": torch.zeros(2)}, p, "cuda:0")
    ckpt = open_checkpoint(p)
    assert {t.device for _, t in ckpt.tensors()} == {"cuda:0"}
    assert {s.location for s in ckpt.storages.values()} == {"cuda:0"}


def test_parameters_and_requires_grad(tmp_path: Path) -> None:
    p = tmp_path / "params.pt"
    torch.save({"p": torch.nn.Parameter(torch.ones(2, 2)), "t": torch.ones(2)}, p)
    ts = tensors_by_path(open_checkpoint(p))
    assert ts[("p",)].type == "torch.nn.parameter.Parameter" and ts[("p",)].requires_grad
    assert ts[("t",)].type == "torch.Tensor" and not ts[("t",)].requires_grad


def test_quantized_sparse_meta_tensors(tmp_path: Path) -> None:
    q = torch.quantize_per_tensor(torch.randn(4, 4), 0.1, 3, torch.quint8)
    qc = torch.quantize_per_channel(
        torch.randn(3, 2), torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0, 1, 2]), 0, torch.qint8
    )
    sparse = torch.sparse_coo_tensor(
        torch.tensor([[0, 1], [1, 0]]), torch.tensor([1.0, 2.0]), (3, 3)
    )
    csr = torch.eye(3).to_sparse_csr()
    meta = torch.empty(5, 7, device="meta")
    p = tmp_path / "special.pt"
    torch.save({"q": q, "qc": qc, "sparse": sparse, "csr": csr, "meta": meta}, p)
    ckpt = open_checkpoint(p)
    ts = tensors_by_path(ckpt)
    assert ts[("q",)].layout == "quantized" and ts[("q",)].dtype == "quint8"
    assert ckpt.find(("q", "qscheme")).value == "per_tensor_affine"
    assert ts[("qc", "scale")].dtype == "float64"  # per-channel scales are tensors
    assert ts[("sparse",)].layout == "sparse_coo" and ts[("sparse",)].shape == (3, 3)
    assert ts[("sparse", "indices")].shape == (2, 2)
    assert ts[("sparse", "values")].dtype == "float32"
    assert ts[("csr",)].layout == "sparse_csr"
    assert ts[("meta",)].layout == "meta" and ts[("meta",)].device == "meta"
    assert ts[("meta",)].storage_key is None and ts[("meta",)].shape == (5, 7)
    assert not [f for f in ckpt.findings if f.severity.value == "danger"]


def test_legacy_format_matches_torch(tmp_path: Path) -> None:
    p = tmp_path / "legacy.pth"
    torch.save(training_checkpoint(), p, _use_new_zipfile_serialization=False)
    ckpt = open_checkpoint(p)
    assert ckpt.format == "torch-legacy"
    n = assert_matches_torch(ckpt, torch.load(p, weights_only=True))
    assert n > 10
    # storages tile the data region in key order, each after its 8-byte count: the last one
    # ends exactly at the end of the file
    assert max(s.data_offset + s.nbytes for s in ckpt.storages.values()) == p.stat().st_size


def test_legacy_views_share_storage(tmp_path: Path) -> None:
    base = torch.arange(12, dtype=torch.int64)
    p = tmp_path / "legacy_views.pt"
    torch.save({"a": base, "b": base[4:8]}, p, _use_new_zipfile_serialization=False)
    ckpt = open_checkpoint(p)
    ts = tensors_by_path(ckpt)
    assert ts[("a",)].storage_key == ts[("b",)].storage_key
    assert ts[("b",)].storage_offset == 4
    assert file_bytes_of(ckpt, ("b",)) == base[4:8].numpy().tobytes()


def test_torchscript_archive(tmp_path: Path) -> None:
    class Scripted(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)
            self.register_buffer("scale", torch.full((2,), 0.5))

        def forward(self, x):
            return self.lin(x) * self.scale

    p = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(Scripted()), p)
    ckpt = open_checkpoint(p)
    assert ckpt.format == "torchscript"
    data = ckpt.find(("data",))
    assert data.kind is NodeKind.OBJECT and data.type.startswith("__torch__.")
    ts = tensors_by_path(ckpt)
    assert ts[("data", "lin", "weight")].shape == (2, 3)
    assert ts[("data", "scale")].shape == (2,)
    assert ckpt.find(("constants",)) is not None
    assert not [f for f in ckpt.findings if f.severity.value == "danger"]


def test_torchscript_constants_and_data_do_not_collide(tmp_path: Path) -> None:
    """Freezing turns weights into constants (constants/0, ...) while a preserved buffer stays
    in data.pkl (data/0): both pickles number storages from 0."""

    class Frozen(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)
            self.register_buffer("kept", torch.arange(5, dtype=torch.float64))

        def forward(self, x):
            return self.lin(x).sum() + self.kept.sum()

    module = torch.jit.freeze(torch.jit.script(Frozen()).eval(), preserved_attrs=["kept"])
    p = tmp_path / "frozen.pt"
    torch.jit.save(module, p)
    ckpt = open_checkpoint(p)
    ts = tensors_by_path(ckpt)
    kept = ts[("data", "kept")]
    assert kept.dtype == "float64" and kept.shape == (5,)
    assert file_bytes_of(ckpt, ("data", "kept")) == raw(torch.arange(5, dtype=torch.float64))
    consts = {p: t for p, t in ts.items() if p[0] == "constants"}
    assert {t.shape for t in consts.values()} >= {(2, 3), (2,)}
    assert all(t.dtype == "float32" for t in consts.values())
    assert kept.storage_key not in {t.storage_key for t in consts.values()}


def test_safetensors_header_and_metadata(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    p = tmp_path / "model.safetensors"
    tensors = {
        "emb.weight": torch.randn(10, 4),
        "head.bias": torch.zeros(3, dtype=torch.bfloat16),
        "ids": torch.arange(5, dtype=torch.int64),
    }
    save_file(tensors, p, metadata={"format": "pt", "epoch": "7"})
    ckpt = open_checkpoint(p)
    assert ckpt.format == "safetensors"
    assert ckpt.info["metadata"] == {"format": "pt", "epoch": "7"}
    assert ckpt.find(("__metadata__", "epoch")).value == "7"
    ts = tensors_by_path(ckpt)
    data = p.read_bytes()
    for name, t in tensors.items():
        info = ts[(name,)]
        assert info.shape == tuple(t.shape) and info.dtype == str(t.dtype)[6:]
        st = ckpt.storages[name]
        assert data[st.data_offset : st.data_offset + st.nbytes] == raw(t)


def test_plain_pickle_of_state_dict_reads_inside_embedded_checkpoints(tmp_path: Path) -> None:
    sd = TinyNet().state_dict()
    p = tmp_path / "weights.pkl"
    with p.open("wb") as f:
        pickle.dump(sd, f)
    ckpt = open_checkpoint(p)
    assert ckpt.format == "pickle"
    ts = tensors_by_path(ckpt)
    data = p.read_bytes()
    for name, t in sd.items():
        info = ts[(name,)]
        assert info.shape == tuple(t.shape) and info.dtype == str(t.dtype)[6:]
        st = ckpt.storages[info.storage_key]
        assert data[st.data_offset : st.data_offset + st.nbytes] == raw(t), name
    # the embedded _load_from_bytes calls are read, not reported as opaque calls
    assert not [f for f in ckpt.findings if f.severity.value != "info"]


def test_pickle_with_zip_appended_is_a_pickle(tmp_path: Path) -> None:
    z = tmp_path / "z.pt"
    torch.save({"hidden": torch.ones(3)}, z)
    p = tmp_path / "combo.pt"
    p.write_bytes(pickle.dumps({"visible": 1}, protocol=2) + z.read_bytes())
    assert zipfile.is_zipfile(p)  # Python's test says zip; torch.load reads the pickle
    ckpt = open_checkpoint(p)
    assert ckpt.format == "pickle"
    assert [c.key for c in ckpt.root.children] == ["visible"]


def test_whole_module_pickle_without_its_class(tmp_path: Path, monkeypatch) -> None:
    mod_dir = tmp_path / "mods"
    mod_dir.mkdir()
    (mod_dir / "secretnet.py").write_text(
        "import torch\n"
        "class Block(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.conv = torch.nn.Conv2d(3, 4, 3)\n"
        "        self.bn = torch.nn.BatchNorm2d(4)\n"
        "        self.register_buffer('tmp', torch.zeros(1), persistent=False)\n"
        "class SecretNet(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.stem = Block()\n"
        "        self.layers = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(),\n"
        "                                          torch.nn.Linear(4, 2))\n"
        "        self.scale = torch.nn.Parameter(torch.ones(1))\n"
    )
    monkeypatch.syspath_prepend(str(mod_dir))
    import secretnet  # type: ignore[import-not-found]

    model = secretnet.SecretNet()
    p = tmp_path / "whole.pt"
    torch.save(model, p)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # make the class unimportable: ckptui must not need it (it never imports anyway)
    monkeypatch.delitem(sys.modules, "secretnet")
    (mod_dir / "secretnet.py").unlink()

    ckpt = open_checkpoint(p)
    assert ckpt.root.kind is NodeKind.OBJECT and ckpt.root.type == "secretnet.SecretNet"
    named = {t.state_dict_key: t.shape for _, t in ckpt.tensors() if t.state_dict_key}
    assert named == expected
    assert "stem.tmp" not in named  # non-persistent buffer: not in state_dict()
    kinds = {f.kind: f for f in ckpt.findings}
    assert kinds["whole_module"].severity.value == "info"
    assert kinds["unknown_class"].severity.value == "info"
    assert not [f for f in ckpt.findings if f.severity.value == "danger"]


def test_missing_storage_record_still_opens(tmp_path: Path) -> None:
    p = holed_checkpoint(tmp_path)
    ckpt = open_checkpoint(p)
    ts = tensors_by_path(ckpt)
    assert ckpt.storages[ts[("b",)].storage_key].missing
    assert not ckpt.storages[ts[("a",)].storage_key].missing
    missing = [f for f in ckpt.findings if f.kind == "missing_storage"]
    assert len(missing) == 1 and missing[0].path == ("b",)


def test_duplicate_record_reads_what_torch_reads(tmp_path: Path) -> None:
    a = tmp_path / "a.pt"
    torch.save({"first": 1}, a)
    shown = {}
    for n_extra in (1, 2, 3):
        p = tmp_path / f"dup{n_extra}.pt"
        with zipfile.ZipFile(a) as zin, zipfile.ZipFile(p, "w") as zout:
            for info in zin.infolist():
                zout.writestr(info, zin.read(info))
            for i in range(n_extra):
                zout.writestr("a/data.pkl", pickle.dumps({f"extra{i}": i}, protocol=2))
        expected = torch.load(p, weights_only=True)
        ckpt = open_checkpoint(p)
        shown[n_extra] = [c.key for c in ckpt.root.children]
        assert shown[n_extra] == list(expected), n_extra
        assert any(f.kind == "duplicate_record" for f in ckpt.findings)


def test_opening_never_imports_torch(train_ckpt: Path) -> None:
    import subprocess

    code = (
        "import sys; from ckptui.formats import open_checkpoint; "
        f"c = open_checkpoint({str(train_ckpt)!r}); "
        "assert len(list(c.tensors())) > 10; "
        "bad = [m for m in ('torch', 'numpy', 'textual', 'rich') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
