"""Provides `tensor_stats`: summary statistics of one tensor's values, read from the file's bytes.

ckptui never imports torch, so values come straight from the checkpoint: the file is memory-mapped
read-only, the storage's bytes are viewed with numpy (ml_dtypes for bfloat16 and float8) and the
tensor's shape, stride and storage offset are laid over them as torch would, once the view is
known to lie inside the storage and the storage inside the file. The view is walked in bounded
chunks, so a multi-GB tensor costs a few chunk-sized buffers, never a copy. This is the lazy
corner: numpy and ml_dtypes are imported inside functions, so browsing never pays for them.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from ckptui.core.cancel import Cancelled, interruptible
from ckptui.core.errors import CkptError
from ckptui.core.tree import Checkpoint, Storage, TensorInfo
from ckptui.formats.source import is_url

__all__ = [
    "BINS",
    "TensorStats",
    "ValuesUnavailable",
    "fetched_bytes",
    "tensor_stats",
]

BINS, HEAD = 24, 8  # histogram bins; leading values kept in `TensorStats.head`
REMOTE_BLOCK = 4 << 20
"""Bytes per range request when a remote tensor's bytes are fetched: small enough that a
cancelled read (the cursor moved on) stops within a fraction of a second on a real link."""

_NUMPY = "float16 float32 float64 int8 int16 int32 int64 uint8 uint16 uint32 uint64 bool"
_ML_DTYPES = "bfloat16 float8_e4m3fn float8_e5m2 float8_e4m3fnuz float8_e5m2fnuz float8_e8m0fnu"
_COMPLEX = {"complex32": "float16", "complex64": "float32", "complex128": "float64"}
_QUANTIZED = {"quint8": "uint8", "qint8": "int8", "qint32": "int32"}


class ValuesUnavailable(CkptError):
    """A tensor's values cannot be read from the file: missing bytes, layout, dtype or bounds."""


@dataclass(frozen=True, slots=True)
class TensorStats:
    """Summary of one tensor's values."""

    count: int
    """Elements looked at: the view's element count."""
    min: float | int | None
    """Smallest finite value (exact int for integer/bool dtypes); None when none is finite."""
    max: float | int | None
    """Largest finite value (exact int for integer/bool dtypes); None when none is finite."""
    mean: float | None
    """Mean of the finite values, accumulated in float64; None when none is finite."""
    std: float | None
    """Population standard deviation (ddof=0) of the finite values; None when none is finite."""
    nan: int
    """NaN count."""
    posinf: int
    """+inf count."""
    neginf: int
    """-inf count."""
    zeros: int
    """Count of values equal to zero (-0.0 included)."""
    head: tuple[Any, ...]
    """The first <= 8 values in row-major order as Python float/int/bool/complex."""
    histogram: tuple[int, ...]
    """Counts of the finite values in `BINS` equal bins over `hist_range` (last bin closed);
    a constant tensor puts every value in the middle bin."""
    hist_range: tuple[float, float] | None
    """(lo, hi) of the histogram: the finite min and max; None when no value is finite."""
    dtype: str
    """The tensor's torch dtype name."""
    note: str = ""
    """How the values were interpreted when not as-is (complex magnitude, quantized ints)."""


def tensor_stats(
    ckpt: Checkpoint,
    tensor: TensorInfo,
    *,
    chunk_elements: int = 1 << 22,
    cancelled: Callable[[], bool] | None = None,
    progress: Callable[[float], None] | None = None,
) -> TensorStats:
    """Compute `TensorStats` for `tensor` from the bytes of `ckpt`'s file, in two chunked passes.

    Complex tensors are summarised by magnitude |z| (head keeps the complex values); quantized
    quint8/qint8/qint32 tensors by their integer representation (scale and zero point unapplied).
    `progress(fraction)` is called after every chunk and `cancelled()` before each one.

    Raises:
        ValuesUnavailable: missing bytes or bytes not stored plainly, a layout or dtype without
            readable values, or a view outside its storage. Cancelled: `cancelled()` said so.
    """
    where = ckpt.path
    dtype, kind, note = element_type(where, tensor, ckpt.info.get("byteorder") == "big")
    st = ckpt.storages.get(tensor.storage_key or "")
    if st is None or st.missing:
        raise ValuesUnavailable(where, f"storage {tensor.storage_key} is missing from the file")
    if st.data_offset is None:  # a compressed record, an embedded copy: nothing to map
        plain = "its bytes are not stored as a plain run in the file"
        raise ValuesUnavailable(where, f"storage {st.key}: {plain}")
    isz = dtype.itemsize * (2 if kind == "c" else 1)
    shape, stride, offset = tensor.shape, tensor.stride, tensor.storage_offset
    bad = len(stride) != len(shape) or min((*shape, *stride, offset), default=0) < 0
    if bad or tensor.numel * isz > sys.maxsize:  # numpy cannot index such a view
        raise ValuesUnavailable(where, f"malformed view: shape {shape}, stride {stride}")
    have = st.nbytes if st.record_nbytes is None else min(st.nbytes, st.record_nbytes)
    need = tensor.span_elements() * isz
    if need > have:
        raise ValuesUnavailable(where, f"view runs past storage {st.key} ({need:,} > {have:,} B)")
    if tensor.numel == 0:
        return _Acc(kind).stats(tensor, note, [0] * BINS)
    start = st.data_offset + offset * isz
    if is_url(ckpt.file_of(st)):
        buf = _remote_bytes(ckpt, st, start, st.data_offset + need, have, cancelled, progress)
        scaled = None if progress is None else (lambda f: progress(0.5 + f / 2))
        args = (tensor, kind, note, chunk_elements, cancelled, scaled)
        return _compute(strided_view(buf, 0, dtype, kind, tensor), *args)
    file = Path(ckpt.file_of(st))
    pos = start - start % mmap.ALLOCATIONGRANULARITY
    try:
        with file.open("rb") as f:
            if st.data_offset + have > os.fstat(f.fileno()).st_size:
                raise ValuesUnavailable(where, f"storage {st.key} runs past the end of the file")
            size = st.data_offset + need - pos
            mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ, offset=pos)
    except OSError as e:
        raise ValuesUnavailable(where, f"cannot map the file: {e.strerror or e}") from None
    try:  # no local holds the view, so the map can close once _compute returns
        args = (tensor, kind, note, chunk_elements, cancelled, progress)
        return _compute(strided_view(mm, start - pos, dtype, kind, tensor), *args)
    finally:
        with contextlib.suppress(BufferError):  # a traceback may still hold an array over it
            mm.close()


def fetched_bytes(ckpt: Checkpoint, tensor: TensorInfo) -> int:
    """Bytes `tensor_stats` would fetch over the network for `tensor` (0 for a local file)."""
    st = ckpt.storages.get(tensor.storage_key or "")
    if st is None or not is_url(ckpt.file_of(st)):
        return 0
    return tensor.span_bytes()


def _remote_bytes(
    ckpt: Checkpoint,
    st: Storage,
    start: int,
    stop: int,
    have: int,
    cancelled: Callable[[], bool] | None,
    progress: Callable[[float], None] | None,
) -> bytearray:
    """The bytes [start, stop) of a checkpoint at a URL: only the tensor's view, fetched in
    blocks (progress 0 to 0.5, cancellable between blocks); the first also brings the zip
    record's local header (or legacy storage count) just before the data, which it checks.
    The whole view is held in memory while its stats are taken."""
    # deferred: local reads never load the remote modules (nor fsspec)
    from ckptui.formats.remote.reader import RemoteSource

    where = ckpt.path
    try:
        src = RemoteSource.open(ckpt.file_of(st))
    except CkptError as e:
        raise ValuesUnavailable(where, e.message) from None
    try:
        if st.data_offset is None or st.data_offset + have > src.size:
            raise ValuesUnavailable(where, f"storage {st.key} runs past the end of the file")
        if ckpt.format == "torch-legacy":  # its count, fetched with the first block
            src.expect_legacy_count(st)
        buf = bytearray()
        for a in range(start, stop, REMOTE_BLOCK):
            if cancelled is not None and cancelled():
                raise Cancelled("cancelled")
            n = min(REMOTE_BLOCK, stop - a)
            if a == start and st.record is not None:  # a zip record: its header comes along
                first = (st.record, st.data_offset, a, n)
                buf += interruptible(lambda first=first: src.read_checked(*first), cancelled)
            else:
                buf += interruptible(lambda a=a, n=n: src.read_range(a, n), cancelled)
            if progress is not None:
                progress(min(1.0, (a + REMOTE_BLOCK - start) / max(1, stop - start)) / 2)
        return buf
    except (ValuesUnavailable, Cancelled):
        raise
    except CkptError as e:
        raise ValuesUnavailable(where, e.message) from None
    finally:
        src.close()


def element_type(where: str, tensor: TensorInfo, big: bool) -> tuple[Any, str, str]:
    """(numpy dtype of one element or complex component, kind f/i/c, note)."""
    import numpy as np

    name, layout = tensor.dtype, tensor.layout
    if layout not in ("strided", "storage", "quantized"):
        what = "shape and dtype only" if layout == "meta" else "its values in separate tensors"
        raise ValuesUnavailable(where, f"a {layout} tensor has no values to read ({what})")
    if layout == "quantized":
        if name not in _QUANTIZED:
            raise ValuesUnavailable(where, f"{name} quantized values are packed: not supported")
        note = "integer representation: scale and zero point not applied"
        return np.dtype(_QUANTIZED[name]).newbyteorder(">" if big else "<"), "i", note
    if name in _NUMPY.split() or name in _COMPLEX:
        dt = np.dtype(_COMPLEX.get(name, name)).newbyteorder(">" if big else "<")
        kind = "c" if name in _COMPLEX else "f" if dt.kind == "f" else "i"
        note = "min/max/mean/std/histogram are of the magnitude |z|" if kind == "c" else ""
        return dt, kind, note
    if name in _ML_DTYPES.split() and not (big and name == "bfloat16"):
        import ml_dtypes

        if hasattr(ml_dtypes, name):
            return np.dtype(getattr(ml_dtypes, name)), "f", ""
    raise ValuesUnavailable(where, f"reading {name} values is not supported")


def strided_view(buf: mmap.mmap, start: int, dtype: Any, kind: str, tensor: TensorInfo) -> Any:
    """The tensor's view over `buf` (a trailing (re, im) axis for complex); bounds checked."""
    import numpy as np

    # An empty view (a zero-size dimension) reaches nothing, wherever its offset points.
    count = max(0, tensor.span_elements() - tensor.storage_offset)
    parts = 2 if kind == "c" else 1
    isz = dtype.itemsize * parts
    # as_strided cannot carry ml_dtypes types: stride over same-size uints, then reinterpret
    base = np.frombuffer(buf, f"u{dtype.itemsize}", count=count * parts, offset=start)
    shape, strides = tensor.shape, tuple(s * isz for s in tensor.stride)
    if parts == 2:
        shape, strides = (*shape, 2), (*strides, dtype.itemsize)
    return np.lib.stride_tricks.as_strided(base, shape, strides, writeable=False).view(dtype)


def chunks_of(view: Any, ndim: int, chunk: int) -> Iterator[Any]:
    """Blocks of `view` in row-major order, split over its first `ndim` axes, <= chunk each."""
    import numpy as np

    if ndim == 0:
        view, ndim = view[None], 1
    shape, k, inner = view.shape[:ndim], ndim, 1
    if 0 in shape:  # no elements (a zero-size dimension anywhere): no blocks
        return
    while k > 1 and inner * shape[k - 1] <= chunk:  # axes k.. fit whole in a block
        k -= 1
        inner *= shape[k]
    step = max(1, chunk // inner)  # indices of axis k-1 per block; axes before it one by one
    for idx in np.ndindex(*shape[: k - 1]):
        sub = view[idx]
        for a in range(0, shape[k - 1], step):
            yield sub[a : a + step]


class _Acc:
    """Pass-one accumulators; chunk means and M2 are merged (Chan et al.) in float64, integer
    sums kept exact (`isum`): float64 would drop the low bits of int64 extremes."""

    def __init__(self, kind: str) -> None:
        self.kind, self.head = kind, cast("tuple[Any, ...]", ())
        self.lo = self.hi = cast(Any, None)  # int or float once a value is seen
        self.n = self.isum = self.nan = self.posinf = self.neginf = self.zeros = 0
        self.mean = self.m2 = 0.0

    def add(self, np: Any, x: Any, raw: Any) -> None:
        """Take one chunk: `x` its values as a fresh float64 array, `raw` its flat elements."""
        if len(self.head) < HEAD:
            head = raw[: HEAD - len(self.head)]
            if self.kind == "c":
                self.head += tuple(complex(a, b) for a, b in head.astype(np.float64).tolist())
            else:
                self.head += tuple((head.astype(np.float64) if self.kind == "f" else head).tolist())
        if self.kind != "i" and not (finite := np.isfinite(x)).all():
            self.nan += int(np.count_nonzero(np.isnan(x)))
            self.posinf += int(np.count_nonzero(x == math.inf))
            self.neginf += int(np.count_nonzero(x == -math.inf))
            x = x[finite]
        if not len(x):
            return
        self.zeros += int(np.count_nonzero(x == 0))
        if self.kind == "i":  # exact min, max and sum from the native integers
            lo, hi = int(raw.min()), int(raw.max())
            wide = np.int64 if raw.dtype.kind == "i" else np.uint64
            if raw.dtype.itemsize < 8:
                self.isum += int(raw.sum(dtype=wide))
            else:  # 32-bit halves: no overflow for chunks below 2**31 elements
                high, low = (raw >> 32).sum(dtype=wide), (raw & 0xFFFFFFFF).sum(dtype=wide)
                self.isum += (int(high) << 32) + int(low)
        else:
            lo, hi = float(x.min()), float(x.max())
        self.lo = lo if self.lo is None else min(self.lo, lo)
        self.hi = hi if self.hi is None else max(self.hi, hi)
        n, mean = len(x), float(x.mean())
        x -= mean  # a fresh copy: centre it in place
        total, delta = self.n + n, mean - self.mean
        self.mean += delta * n / total
        self.m2 += float(np.dot(x, x)) + delta * delta * self.n * n / total
        self.n = total

    def stats(self, tensor: TensorInfo, note: str, hist: list[int]) -> TensorStats:
        n = self.n
        mean = (self.isum / n if self.kind == "i" else self.mean) if n else None
        return TensorStats(
            tensor.numel, self.lo, self.hi, mean, math.sqrt(max(self.m2, 0.0) / n) if n else None,
            self.nan, self.posinf, self.neginf, self.zeros, self.head, tuple(hist),
            (float(self.lo), float(self.hi)) if n else None, tensor.dtype, note,
        )  # fmt: skip


def _compute(
    view: Any,
    tensor: TensorInfo,
    kind: str,
    note: str,
    chunk: int,
    cancelled: Callable[[], bool] | None,
    progress: Callable[[float], None] | None,
) -> TensorStats:
    """Pass one: counts, min/max, mean/std, head; pass two: histogram over [min, max]."""
    import numpy as np

    ndim, total, done = len(tensor.shape), 2 * tensor.numel, 0
    acc = _Acc(kind)

    def blocks() -> Iterator[tuple[Any, Any]]:
        nonlocal done
        for block in chunks_of(view, ndim, min(max(1, chunk), 1 << 28)):
            if cancelled is not None and cancelled():
                raise Cancelled("cancelled")
            if kind == "c":
                raw = block.reshape(-1, 2)
                yield np.hypot(raw[:, 0], raw[:, 1], dtype=np.float64), raw
            else:
                raw = block.reshape(-1)
                yield raw.astype(np.float64), raw
            done += len(raw)
            if progress is not None:
                progress(done / total)

    for x, raw in blocks():
        acc.add(np, x, raw)
        del x, raw  # free this chunk before the next is made
    hist = np.zeros(BINS, np.int64)
    if acc.n and acc.lo == acc.hi:
        hist[BINS // 2] = acc.n
    elif acc.n:
        lo, hi = float(acc.lo), float(acc.hi)
        scale = 1.0 if math.isfinite(hi - lo) else 0.5  # keep hi - lo from overflowing
        for x, _ in blocks():
            if kind != "i" and not (finite := np.isfinite(x)).all():
                x = x[finite]
            if scale != 1.0:
                x *= scale
            hist += np.histogram(x, BINS, range=(lo * scale, hi * scale))[0]
            del x
    if progress is not None:
        progress(1.0)
    return acc.stats(tensor, note, hist.tolist())
