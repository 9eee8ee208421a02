"""Provides `diff_checkpoints`: what differs between two checkpoints, as `load_state_dict` sees it.

What is compared: each file's weights are detected (`roles.weights_path`). When both lie at
the same place (two bare state dicts, two training checkpoints keeping them under `model`), the
whole trees are compared path for path, optimizer state included; otherwise (a training
checkpoint against a bare state dict, `model` against Lightning's `state_dict`) only the two
weights subtrees are, with paths relative to them. `compare="whole"|"weights"` forces either.
A state-dict key is one tree key (`("model", "layer1.0.conv1.weight")`); a whole-module
pickle's tensors are keyed by the name `state_dict()` would give them.

Prefixes: when the weights' keys of one side all start with `module.`/`_orig_mod.` (DDP,
`torch.compile`) and the other side's do not start with the same, each side's prefix is
stripped before comparing and reported; when both share it, nothing is stripped.

Values (`values=True`) are streamed from the memory-mapped files in bounded chunks
(`export.source.SourceBytes`): identical bytes count as equal at once; otherwise both sides are
cast to float64 (integer and bool pairs are compared exactly). NaN facing NaN and equal
infinities count as equal; a NaN facing a number makes `max_abs` NaN, inf facing a finite
value makes it inf (JSON writes them as the strings "nan" and "inf"). Every compared tensor
is listed with its `max_abs`; a tensor counts as equal only when it is 0. numpy is imported
only when values are compared, rich only to render; torch and Textual never.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .errors import CkptError
from .export.plan import _common_prefix, _tensors, _unexportable
from .facts import path_text
from .jsonview import json_number
from .model import Checkpoint, NodeKind, Path, TensorInfo, walk
from .roles import weights_path
from .units import shape as show_shape
from .values import Cancelled, ValuesUnavailable

__all__ = ["Diff", "ValueResult", "diff_checkpoints", "diff_json", "iter_values", "render_diff"]

Progress = Callable[[int, int], None]
"""Called with (tensor bytes read so far, bytes to read in all), both files together."""

PIECE = 1 << 20
"""Elements cast to float64 at a time when two chunks differ (bounds the working memory)."""


@dataclass
class Diff:
    """The differences between checkpoints A and B (paths after prefix normalisation)."""

    a: str
    b: str
    mode: str
    """`whole` (whole trees compared) or `weights` (the detected weights subtrees)."""
    a_root: Path
    """The subtree of A that was compared (`()` is the whole file); paths are relative to it."""
    b_root: Path
    prefix_a: str = ""
    """The prefix stripped from A's weights keys (`module.`), or ''."""
    prefix_b: str = ""
    only_a: list[Path] = field(default_factory=list)
    only_b: list[Path] = field(default_factory=list)
    shape_mismatch: list[tuple[Path, tuple[int, ...], tuple[int, ...]]] = field(
        default_factory=list
    )
    dtype_mismatch: list[tuple[Path, str, str]] = field(default_factory=list)
    """Listed whether or not the shapes match too."""
    value_diff: list[tuple[Path, float]] = field(default_factory=list)
    """Every tensor whose values were compared, with max |a - b| (0.0 when identical)."""
    not_compared: list[tuple[Path, str]] = field(default_factory=list)
    """Same-shaped tensors whose values could not be read, and why (only with values)."""
    other_diff: list[tuple[Path, str | None, str | None]] = field(default_factory=list)
    """Plain values outside the weights (epoch, lr) that differ or are on one side only (whole
    mode only); informative, not counted in `differs`."""
    equal: int = 0
    """Tensors on both sides with the same shape and dtype (and, with values, max_abs 0)."""
    values: bool = False
    """True when values were compared."""
    formats: tuple[str, str] = ("", "")
    tensors_a: dict[Path, TensorInfo] = field(default_factory=dict, repr=False)
    """Every compared tensor of A by its normalised path: what a merged tree shows."""
    tensors_b: dict[Path, TensorInfo] = field(default_factory=dict, repr=False)
    origin_a: dict[Path, Path] = field(default_factory=dict, repr=False)
    """Each normalised tensor path of A -> where that tensor lies in A's own tree."""
    origin_b: dict[Path, Path] = field(default_factory=dict, repr=False)
    plain_a: dict[Path, str] = field(default_factory=dict, repr=False)
    """Plain values outside the weights (whole mode), as short text, by path."""
    plain_b: dict[Path, str] = field(default_factory=dict, repr=False)

    def comparable(self) -> list[tuple[Path, TensorInfo, TensorInfo]]:
        """(path, A's tensor, B's tensor) for every tensor on both sides with the same shape:
        those whose values can be compared, in A's order."""
        out = []
        for p, ta in self.tensors_a.items():
            tb = self.tensors_b.get(p)
            if tb is not None and ta.shape == tb.shape:
                out.append((p, ta, tb))
        return out

    @property
    def changed_values(self) -> list[tuple[Path, float]]:
        """`value_diff` entries that are not 0."""
        return [(p, m) for p, m in self.value_diff if m != 0]

    @property
    def differs(self) -> bool:
        """True when anything tensor-related differs (or could not be compared)."""
        return bool(
            self.only_a
            or self.only_b
            or self.shape_mismatch
            or self.dtype_mismatch
            or self.changed_values
            or self.not_compared
        )


ValueResult = tuple[Path, float | None, str | None]
"""(path, max |a - b|, None) for a compared tensor, (path, None, why) for one that could not be."""


@dataclass
class _Side:
    root: Path
    prefix: str
    tensors: dict[Path, TensorInfo]
    plain: dict[Path, str]
    origin: dict[Path, Path]


def diff_checkpoints(
    a: Checkpoint,
    b: Checkpoint,
    *,
    compare: str = "auto",
    strip_prefix: bool = True,
    values: bool = False,
    progress: Progress | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Diff:
    """Compare two opened checkpoints.

    Args:
        compare: `auto` (the rule in the module docstring), `whole` or `weights`.
        strip_prefix: normalise `module.`/`_orig_mod.` prefix differences.
        values: also compare tensor values (reads tensor data; the rest reads none).
        progress: called while values are read. cancelled: polled between chunks.

    Returns:
        The differences; `Diff.differs` says whether the two differ.

    Raises:
        CkptError: unknown `compare`, or a file that cannot be read. Cancelled: on request.
    """
    if compare not in ("auto", "whole", "weights"):
        raise CkptError(a.path, f"unknown compare mode {compare!r} (auto, whole or weights)")
    wa, wb = weights_path(a), weights_path(b)
    mode = compare if compare != "auto" else ("whole" if wa == wb else "weights")
    sa, sb = _side(a, wa, mode), _side(b, wb, mode)
    if strip_prefix and sa.prefix != sb.prefix:
        _strip(sa, wa)
        _strip(sb, wb)
    else:
        sa.prefix = sb.prefix = ""
    d = Diff(a.path, b.path, mode, sa.root, sb.root, sa.prefix, sb.prefix, values=values)
    d.formats = (a.format, b.format)
    d.tensors_a, d.tensors_b, d.origin_a, d.origin_b = sa.tensors, sb.tensors, sa.origin, sb.origin
    d.plain_a, d.plain_b = sa.plain, sb.plain
    d.only_a = [p for p in sa.tensors if p not in sb.tensors]
    d.only_b = [p for p in sb.tensors if p not in sa.tensors]
    pairs: list[tuple[Path, TensorInfo, TensorInfo]] = []
    for p, ta in sa.tensors.items():
        tb = sb.tensors.get(p)
        if tb is None:
            continue
        if ta.shape != tb.shape:
            d.shape_mismatch.append((p, ta.shape, tb.shape))
        if ta.dtype != tb.dtype:
            d.dtype_mismatch.append((p, ta.dtype, tb.dtype))
        if ta.shape == tb.shape:
            pairs.append((p, ta, tb))
            d.equal += ta.dtype == tb.dtype
    for p in {**sa.plain, **sb.plain}:
        va, vb = sa.plain.get(p), sb.plain.get(p)
        if va != vb:
            d.other_diff.append((p, va, vb))
    if values:
        _compare_values(d, a, b, pairs, progress, cancelled)
    return d


def _side(ckpt: Checkpoint, weights: Path | None, mode: str) -> _Side:
    """The tensors (and, comparing whole trees, plain values outside the weights) of one side.

    A side without detected weights has all its tensors compared, whatever the mode.
    """
    root: Path = weights if mode == "weights" and weights is not None else ()
    tensors: dict[Path, TensorInfo] = {}
    origin: dict[Path, Path] = {}
    node = ckpt.find(weights) if weights is not None else None
    if weights is not None and node is not None:
        for path, t in _tensors(node, weights):
            key = (*weights, t.state_dict_key) if t.state_dict_key else path
            if key[len(root) :] not in tensors:
                tensors[key[len(root) :]] = t
                origin[key[len(root) :]] = path

    def outside(p: Path) -> bool:
        return weights is None or p[: len(weights)] != weights

    if mode == "whole" or weights is None:
        for path, t in ckpt.tensors():
            if outside(path) and path not in tensors:
                tensors[path] = t
                origin[path] = path
    plain: dict[Path, str] = {}
    if mode == "whole":
        for path, n in walk(ckpt.root):
            if n.kind is NodeKind.VALUE and outside(path) and path[:1] != ("__metadata__",):
                text = n.text if n.text is not None else repr(n.value)
                plain[path] = text if len(text) <= 60 else text[:59] + "…"
    at = len(weights) - len(root) if weights is not None else -1
    names = [str(p[at]) for p in tensors if 0 <= at < len(p) and _under(p, weights, root)]
    return _Side(root, _common_prefix(names) if names else "", tensors, plain, origin)


def _under(rel: Path, weights: Path | None, root: Path) -> bool:
    return weights is not None and (*root, *rel)[: len(weights)] == weights


def _strip(side: _Side, weights: Path | None) -> None:
    """Remove the side's prefix from the key just below its weights path."""
    if not side.prefix or weights is None:
        return
    at, n = len(weights) - len(side.root), len(side.prefix)
    out: dict[Path, TensorInfo] = {}
    origin: dict[Path, Path] = {}
    for p, t in side.tensors.items():
        was = side.origin[p]
        if _under(p, weights, side.root) and len(p) > at:
            p = (*p[:at], str(p[at])[n:], *p[at + 1 :])
        if p not in out:
            out[p], origin[p] = t, was
    side.tensors, side.origin = out, origin


def _compare_values(
    d: Diff,
    a: Checkpoint,
    b: Checkpoint,
    pairs: list[tuple[Path, TensorInfo, TensorInfo]],
    progress: Progress | None,
    cancelled: Callable[[], bool] | None,
) -> None:
    same_dtype = {p: ta.dtype == tb.dtype for p, ta, tb in pairs}
    for p, worst, why in iter_values(a, b, pairs, progress, cancelled):
        if why is not None:
            d.not_compared.append((p, why))
            d.equal -= same_dtype[p]
            continue
        assert worst is not None
        d.value_diff.append((p, worst))
        if worst != 0 and same_dtype[p]:
            d.equal -= 1


def iter_values(
    a: Checkpoint,
    b: Checkpoint,
    pairs: list[tuple[Path, TensorInfo, TensorInfo]],
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
    why = _unexportable(ckpt, t, "pth")
    if why is None:
        from .values import element_type

        try:
            element_type(ckpt.path, t, False)
        except ValuesUnavailable as e:
            why = e.message
    return f"{side}: {why}" if why else None


@contextmanager
def _reading(ckpt: Checkpoint) -> Iterator[Any]:
    """The file mapped for reading values; failing to open it is a one-line CkptError."""
    from .export.source import SourceBytes

    try:
        with SourceBytes(ckpt) as src:
            yield src
    except OSError as e:  # reads inside are wrapped by _elements: this is opening the file
        raise CkptError(ckpt.path, f"cannot read tensor data ({e.strerror or e})") from e


def _elements(ckpt: Checkpoint, src: Any, path: Path, t: TensorInfo) -> Iterator[Any]:
    """The tensor's elements (complex: interleaved components) as flat numpy arrays."""
    import numpy as np

    from .export.plan import Item
    from .values import element_type

    dtype, _, _ = element_type(ckpt.path, t, False)
    try:
        for chunk in src.chunks(Item(path_text(path), path, t, t.dtype, 0)):
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


def diff_json(d: Diff) -> dict[str, Any]:
    """The `ckptui diff --json` contract (issue 7), plus `mode`, roots and extras."""
    return {
        "a": d.a,
        "b": d.b,
        "prefix": {"a": d.prefix_a, "b": d.prefix_b},
        "only_a": [list(p) for p in d.only_a],
        "only_b": [list(p) for p in d.only_b],
        "shape_mismatch": [
            {"path": list(p), "a": list(sa), "b": list(sb)} for p, sa, sb in d.shape_mismatch
        ],
        "dtype_mismatch": [{"path": list(p), "a": x, "b": y} for p, x, y in d.dtype_mismatch],
        "value_diff": [{"path": list(p), "max_abs": json_number(m)} for p, m in d.value_diff],
        "equal": d.equal,
        "mode": d.mode,
        "a_root": list(d.a_root),
        "b_root": list(d.b_root),
        "values_compared": d.values,
        "not_compared": [{"path": list(p), "reason": r} for p, r in d.not_compared],
        "other_diff": [{"path": list(p), "a": x, "b": y} for p, x, y in d.other_diff],
    }


def _show(path: Path) -> str:
    return path_text(path) or "(root)"


def render_diff(d: Diff, console: Any = None, top: int = 20) -> None:
    """Print the comparison with rich: where, a summary line, then each kind of difference."""
    from rich.console import Console
    from rich.markup import escape
    from rich.padding import Padding
    from rich.table import Table

    console = console or Console(highlight=False)
    sides = (("A", d.a, d.formats[0], d.a_root), ("B", d.b, d.formats[1], d.b_root))
    for name, path, fmt, root in sides:
        where = "whole file" if d.mode == "whole" else f"weights: {path_text(root) or 'the root'}"
        console.print(f"[bold]{name}[/]  {escape(path)}  [dim]{escape(fmt)} · {where}[/]")
    if d.prefix_a or d.prefix_b:
        prefixes = (("A", d.prefix_a), ("B", d.prefix_b))
        has = ", ".join(f"{n}'s keys start with {p!r}" for n, p in prefixes if p)
        console.print(
            f"prefix: {escape(has)}; compared without it (strip it before load_state_dict, "
            "as ckptui export does)"
        )
    changed = d.changed_values
    counts = [
        (d.equal, "equal"),
        (len(d.only_a), "only in A"),
        (len(d.only_b), "only in B"),
        (len(d.shape_mismatch), "shape"),
        (len(d.dtype_mismatch), "dtype"),
    ]
    if d.values:
        counts += [(len(changed), "values differ"), (len(d.not_compared), "not compared")]
    verdict = "[bold red]differ[/]" if d.differs else "[bold green]match[/]"
    shown = " · ".join(f"{n:,} {what}" for n, what in counts if n or what == "equal")
    console.print(f"{verdict}: {shown}")
    if not d.values:
        console.print("[dim]values not compared (add --values)[/]")

    def section(
        title: str, rows: list[tuple[str, ...]], head: tuple[str, ...] = (), wrap: bool = False
    ) -> None:
        if not rows:
            return
        t = Table(box=None, show_header=bool(head), pad_edge=False)
        t.add_column(head[0] if head else "path", overflow="fold")
        for h in head[1:] or [""] * (len(rows[0]) - 1):
            t.add_column(h, no_wrap=not wrap, overflow="fold", justify="left" if wrap else "right")
        for row in rows[:top]:
            t.add_row(*map(escape, row))
        if len(rows) > top:
            t.add_row(f"[dim]… and {len(rows) - top:,} more[/]")
        console.print()
        console.print(f"[bold]{escape(title)}[/]")
        console.print(Padding(t, (0, 0, 0, 2)))

    section(f"Only in A ({len(d.only_a):,})", [(_show(p),) for p in d.only_a])
    section(f"Only in B ({len(d.only_b):,})", [(_show(p),) for p in d.only_b])
    rows = [(_show(p), show_shape(x), show_shape(y)) for p, x, y in d.shape_mismatch]
    section(f"Shape mismatch ({len(rows):,})", rows, ("path", "A", "B"))
    rows = [(_show(p), x, y) for p, x, y in d.dtype_mismatch]
    section(f"Dtype mismatch ({len(rows):,})", rows, ("path", "A", "B"))
    order = sorted(changed, key=lambda e: math.inf if math.isnan(e[1]) else e[1], reverse=True)
    rows = [(_show(p), f"{m:.4g}") for p, m in order]
    title = f"Value differences ({len(rows):,} of {len(d.value_diff):,} compared, largest first)"
    section(title, rows, ("path", "max |A-B|"))
    rows = [(_show(p), r) for p, r in d.not_compared]
    section(f"Values not compared ({len(rows):,})", rows, ("path", "why"), wrap=True)
    rows = [(_show(p), x or "-", y or "-") for p, x, y in d.other_diff]
    title = "Other values (not tensors; not counted in the result)"
    section(title, rows, ("path", "A", "B"), wrap=True)
