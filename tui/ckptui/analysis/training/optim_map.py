"""Provides `map_optimizers`: which parameter each optimizer state entry belongs to, and its groups.

`optimizer.state_dict()` keys `state` by integer index (very old files: by Python object ids) and
lists those keys in each `param_groups[i]["params"]`, in the order the parameters were given to
the optimizer. Nothing in the file names them, so the names come from the detected weights:

- Parameters are the weights' tensors minus buffers. A whole-module pickle says which is which
  (`_parameters` vs `_buffers`); a state dict does not, so buffers go by convention
  (`running_mean`, `running_var`, `num_batches_tracked`, integer/bool dtypes). Tied weights (one
  storage under two keys) count once, as `model.parameters()` does.
- The optimizer's entries are assumed to follow the parameters' registration order (what
  `model.parameters()` and module-by-module groups give). That assumption is CHECKED against the
  shapes of the per-parameter state (`exp_avg`, `momentum_buffer`, ...): the entries must line up
  with an order-preserving subsequence of the parameters (a subset when a backbone is frozen). All
  such alignments are counted by a banded dynamic programme (`optim_align`); an entry whose
  parameter is the same in every alignment is `by-shape`, one with several possible parameters is
  `ambiguous`, and when no alignment fits, every entry is `ambiguous` with `why` naming where it
  broke. Nothing is guessed silently. If the groups together do not fit in order (groups given
  out of registration order, decay/no-decay splits), each group is aligned on its own and must
  not claim another's parameter.
- FQN-keyed state (`get_state_dict`, DCP) names its parameters itself: `exact`.

Its JSON forms are in `report.json.training`.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, Literal

from ckptui.analysis.roles import is_module, optimizers_of, weights_path
from ckptui.analysis.training.optim_align import Shape, align_groups, align_shapes, describe_break
from ckptui.core.dtypes import DTYPES
from ckptui.core.errors import CkptError
from ckptui.core.slotinit import fast_init
from ckptui.core.tree import Checkpoint, KeyPath, Node, NodeKind, TensorInfo
from ckptui.core.units import json_number
from ckptui.formats.source import is_url

Confidence = Literal["exact", "by-shape", "ambiguous"]

BUFFER_NAMES = frozenset({"running_mean", "running_var", "num_batches_tracked"})
"""Last name components that are buffers by convention (BatchNorm's running statistics)."""

PER_PARAM_KEYS = (
    "exp_avg", "momentum_buffer", "square_avg", "sum", "exp_avg_sq", "max_exp_avg_sq",
    "acc_delta", "exp_inf", "ax", "prev", "step_size", "grad_avg", "mu_product",
)  # fmt: skip
"""State entries shaped like their parameter, most common first (`step`, ASGD's `eta`/`mu`
are scalars whatever the parameter)."""
_SCALAR_KEYS = frozenset({"step", "eta", "mu"})


@fast_init  # one per optimizer entry: 30,000 in a training checkpoint (`core.slotinit`)
@dataclass(frozen=True, slots=True)
class OptimizerEntry:
    """One optimizer entry (a `params` item and/or a `state` key) and the parameter it names."""

    index: int
    """Position across all groups' `params` (entries only in `state` come after them)."""
    key: int | str
    """The key as in the file: `state[key]`, `params[...] == key`."""
    group: int | None
    """Index of the param group listing it; None for a `state` key in no group."""
    param: str | None
    """The parameter's name as in the weights (prefixes kept), or None when not known."""
    confidence: Confidence
    why: str | None = None
    """Why the entry is ambiguous, or how a sure one was placed when it was not shape-checked."""


@dataclass(frozen=True, slots=True)
class GroupLine:
    """Param groups that differ only in their parameters, as one line."""

    groups: tuple[int, ...]
    hyper: dict[str, Any]
    """Hyper-parameters as JSON-able values (`betas` a list, tensors described as text)."""
    params: tuple[str | None, ...]


@dataclass(frozen=True, slots=True)
class OptimizerMapping:
    """What `map_optimizers` found for one optimizer state dict."""

    optimizer_path: KeyPath
    weights_path: KeyPath | None
    kind: str
    """`Adam-style`, `SGD with momentum`, ... as `roles.optimizer_info` names it."""
    step: int | float | None
    """The `step` of the first state entry (Adam-style optimizers), when there is one."""
    params_from: Literal["module", "names", "convention", "none"]
    """How parameters were told from buffers: the module's `_parameters`, the state's own FQN
    keys, naming/dtype convention, or no weights to name them at all."""
    entries: tuple[OptimizerEntry, ...] = ()
    groups: tuple[GroupLine, ...] = ()
    notes: tuple[str, ...] = ()
    """Facts about the whole mapping (tied weights counted once)."""


def map_optimizers(ckpt: Checkpoint) -> list[OptimizerMapping]:
    """Map every optimizer state dict in `ckpt` to the detected weights' parameter names.

    Returns:
        One `OptimizerMapping` per optimizer `roles.find_optimizers` finds, in tree order.
    """
    optimizers = optimizers_of(ckpt)
    if not optimizers:  # nothing to map: the weights' parameter list is not needed (issue 16)
        return []
    wpath = weights_path(ckpt)
    params, source, notes = _parameters(ckpt, wpath)
    return [_map_one(ckpt, info.path, info.kind, wpath, params, source, notes)
            for info in optimizers]  # fmt: skip


# -- parameters of the weights ----------------------------------------------------------------


def _parameters(
    ckpt: Checkpoint, wpath: KeyPath | None
) -> tuple[list[tuple[str, Shape]], Literal["module", "convention", "none"], tuple[str, ...]]:
    """(name, shape) of each parameter in registration order, how buffers were told, notes."""
    if wpath is None:
        return [], "none", ()
    node = ckpt.find(wpath)
    module = node is not None and is_module(node)
    n = len(wpath)
    out: list[tuple[str, Shape]] = []
    seen_obj: set[object] = set()
    seen_view: dict[tuple, str] = {}
    tied: list[str] = []
    for path, t in ckpt.tensors(below=wpath):
        if module:
            # The module says it: a Parameter lives in some `_parameters`, a buffer in `_buffers`.
            # A REF to an already-seen Parameter is a tied one: listed once (its TensorInfo
            # differs only by the state-dict name, so the view tells it).
            view = (t.storage_key, t.storage_offset, t.shape, t.stride) if t.storage_key else id(t)
            if path[-2] != "_parameters" or view in seen_obj:
                continue
            seen_obj.add(view)
            out.append((t.state_dict_key or ".".join(map(str, path[n:])), t.shape))
            continue
        name = ".".join(map(str, path[n:]))
        d = DTYPES.get(t.dtype)
        if name.rsplit(".", 1)[-1] in BUFFER_NAMES or (
            d is not None and not d.floating and not t.dtype.startswith("complex")
        ):
            continue  # fmt: skip
        # `state_dict()` detaches, so tied weights are two tensors on one storage view;
        # `parameters()` yields them once, under the first name.
        view = (t.storage_key, t.storage_offset, t.shape, t.stride)
        if t.storage_key is not None and view in seen_view:
            tied.append(f"{name} is tied to {seen_view[view]}")
            continue
        seen_view[view] = name
        out.append((name, t.shape))
    notes = tuple(f"{s} (counted once, as model.parameters() does)" for s in tied)
    return out, "module" if module else "convention", notes


# -- one optimizer ----------------------------------------------------------------------------


def _map_one(
    ckpt: Checkpoint,
    opath: KeyPath,
    kind: str,
    wpath: KeyPath | None,
    params: list[tuple[str, Shape]],
    source: Literal["module", "convention", "none"],
    notes: tuple[str, ...],
) -> OptimizerMapping:
    node = ckpt.find(opath)
    state = node.child("state") if node is not None else None
    groups_node = node.child("param_groups") if node is not None else None
    state_of = {c.key: c for c in (state.children if state is not None else ())}
    group_keys: list[list[int | str]] = []
    for g in groups_node.children if groups_node is not None else ():
        plist = g.child("params")
        keys = [c.value for c in (plist.children if plist is not None else ())]
        group_keys.append([k for k in keys if isinstance(k, int | str)])
    listed = [(gi, k) for gi, keys in enumerate(group_keys) for k in keys]
    in_groups = {k for _, k in listed}
    orphans = [k for k in state_of if k not in in_groups and isinstance(k, int | str)]
    if listed and all(isinstance(k, str) for _, k in listed):
        # get_state_dict / DCP: the keys are the parameters' fully qualified names.
        source = "names"  # type: ignore[assignment]
        known = {p for p, _ in params}
        entries = [
            OptimizerEntry(i, k, gi, str(k), "exact",
                  None if not known or k in known else "named by the file; not among the weights")
            for i, (gi, k) in enumerate(listed)
        ]  # fmt: skip
    else:
        shapes = [_state_shape(ckpt, state_of.get(k)) for _, k in listed]
        entries = _align_entries(listed, shapes, params, source)
    base = len(entries)
    for j, k in enumerate(orphans):
        why = "in `state` but in no param group's `params`"
        entries.append(OptimizerEntry(base + j, k, None, None, "ambiguous", why))
    names = [e.param for e in entries]
    lines = _group_lines(ckpt, groups_node, [len(k) for k in group_keys], names)
    step = _first_step(ckpt, state)
    return OptimizerMapping(opath, wpath, kind, step, source, tuple(entries), lines, notes)


def _state_shape(ckpt: Checkpoint, entry: Node | None) -> Shape | None:
    """The parameter's shape as its state records it, or None (no state yet, no grad)."""
    if entry is None:
        return None
    tensors: dict[Any, Shape] = {}
    ref, tensor = NodeKind.REF, NodeKind.TENSOR  # locals: this runs per optimizer entry
    for c in entry.children:
        # a REF's value is its target (`Node.target`, without the property's call)
        node = ckpt.find(c.value) if c.kind is ref and c.value is not None else c
        if node is not None and node.kind is tensor:
            tensors[c.key] = node.value.shape
    for k in PER_PARAM_KEYS:
        if k in tensors:
            return tensors[k]
    return next((s for k, s in tensors.items() if k not in _SCALAR_KEYS), None)


def _align_entries(
    listed: list[tuple[int, int | str]],
    shapes: list[Shape | None],
    params: list[tuple[str, Shape]],
    source: str,
) -> list[OptimizerEntry]:
    """Entries placed on `params` by order, checked by shape (see the module docstring)."""
    m, n = len(listed), len(params)
    if not params:
        return _unknown(listed, "no model weights found in this file to name the parameters")
    pshapes = [s for _, s in params]
    where = "parameters" if source == "module" else "candidate parameters (weights minus buffers)"
    if m > n:
        return _unknown(listed, f"count mismatch: {m} params in groups vs {n} {where}")
    placed = align_shapes(shapes, pshapes)
    if placed is None:
        return _unknown(listed, f"too many ways to place {m} entries on {n} {where} to check")
    total, options = placed
    if total == 0 and len({g for g, _ in listed}) > 1:
        per_group = align_groups(listed, shapes, pshapes)
        if per_group is not None:
            options, total = per_group, 1
    if total == 0:
        return _unknown(listed, describe_break(shapes, params, listed, where))
    out = []
    for i, (g, k) in enumerate(listed):
        opts = options[i]
        if len(opts) == 1:
            j = opts[0]
            why = None if shapes[i] is not None else "no state to check its shape; placed by order"
            out.append(OptimizerEntry(i, k, g, params[j][0], "by-shape", why))
        else:
            fits = " or ".join(params[j][0] for j in opts[:2]) + (
                " or ..." if len(opts) > 2 else ""
            )
            what = "no state to check" if shapes[i] is None else f"state shape {list(shapes[i])}"
            why = (f"index {k}: {what}, fits {fits}; several order-preserving placements of "
                   f"{m} entries on {n} {where}")  # fmt: skip
            out.append(OptimizerEntry(i, k, g, None, "ambiguous", why))
    return out


def _unknown(listed: list[tuple[int, int | str]], why: str) -> list[OptimizerEntry]:
    return [OptimizerEntry(i, k, g, None, "ambiguous", why) for i, (g, k) in enumerate(listed)]


# -- groups and step --------------------------------------------------------------------------


def _group_lines(
    ckpt: Checkpoint, groups_node: Node | None, counts: list[int], names: list[str | None]
) -> tuple[GroupLine, ...]:
    """One line per distinct set of hyper-parameters, in order of first appearance."""
    lines: dict[str, tuple[list[int], dict[str, Any], list[str | None]]] = {}
    start = 0
    for gi, g in enumerate(groups_node.children if groups_node is not None else ()):
        hyper = {str(c.key): _plain(ckpt, c) for c in g.children if c.key != "params"}
        key = json.dumps(hyper, sort_keys=True, default=str)
        line = lines.setdefault(key, ([], hyper, []))
        line[0].append(gi)
        line[2].extend(names[start : start + counts[gi]])
        start += counts[gi]
    return tuple(GroupLine(tuple(g), h, tuple(p)) for g, h, p in lines.values())


def _plain(ckpt: Checkpoint, node: Node, depth: int = 0) -> Any:
    """A hyper-parameter as a JSON-able value: numbers, strings, lists; else a short text."""
    if node.kind is NodeKind.REF and node.target is not None:
        # The pickle memo: groups given one `betas` tuple store it once; each shows its value.
        target = ckpt.find(node.target)
        if target is not None and target.kind is not NodeKind.REF:
            node = target
    if node.kind is NodeKind.VALUE:
        v = node.value
        if isinstance(v, float):
            return json_number(v)
        return v if v is None or isinstance(v, bool | int | float | str) else node.text
    if node.kind is NodeKind.TENSOR:  # `lr` is a tensor for capturable/fused optimizers
        t = node.value
        return f"tensor {list(t.shape)} {t.dtype}"
    if node.kind is NodeKind.SEQUENCE and depth < 2 and len(node.children) <= 16:
        return [_plain(ckpt, c, depth + 1) for c in node.children]
    if node.kind is NodeKind.MAPPING and depth < 2 and len(node.children) <= 16:
        return {str(c.key): _plain(ckpt, c, depth + 1) for c in node.children}
    return node.text or node.type


def _first_step(ckpt: Checkpoint, state: Node | None) -> int | float | None:
    """`step` of the first state entry: an int in old files, a 0-d tensor since torch 1.12."""
    for entry in state.children if state is not None else ():
        node = entry.child("step")
        if node is None:
            continue
        return scalar_value(ckpt, node)
    return None


def scalar_value(ckpt: Checkpoint, node: Node) -> int | float | None:
    """A plain number, or a one-element tensor's value read from the file (None if unreadable)."""
    if node.kind is NodeKind.VALUE:
        v = node.value
        return v if isinstance(v, int | float) and not isinstance(v, bool) else None
    t = node.tensor
    if t is None or t.numel != 1:
        return None
    v = _plain_scalar(ckpt, t)
    if v is None:
        try:
            from ckptui.tensors.values import (
                tensor_stats,  # the lazy corner: numpy only when a tensor is read
            )

            v = tensor_stats(ckpt, t).head[0]
        except (CkptError, ImportError, ValueError, TypeError):  # no bytes, no numpy: not shown
            return None
    if isinstance(v, float) and v.is_integer():
        return int(v)  # Adam keeps its step as a float tensor; it counts whole steps
    return v if isinstance(v, int | float) and not isinstance(v, bool) else None


_STRUCT_CODES = {"float32": "f", "float64": "d", "int64": "q", "int32": "i"}
"""dtypes whose one element `_plain_scalar` reads with `struct`: it gives what `tensor_stats`'
head does (the float widened to float64, the integer itself)."""


def _plain_scalar(ckpt: Checkpoint, t: TensorInfo) -> int | float | None:
    """A one-element tensor's value read with `struct`, or None when it is not the plain case
    (a local little-endian file, a strided view inside its storage and its file, one of
    `_STRUCT_CODES`): `tensor_stats` then decides. Adam's `step` is such a tensor, and reading
    it through numpy cost the import of numpy, 0.2 s of every `inspect` of a training
    checkpoint (issue 16)."""
    code = _STRUCT_CODES.get(t.dtype)
    st = ckpt.storages.get(t.storage_key or "")
    if code is None or st is None or st.data_offset is None or t.layout != "strided":
        return None
    shape, stride, offset = t.shape, t.stride, t.storage_offset
    if len(stride) != len(shape) or min((*shape, *stride, offset), default=0) < 0:
        return None  # tensor_stats' malformed view
    size = struct.calcsize(code)
    have = st.nbytes if st.record_nbytes is None else min(st.nbytes, st.record_nbytes)
    if t.itemsize != size or t.span_elements() * size > have:
        return None
    file_size = ckpt.file_bytes if st.file is None else ckpt.info.get("files", {}).get(st.file)
    big = ckpt.info.get("byteorder") == "big"
    if big or is_url(ckpt.file_of(st)) or file_size is None or st.data_offset + have > file_size:
        return None
    from ckptui.tensors.reader import Piece, SourceBytes  # the reader: only when a value is read

    try:  # SourceBytes checks the file still has the size it had when opened
        with SourceBytes(ckpt) as src:
            data = src.read(Piece(str(st.key), t, t.dtype), 0, size)
    except (OSError, CkptError):
        return None
    value: int | float = struct.unpack("<" + code, data)[0]
    return value
