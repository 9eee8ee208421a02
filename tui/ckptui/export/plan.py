"""Provides `make_plan`: what an export keeps, how it transforms it, and how big the output is.

A plan names, before anything is written, every output tensor (its name after prefix
stripping, its source tensor, its dtype after the cast) and which output tensors share bytes.
Tensors that are the same view of the same storage (tied weights) stay one storage in `.pth`;
every other tensor gets a compact storage of its own, so no view drags a larger storage along.
safetensors cannot share bytes, so there a tied tensor is written once per name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ckptui.analysis.roles import weights_path
from ckptui.analysis.state_dict import common_prefix, tensors_of, unexportable
from ckptui.core.dtypes import DTYPES, SAFETENSORS_CODE
from ckptui.core.errors import ExportError
from ckptui.core.keypath import describe_path, path_text
from ckptui.core.tree import Checkpoint, NodeKind, Path, TensorInfo, walk
from ckptui.export.writers import predicted_size
from ckptui.formats.naming import output_stem

CAST_TARGETS = {"keep": None, "bf16": "bfloat16", "fp16": "float16"}
CASTABLE = {"float32", "float64", "float16", "bfloat16"}
"""Floating dtypes a cast applies to; integer and bool buffers (and float8) are left alone."""
"""Prefixes DataParallel/DDP and torch.compile add to every key, offered for stripping."""


@dataclass(frozen=True, slots=True)
class Item:
    """One output tensor."""

    name: str
    source: Path
    tensor: TensorInfo
    dtype: str
    """The output dtype (the source's unless cast)."""
    group: int
    """Output storage number: items with the same group share one storage (tied weights)."""

    @property
    def nbytes(self) -> int:
        """Output bytes of this tensor."""
        return self.tensor.numel * DTYPES[self.dtype].itemsize


@dataclass
class Plan:
    """A complete description of one export."""

    ckpt: Checkpoint
    keep: list[Path]
    items: list[Item]
    strip_prefix: str
    """The prefix removed from every name ('' for none)."""
    dtype: str
    """`keep`, `bf16` or `fp16`."""
    format: str
    """`pth` or `safetensors`."""
    metadata: dict[str, str] = field(default_factory=dict)
    """Plain values from the checkpoint's top level (epoch, iteration), as strings."""
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    """Tensors under the kept paths that cannot be exported, and why."""
    detected_prefix: str = ""
    """A prefix every name shares (`module.`), offered even when not stripped."""
    missing: list[tuple[Path, str]] = field(default_factory=list)
    """Entries under the kept paths whose file is gone (a deleted shard), and where they were:
    not written; the CLI asks for `--allow-missing` before exporting without them."""

    @property
    def storages(self) -> list[Item]:
        """The first item of each output storage, in order."""
        seen: set[int] = set()
        out = []
        for it in self.items:
            if self.format == "safetensors" or it.group not in seen:
                seen.add(it.group)
                out.append(it)
        return out

    @property
    def data_bytes(self) -> int:
        """Tensor bytes the output holds."""
        return sum(it.nbytes for it in self.storages)

    @property
    def predicted_bytes(self) -> int:
        """The exact size of the output file."""
        return predicted_size(self)


def make_plan(
    ckpt: Checkpoint,
    keep: list[Path] | None = None,
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
    if dtype not in CAST_TARGETS:
        raise ExportError(ckpt.path, f"unknown --dtype {dtype!r} (keep, bf16 or fp16)")
    if fmt not in ("pth", "safetensors"):
        raise ExportError(ckpt.path, f"unknown --format {fmt!r} (pth or safetensors)")
    keep, kept = kept_tensors(ckpt, keep)
    found: list[tuple[str, Path, TensorInfo]] = []
    skipped: list[tuple[Path, str]] = []
    for name, path, t in kept:
        reason = unexportable(ckpt, t, fmt)
        if reason:
            skipped.append((path, reason))
        else:
            found.append((name, path, t))
    if not found:
        why = f" ({describe_path(skipped[0][0])} is {skipped[0][1]})" if skipped else ""
        more = f" and {len(skipped) - 1:,} more" if len(skipped) > 1 else ""
        raise ExportError(
            ckpt.path, f"no exportable tensors under {', '.join(map(describe_path, keep))}{why}{more}"
        )
    detected_prefix = common_prefix([n for n, _, _ in found])
    strip, names = output_names(ckpt, [n for n, _, _ in found], strip_prefix)
    groups: dict[tuple, int] = {}
    items: list[Item] = []
    for name, (_, path, t) in zip(names, found, strict=True):
        out_dtype = cast_dtype(t.dtype, dtype)
        if fmt == "safetensors" and out_dtype not in SAFETENSORS_CODE:
            skipped.append((path, f"{out_dtype} has no safetensors code"))
            continue
        if fmt == "safetensors" and out_dtype == "float4_e2m1fn_x2" and not t.shape:
            skipped.append((path, "a 0-d float4_e2m1fn_x2 has no safetensors F4 shape"))
            continue
        view = (t.storage_key, t.storage_offset, t.shape, t.stride, t.dtype)
        group = groups.setdefault(view, len(groups))
        items.append(Item(name, path, t, out_dtype, group))
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
    )


def missing_entries(ckpt: Checkpoint, keep: list[Path]) -> list[tuple[Path, str]]:
    """(path, what the reader says of it) of each entry under `keep` that a missing file held:
    a folder opens with a deleted shard's tensors as `missing` rows (their shapes went with it)."""
    out = []
    for base in keep:
        node = ckpt.find(base)
        if node is None or node.kind is NodeKind.TENSOR:
            continue
        for rel, n in walk(node):
            if n.kind is NodeKind.VALUE and n.type == "missing":
                out.append(((*base, *rel), n.text or "missing"))
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
    ckpt: Checkpoint, keep: list[Path] | None
) -> tuple[list[Path], list[tuple[str, Path, TensorInfo]]]:
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
    out: list[tuple[str, Path, TensorInfo]] = []
    for base in keep:
        node = ckpt.find(base)
        if node is None:
            raise ExportError(ckpt.path, f"no {describe_path(base)} in the checkpoint")
        prefix = path_text(base[-1:]) + "." if len(keep) > 1 and base else ""
        for path, t in tensors_of(node, base):
            rel = t.state_dict_key or path_text(path[len(base) :])
            # a kept path that is itself a tensor is named by its own key (not `key.`)
            out.append((prefix + rel if rel else path_text(base[-1:]) or "tensor", path, t))
    return list(keep), out


def file_metadata(ckpt: Checkpoint) -> dict[str, str]:
    out: dict[str, str] = {}
    for c in ckpt.root.children:
        plain = isinstance(c.value, bool | int | float | str) and len(str(c.value)) <= 1000
        if c.kind is NodeKind.VALUE and isinstance(c.key, str) and plain:
            out[c.key] = str(c.value)
    return out


def resolve_path(ckpt: Checkpoint, text: str) -> Path:
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
        path: Path = tuple(a or b if (a or b) else int(c) for a, b, c in keys)
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
    kept_paths: tuple[Path, ...]
    bytes_read: int | None = None
    """Bytes fetched from the server to write it, for a source at a URL (None: local)."""
