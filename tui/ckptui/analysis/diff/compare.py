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

Values (`values=True`) are compared by `diff_values.iter_values` (streamed, bounded memory; its
docstring has the NaN and inf rules). Every compared tensor is listed with its `max_abs` (and
its relative difference in `value_rel`); a tensor counts as equal only when it is 0.
`diff_render` turns a `Diff` into JSON or text. This module reads no tensor data itself and
imports neither numpy, rich, torch nor Textual.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ckptui.analysis.diff.values import iter_values
from ckptui.analysis.roles import weights_path
from ckptui.analysis.state_dict import common_prefix, tensors_of
from ckptui.core.errors import CkptError
from ckptui.core.progress import Progress
from ckptui.core.tree import Checkpoint, KeyPath, Node, NodeKind, TensorInfo, walk

__all__ = ["Diff", "diff_checkpoints"]


@dataclass
class Diff:
    """The differences between checkpoints A and B (paths after prefix normalisation)."""

    a: str
    b: str
    mode: str
    """`whole` (whole trees compared) or `weights` (the detected weights subtrees)."""
    a_root: KeyPath
    """The subtree of A that was compared (`()` is the whole file); paths are relative to it."""
    b_root: KeyPath
    prefix_a: str = ""
    """The prefix stripped from A's weights keys (`module.`), or ''."""
    prefix_b: str = ""
    only_a: list[KeyPath] = field(default_factory=list)
    only_b: list[KeyPath] = field(default_factory=list)
    shape_mismatch: list[tuple[KeyPath, tuple[int, ...], tuple[int, ...]]] = field(
        default_factory=list
    )
    dtype_mismatch: list[tuple[KeyPath, str, str]] = field(default_factory=list)
    """Listed whether or not the shapes match too."""
    value_diff: list[tuple[KeyPath, float]] = field(default_factory=list)
    """Every tensor whose values were compared, with max |a - b| (0.0 when identical)."""
    value_rel: dict[KeyPath, float] = field(default_factory=dict)
    """The same tensors' relative difference, max |a - b| / max |a| (`diff.values.relative`:
    max |b| where A is all zeros)."""
    not_compared: list[tuple[KeyPath, str]] = field(default_factory=list)
    """Same-shaped tensors whose values could not be read, and why (only with values)."""
    other_diff: list[tuple[KeyPath, str | None, str | None]] = field(default_factory=list)
    """Plain values outside the weights (epoch, lr) that differ or are on one side only (whole
    mode only); informative, not counted in `differs`."""
    equal: int = 0
    """Tensors on both sides with the same shape and dtype (and, with values, max_abs 0)."""
    values: bool = False
    """True when values were compared."""
    formats: tuple[str, str] = ("", "")
    tensors_a: dict[KeyPath, TensorInfo] = field(default_factory=dict, repr=False)
    """Every compared tensor of A by its normalised path: what a merged tree shows."""
    tensors_b: dict[KeyPath, TensorInfo] = field(default_factory=dict, repr=False)
    origin_a: dict[KeyPath, KeyPath] = field(default_factory=dict, repr=False)
    """Each normalised tensor path of A -> where that tensor lies in A's own tree."""
    origin_b: dict[KeyPath, KeyPath] = field(default_factory=dict, repr=False)
    plain_a: dict[KeyPath, str] = field(default_factory=dict, repr=False)
    """Plain values outside the weights (whole mode), as short text, by path."""
    plain_b: dict[KeyPath, str] = field(default_factory=dict, repr=False)

    def comparable(self) -> list[tuple[KeyPath, TensorInfo, TensorInfo]]:
        """(path, A's tensor, B's tensor) for every tensor on both sides with the same shape:
        those whose values can be compared, in A's order."""
        out = []
        for p, ta in self.tensors_a.items():
            tb = self.tensors_b.get(p)
            if tb is not None and ta.shape == tb.shape:
                out.append((p, ta, tb))
        return out

    @property
    def changed_values(self) -> list[tuple[KeyPath, float]]:
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


@dataclass
class _Side:
    root: KeyPath
    prefix: str
    tensors: dict[KeyPath, TensorInfo]
    plain: dict[KeyPath, str]
    origin: dict[KeyPath, KeyPath]


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
    pairs: list[tuple[KeyPath, TensorInfo, TensorInfo]] = []
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


def _side(ckpt: Checkpoint, weights: KeyPath | None, mode: str) -> _Side:
    """The tensors (and, comparing whole trees, plain values outside the weights) of one side.

    A side without detected weights has all its tensors compared, whatever the mode.
    """
    root: KeyPath = weights if mode == "weights" and weights is not None else ()
    tensors: dict[KeyPath, TensorInfo] = {}
    origin: dict[KeyPath, KeyPath] = {}
    node = ckpt.find(weights) if weights is not None else None
    if weights is not None and node is not None:
        for path, t in tensors_of(node, weights):
            key = (*weights, t.state_dict_key) if t.state_dict_key else path
            if key[len(root) :] not in tensors:
                tensors[key[len(root) :]] = t
                origin[key[len(root) :]] = path

    def outside(p: KeyPath) -> bool:
        return weights is None or p[: len(weights)] != weights

    if mode == "whole" or weights is None:
        for path, t in ckpt.tensors():
            if outside(path) and path not in tensors:
                tensors[path] = t
                origin[path] = path
    plain: dict[KeyPath, str] = {}
    if mode == "whole":
        for path, n in walk(ckpt.root):
            if n.kind is NodeKind.VALUE and outside(path) and path[:1] != ("__metadata__",):
                text = n.text if n.text is not None else repr(n.value)
                plain[path] = text if len(text) <= 60 else text[:59] + "…"
    at = len(weights) - len(root) if weights is not None else -1
    names = [str(p[at]) for p in tensors if 0 <= at < len(p) and _under(p, weights, root)]
    return _Side(root, common_prefix(names) if names else "", tensors, plain, origin)


def _under(rel: KeyPath, weights: KeyPath | None, root: KeyPath) -> bool:
    return weights is not None and (*root, *rel)[: len(weights)] == weights


def _strip(side: _Side, weights: KeyPath | None) -> None:
    """Remove the side's prefix from the key just below its weights path."""
    if not side.prefix or weights is None:
        return
    at, n = len(weights) - len(side.root), len(side.prefix)
    out: dict[KeyPath, TensorInfo] = {}
    origin: dict[KeyPath, KeyPath] = {}
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
    pairs: list[tuple[KeyPath, TensorInfo, TensorInfo]],
    progress: Progress | None,
    cancelled: Callable[[], bool] | None,
) -> None:
    same_dtype = {p: ta.dtype == tb.dtype for p, ta, tb in pairs}
    dense = []
    for p, ta, tb in pairs:
        parts = _parts(a, b, d.origin_a.get(p), d.origin_b.get(p), ta, tb)
        if parts is None:
            dense.append((p, ta, tb))
            continue
        # A sparse/nested/quantized/wrapper tensor: its parts are plain tensors. The same
        # parts are the same tensor; parts that differ say it differs, not by how much.
        results = list(iter_values(a, b, parts, None, cancelled))
        why = next((f"{sub[-1]}: {w}" for sub, _, w, _ in results if w is not None), None)
        worst = max((m for _, m, _, _ in results if m is not None), default=0.0, key=_order)
        if why is None and worst == 0:
            d.value_diff.append((p, 0.0))
            d.value_rel[p] = 0.0
            continue
        d.not_compared.append(
            (p, why or f"a {ta.layout} tensor whose parts differ; its values are not compared")
        )
        d.equal -= same_dtype[p]
    for p, worst, why, rel in iter_values(a, b, dense, progress, cancelled):
        if why is not None:
            d.not_compared.append((p, why))
            d.equal -= same_dtype[p]
            continue
        assert worst is not None and rel is not None
        d.value_diff.append((p, worst))
        d.value_rel[p] = rel
        if worst != 0 and same_dtype[p]:
            d.equal -= 1


def _order(m: float) -> float:
    return math.inf if math.isnan(m) else m


def _parts(
    a: Checkpoint,
    b: Checkpoint,
    pa: KeyPath | None,
    pb: KeyPath | None,
    ta: TensorInfo,
    tb: TensorInfo,
) -> list[tuple[KeyPath, TensorInfo, TensorInfo]] | None:
    """Pairs of the dense tensors inside a non-dense pair (a sparse tensor's indices and
    values, a quantized one's scales), matched by path; None for a dense pair, or when the
    two are not made of the same parts."""
    if "strided" in (ta.layout, tb.layout) or pa is None or pb is None:
        return None
    na, nb = a.find(pa), b.find(pb)
    if na is None or nb is None or not na.children:
        return None

    def dense_below(node: Node) -> dict[KeyPath, TensorInfo]:
        out = {
            rel: n.value
            for rel, n in walk(node)
            if n.kind is NodeKind.TENSOR and n.value.layout == "strided"
        }
        t = node.value
        if t.storage_key is not None and t.dtype in _QUANTIZED:  # its own integer bytes
            out[()] = replace(t, layout="strided", dtype=_QUANTIZED[t.dtype])
        return out

    def values_below(node: Node) -> dict[KeyPath, Any]:
        return {rel: (n.value, n.text) for rel, n in walk(node) if n.kind is NodeKind.VALUE}

    xa, xb = dense_below(na), dense_below(nb)
    if not xa or set(xa) != set(xb) or any(xa[k].shape != xb[k].shape for k in xa):
        return None
    if values_below(na) != values_below(nb):  # a scale or zero point differs
        return None
    return [((*pa, *k), xa[k], xb[k]) for k in xa]


_QUANTIZED = {"qint8": "int8", "quint8": "uint8", "qint32": "int32"}
"""A quantized tensor's storage holds plain integers of these dtypes."""
