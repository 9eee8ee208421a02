"""Provides `size_findings`: what in a checkpoint takes space needlessly, and what fixing it saves.

Each finding names the paths involved and the bytes the remedy would save: optimizer state and
other training-only groups (by role), views dragging a larger storage, float32/float64 weights
that bf16 would halve, data pickled inline, and whole pickled modules (a portability hazard,
listed with no saving). They are computed from a fresh `sizes.Breakdown` and what its walk
collected; `duplicates.find_duplicates` adds the one finding that reads tensor data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ckptui.analysis.roles import Role
from ckptui.core.keypath import describe_path
from ckptui.core.tree import Checkpoint, KeyPath, Node, TensorInfo
from ckptui.core.units import size

if TYPE_CHECKING:
    from ckptui.analysis.sizes.breakdown import Breakdown

FLOAT_HALVES = {"float32": 2, "float64": 4}
"""Bytes divided by this when cast to bf16/fp16."""

VIEW_WASTE_MIN = 64 << 10
"""Views dragging at least this many unused storage bytes are reported."""

INLINE_MIN = 64 << 10
"""Non-tensor values (numpy arrays, bytes) at least this large are reported."""

OVERHEAD_SHARE = 0.5
"""Format overhead (zip headers, padding, format records) above this share of the file is a
finding: a file of many tiny tensors is mostly framing."""

OVERHEAD_MIN = 1 << 20
"""...and only from this many bytes of it: any file of one small tensor is mostly framing."""

LONG_SEQUENCE = 10_000
"""Lists/tuples with at least this many items are reported."""

_PICKLED_ITEM = 9
"""Bytes a pickled float takes (BINFLOAT + 8); used to estimate a long list's size."""


@dataclass(frozen=True, slots=True)
class SizeFinding:
    """Something taking space, what dropping or fixing it would save, and how."""

    kind: str
    """`optimizer_state`, `weights_copy`, `view_waste`, `duplicate`, `float_weights`,
    `inline_data`, `whole_module`, `format_overhead`."""
    bytes: int
    saving_bytes: int
    paths: tuple[KeyPath, ...]
    message: str


def size_findings(
    ckpt: Checkpoint,
    b: Breakdown,
    optimizers: list,
    tensors: list[tuple[KeyPath, TensorInfo]],
    inline: list[tuple[KeyPath, Node]],
    long_seqs: list[tuple[KeyPath, Node]],
) -> list[SizeFinding]:
    """The findings of a fresh breakdown, unsorted (`Breakdown.add_findings` sorts them).

    Args:
        b: the breakdown, without findings yet. optimizers: `roles.find_optimizers`' result.
        tensors: every (path, tensor) in walk order. inline: values whose bytes are pickled
            inline. long_seqs: lists/tuples of at least `LONG_SEQUENCE` items.
    """
    found: list[SizeFinding] = []
    found += _role_findings(b, optimizers)
    found += _view_findings(ckpt, tensors, b.storage_bytes)
    found += _float_findings(b, tensors)
    found += _inline_findings(inline, long_seqs)
    found += _overhead_findings(b)
    found += [
        SizeFinding(
            "whole_module",
            0,
            0,
            (f.path,) if f.path is not None else (),
            f"{f.message.split(':')[0]}: torch.load needs that class's source code to open it; "
            "ship a state dict instead (a portability hazard, not a size one)",
        )
        for f in ckpt.findings
        if f.kind == "whole_module"
    ]
    return found


def _role_findings(b: Breakdown, optimizers: list) -> list[SizeFinding]:
    out: list[SizeFinding] = []
    weights = b.roles.get(Role.WEIGHTS, 0)
    opt_groups = [g for g in b.groups if g.role is Role.OPTIMIZER and g.bytes]
    if opt_groups:
        total = sum(g.bytes for g in opt_groups)
        kinds = sorted({o.kind for o in optimizers}) or ["optimizer"]
        keys = sorted({k for o in optimizers for k in o.state_keys if k != "step"})
        what = f" ({', '.join(keys)})" if keys else ""
        ratio = f", {total / weights:.1f}x the weights" if weights else ""
        out.append(
            SizeFinding(
                "optimizer_state",
                total,
                total,
                tuple(g.path for g in opt_groups),
                f"{' / '.join(kinds)} optimizer state{what}{ratio}: only needed to resume "
                "training; a weights-only export drops it",
            )
        )
    for role, kind, text in (
        (
            Role.WEIGHTS_COPY,
            "weights_copy",
            "{} is a copy of the weights (EMA, SWA, teacher...): keep only the one you ship",
        ),
        (Role.SCHEDULER, "scheduler", "scheduler state at {}: only needed to resume training"),
        (
            Role.OTHER_TENSORS,
            "other_tensors",
            "{} holds tensors outside the weights: a weights-only export drops them",
        ),
    ):
        out.extend(
            SizeFinding(kind, g.bytes, g.bytes, (g.path,), text.format(describe_path(g.path)))
            for g in b.groups
            if g.role is role and g.bytes >= 4096
        )
    return out


def _view_findings(
    ckpt: Checkpoint, tensors: list[tuple[KeyPath, TensorInfo]], storage_bytes: dict[str, int]
) -> list[SizeFinding]:
    """Storages whose views use much less than the storage holds.

    A view's use is the bytes of the elements it touches, not its span: `t.view(2000, 2000)[::2]`
    spans all of a 16 MB storage and touches half of it. The touched elements are listed as
    contiguous runs (`RUNS_MAX` per checkpoint at most); past that, a view counts as its
    compact size, which may count an overlap twice and so never overstates the waste.
    """
    runs: dict[str, list[tuple[int, int]]] = {}
    rough: dict[str, int] = {}
    viewers: list[tuple[str, KeyPath]] = []
    whole: set[str] = set()
    budget = RUNS_MAX
    for path, t in tensors:
        key = t.storage_key
        if key is None or t.layout != "strided":
            continue
        viewers.append((key, path))
        if (
            budget > 0
            and not t.storage_offset
            and t.is_contiguous
            and t.numel * t.itemsize >= storage_bytes.get(key, 0)
        ):
            # One run over the whole storage, so nothing of it is wasted whatever else views
            # it: `_runs` is not asked to list it, and its run is taken from the budget as
            # `_runs` would take it (100,000 such tensors: 13 s of listing and sorting runs).
            whole.add(key)
            budget -= 1 if t.numel else 0
            continue
        found = _runs(t, budget)
        if found is None:
            rough[key] = rough.get(key, 0) + t.nbytes
        else:
            budget -= len(found)
            runs.setdefault(key, []).extend(found)
    # each storage's viewers, in order, only for storages some view may waste: a list per
    # storage of a 100,000-tensor file, each of one path viewing all of it, cost 0.1 s
    paths: dict[str, list[KeyPath]] = {}
    for key, path in viewers:
        if key not in whole:
            paths.setdefault(key, []).append(path)
    out: list[SizeFinding] = []
    for key, ps in paths.items():
        have = storage_bytes.get(key, 0)
        if not have:
            continue
        covered = 0
        last = 0
        for s, e in sorted(runs.get(key, ())):
            s, e = max(s, last), min(e, have)
            if e > s:
                covered += e - s
                last = e
        covered = min(have, covered + rough.get(key, 0))
        waste = have - covered
        if waste >= VIEW_WASTE_MIN:
            out.append(
                SizeFinding(
                    "view_waste",
                    have,
                    waste,
                    tuple(ps),
                    f"{describe_path(ps[0])} views {size(covered)} of a {size(have)} storage: the "
                    "whole storage is saved; save a compact copy (.clone()) or export",
                )
            )
    return out


RUNS_MAX = 1 << 20
"""Contiguous runs listed for the view-waste finding, per checkpoint (a transposed 4M-element
view is 4M runs of one element; past this a view counts as its compact size)."""


def _runs(t: TensorInfo, budget: int) -> list[tuple[int, int]] | None:
    """The byte ranges of the storage that view `t` touches, as sorted contiguous runs; None
    when there would be more than `budget` of them (or a stride is negative)."""
    dims = [(d, st) for d, st in zip(t.shape, t.stride, strict=False) if d != 1 and st != 0]
    if any(d == 0 for d in t.shape):
        return []
    if any(st < 0 for _, st in dims):
        return None
    dims.sort(key=lambda x: x[1])  # innermost first: a permuted view touches what it touches
    run = 1  # elements per run: the inner dims that are contiguous
    while dims and dims[0][1] == run:
        run *= dims.pop(0)[0]
    count = 1
    for d, _ in dims:
        count *= d
    if count > budget:
        return None
    starts = [t.storage_offset]
    for d, st in dims:
        starts = [s + i * st for s in starts for i in range(d)]
    size_ = t.itemsize
    return sorted((s * size_, (s + run) * size_) for s in starts)


def _float_findings(b: Breakdown, tensors: list[tuple[KeyPath, TensorInfo]]) -> list[SizeFinding]:
    if b.weights_path is None:
        return []
    n = len(b.weights_path)
    by_dtype: dict[str, int] = {}
    counts: dict[str, int] = {}
    for path, t in tensors:
        if path[:n] == b.weights_path and t.layout == "quantized":
            return []  # its float tensors are biases and scales, which an export keeps as they are
        if path[:n] != b.weights_path or t.dtype not in FLOAT_HALVES:
            continue
        if b.owner.get(t.storage_key or "") != path:
            continue
        by_dtype[t.dtype] = by_dtype.get(t.dtype, 0) + b.storage_bytes.get(t.storage_key or "", 0)
        counts[t.dtype] = counts.get(t.dtype, 0) + 1
    total = sum(by_dtype.values())
    if not total:
        return []
    saving = sum(v - v // FLOAT_HALVES[d] for d, v in by_dtype.items())
    what = ", ".join(f"{counts[d]:,} {d} ({size(v)})" for d, v in by_dtype.items())
    return [
        SizeFinding(
            "float_weights",
            total,
            saving,
            (b.weights_path,),
            f"weights in {what}: bf16 or fp16 would store them in {size(total - saving)} "
            "(export --dtype bf16)",
        )
    ]


def _inline_findings(
    inline: list[tuple[KeyPath, Node]], long_seqs: list[tuple[KeyPath, Node]]
) -> list[SizeFinding]:
    out = [
        SizeFinding(
            "inline_data",
            node.nbytes,
            node.nbytes,
            (path,),
            f"{node.type} of {size(node.nbytes)} pickled inline at {describe_path(path)}: "
            "save it as a tensor or a separate file",
        )
        for path, node in inline
        if node.nbytes >= INLINE_MIN
    ]
    for path, node in long_seqs:
        est = len(node.children) * _PICKLED_ITEM
        out.append(
            SizeFinding(
                "inline_data",
                est,
                est,
                (path,),
                f"{node.type} of {len(node.children):,} items pickled inline at {describe_path(path)} "
                f"(about {size(est)}): store it as a tensor",
            )
        )
    return out


def _overhead_findings(b: Breakdown) -> list[SizeFinding]:
    """Most of the file is the format's framing, not tensors (100,000 tiny tensors in a zip:
    a local header, a central directory entry and padding each). No saving is claimed: what a
    remedy saves depends on which one (fewer, larger tensors; one safetensors header)."""
    framing = b.categories.get("overhead", 0) + b.categories.get("metadata", 0)
    if not b.file_bytes or framing < OVERHEAD_MIN or framing / b.file_bytes <= OVERHEAD_SHARE:
        return []
    parts = {**b.overhead_detail, **b.metadata_detail}
    what = ", ".join(name for name, _ in sorted(parts.items(), key=lambda kv: -kv[1])[:3])
    storages = len(b.storage_bytes)
    data = b.categories.get("tensor_data", 0)
    per = (
        f" around {storages:,} storages of {size(data // storages)} on average" if storages else ""
    )
    return [
        SizeFinding(
            "format_overhead",
            framing,
            0,
            (),
            f"format overhead is {100 * framing / b.file_bytes:.0f} % of the file "
            f"({size(framing)}: {what}){per}; tensor data is "
            f"{100 * data / b.file_bytes:.0f} %. Fewer, larger tensors (stack them) or one "
            "safetensors header would shrink it",
        )
    ]
