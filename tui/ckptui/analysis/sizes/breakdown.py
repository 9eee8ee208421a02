"""Provides `breakdown`: where every byte of a checkpoint file went, and what could be dropped.

Every byte is attributed exactly once. The file's regions (`formats.layout`) are swept in order
and each byte goes to the innermost region covering it: a storage's bytes to that storage, which
belongs to the first tensor (in pickle order) that views it (other tensors viewing it are marked
shared, never counted again); pickle bytes, format metadata and framing overhead to their
categories; bytes no region explains to `unaccounted`. So the categories add up to the file size
by construction, and tests check the regions against files torch itself wrote.

On top of the accounting: groupings by role, top-level key, module prefix, dtype and largest
tensors. The findings, with the bytes each remedy would save, are `sizes_findings`'. Nothing
here reads tensor data; `duplicates.find_duplicates` does that, on demand.
"""

from __future__ import annotations

import heapq
import itertools
import operator
from collections.abc import Callable
from dataclasses import dataclass, field

from ckptui.analysis.roles import ROLE_LABELS, Role, optimizers_of, role_groups, weights_path
from ckptui.analysis.sizes.findings import LONG_SEQUENCE, SizeFinding, size_findings
from ckptui.analysis.sizes.prefixes import Prefix, prefix_tree
from ckptui.analysis.sizes.regions import attribute
from ckptui.core.tree import Checkpoint, KeyPath, Node, NodeKind, Part, Region, TensorInfo, walk
from ckptui.core.units import size

WeightsSize = Callable[[Checkpoint], int | None]
"""The exact size of the weights-only file the export would write (`export.size.exported_size`),
or None when it would write nothing. The export sits above the analysis, so callers that want the
exact number (`ckptui why`, the browser) hand it in; without it the size is estimated."""


@dataclass(frozen=True, slots=True)
class Group:
    """A subtree and the file bytes it owns."""

    path: KeyPath
    role: Role
    bytes: int


@dataclass(frozen=True, slots=True)
class Largest:
    """One of the largest tensors: its path, metadata, and the file bytes it owns."""

    path: KeyPath
    tensor: TensorInfo
    bytes: int


@dataclass(repr=False)
class Breakdown:
    """The size breakdown of one checkpoint."""

    file_bytes: int
    categories: dict[str, int]
    """tensor_data + pickle + metadata + overhead + unaccounted == file_bytes."""
    overhead_detail: dict[str, int]
    """Overhead bytes by what they are (zip local headers, alignment padding, ...)."""
    metadata_detail: dict[str, int]
    """Metadata bytes by what they are (format records, JSON header, TorchScript code)."""
    storage_bytes: dict[str, int]
    """File bytes each storage holds."""
    owner: dict[str, KeyPath]
    """Storage key -> the path of the tensor its bytes are attributed to."""
    path_bytes: dict[KeyPath, int]
    """File bytes owned at each path: tensors owning a storage, inline values."""
    groups: list[Group]
    top_level: list[tuple[KeyPath, int]]
    """Root children with the bytes they own, largest first."""
    roles: dict[Role, int]
    modules: Prefix
    dtypes: dict[str, int]
    largest: list[Largest]
    findings: list[SizeFinding]
    weights_path: KeyPath | None
    weights_only_bytes: int
    optimizer_kind: str | None = None
    shared: list[tuple[KeyPath, KeyPath]] = field(default_factory=list)
    """(tensor, owner) for tensors whose storage's bytes are counted at an earlier tensor."""
    weights_parts: tuple[int, int, int, int] = (0, 0, 0, 0)
    """What `weights_only_bytes` is estimated from: (data bytes, storages, tensors, name
    bytes); kept so that shards' estimates can be merged into one file's."""

    def __repr__(self) -> str:
        # Short on purpose: Textual reprs a worker's arguments on the UI thread, and the
        # default repr of a 100,000-tensor breakdown (its dicts of every storage) held the
        # browser for about 0.3 s at each `w` (issue 16).
        return f"Breakdown({self.file_bytes:,} bytes, {len(self.storage_bytes):,} storages)"

    @property
    def headline(self) -> str:
        """`2.41 GiB · 66 % optimizer state (Adam-style) · weights alone would be 812 MiB`."""
        parts = [size(self.file_bytes)]
        others = [(b, r) for r, b in self.roles.items() if r is not Role.WEIGHTS and b]
        if others and self.file_bytes:
            b, role = max(others, key=lambda x: x[0])
            label = ROLE_LABELS[role]
            if role is Role.OPTIMIZER and self.optimizer_kind:
                label += f" ({self.optimizer_kind})"
            parts.append(f"{100 * b / self.file_bytes:.0f} % {label}")
        if self.weights_path is not None:
            parts.append(f"weights alone would be {size(self.weights_only_bytes)}")
        else:
            parts.append("no model weights found")
        return " · ".join(parts)

    def add_findings(self, found: list[SizeFinding]) -> None:
        """Add findings computed later (duplicates), keeping the largest savings first."""
        self.findings.extend(found)
        self.findings.sort(key=lambda f: -f.saving_bytes)


def breakdown(
    ckpt: Checkpoint, regions: list[Region], weights_size: WeightsSize | None = None
) -> Breakdown:
    """The size breakdown of `ckpt` given its file layout (`formats.layout.read_layout`).

    `weights_only_bytes` is `weights_size(ckpt)` when given and not None, else estimated (a
    folder's shards get the estimate: the folder's breakdown sizes their merged export once)."""
    categories, detail, storage_bytes = _tally(regions, ckpt.file_bytes)

    owner: dict[str, KeyPath] = {}
    path_bytes: dict[KeyPath, int] = {}
    tensors: list[tuple[KeyPath, TensorInfo]] = []
    owned: list[tuple[KeyPath, TensorInfo, int]] = []
    """(path, tensor, storage bytes) of each tensor its storage's bytes are counted at."""
    long_seqs: list[tuple[KeyPath, Node]] = []
    shared: list[tuple[KeyPath, KeyPath]] = []
    inline: list[tuple[KeyPath, Node]] = []
    root = ckpt.root
    tensor_kind = NodeKind.TENSOR
    for path, node in itertools.chain([((), root)], walk(root)):
        kind = node.kind
        if kind is tensor_kind:
            t = node.value
            tensors.append((path, t))
            key = t.storage_key
            if key is None:
                continue
            first = owner.get(key)
            if first is None:
                owner[key] = path
                b = storage_bytes.get(key, 0)
                owned.append((path, t, b))
                if b:
                    path_bytes[path] = path_bytes.get(path, 0) + b
            else:
                shared.append((path, first))
        elif node.extra is not None and node.nbytes:
            inline.append((path, node))
            path_bytes[path] = path_bytes.get(path, 0) + node.nbytes
        elif kind is NodeKind.SEQUENCE and len(node.children) >= LONG_SEQUENCE:
            long_seqs.append((path, node))

    weights = weights_path(ckpt)
    groups_roles = role_groups(ckpt, weights)
    group_of = {p: r for p, r in groups_roles}
    group_bytes: dict[KeyPath, int] = dict.fromkeys(group_of, 0)
    roles: dict[Role, int] = {}
    # the group lengths there are, longest first: a few, where every path length was tried
    lengths = sorted({len(p) for p in group_of}, reverse=True)
    for path, b in path_bytes.items():
        g = _group_for(path, group_of, lengths)
        if g is not None:
            group_bytes[g] += b
    groups = [Group(p, r, group_bytes[p]) for p, r in groups_roles]
    for g in groups:
        roles[g.role] = roles.get(g.role, 0) + g.bytes

    top: dict[KeyPath, int] = {}
    for c in root.children:
        if c.kind is not NodeKind.REF:
            top[(c.key,)] = 0
    for path, b in path_bytes.items():
        if path and (path[0],) in top:
            top[(path[0],)] += b
    top_level = sorted(top.items(), key=lambda kv: -kv[1])

    dtypes: dict[str, int] = {}
    named: list[tuple[str, int, KeyPath]] = []
    n = len(weights) if weights is not None else 0
    for path, t, b in owned:
        dtypes[t.dtype] = dtypes.get(t.dtype, 0) + b
        if weights is not None and path[:n] == weights:
            named.append((t.state_dict_key or _name_below(path, n), b, path))
    modules = prefix_tree(named)
    # the 20 largest, ties in walk order: what a stable sort by size, largest first, keeps;
    # tensors of no bytes rank last, so they are dropped after, not filtered before
    top20 = heapq.nlargest(20, owned, key=_third)
    largest = [Largest(p, t, b) for p, t, b in top20 if b]

    weights_parts = _weights_parts(ckpt, weights, tensors)
    optimizers = optimizers_of(ckpt)
    result = Breakdown(
        file_bytes=ckpt.file_bytes,
        categories=categories,
        overhead_detail=_largest_first(detail[Part.OVERHEAD]),
        metadata_detail=_largest_first(detail[Part.METADATA]),
        storage_bytes=storage_bytes,
        owner=owner,
        path_bytes=path_bytes,
        groups=groups,
        top_level=top_level,
        roles=dict(sorted(roles.items(), key=lambda kv: -kv[1])),
        modules=modules,
        dtypes=dict(sorted(dtypes.items(), key=lambda kv: -kv[1])),
        largest=largest,
        findings=[],
        weights_path=weights,
        weights_only_bytes=0
        if weights is None
        else _weights_only_bytes(ckpt, weights_parts, weights_size),
        weights_parts=weights_parts,
        shared=shared,
        optimizer_kind=optimizers[0].kind if optimizers else None,
    )
    result.add_findings(size_findings(ckpt, result, optimizers, tensors, inline, long_seqs))
    return result


def _third(x: tuple[KeyPath, TensorInfo, int]) -> int:
    return x[2]


def _tally(
    regions: list[Region], total: int
) -> tuple[dict[str, int], dict[Part, dict[str, int]], dict[str, int]]:
    """(bytes per category, overhead and metadata bytes by name, bytes per storage): the runs
    of `attribute(regions, total)` added up.

    Disjoint regions (the usual case) are summed in one pass in file order, which is the order
    `attribute` yields them in, so every dict is filled in the same order; 400,000 regions of a
    100,000-tensor zip no longer make a span tuple and a yielded run each (issue 16)."""
    categories = {p.value: 0 for p in Part} | {"unaccounted": 0}
    detail: dict[Part, dict[str, int]] = {Part.OVERHEAD: {}, Part.METADATA: {}}
    storage_bytes: dict[str, int] = {}
    storage = Part.STORAGE
    kept = [r for r in regions if r.nbytes > 0 and 0 <= r.offset < total]
    kept.sort(key=_offset)
    at = 0
    covered = 0
    stored = 0
    for r in kept:
        start = r.offset
        if start < at:  # regions overlap or nest: the sweep below decides who owns what
            break
        end = e if (e := start + r.nbytes) < total else total  # clipped, without a call
        n = end - start
        at = end
        covered += n
        part = r.part
        if part is storage:
            stored += n
            name = r.name
            storage_bytes[name] = storage_bytes.get(name, 0) + n
        else:
            # Part is a str enum: its members hash and compare as their values
            categories[part] += n
            d = detail.get(part)
            if d is not None:
                d[r.name] = d.get(r.name, 0) + n
    else:
        categories[storage.value] += stored
        categories["unaccounted"] += total - covered
        return categories, detail, storage_bytes
    categories = {p.value: 0 for p in Part} | {"unaccounted": 0}
    detail = {Part.OVERHEAD: {}, Part.METADATA: {}}
    storage_bytes = {}
    # a dict, not `part.value`: an enum member's value is a property call
    value_of = {p: p.value for p in Part}
    for region, n in attribute(regions, total):
        if region is None:
            categories["unaccounted"] += n
            continue
        part = region.part
        categories[value_of[part]] += n
        if part is storage:
            name = region.name
            storage_bytes[name] = storage_bytes.get(name, 0) + n
        else:
            d = detail.get(part)
            if d is not None:
                d[region.name] = d.get(region.name, 0) + n
    return categories, detail, storage_bytes


_offset = operator.attrgetter("offset")


def _largest_first(d: dict[str, int]) -> dict[str, int]:
    return dict(sorted(d.items(), key=lambda kv: -kv[1]))


def _group_for(path: KeyPath, group_of: dict[KeyPath, Role], lengths: list[int]) -> KeyPath | None:
    """The innermost group holding `path`; `lengths`: the groups' path lengths, descending."""
    size = len(path)
    for n in lengths:
        if n <= size and (head := path[:n]) in group_of:
            return head
    return None


def _name_below(path: KeyPath, n: int) -> str:
    """The dotted name of `path` below its first `n` keys; one str key (a flat state dict's
    every tensor) is its own name, without a join per tensor."""
    if len(path) == n + 1 and type(path[n]) is str:
        return path[n]
    return ".".join(str(k) for k in path[n:])


def _weights_parts(
    ckpt: Checkpoint, weights: KeyPath | None, tensors: list[tuple[KeyPath, TensorInfo]]
) -> tuple[int, int, int, int]:
    """(data bytes, storages, tensors, name bytes) of the weights, storages as they are."""
    if weights is None:
        return (0, 0, 0, 0)
    keys: set[str] = set()
    names = 0
    count = 0
    n = len(weights)
    for path, t in tensors:
        if path[:n] != weights:
            continue
        count += 1
        names += len(t.state_dict_key or _name_below(path, n))
        if t.storage_key is not None:
            keys.add(t.storage_key)
    data = sum(ckpt.storages[k].nbytes for k in keys if k in ckpt.storages)
    return (data, len(keys), count, names)


def _weights_only_bytes(
    ckpt: Checkpoint, parts: tuple[int, int, int, int], weights_size: WeightsSize | None
) -> int:
    exact = weights_size(ckpt) if weights_size is not None else None
    return exact if exact is not None else torch_zip_size(*parts)


def torch_zip_size(data_bytes: int, storages: int, tensors: int, name_bytes: int) -> int:
    """Approximate size of a `torch.save` zip of a flat state dict.

    Each storage record costs a 64-byte-aligned local header (~64 bytes on average) and a
    central directory entry (46 bytes + its name, ~20 bytes); the pickle costs about 90 bytes
    per tensor beyond its key (torch._utils._rebuild_tensor_v2 call, persistent id, shape and
    stride tuples), and a few small records add about 1 KiB. Measured against torch.save in
    the tests (within 1 % above a few hundred KiB).
    """
    digits = len(str(max(storages, 1)))
    per_storage = 64 + 46 + 20 + 2 * digits
    return data_bytes + storages * per_storage + tensors * 90 + name_bytes + 1200
