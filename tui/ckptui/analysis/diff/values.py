"""Provides `iter_values`: the streamed value comparison behind `ckptui diff --values`.

Values are streamed from the memory-mapped files in bounded chunks
(`export.source.SourceBytes`): identical bytes count as equal at once; otherwise both sides are
cast to float64 (integer and bool pairs are compared exactly). NaN facing NaN and equal
infinities count as equal; a NaN facing a number makes `max_abs` NaN, inf facing a finite
value makes it inf (JSON writes them as the strings "nan" and "inf"). numpy is imported only
when values are compared; torch and Textual never. Which tensors are paired, and how the
results count, is `diff.diff_checkpoints`'s business.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ckptui.analysis.state_dict import unexportable
from ckptui.core.cancel import Cancelled
from ckptui.core.errors import CkptError
from ckptui.core.keypath import path_text
from ckptui.core.progress import Progress
from ckptui.core.tree import Checkpoint, KeyPath, TensorInfo
from ckptui.tensors.reader import Piece, SourceBytes
from ckptui.tensors.values import ValuesUnavailable, element_type

__all__ = ["PIECE", "Progress", "ValueResult", "iter_values"]


PIECE = 1 << 20
"""Elements cast to float64 at a time when two chunks differ (bounds the working memory)."""

ValueResult = tuple[KeyPath, float | None, str | None]
"""(path, max |a - b|, None) for a compared tensor, (path, None, why) for one that could not be."""


def iter_values(
    a: Checkpoint,
    b: Checkpoint,
    pairs: list[tuple[KeyPath, TensorInfo, TensorInfo]],
    progress: Progress | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Iterator[ValueResult]:
    """Compare the values of same-shaped pairs (`Diff.comparable()`), one result per tensor as
    soon as it is known: first the pairs that cannot be read (with why), then the others.

    Args:
        progress: called with (bytes read, bytes to read) after every chunk.
        cancelled: polled before every chunk.

    Raises:
        CkptError: a file that cannot be read. Cancelled: on request.
    """
    readable = []
    for p, ta, tb in pairs:
        why = _unreadable("A", a, ta) or _unreadable("B", b, tb)
        if why is None and (ta.dtype.startswith("complex") != tb.dtype.startswith("complex")):
            why = "complex against real values"
        if why is None:
            readable.append((p, ta, tb))
        else:
            yield p, None, why
    total = sum(ta.nbytes + tb.nbytes for _, ta, tb in readable)
    done = 0
    if progress:
        progress(0, total)
    with _reading(a) as ra, _reading(b) as rb:
        for p, ta, tb in readable:
            worst = 0.0
            for xa, xb in _aligned(_elements(a, ra, p, ta), _elements(b, rb, p, tb)):
                if cancelled and cancelled():
                    raise Cancelled("cancelled")
                worst = _worse(worst, _max_abs(xa, xb, ta.dtype.startswith("complex")))
                done += xa.nbytes + xb.nbytes
                if progress:
                    progress(done, total)
            yield p, worst, None
    if progress:
        progress(total, total)


def _unreadable(side: str, ckpt: Checkpoint, t: TensorInfo) -> str | None:
    why = unexportable(ckpt, t, "pth")
    if why is None:
        try:
            element_type(ckpt.path, t, False)
        except ValuesUnavailable as e:
            why = e.message
    return f"{side}: {why}" if why else None


@contextmanager
def _reading(ckpt: Checkpoint) -> Iterator[Any]:
    """The file mapped for reading values; failing to open it is a one-line CkptError."""
    try:
        with SourceBytes(ckpt) as src:
            yield src
    except OSError as e:  # reads inside are wrapped by _elements: this is opening the file
        raise CkptError(ckpt.path, f"cannot read tensor data ({e.strerror or e})") from e


def _elements(ckpt: Checkpoint, src: Any, path: KeyPath, t: TensorInfo) -> Iterator[Any]:
    """The tensor's elements (complex: interleaved components) as flat numpy arrays."""
    import numpy as np

    dtype, _, _ = element_type(ckpt.path, t, False)
    try:
        for chunk in src.chunks(Piece(path_text(path), t, t.dtype)):
            yield np.frombuffer(chunk, dtype)
    except OSError as e:
        raise CkptError(ckpt.path, f"cannot read tensor data ({e.strerror or e})") from e


def _aligned(xs: Iterator[Any], ys: Iterator[Any]) -> Iterator[tuple[Any, Any]]:
    """Pairs of equal-length pieces of two element streams of the same total length."""
    x = y = None
    while True:
        if x is None or not len(x):
            x = next(xs, None)
        if y is None or not len(y):
            y = next(ys, None)
        if x is None or y is None:
            return
        n = min(len(x), len(y))
        yield x[:n], y[:n]
        x, y = x[n:], y[n:]


def _max_abs(x: Any, y: Any, complex_: bool) -> float:
    """max |x - y| of two equal-length pieces, by the module's NaN rules."""
    import numpy as np

    if x.dtype == y.dtype:
        u = f"u{x.dtype.itemsize}" if x.dtype.itemsize in (1, 2, 4, 8) else None
        if u and np.array_equal(x.view(u), y.view(u)):
            return 0.0
    if not complex_ and x.dtype.kind in "iub" and y.dtype.kind in "iub":
        return _int_max_abs(np, x, y)
    worst = 0.0
    for s in range(0, len(x), PIECE):
        a, b = x[s : s + PIECE].astype(np.float64), y[s : s + PIECE].astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(a - b)
        diff[(a == b) | (np.isnan(a) & np.isnan(b))] = 0.0
        if complex_:
            diff = np.hypot(diff[0::2], diff[1::2])
        if len(diff):
            worst = _worse(worst, float(diff.max()))
    return worst


def _int_max_abs(np: Any, x: Any, y: Any) -> float:
    """Exact for integers and bools: 64-bit values are subtracted without overflow."""
    wide = np.int64 if all(np.can_cast(v.dtype, np.int64) for v in (x, y)) else None
    if wide is None and x.dtype == y.dtype == np.uint64:
        wide = np.uint64
    if wide is None:  # int64 against uint64: rare, exact in Python ints
        return float(
            max(
                (abs(int(p) - int(q)) for p, q in zip(x.tolist(), y.tolist(), strict=True)),
                default=0,
            )
        )
    a, b = x.astype(wide), y.astype(wide)
    ne = a != b
    if not ne.any():
        return 0.0
    a, b = a[ne], b[ne]
    hi, lo = np.maximum(a, b), np.minimum(a, b)
    # hi - lo < 2**64 always: in uint64 the wrapped subtraction is exact.
    return float(int((hi.view(np.uint64) - lo.view(np.uint64)).max()))


def _worse(m: float, n: float) -> float:
    """The larger difference; NaN (a NaN facing a number) wins over everything."""
    if math.isnan(m) or math.isnan(n):
        return math.nan
    return max(m, n)
