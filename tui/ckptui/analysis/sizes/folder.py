"""Provides `breakdown_folder`: the size breakdown of a folder of checkpoint files.

Sharded checkpoints (Hugging Face `model-00001-of-00003.safetensors`, `pytorch_model-*.bin`,
DeepSpeed `global_step*/`) are folders. Each checkpoint file in the folder (and its subfolders)
is broken down on its own and the results are merged under the file's relative name as the
first key, so the categories add up to the sum of the files. Files that are not checkpoints
(`config.json`, the shard index, tokenizer files) count as `other_files`; files that look like
checkpoints but cannot be read count as `unaccounted` and get a finding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from ckptui.analysis.roles import Role
from ckptui.analysis.sizes.breakdown import (
    Breakdown,
    Group,
    Largest,
    Prefix,
    WeightsSize,
    breakdown,
    torch_zip_size,
)
from ckptui.analysis.sizes.findings import SizeFinding
from ckptui.core.bulk import gc_paused
from ckptui.core.errors import CkptError, NotACheckpoint
from ckptui.core.tree import Checkpoint, KeyPath
from ckptui.formats import open_checkpoint
from ckptui.formats.layout import read_layout
from ckptui.formats.listing import folder_files
from ckptui.formats.sharded import is_index_file
from ckptui.formats.source import is_url

FileHook = Callable[[str, object, Breakdown], None]
"""Called with (relative name, checkpoint, its breakdown) for each checkpoint file read."""


def breakdown_folder(folder: str, each: FileHook | None = None) -> Breakdown:
    """The merged breakdown of every checkpoint file below `folder`.

    A folder at a URL cannot be walked (HTTP does not list): it is opened again as a checkpoint
    (its index and headers, metadata only) and broken down from the files that names.
    """
    if is_url(folder):
        return breakdown_of(open_checkpoint(folder.rstrip("/") + "/"), each)
    return _breakdown_files(folder, folder_files(folder), {}, each)


def _breakdown_files(
    folder: str,
    listing: Iterable[tuple[str, int]],
    other: dict[str, int],
    each: FileHook | None,
) -> Breakdown:
    """`listing`'s checkpoint files broken down and merged; `other` (and any file that is no
    checkpoint) counts as `other_files`."""
    parts: list[tuple[str, Breakdown]] = []
    other = dict(other)
    unreadable: list[SizeFinding] = []
    for name, nbytes in listing:
        if is_index_file(name):
            other[name] = nbytes  # an index opens as the whole sharded model: not a part
            continue
        path = f"{folder}/{name}" if is_url(folder) else str(Path(folder) / name)
        try:
            ckpt = open_checkpoint(path)
        except NotACheckpoint:
            other[name] = nbytes
            continue
        except CkptError as e:
            unreadable.append(
                SizeFinding("unreadable", nbytes, 0, ((name,),), f"{name}: {e.message}")
            )
            continue
        b = breakdown(ckpt, read_layout(ckpt))  # estimated: the merged export is sized once
        if each is not None:
            each(name, ckpt, b)
        parts.append((name, b))
    merged = merge(parts, other)
    merged.categories["unaccounted"] += sum(f.bytes for f in unreadable)
    merged.file_bytes += sum(f.bytes for f in unreadable)
    merged.add_findings(unreadable)
    return merged


def breakdown_of(
    ckpt: Checkpoint, each: FileHook | None = None, weights_size: WeightsSize | None = None
) -> Breakdown:
    """The size breakdown of an opened checkpoint: its file's, or for a checkpoint of many
    files (shards, a folder of checkpoints) its whole folder's, each checkpoint file broken down
    on its own (a stray copy beside the shards is part of why the folder is big).
    `weights_size` gives the exact weights-only size (see `sizes.breakdown.WeightsSize`).

    A folder at a URL is not listed again: its files are the ones the open recorded
    (`info["files"]`, their sizes as opened), plus the index and any other files it saw.
    """
    with gc_paused():  # millions of small objects, no cycles (see core.bulk)
        return _breakdown_of(ckpt, each, weights_size)


def _breakdown_of(
    ckpt: Checkpoint, each: FileHook | None, weights_size: WeightsSize | None
) -> Breakdown:
    folder = ckpt.info.get("folder")
    if folder is None:
        return breakdown(ckpt, read_layout(ckpt), weights_size)
    if ckpt.format == "dcp":  # .distcp files are items, not checkpoints: laid end to end
        from ckptui.analysis.sizes.dcp import breakdown_dcp

        return breakdown_dcp(ckpt, weights_size)
    if is_url(str(folder)):
        other = dict(ckpt.info.get("other_files", {}))
        if "index" in ckpt.info:
            other[ckpt.info["index"]] = int(ckpt.info.get("index_bytes", 0))
        b = _breakdown_files(str(folder), ckpt.info.get("files", {}).items(), other, each)
    else:
        b = breakdown_folder(folder, each)
    if b.weights_path is not None and weights_size is not None:  # the merged export, exactly
        b.weights_only_bytes = weights_size(ckpt) or b.weights_only_bytes
    return b


def tree_path(ckpt: Checkpoint, path: KeyPath) -> KeyPath:
    """A breakdown path as a path of `ckpt`'s tree: a sharded model's breakdown is keyed by
    shard first, while its tree is one state dict (the shard's own row maps to the root); a
    DCP folder's per-file rows map to the root too, and so do those of a folder holding one
    checkpoint file (its tree is that file's)."""
    if ckpt.format in ("hf-sharded", "dcp") and path and path[0] in ckpt.info.get("files", {}):
        return path[1:]
    if path and path[0] == ckpt.info.get("single_file"):  # a folder that is one file's tree
        return path[1:]
    return path


def merge(parts: list[tuple[str, Breakdown]], other_files: dict[str, int]) -> Breakdown:
    """One breakdown for several files; every path gets the file's name as its first key."""
    categories: dict[str, int] = {}
    overhead: dict[str, int] = {}
    metadata: dict[str, int] = {}
    roles: dict[Role, int] = {}
    dtypes: dict[str, int] = {}
    out = Breakdown(
        file_bytes=0,
        categories=categories,
        overhead_detail=overhead,
        metadata_detail=metadata,
        storage_bytes={},
        owner={},
        path_bytes={},
        groups=[],
        top_level=[],
        roles=roles,
        modules=Prefix(""),
        dtypes=dtypes,
        largest=[],
        findings=[],
        weights_path=None,
        weights_only_bytes=0,
    )
    weights: list[KeyPath] = []
    for name, b in parts:
        out.file_bytes += b.file_bytes
        _add(categories, b.categories)
        _add(overhead, b.overhead_detail)
        _add(metadata, b.metadata_detail)
        _add(roles, b.roles)
        _add(dtypes, b.dtypes)
        for key, n in b.storage_bytes.items():
            out.storage_bytes[f"{name}:{key}"] = n
        for key, p in b.owner.items():
            out.owner[f"{name}:{key}"] = (name, *p)
        for p, n in b.path_bytes.items():
            out.path_bytes[(name, *p)] = n
        out.groups += [Group((name, *g.path), g.role, g.bytes) for g in b.groups]
        out.shared += [((name, *a), (name, *o)) for a, o in b.shared]
        out.top_level.append(((name,), sum(b.path_bytes.values())))
        _merge_prefix(out.modules, b.modules, name)
        out.largest += [Largest((name, *x.path), x.tensor, x.bytes) for x in b.largest]
        out.findings += [
            SizeFinding(
                f.kind,
                f.bytes,
                f.saving_bytes,
                tuple((name, *p) for p in f.paths),
                f"{name}: {f.message}",
            )
            for f in b.findings
        ]
        if b.weights_path is not None:
            weights.append((name, *b.weights_path))
            out.weights_parts = tuple(  # type: ignore[assignment]
                a + c for a, c in zip(out.weights_parts, b.weights_parts, strict=True)
            )
        out.optimizer_kind = out.optimizer_kind or b.optimizer_kind
    categories.setdefault("unaccounted", 0)
    categories["other_files"] = sum(other_files.values())
    out.file_bytes += categories["other_files"]
    for name in other_files:
        out.top_level.append(((name,), 0))
        out.groups.append(Group((name,), Role.METADATA, 0))
    if weights:  # one file holding every shard's weights
        out.weights_only_bytes = torch_zip_size(*out.weights_parts)
    # Shards that are each a flat state dict make the folder itself the weights.
    if weights and all(len(w) == 1 for w in weights):
        out.weights_path = () if len(weights) > 1 else weights[0]
    elif weights:
        out.weights_path = weights[0]
    out.top_level.sort(key=lambda kv: -kv[1])
    out.largest = sorted(out.largest, key=lambda x: -x.bytes)[:20]
    out.roles = dict(sorted(roles.items(), key=lambda kv: -kv[1]))
    out.dtypes = dict(sorted(dtypes.items(), key=lambda kv: -kv[1]))
    out.findings.sort(key=lambda f: -f.saving_bytes)
    return out


def _add(into: dict, more: dict) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + v


def _merge_prefix(into: Prefix, more: Prefix, name: str) -> None:
    into.bytes += more.bytes
    into.tensors += more.tensors
    if into.first is None and more.first is not None:
        into.first = (name, *more.first)
    for key, child in more.children.items():
        target = into.children.get(key)
        if target is None:
            target = into.children[key] = Prefix(key)
        _merge_prefix(target, child, name)
