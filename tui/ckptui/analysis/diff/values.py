"""Provides `iter_values`: the streamed value comparison behind `ckptui diff --values`.

Values are streamed from the memory-mapped files in bounded chunks
(`export.source.SourceBytes`): identical bytes count as equal at once; otherwise both sides are
cast to float64 (integer and bool pairs are compared exactly). NaN facing NaN and equal
infinities count as equal; a NaN facing a number makes `max_abs` NaN, inf facing a finite
value makes it inf (JSON writes them as the strings "nan" and "inf"). numpy is imported only
when values are compared; torch and Textual never. Which tensors are paired, and how the
results count, is `diff.diff_checkpoints`'s business.

Beside max |a - b| comes the relative difference `max_rel` = max |a - b| / max |a|, so that
`0.01` says whether it is noise on weights of 100 or a change of weights of 0.01. Where A is
all zeros (max |a| = 0, a fresh bias) the scale is max |b| instead; where both are all zeros
the values are equal and `max_rel` is 0. max |a| ignores NaN; a NaN difference makes `max_rel`
NaN too.
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

__all__ = ["PIECE", "Progress", "ValueResult", "iter_values", "relative"]


PIECE = 1 << 20
"""Elements cast to float64 at a time when two chunks differ (bounds the working memory)."""

ValueResult = tuple[KeyPath, float | None, str | None, float | None]
"""(path, max |a - b|, None, max_rel) for a compared tensor, (path, None, why, None) for one
that could not be (`max_rel`: the module docstring)."""


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
            yield p, None, why, None
    total = sum(ta.nbytes + tb.nbytes for _, ta, tb in readable)
    done = 0
    if progress:
        progress(0, total)
    with _reading(a) as ra, _reading(b) as rb:
        for p, ta, tb in readable:
            complex_ = ta.dtype.startswith("complex")
            worst = scale_a = scale_b = 0.0
            skipped = False
            for xa, xb in _aligned(_elements(a, ra, p, ta), _elements(b, rb, p, tb)):
                if cancelled and cancelled():
                    raise Cancelled("cancelled")
                m, sa, sb = _max_abs(xa, xb, complex_)
                worst = _worse(worst, m)
                if sa is None or sb is None:
                    skipped = True
                else:
                    scale_a, scale_b = max(scale_a, sa), max(scale_b, sb)
                done += xa.nbytes + xb.nbytes
                if progress:
                    progress(done, total)
            if skipped and worst != 0 and not math.isnan(worst):
                # identical pieces were passed over unmeasured: their max |a| counts too
                scale_a = _scale(a, ra, p, ta, complex_)
                scale_b = scale_b if scale_a else _scale(b, rb, p, tb, complex_)
            yield p, worst, None, relative(worst, scale_a, scale_b)
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


def relative(max_abs: float, scale_a: float, scale_b: float) -> float:
    """max |a - b| relative to max |a| (to max |b| where A is all zeros; 0 where both are)."""
    if math.isnan(max_abs):
        return math.nan
    if max_abs == 0:
        return 0.0
    scale = scale_a or scale_b
    if scale == 0:  # unreachable with real values: all zeros on both sides differ by 0
        return math.inf
    return max_abs / scale  # inf / inf is nan: an infinite change of infinite values


def _scale(ckpt: Checkpoint, src: Any, path: KeyPath, t: TensorInfo, complex_: bool) -> float:
    """max |x| over a whole tensor, read again."""
    import numpy as np

    return max((_abs_max(np, x, complex_) for x in _elements(ckpt, src, path, t)), default=0.0)


def _max_abs(x: Any, y: Any, complex_: bool) -> tuple[float, float | None, float | None]:
    """(max |x - y|, max |x|, max |y|) of two equal-length pieces, by the module's NaN rules;
    identical bytes are not measured (None, None): most tensors compared are equal, and their
    scale is never needed."""
    import numpy as np

    if x.dtype == y.dtype:
        u = f"u{x.dtype.itemsize}" if x.dtype.itemsize in (1, 2, 4, 8) else None
        if u and np.array_equal(x.view(u), y.view(u)):
            return 0.0, None, None
    if not complex_ and x.dtype.kind in "iub" and y.dtype.kind in "iub":
        return _int_max_abs(np, x, y), _abs_max(np, x, False), _abs_max(np, y, False)
    worst = scale_x = scale_y = 0.0
    for s in range(0, len(x), PIECE):
        a, b = x[s : s + PIECE].astype(np.float64), y[s : s + PIECE].astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(a - b)
        diff[(a == b) | (np.isnan(a) & np.isnan(b))] = 0.0
        if complex_:
            diff = np.hypot(diff[0::2], diff[1::2])
        if len(diff):
            worst = _worse(worst, float(diff.max()))
            scale_x = max(scale_x, _abs_max(np, a, complex_))
            scale_y = max(scale_y, _abs_max(np, b, complex_))
    return worst, scale_x, scale_y


def _abs_max(np: Any, x: Any, complex_: bool) -> float:
    """max |x| of a piece, NaN ignored (0 for an empty or all-NaN piece); complex: of |z|."""
    if not len(x):
        return 0.0
    if x.dtype.kind in "iub":  # min and max in the integers: abs(-128) overflows int8
        return float(max(abs(int(x.min())), abs(int(x.max()))))
    if complex_:
        x = np.hypot(x[0::2].astype(np.float64), x[1::2].astype(np.float64))
    with np.errstate(invalid="ignore"):
        lo, hi = np.fmin.reduce(x), np.fmax.reduce(x)  # fmin/fmax skip NaN, warn never
    m = max(abs(float(lo)), abs(float(hi)))
    return 0.0 if math.isnan(m) else m


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
