"""Provides `breakdown_dcp`: where every byte of a DCP checkpoint folder went, file by file.

A DCP folder is one checkpoint spread over files: `.metadata` and `__<rank>_<n>.distcp` files
whose items are each a complete `torch.save` zip at the (offset, length) `.metadata` gives
(FORMATS.md). To reuse `sizes.breakdown` (roles, groups, module prefixes, dtypes, the largest
tensors, findings), the folder's files are laid end to end, in name order, as one virtual file,
and its regions listed at their file's base offset:

- `.metadata`: metadata.
- each tensor item: its zip framing (local headers, alignment padding, data descriptors,
  central directory) is overhead; `data.pkl` is pickle; the small records (`version`, `byteorder`,
  `.data/serialization_id`, ...) are metadata; the chunk's raw bytes are tensor data (the storage
  `read_dcp` located). An item written through stream transforms counts whole as tensor data.
- each object item (a pickled non-tensor value): pickle, storages inside it nesting as usual.
- bytes of `.distcp` files no item explains, or items that are not readable archives:
  unaccounted; other files in the folder: `other_files`, as in a folder breakdown.
So the categories add up to the folder's size exactly.

A tensor split in chunks (DTensor/FSDP shards across ranks) has no storage key of its own; for
the breakdown it gets a virtual storage `<fqn>@*` made of its chunks' bytes, so the tensor owns
them all and its role, dtype and module prefix count its global size.

Paths: every path of the result is a path of `ckpt`'s tree (groups, largest tensors, module
prefixes, findings, shared), except `top_level`, which has one row per file of the folder,
`(file name,)`, with the bytes of the tensor data and object items that file holds (largest
first; with the other rows of a breakdown they add up to the folder's size).
"""

from __future__ import annotations

import struct
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

from ckptui.analysis.sizes.breakdown import Breakdown, WeightsSize, breakdown
from ckptui.core.bulk import gc_paused
from ckptui.core.errors import CkptError, CorruptFile
from ckptui.core.tree import Checkpoint, KeyPath, Node, Part, Region, Storage, walk
from ckptui.formats.dcp.interpretation import DcpMetadata
from ckptui.formats.dcp.items import Item, ZipCache, parse_zip
from ckptui.formats.dcp.listing import SUFFIX
from ckptui.formats.dcp.metadata import METADATA, load_metadata
from ckptui.formats.dcp.reader import METADATA_MEMO
from ckptui.formats.source import Source
from ckptui.unpickler.inert import Malformed

_LOCAL = struct.Struct("<IHHHHHIIIHH")
FRAMING = "zip framing of items"
"""Overhead detail: the items' local headers, alignment padding and central directories."""


def breakdown_dcp(ckpt: Checkpoint, weights_size: WeightsSize | None = None) -> Breakdown:
    """The size breakdown of a DCP folder opened by `formats.dcp.read_dcp`.

    Args:
        ckpt: the opened folder (`format == "dcp"`).

    Returns:
        The breakdown; its paths are tree paths except `top_level` (one row per file).

    Raises:
        CorruptFile: a file of the folder changed size since it was opened, or `.metadata`
            cannot be read any more.
        NotReadable: the folder cannot be read.
    """
    folder = str(ckpt.info["folder"])
    files: dict[str, int] = dict(ckpt.info["files"])
    base: dict[str, int] = {}
    at = 0
    for name, n in files.items():
        base[name] = at
        at += n
    for name, n in files.items():
        try:
            now = (Path(folder) / name).stat().st_size
        except OSError:
            now = -1
        if now != n:
            raise CorruptFile(str(Path(folder) / name), "the file changed since it was opened")
    with gc_paused():
        view, chunk_owner = _virtual(ckpt)

        def load() -> DcpMetadata:
            msrc = Source.open(str(Path(folder) / METADATA))
            try:
                return load_metadata(msrc)
            finally:
                msrc.close()

        # the metadata read at open (sizes checked unchanged above), else read again
        md = ckpt.memo(METADATA_MEMO, load)
        regions = _regions(folder, files, base, view, md, chunk_owner)
        b = breakdown(view, regions, weights_size)
    other = sum(n for name, n in files.items() if name != METADATA and not name.endswith(SUFFIX))
    b.categories["unaccounted"] -= other  # no region covers them: they are not part of the DCP
    b.categories["other_files"] = other
    b.top_level = _per_file(view, files, md, b, chunk_owner)
    return b


def _virtual(ckpt: Checkpoint) -> tuple[Checkpoint, dict[str, str]]:
    """`ckpt` with each chunked tensor viewing one virtual storage of all its chunks.

    Returns:
        (the checkpoint to break down, chunk storage key -> its tensor's virtual key).
    """
    storages = dict(ckpt.storages)
    owner: dict[str, str] = {}
    targets: dict[KeyPath, Node] = {}
    for path, node in walk(ckpt.root):
        t = node.tensor
        if t is None or t.layout != "chunked":
            continue
        keys = dict(node.attrs).get("chunk_storages") or ()
        if not keys:
            continue
        vkey = str(keys[0]).rsplit("@", 1)[0] + "@*"
        for k in keys:
            owner[k] = vkey
        nbytes = sum(storages[k].nbytes for k in keys if k in storages)
        storages[vkey] = Storage(vkey, t.dtype, nbytes, t.device)
        targets[path] = replace(node, value=replace(t, storage_key=vkey))
    if not targets:
        return ckpt, owner
    return replace(ckpt, root=_rebuilt(ckpt.root, targets), storages=storages), owner


def _rebuilt(root: Node, targets: dict[KeyPath, Node]) -> Node:
    """`root` with the nodes at `targets`' paths replaced, rebuilding only their ancestors."""
    trie: dict[Any, Any] = {}
    for path, node in targets.items():
        d = trie
        for k in path[:-1]:
            d = d.setdefault(("in", k), {})
        d[("at", path[-1])] = node

    def build(node: Node, below: dict[Any, Any]) -> Node:
        children = []
        for c in node.children:
            new = below.get(("at", c.key))
            if new is None:
                inner = below.get(("in", c.key))
                new = build(c, inner) if inner else c
            children.append(new)
        return replace(node, children=tuple(children))

    return build(root, trie)


def _regions(
    folder: str,
    files: dict[str, int],
    base: dict[str, int],
    view: Checkpoint,
    md: DcpMetadata,
    chunk_owner: dict[str, str],
) -> list[Region]:
    regions: list[Region] = []
    if METADATA in files:
        regions.append(Region(base[METADATA], files[METADATA], Part.METADATA, ".metadata"))
    located: set[tuple[str, int]] = set()
    for st in view.storages.values():
        if st.file in base and st.data_offset is not None and st.record_nbytes:
            located.add((st.file, st.data_offset))
            name = chunk_owner.get(st.key, st.key)
            regions.append(
                Region(base[st.file] + st.data_offset, st.record_nbytes, Part.STORAGE, name)
            )
    sources: dict[str, Source] = {}
    zips: ZipCache = {}
    try:
        for (fqn, offsets), (rel, at, n, transformed) in md.storage.items():
            if rel not in base or at + n > files[rel]:
                continue  # missing or cut short: no bytes, or unaccounted ones
            start = base[rel] + at
            if offsets is None:
                regions.append(Region(start, n, Part.PICKLE, "object items"))
                continue
            if transformed:
                key = f"{fqn}@[{','.join(map(str, offsets))}]"
                regions.append(Region(start, n, Part.STORAGE, chunk_owner.get(key, key)))
                continue
            src = sources.get(rel)
            if src is None:
                src = sources[rel] = Source.open(str(Path(folder) / rel))
            with suppress(CkptError, Malformed, struct.error):  # else its bytes stay unaccounted
                regions.extend(_item_regions(src, base[rel], at, n, located, rel, zips))
    except OSError as e:
        raise CorruptFile(folder, f"cannot read the data files ({e.strerror or e})") from None
    finally:
        for s in sources.values():
            s.close()
    return regions


def _item_regions(
    src: Source,
    base: int,
    at: int,
    n: int,
    located: set[tuple[str, int]],
    rel: str,
    zips: ZipCache,
) -> list[Region]:
    """The records of the torch.save zip at `at` of a data file, over one framing region for
    the whole item (local headers, alignment padding, data descriptors, central directory: the
    records nest in it and take their own bytes). A chunk's raw bytes are its storage's region.
    One framing region instead of three per record keeps a 10,000-item folder at 80,000 regions
    (measured: 290,000 regions took 1.7 s to sweep, most of the breakdown's time)."""
    item = Item(src, at, n)
    _, records, _ = parse_zip(item, zips)
    start = base + at
    out = [Region(start, n, Part.OVERHEAD, FRAMING)]
    for name, (local, csize, _) in records.items():
        h = item.read(local, 30)
        if len(h) < 30:
            raise Malformed("item cut short")
        f = _LOCAL.unpack(h)
        data = local + 30 + f[9] + f[10]
        if data + csize > n:
            raise Malformed("record runs past the item")
        if (rel, at + data) in located:
            continue  # a chunk's raw bytes: the storage's region
        if name == b"data.pkl":
            out.append(Region(start + data, csize, Part.PICKLE, "data.pkl"))
        elif name.startswith(b"data/"):
            out.append(Region(start + data, csize, Part.METADATA, "storage records no tensor uses"))
        else:
            out.append(Region(start + data, csize, Part.METADATA, "format records"))
    return out


def _per_file(
    view: Checkpoint,
    files: dict[str, int],
    md: DcpMetadata,
    b: Breakdown,
    chunk_owner: dict[str, str],
) -> list[tuple[KeyPath, int]]:
    """One `top_level` row per file: the bytes of owned tensor data and object items in it."""
    held = dict.fromkeys(files, 0)
    for st in view.storages.values():
        owned = chunk_owner.get(st.key, st.key) in b.owner
        if owned and st.file in held and st.data_offset is not None and st.record_nbytes:
            held[st.file] += st.record_nbytes
    planner = md.planner or {}
    file_of = {
        planner.get(fqn, (fqn,)): md.storage[(fqn, None)][0]
        for fqn in md.objects
        if (fqn, None) in md.storage
    }
    owners = set(b.owner.values())
    for path, n in b.path_bytes.items():
        rel = file_of.get(path)
        if path not in owners and rel in held:
            held[rel] += n
    return sorted((((name,), n) for name, n in held.items()), key=lambda kv: -kv[1])
