"""`tensor_stats` against real `torch.save`/safetensors files, with torch as the oracle.

Every expected number is computed by torch on the tensor it saved (in float64), the histogram by
numpy on torch's values: ckptui must find the same values in the file's bytes without torch.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import tracemalloc
import zipfile
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ckptui.core.cancel import Cancelled
from ckptui.core.tree import Checkpoint, TensorInfo
from ckptui.formats import open_checkpoint
from ckptui.tensors.values import BINS, TensorStats, ValuesUnavailable, tensor_stats
from tests.conftest import run_python

FLOATS = [
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.float8_e4m3fn,
    torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz,
]  # fmt: skip
INTS = [
    torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.uint16, torch.uint32,
    torch.uint64,
]  # fmt: skip
pytestmark = [
    pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental"),
    pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor"),
    pytest.mark.filterwarnings("ignore:Sparse invariant checks"),
]
COMPLEX = [torch.complex64, torch.complex128, torch.complex32]


def name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def save_and_open(tmp_path: Path, obj: dict, **kw: Any) -> tuple[Checkpoint, dict]:
    p = tmp_path / "ckpt.pt"
    torch.save(obj, p, **kw)
    ckpt = open_checkpoint(p)
    return ckpt, dict(ckpt.tensors())


def stats_of(tmp_path: Path, t: torch.Tensor, **kw: Any) -> TensorStats:
    ckpt, ts = save_and_open(tmp_path, {"t": t})
    return tensor_stats(ckpt, ts[("t",)], **kw)


def same(a: Any, b: Any) -> bool:
    """Equal, with NaN equal to NaN (also inside complex values)."""
    if isinstance(a, complex) or isinstance(b, complex):
        return same(complex(a).real, complex(b).real) and same(complex(a).imag, complex(b).imag)
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b and type(a) is type(b)


def expect(t: torch.Tensor, s: TensorStats) -> None:
    """Check `s` against what torch computes for the view `t`."""
    assert s.count == t.numel() and s.dtype == name(t.dtype)
    if t.is_complex():
        full = t.to(torch.complex128)
        v, head = full.abs().reshape(-1), full.reshape(-1)[:8].tolist()
    else:
        v = t.double().reshape(-1)
        head = t.reshape(-1)[:8].tolist()
        if t.is_floating_point():
            head = [float(x) for x in head]
    assert len(s.head) == len(head) and all(map(same, s.head, head)), (s.head, head)
    assert s.nan == int(v.isnan().sum())
    assert s.posinf == int((v == math.inf).sum()) and s.neginf == int((v == -math.inf).sum())
    fin = v[v.isfinite()]
    assert s.zeros == int((fin == 0).sum())
    assert sum(s.histogram) == fin.numel() and len(s.histogram) == BINS
    if not fin.numel():
        assert s.min is s.max is s.mean is s.std is s.hist_range is None
        return
    if t.is_floating_point() or t.is_complex():
        lo, hi = fin.min().item(), fin.max().item()
    else:  # exact, even for int64/uint64 extremes
        ints = [int(x) for x in t.reshape(-1).tolist()]
        lo, hi = min(ints), max(ints)
        # torch's float64 mean loses int64 extremes' low bits: the oracle is exact arithmetic
        mean = Fraction(sum(ints), len(ints))
        var = sum((x - mean) ** 2 for x in ints) / len(ints)
        assert s.mean == float(mean)
        assert s.std == pytest.approx(math.sqrt(var), rel=1e-9, abs=1e-12)
    assert s.min == lo and s.max == hi and type(s.min) is type(lo)
    if t.is_floating_point() or t.is_complex():
        assert s.mean == pytest.approx(fin.mean().item(), rel=1e-12, abs=1e-12)
        assert s.std == pytest.approx(fin.std(correction=0).item(), rel=1e-9, abs=1e-12)
    assert s.hist_range == (float(lo), float(hi))
    if lo != hi:
        ref, _ = np.histogram(fin.numpy(), BINS, range=(float(lo), float(hi)))
        assert s.histogram == tuple(ref.tolist())
    else:
        assert s.histogram[BINS // 2] == fin.numel()


def float_values(dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(37, 13, generator=g) * 4
    x[0, 3], x[5, 0], x[7, 7], x[2, 2], x[9, 1] = math.nan, math.inf, -math.inf, 0.0, -0.0
    return x.to(dtype)  # float8 types without inf turn inf into NaN, as torch casts


def int_values(dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    if dtype.is_signed:
        info = torch.iinfo(dtype)
        x = torch.randint(max(info.min, -1000), min(info.max, 1000), (37, 13), generator=g)
        x = x.to(dtype)
        x[1, 1], x[3, 4], x[4, 4] = info.min, info.max, 0
        return x
    x = torch.randint(0, 250, (37, 13), generator=g).to(dtype)
    if dtype == torch.uint64:
        x.view(torch.int64)[6, 6] = -1  # 2**64 - 1: beyond int64, not exact in float64
    return x


@pytest.mark.parametrize("dtype", FLOATS, ids=name)
def test_float_dtypes(tmp_path: Path, dtype: torch.dtype) -> None:
    x = float_values(dtype)
    s = stats_of(tmp_path, x)
    expect(x, s)
    assert s.nan >= 1 and s.zeros >= 2 and s.note == ""


def test_inf_counts(tmp_path: Path) -> None:
    s = stats_of(tmp_path, float_values(torch.bfloat16))
    assert (s.nan, s.posinf, s.neginf) == (1, 1, 1)


def test_float8_e8m0fnu(tmp_path: Path) -> None:
    x = torch.tensor([0.25, 1.0, 2.0, 1024.0, 2.0**-20, math.nan]).to(torch.float8_e8m0fnu)
    expect(x, stats_of(tmp_path, x))


@pytest.mark.parametrize("dtype", INTS, ids=name)
def test_int_dtypes(tmp_path: Path, dtype: torch.dtype) -> None:
    x = int_values(dtype)
    s = stats_of(tmp_path, x)
    expect(x, s)
    assert all(type(v) is int for v in s.head)


def test_int64_extremes_exact(tmp_path: Path) -> None:
    x = torch.tensor([2**63 - 1, -(2**63), 2**53 + 1], dtype=torch.int64)
    s = stats_of(tmp_path, x)
    assert (s.min, s.max, s.head) == (-(2**63), 2**63 - 1, (2**63 - 1, -(2**63), 2**53 + 1))


def test_bool(tmp_path: Path) -> None:
    x = torch.tensor([[True, False, True], [True, True, False]])
    s = stats_of(tmp_path, x)
    expect(x, s)
    assert s.head == (True, False, True, True, True, False)
    assert (s.min, s.max, s.zeros, s.mean) == (0, 1, 2, pytest.approx(4 / 6))


@pytest.mark.parametrize("dtype", COMPLEX, ids=name)
def test_complex_by_magnitude(tmp_path: Path, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(11, 6, dtype=torch.complex64, generator=g)
    x[1, 1], x[2, 2] = complex(math.nan, 1), 0
    x = x.to(dtype)
    s = stats_of(tmp_path, x)
    expect(x, s)
    assert "magnitude" in s.note and isinstance(s.head[0], complex)
    expect(x.t()[1:, ::2], stats_of(tmp_path, x.t()[1:, ::2], chunk_elements=5))
    scalar = stats_of(tmp_path, torch.tensor(3 + 4j, dtype=dtype))
    assert (scalar.head, scalar.min, scalar.mean) == ((3 + 4j,), 5.0, 5.0)


def test_precision_of_mean_and_std(tmp_path: Path) -> None:
    """A large offset with small spread: sum/sumsq would lose the std entirely."""
    g = torch.Generator().manual_seed(4)
    x = 1e9 + torch.randn(100_000, dtype=torch.float64, generator=g)
    s = stats_of(tmp_path, x, chunk_elements=999)
    assert s.mean == pytest.approx(x.mean().item(), rel=1e-15)
    assert s.std == pytest.approx(x.std(correction=0).item(), rel=1e-6)


def view_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    base = torch.randn(20, 30, generator=g)
    cube = torch.arange(4 * 5 * 6, dtype=torch.int32).reshape(4, 5, 6)
    return {
        "base": base,
        "t": base.t(),
        "step": base[::3, 1::4],
        "col": base[:, 2],
        "row": base[7],
        "tail": base.view(-1)[100:],
        "offset2d": base[5:, 10:20],
        "expand": base[3:4].expand(6, 30),
        "perm": cube.permute(2, 0, 1),
        "perm_step": cube.permute(1, 2, 0)[:, ::2, 1:],
        "scalar": torch.tensor(3.5),
        "scalar_view": base[4, 4],
        "empty": torch.zeros(0, 5),
        "empty_view": base[:, 30:],
    }


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 22])
def test_views(tmp_path: Path, chunk: int) -> None:
    views = view_dict()
    ckpt, ts = save_and_open(tmp_path, views)
    assert ts[("offset2d",)].storage_offset == 160 and ts[("expand",)].stride == (0, 1)
    for key, t in views.items():
        s = tensor_stats(ckpt, ts[(key,)], chunk_elements=chunk)
        expect(t, s)
    assert tensor_stats(ckpt, ts[("scalar",)]).head == (3.5,)
    empty = tensor_stats(ckpt, ts[("empty",)])
    assert empty.count == 0 and empty.head == () and empty.histogram == (0,) * BINS


def test_chunking_gives_same_result(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(6)
    x = torch.randn(50, 41, 3, generator=g).to(torch.bfloat16).permute(1, 2, 0)[3:, :, ::2]
    x[0, 0, 0] = math.nan
    ckpt, ts = save_and_open(tmp_path, {"x": x})
    ref = tensor_stats(ckpt, ts[("x",)])
    for chunk in (1, 7, 50, 123, 10_000):
        s = tensor_stats(ckpt, ts[("x",)], chunk_elements=chunk)
        exact = ("count", "min", "max", "nan", "zeros", "histogram", "hist_range")
        assert all(getattr(s, f) == getattr(ref, f) for f in exact), chunk
        assert all(map(same, s.head, ref.head))
        assert s.mean == pytest.approx(ref.mean, rel=1e-12)
        assert s.std == pytest.approx(ref.std, rel=1e-12)


def test_progress_and_cancel(tmp_path: Path) -> None:
    ckpt, ts = save_and_open(tmp_path, {"x": torch.randn(1000)})
    seen: list[float] = []
    tensor_stats(ckpt, ts[("x",)], chunk_elements=100, progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) > 10
    calls = []

    def cancelled() -> bool:
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        tensor_stats(ckpt, ts[("x",)], chunk_elements=100, cancelled=cancelled)
    assert len(calls) == 4


def test_legacy_format(tmp_path: Path) -> None:
    views = view_dict()
    ckpt, ts = save_and_open(tmp_path, views, _use_new_zipfile_serialization=False)
    assert ckpt.format == "torch-legacy"
    for key, t in views.items():
        expect(t, tensor_stats(ckpt, ts[(key,)], chunk_elements=13))


def test_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {
        "w": float_values(torch.float32),
        "h": float_values(torch.bfloat16),
        "f8": float_values(torch.float8_e5m2),
        "ids": int_values(torch.int64),
        "mask": torch.tensor([True, False, True]),
    }
    p = tmp_path / "m.safetensors"
    save_file(tensors, p)
    ckpt = open_checkpoint(p)
    assert ckpt.format == "safetensors"
    ts = dict(ckpt.tensors())
    for key, t in tensors.items():
        expect(t, tensor_stats(ckpt, ts[(key,)], chunk_elements=50))


def test_plain_pickle_of_state_dict(tmp_path: Path) -> None:
    """`pickle.dump(state_dict)` embeds one checkpoint per storage; offsets are absolute."""
    views = {k: v for k, v in view_dict().items() if v.numel()}
    p = tmp_path / "sd.pkl"
    with p.open("wb") as f:
        pickle.dump(views, f)
    ckpt = open_checkpoint(p)
    assert ckpt.format == "pickle"
    ts = dict(ckpt.tensors())
    for key, t in views.items():
        expect(t, tensor_stats(ckpt, ts[(key,)], chunk_elements=9))


def test_quantized_int_repr(tmp_path: Path) -> None:
    q = torch.quantize_per_tensor(torch.randn(8, 4), 0.1, 3, torch.quint8)
    s = stats_of(tmp_path, q)
    expect(q.int_repr(), dataclasses.replace(s, dtype="uint8"))
    assert s.dtype == "quint8" and "integer representation" in s.note


def test_layouts_without_values(tmp_path: Path) -> None:
    sparse = torch.sparse_coo_tensor(torch.tensor([[0, 1], [1, 0]]), torch.tensor([1.0, 2.0]))
    ckpt, ts = save_and_open(tmp_path, {"meta": torch.empty(3, device="meta"), "sp": sparse})
    for key in ("meta", "sp"):
        with pytest.raises(ValuesUnavailable, match="has no values to read"):
            tensor_stats(ckpt, ts[(key,)])
    expect(torch.tensor([1.0, 2.0]), tensor_stats(ckpt, ts[("sp", "values")]))


def test_unsupported_dtype(tmp_path: Path) -> None:
    t = torch.zeros(4, 8, dtype=torch.uint8).view(torch.float4_e2m1fn_x2)
    ckpt, ts = save_and_open(tmp_path, {"t": t})
    with pytest.raises(ValuesUnavailable, match="float4_e2m1fn_x2 values is not supported"):
        tensor_stats(ckpt, ts[("t",)])


def rewrite_zip(src: Path, dst: Path, drop: str = "", deflate: str = "") -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if drop and info.filename.endswith(drop):
                continue
            data = zin.read(info)
            if deflate and info.filename.endswith(deflate):
                info.compress_type = zipfile.ZIP_DEFLATED
            zout.writestr(info, data)


def test_missing_and_compressed_storage(tmp_path: Path) -> None:
    src = tmp_path / "full.pt"
    torch.save({"a": torch.ones(4), "b": torch.zeros(8)}, src)
    holed, packed = tmp_path / "holed.pt", tmp_path / "packed.pt"
    rewrite_zip(src, holed, drop="data/1")
    rewrite_zip(src, packed, deflate="data/1")
    for p, match in ((holed, "is missing"), (packed, "not stored as a plain run in the file")):
        ckpt = open_checkpoint(p)
        ts = dict(ckpt.tensors())
        assert tensor_stats(ckpt, ts[("a",)]).max == 1.0
        with pytest.raises(ValuesUnavailable, match=match) as e:
            tensor_stats(ckpt, ts[("b",)])
        assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_out_of_bounds_views_raise(tmp_path: Path) -> None:
    ckpt, ts = save_and_open(tmp_path, {"x": torch.arange(10, dtype=torch.int64)})
    t = ts[("x",)]
    bad: list[TensorInfo] = [
        dataclasses.replace(t, shape=(11,)),
        dataclasses.replace(t, storage_offset=1),
        dataclasses.replace(t, shape=(2, 5), stride=(6, 1)),
        dataclasses.replace(t, stride=(-1,)),
        dataclasses.replace(t, shape=(2, 5)),
        dataclasses.replace(t, dtype="complex128"),  # same storage, twice the item size
        dataclasses.replace(t, shape=(2**62, 4), stride=(0, 0)),  # fits, but numpy can't
    ]
    for info in bad:
        with pytest.raises(ValuesUnavailable):
            tensor_stats(ckpt, info)
    st = ckpt.storages[t.storage_key]
    size = Path(ckpt.path).stat().st_size
    moved = dataclasses.replace(ckpt, storages={st.key: dataclasses.replace(st, data_offset=size)})
    with pytest.raises(ValuesUnavailable, match="past the end of the file"):
        tensor_stats(moved, t)
    assert tensor_stats(ckpt, dataclasses.replace(t, dtype="int32", shape=(20,))).max == 9


def test_import_is_lazy() -> None:
    code = (
        "import sys, ckptui.tensors.values\n"
        "assert 'numpy' not in sys.modules, 'numpy'\n"
        "assert 'torch' not in sys.modules, 'torch'\n"
        "assert 'ml_dtypes' not in sys.modules, 'ml_dtypes'\n"
    )
    r = run_python(code)
    assert r.returncode == 0, r.stderr


def test_memory_stays_bounded(tmp_path: Path) -> None:
    x = torch.arange(16 << 20, dtype=torch.float32)  # 64 MB
    p = tmp_path / "big.pt"
    torch.save({"x": x}, p)
    expected = x.double().mean().item()
    del x
    ckpt = open_checkpoint(p)
    t = dict(ckpt.tensors())[("x",)]
    tracemalloc.start()
    try:
        s = tensor_stats(ckpt, t, chunk_elements=1 << 16)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert s.count == 16 << 20 and s.max == (16 << 20) - 1 and s.mean == expected
    assert peak < 8 << 20, peak
