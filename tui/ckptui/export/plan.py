"""Provides `make_plan`: what an export keeps, how it transforms it, and how big the output is.

A plan names, before anything is written, every output tensor (its name after prefix
stripping, its source tensor, its dtype after the cast) and which output tensors share bytes.
Tensors that are the same view of the same storage (tied weights) stay one storage in `.pth`;
every other tensor gets a compact storage of its own, so no view drags a larger storage along.
safetensors cannot share bytes, so there a tied tensor is written once per name.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from ckptui.analysis.quantized import QScheme
from ckptui.analysis.roles import weights_path
from ckptui.analysis.state_dict import common_prefix, tensors_of, unexportable
from ckptui.core.bulk import gc_paused
from ckptui.core.dtypes import DTYPES, SAFETENSORS_CODE
from ckptui.core.errors import ExportError
from ckptui.core.keypath import describe_path, path_text
from ckptui.core.slotinit import maker
from ckptui.core.tree import Checkpoint, KeyPath, NodeKind, TensorInfo, walk_matching
from ckptui.export.quantized import Gathered, gather
from ckptui.export.writers import predicted_size
from ckptui.formats.naming import output_stem

CAST_TARGETS = {"keep": None, "bf16": "bfloat16", "fp16": "float16"}
CASTABLE = {"float32", "float64", "float16", "bfloat16"}
"""Floating dtypes a cast applies to; integer and bool buffers (and float8) are left alone."""


@dataclass(frozen=True, slots=True)
class Item:
    """One output tensor."""

    name: str
    source: KeyPath
    tensor: TensorInfo
    dtype: str
    """The output dtype (the source's unless cast)."""
    group: int
    """Output storage number: items with the same group share one storage (tied weights)."""
    slot: int | None = None
    """Position in a tuple entry (a quantized Linear's `_packed_params` is `(weight, bias)`): the
    entry's name is this name without its last `.N`. None: an entry of its own."""
    part_of: str | None = None
    """The quantized tensor whose per-channel `scale` or `zero_point` this is: written inside that
    tensor's rebuild (`_rebuild_qtensor`), not as an entry."""
    qscheme: QScheme | None = None
    """For a quantized tensor: how it is quantized (written as torch writes it)."""
    data: bytes | None = None
    """Bytes the export makes rather than reads: the 0-d tensor a quantized module's
    `state_dict()` makes of a number (`torch.tensor(self.scale)`)."""
    jagged: int | None = None
    """For a nested jagged tensor: its ragged dimension. It has no storage of its own: it is
    written as torch writes it (`_rebuild_njt`) over its `values`/`offsets` part items."""

    @property
    def nbytes(self) -> int:
        """Output bytes of this tensor."""
        return self.tensor.numel * DTYPES[self.dtype].itemsize


@dataclass(repr=False)
class Plan:
    """A complete description of one export."""

    ckpt: Checkpoint
    keep: list[KeyPath]
    items: list[Item]
    strip_prefix: str
    """The prefix removed from every name ('' for none)."""
    dtype: str
    """`keep`, `bf16` or `fp16`."""
    format: str
    """`pth` or `safetensors`."""
    metadata: dict[str, str] = field(default_factory=dict)
    """Plain values from the checkpoint's top level (epoch, iteration), as strings."""
    skipped: list[tuple[KeyPath, str]] = field(default_factory=list)
    """Tensors under the kept paths that cannot be exported, and why."""
    detected_prefix: str = ""
    """A prefix every name shares (`module.`), offered even when not stripped."""
    missing: list[tuple[KeyPath, str]] = field(default_factory=list)
    """Entries under the kept paths whose file is gone (a deleted shard), and where they were:
    not written; the CLI asks for `--allow-missing` before exporting without them."""
    values: list[tuple[str, str | None]] = field(default_factory=list)
    """Entries that are not tensors, written after the tensors, as (name, torch dtype name or
    None): a quantized Linear's `_packed_params.dtype`, a quantized conv's absent bias."""
    tuples: dict[str, int] = field(default_factory=dict)
    """Tuple entries (`fc._packed_params._packed_params`) -> their length; a slot no item fills
    is None (a Linear without bias)."""
    versions: dict[str, int] = field(default_factory=dict)
    """`state_dict()`'s `_metadata` (module prefix -> version), written when not empty:
    quantized modules need it to load (`load_state_dict` picks their layout by it)."""

    def __repr__(self) -> str:
        # Short on purpose: Textual reprs a worker's arguments on the UI thread (the export
        # dialog's writer takes the plan), and the default repr lists every item.
        return f"Plan({self.format}, {len(self.items):,} items of {len(self.keep)} kept paths)"

    @functools.cached_property
    def storages(self) -> list[Item]:
        """The first item of each output storage, in order (made once: the size, the writer and
        the verification each ask, 100,000 items a time; a plan's items never change after
        `make_plan`, and `dataclasses.replace` makes a plan of its own)."""
        seen: set[int] = set()
        out = []
        for it in self.items:
            if it.jagged is not None:
                continue  # its parts hold its bytes
            if self.format == "safetensors" or it.group not in seen:
                seen.add(it.group)
                out.append(it)
        return out

    @functools.cached_property
    def data_bytes(self) -> int:
        """Tensor bytes the output holds."""
        return sum(it.nbytes for it in self.storages)

    @property
    def predicted_bytes(self) -> int:
        """The exact size of the output file."""
        return predicted_size(self)


def make_plan(
    ckpt: Checkpoint,
    keep: list[KeyPath] | None = None,
    strip_prefix: str = "auto",
    dtype: str = "keep",
    fmt: str = "pth",
) -> Plan:
    """Plan an export of `keep` (default: the detected weights) from `ckpt`.

    Args:
        strip_prefix: `auto` (strip `module.`/`_orig_mod.` when every name has it), `none`,
            or a literal prefix to strip from the names that have it.
        dtype: `keep`, `bf16` or `fp16` (floating tensors only).
        fmt: `pth` or `safetensors`.

    Raises:
        ExportError: nothing to keep, an unknown path, option or duplicate output name.
    """
    with gc_paused():  # an item and a few tuples per tensor, no cycles (see core.bulk)
        return _make_plan(ckpt, keep, strip_prefix, dtype, fmt)


def _make_plan(
    ckpt: Checkpoint, keep: list[KeyPath] | None, strip_prefix: str, dtype: str, fmt: str
) -> Plan:
    if dtype not in CAST_TARGETS:
        raise ExportError(ckpt.path, f"unknown --dtype {dtype!r} (keep, bf16 or fp16)")
    if fmt not in ("pth", "safetensors"):
        raise ExportError(ckpt.path, f"unknown --format {fmt!r} (pth or safetensors)")
    keep, kept = kept_tensors(ckpt, keep)
    q = gather(ckpt, keep, kept)
    if fmt == "safetensors" and q.any:
        raise ExportError(ckpt.path, _no_safetensors(q))
    found: list[tuple[str, KeyPath, TensorInfo]] = []
    skipped: list[tuple[KeyPath, str]] = list(q.skipped)
    quantized = bool(q.unknown or q.schemes)  # if not, no lookup of each path (a tuple hashed)
    for name, path, t in q.kept:
        if quantized:
            reason = q.unknown.get(path) or unexportable(ckpt, t, fmt, path in q.schemes)
        else:
            reason = unexportable(ckpt, t, fmt)
        if reason:
            skipped.append((path, reason))
        else:
            found.append((name, path, t))
    if not found:
        why = f" ({describe_path(skipped[0][0])} is {skipped[0][1]})" if skipped else ""
        more = f" and {len(skipped) - 1:,} more" if len(skipped) > 1 else ""
        raise ExportError(
            ckpt.path,
            f"no exportable tensors under {', '.join(map(describe_path, keep))}{why}{more}",
        )
    others = [n for n, _ in q.values] + [n for n, _, _ in q.synthetic]
    detected_prefix = common_prefix([n for n, _, _ in found] + others)
    strip, names = output_names(ckpt, [n for n, _, _ in found] + others, strip_prefix)
    names, other_names = names[: len(found)], names[len(found) :]
    qmods = {n.rpartition(".")[0] for n, p, _ in found if p in q.schemes} if q.schemes else set()
    groups: dict[tuple, int] = {}
    items: list[Item] = []
    target = CAST_TARGETS[dtype]
    plain = not q.any  # no quantized entries: no scheme, slot or kept-float rule to look up
    for name, (_, path, t) in zip(names, found, strict=True):
        # `cast_dtype` where `_castable`, inlined: this loop runs once per tensor
        cast = target and t.dtype in CASTABLE and (plain or _castable(q, qmods, path, name))
        out_dtype = target if cast else t.dtype
        if fmt == "safetensors" and out_dtype not in SAFETENSORS_CODE:
            skipped.append((path, f"{out_dtype} has no safetensors code"))
            continue
        if fmt == "safetensors" and out_dtype == "float4_e2m1fn_x2" and not t.shape:
            skipped.append((path, "a 0-d float4_e2m1fn_x2 has no safetensors F4 shape"))
            continue
        view = (t.storage_key, t.storage_offset, t.shape, t.stride, t.dtype)
        group = groups.setdefault(view, len(groups))
        if t.layout == "jagged":  # fmt is pth: `_unexportable` let it through
            ragged = ckpt.find((*path, "ragged_dim"))
            group = groups.setdefault(("jagged", path), len(groups))
            jagged = ragged.value if ragged is not None and type(ragged.value) is int else 1
            items.append(Item(name, path, t, t.dtype, group, jagged=jagged))
            items += _parts(ckpt, name, path, groups, ("values", "offsets"), ("lengths",))
            continue
        if plain:
            items.append(_item(name, path, t, out_dtype, group))
            continue
        scheme = q.schemes.get(path)
        items.append(Item(name, path, t, out_dtype, group, q.slots.get(path), qscheme=scheme))
        if scheme is not None and scheme.per_channel:
            items += _parts(ckpt, name, path, groups, ("scale", "zero_point"))
    values = [(n, v) for n, (_, v) in zip(other_names, q.values, strict=False)]
    for n, (_, dt, raw) in zip(other_names[len(q.values) :], q.synthetic, strict=True):
        info = TensorInfo((), dt, (), None, itemsize=DTYPES[dt].itemsize)
        items.append(
            Item(n, keep[0], info, dt, groups.setdefault(("made", n), len(groups)), data=raw)
        )
    return Plan(
        ckpt,
        list(keep),
        items,
        strip,
        dtype,
        fmt,
        file_metadata(ckpt),
        skipped,
        detected_prefix,
        missing_entries(ckpt, keep),
        values,
        {_strip(e, strip): n for e, n in q.tuples.items()},
        {_strip_module(k, strip): v for k, v in q.versions.items()},
    )


_item = maker(Item)
"""`Item(...)` at half the cost (`core.slotinit`): one per exported tensor."""


def _no_safetensors(q: Gathered) -> str:
    """Why a quantized export cannot be a safetensors file, naming what works instead."""
    path = next(iter(q.schemes), None) or next(iter(q.unknown), None)
    what = f"{describe_path(path)} is a quantized tensor" if path else "the weights are quantized"
    return (
        f"{what} (torch.ao), which safetensors cannot hold; export to .pth (-o NAME.pth), "
        "which keeps it as torch.load(weights_only=True) and load_state_dict take it"
    )


def _castable(q: Gathered, qmods: set[str], path: KeyPath, name: str) -> bool:
    """A quantized module's float parts (its bias, scale and per-channel scales) keep their
    dtype under `--dtype`: torch's quantized kernels take float32 biases and float64 scales."""
    if not q.any:
        return True
    if path in q.slots or path in q.schemes:
        return False
    head, _, last = name.rpartition(".")
    if last in ("scale", "zero_point"):
        return False
    return not (last == "bias" and head in qmods)


def _parts(
    ckpt: Checkpoint,
    name: str,
    path: KeyPath,
    groups: dict[tuple, int],
    parts: tuple[str, ...],
    optional: tuple[str, ...] = (),
) -> list[Item]:
    """The tensors a tensor is written over: a per-channel quantized tensor's `scale` and
    `zero_point`, a jagged tensor's `values` and `offsets` (and `lengths` when it has them)."""
    out = []
    for part in parts + optional:
        node = ckpt.find((*path, part))
        t = node.tensor if node is not None else None
        if t is None and part in optional:
            continue
        if t is None:
            raise ExportError(ckpt.path, f"{describe_path(path)} has no {part} tensor")
        reason = unexportable(ckpt, t, "pth")
        if reason:
            raise ExportError(
                ckpt.path, f"the {part} of {describe_path(path)} cannot be exported: {reason}"
            )
        view = (t.storage_key, t.storage_offset, t.shape, t.stride, t.dtype)
        group = groups.setdefault(view, len(groups))
        out.append(Item(f"{name}.{part}", (*path, part), t, t.dtype, group, part_of=name))
    return out


def _strip(name: str, prefix: str) -> str:
    return name[len(prefix) :] if prefix and name.startswith(prefix) else name


def _strip_module(module: str, prefix: str) -> str:
    """A `_metadata` module prefix under `--strip-prefix` (`module.fc` -> `fc`, `module` -> '')."""
    return "" if prefix and module == prefix[:-1] else _strip(module, prefix)


def missing_entries(ckpt: Checkpoint, keep: list[KeyPath]) -> list[tuple[KeyPath, str]]:
    """(path, what the reader says of it) of each entry under `keep` that a missing file held:
    a folder opens with a deleted shard's tensors as `missing` rows (their shapes went with it)."""
    out = []
    value = NodeKind.VALUE
    for base in keep:
        node = ckpt.find(base)
        if node is None or node.kind is NodeKind.TENSOR:
            continue
        for path, n in walk_matching(node, lambda n: n.kind is value and n.type == "missing", base):
            out.append((path, n.text or "missing"))
    return out


def output_names(ckpt: Checkpoint, names: list[str], strip_prefix: str) -> tuple[str, list[str]]:
    """(the prefix stripped, the output names): `auto` strips a `module.`/`_orig_mod.` prefix
    every name has, `none` nothing, anything else that literal prefix where present.

    Raises:
        ExportError: when two tensors would end up with one name.
    """
    strip = {"auto": common_prefix(names), "none": ""}.get(strip_prefix, strip_prefix)
    out: list[str] = []
    seen: set[str] = set()
    for name in names:
        if strip and name.startswith(strip):
            name = name[len(strip) :]
        if name in seen:
            raise ExportError(ckpt.path, f"two tensors would both be named {name!r}")
        seen.add(name)
        out.append(name)
    return strip, out


def cast_dtype(dtype: str, cast: str) -> str:
    """The output dtype of a `dtype` tensor under `--dtype cast` (floating tensors only)."""
    target = CAST_TARGETS[cast]
    return target if target and dtype in CASTABLE else dtype


def default_target(source: str, fmt: str) -> str:
    """The output beside the source: `ckpt.pth` -> `ckpt.slim.pth` (or `.slim.safetensors`);
    for a URL, in the current folder, named after the remote file."""
    return f"{output_stem(source)}.slim.{fmt}"


def kept_tensors(
    ckpt: Checkpoint, keep: list[KeyPath] | None
) -> tuple[list[KeyPath], list[tuple[str, KeyPath, TensorInfo]]]:
    """The paths kept (default: the detected weights) and every tensor under them, with its
    output name before prefix stripping: its key below the kept path (a whole-module pickle's
    `state_dict()` name), prefixed by the kept path's last key when several paths are kept.

    Raises:
        ExportError: no weights found, nothing to keep, or a kept path not in the checkpoint.
    """
    if keep is None:
        detected = weights_path(ckpt)
        if detected is None:
            raise ExportError(ckpt.path, "no model weights found to export (use --keep)")
        keep = [detected]
    if not keep:
        raise ExportError(ckpt.path, "nothing to keep")
    out: list[tuple[str, KeyPath, TensorInfo]] = []
    for base in keep:
        node = ckpt.find(base)
        if node is None:
            raise ExportError(ckpt.path, f"no {describe_path(base)} in the checkpoint")
        prefix = path_text(base[-1:]) + "." if len(keep) > 1 and base else ""
        cut = len(base)
        for path, t in tensors_of(node, base):
            rel = t.state_dict_key
            if not rel:
                # one str key below the kept path (a flat state dict's every name) is its own
                # text: path_text's join, skipped 100,000 times
                below = path[cut:]
                one = len(below) == 1 and type(below[0]) is str
                rel = below[0] if one else path_text(below)
            # a kept path that is itself a tensor is named by its own key (not `key.`)
            out.append((prefix + rel if rel else path_text(base[-1:]) or "tensor", path, t))
    return list(keep), out


def file_metadata(ckpt: Checkpoint) -> dict[str, str]:
    out: dict[str, str] = {}
    value = NodeKind.VALUE
    for c in ckpt.root.children:  # the kind first: a state dict's 100,000 tensors stop there
        if (
            c.kind is value
            and isinstance(c.key, str)
            and isinstance(c.value, bool | int | float | str)
            and len(str(c.value)) <= 1000
        ):
            out[c.key] = str(c.value)
    return out


def resolve_path(ckpt: Checkpoint, text: str) -> KeyPath:
    """A `--keep` argument as a tree path: `model`, `model.encoder`, or `['model']['a.b']`.

    Dotted text is matched greedily against the real keys, so `model.conv1.weight` finds the
    key `conv1.weight` inside `model` in a flat state dict.

    Raises:
        ExportError: when no such path exists.
    """
    if text in ("", ".", "/"):
        return ()
    if text.startswith("["):
        keys = re.findall(r"\[\s*(?:'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"|(-?\d+))\s*\]", text)
        path: KeyPath = tuple(a or b if (a or b) else int(c) for a, b, c in keys)
        if ckpt.find(path) is None:
            raise ExportError(ckpt.path, f"no {text} in the checkpoint")
        return path
    node = ckpt.root
    parts = text.split(".")
    path = ()
    i = 0
    while i < len(parts):
        for j in range(len(parts), i, -1):
            key = ".".join(parts[i:j])
            child = node.child(key)
            if child is None and key.lstrip("-").isdigit():
                child = node.child(int(key))
                key = int(key) if child is not None else key  # type: ignore[assignment]
            if child is not None:
                node, path, i = child, (*path, key), j
                break
        else:
            raise ExportError(ckpt.path, f"no {text!r} in the checkpoint")
    return path


@dataclass(frozen=True, slots=True)
class Result:
    """What an export wrote."""

    output: str
    bytes: int
    tensors: int
    predicted_bytes: int
    verified: bool
    kept_paths: tuple[KeyPath, ...]
    bytes_read: int | None = None
    """Bytes fetched from the server to write it, for a source at a URL (None: local)."""
