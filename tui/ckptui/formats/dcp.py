"""Provides the reader for `torch.distributed.checkpoint` (DCP) folders: `.metadata` + `*.distcp`.

`.metadata` is a pickle of torch's `Metadata` dataclass (FORMATS.md), read without running it by
`dcp_metadata.load_metadata` (a C-speed path confined to ckptui's own record classes, else the
inert unpickler like any other pickle). It names, for every flattened key (FQN), either a tensor (dtype,
global size and the chunks that tile it) or a pickled object, and for every chunk or object the
`.distcp` file, offset and length of its item (`storage_data`).

In torch 2.13 (and every earlier release) `FileSystemWriter` writes each item as a complete
`torch.save` zip archive (`_write_item`: `torch.save(tensor, stream)`; objects are `torch.save`d
into a BytesIO first). So a chunk's raw bytes lie inside its item at the zip's `data/<key>`
record, and its view (stride, storage offset) is in the item's own `data.pkl`: ckptui reads the
item's central directory and its `data.pkl` (a few hundred bytes each, never the tensor data)
and points `Storage.data_offset` at the raw bytes, so values and export read them in place.

The tree is the global state dict: `planner_data` (written by DefaultSavePlanner, FQN -> the
original key path) nests `model.0.weight` back into `{"model": {"0.weight": ...}}`, keeping
state-dict keys whole as the rest of ckptui does. Without planner data (custom planners,
`flatten_state_dict=False`) DCP itself loads every FQN as a top-level key of the state dict, so
the tree is flat: one key per FQN, not split at dots (splitting would invent a nesting the
checkpoint does not have).

A tensor saved as one chunk covering it gets `storage_key` = that chunk's storage. A tensor
split into several chunks (FSDP/DTensor across ranks) has `layout="chunked"`, no storage key,
and node attrs `chunks` ((offsets, sizes, file) per chunk) and `chunk_storages` (their keys),
each chunk being a Storage of its own. Problems with the data files (missing, shorter than the
metadata says, an item that is not a readable archive) become findings, one per file; the
rest still opens. A `.metadata` that cannot be read is a one-line `CorruptFile`.

No torch here: opening must not pay torch's start-up.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

from ..dtypes import STORAGE_DTYPES, itemsize_of
from ..errors import CkptError, CorruptFile, NotReadable
from ..model import Checkpoint, Finding, Node, NodeKind, Path, Severity, Storage, TensorInfo
from ..recorders import StorageRef, TensorRec
from ..treebuild import TreeBuilder
from ..unpickle import Global, _Malformed, classify_global
from ._common import Source, parse_pid_location
from .dcp_metadata import DCP_GLOBALS, METADATA, Chunk, DcpMetadata, gc_paused, load_metadata

SUFFIX = ".distcp"
MAX_OBJECT_ITEMS = 20_000
"""Pickled-object items read for their content; beyond this they are shown by size only."""
MAX_OBJECT_BYTES = 16 << 20
"""An object item larger than this is shown by size only."""
_TAIL = 4096
_HEAD = 2048
_WHOLE = 16384
"""Items up to this size are read with one pread; larger ones by a head and a tail window."""
_CD = struct.Struct("<I6xH8xIIHHH8xI")
"""A central directory entry: signature, method, sizes, name/extra/comment lengths, offset."""
_LOCAL = struct.Struct("<IHHHHHIIIHH")


def looks_like_dcp(folder: str) -> bool:
    """A `.metadata` pickle beside at least one `*.distcp` file (one listdir, one 2-byte read)."""
    try:
        names = [p.name for p in FsPath(folder).iterdir()]
        if METADATA not in names or not any(n.endswith(SUFFIX) for n in names):
            return False
        with (FsPath(folder) / METADATA).open("rb") as f:
            return f.read(2)[:1] == b"\x80"
    except OSError:
        return False


@dataclass
class _Problems:
    """Per-file trouble, reported as one finding per file and kind."""

    by_file: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def add(self, file: str, kind: str, fqn: str) -> None:
        self.by_file.setdefault((file, kind), []).append(fqn)


def read_dcp(folder: str) -> Checkpoint:
    """Read a DCP folder's `.metadata` (without running it) and its items' headers into one
    checkpoint.

    Args:
        folder: the checkpoint folder.

    Returns:
        The global state dict as a tree; one storage per tensor chunk, `file` naming its
        `.distcp` file relative to the folder.

    Raises:
        CorruptFile: `.metadata` is not a readable DCP Metadata pickle.
        NotReadable: the folder or `.metadata` cannot be read.
    """
    folder = os.fspath(folder)
    with gc_paused():
        return _read(folder)


def _read(folder: str) -> Checkpoint:
    files = _list_files(folder)
    meta_path = str(FsPath(folder) / METADATA)
    try:
        msrc = Source.open(meta_path)
    except OSError as e:
        raise NotReadable(meta_path, e.strerror or str(e)) from None
    try:
        md = load_metadata(msrc)
    finally:
        msrc.close()
    reader = _Reader(folder, files, md, msrc)
    try:
        return reader.read()
    except (RecursionError, MemoryError) as e:
        raise CorruptFile(
            meta_path, f"too deeply nested or too large ({type(e).__name__})"
        ) from None
    finally:
        reader.close()


def _list_files(folder: str) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with os.scandir(folder) as it:
            for e in it:
                if e.is_file():
                    out[e.name] = e.stat().st_size
    except OSError as e:
        raise NotReadable(folder, e.strerror or str(e)) from None
    return dict(sorted(out.items()))


# -- the items ------------------------------------------------------------------------------
class _Reader:
    def __init__(self, folder: str, files: dict[str, int], md: DcpMetadata, msrc: Source) -> None:
        self.folder = folder
        self.files = files
        self.md = md
        self.meta_bytes = msrc.size
        self.sources: dict[str, Source | None] = {}
        self.item_globals: dict[str, Global] = {}
        self.storages: dict[str, Storage] = {}
        self.problems = _Problems()
        self.findings: list[Finding] = []
        self.builder = TreeBuilder()
        self.objects_read = 0
        self.item_cache: dict[bytes, tuple[Any, list[_Ref]]] = {}
        self.zips: _ZipCache = {}
        self.per_file: dict[str, dict[str, int]] = {}

    def close(self) -> None:
        for s in self.sources.values():
            if s is not None:
                s.close()

    def source(self, rel: str) -> Source | None:
        if rel not in self.sources:
            src = None
            if rel in self.files:
                try:
                    src = Source.open(str(FsPath(self.folder) / rel))
                except OSError:
                    src = None
                else:
                    src.globals = self.item_globals
            self.sources[rel] = src
        return self.sources[rel]

    def read(self) -> Checkpoint:
        md = self.md
        leaves: dict[str, Node] = {}
        for fqn, (info, chunks) in md.tensors.items():
            leaves[fqn] = self.tensor(fqn, info, chunks, self.path_of(fqn)[-1])
        for fqn in md.objects:
            leaves[fqn] = self.object(fqn)
        root = self.nest(leaves)
        self.report()
        findings = self.findings
        for g in md.globals.values():
            if g.full not in DCP_GLOBALS:
                self.global_finding(g, (METADATA,), in_metadata=True)
        for g in self.item_globals.values():
            self.global_finding(g, self.builder.global_paths.get(g.full), in_metadata=False)
        order = {"danger": 0, "warning": 1, "info": 2}
        findings.sort(key=lambda f: order[f.severity.value])
        info: dict[str, Any] = {
            "folder": str(FsPath(self.folder).absolute()),
            "files": dict(self.files),
            **md.info,
            "metadata_bytes": self.meta_bytes,
            "planner_data": md.planner is not None,
            "tensors": len(md.tensors),
            "objects": len(md.objects),
            "chunks": sum(len(c) for _, c in md.tensors.values()),
            "per_file": self.per_file,
        }
        return Checkpoint(
            self.folder,
            "dcp",
            sum(self.files.values()),
            root,
            self.storages,
            tuple(findings),
            info,
        )

    def global_finding(self, g: Global, where: Path | None, in_metadata: bool) -> None:
        verdict = classify_global(g)
        if verdict is None:
            return
        kind, severity = verdict
        called = f" with {g.call_args}" if g.call_args else ""
        place = " in .metadata" if in_metadata else " in a .distcp item"
        if kind == "dangerous_call":
            why = f" ({g.verdict.reason})" if g.verdict.reason else ""
            msg = (
                f"{g.full}{why}{called}{place}: torch's DCP reader would call this; ckptui did not"
            )
        elif kind == "unknown_class":
            msg = f"{g.full}{place}: class not known to ckptui, shown as a placeholder"
        else:
            msg = f"{g.full}{called}{place}: unknown function that loading would call; not run"
        self.findings.append(Finding(kind, Severity(severity), msg, None if in_metadata else where))

    # -- tensors -------------------------------------------------------------------------------
    def tensor(self, fqn: str, info: TensorInfo, chunks: list[Chunk], key: Any) -> Node:
        for c in chunks:
            self.chunk(c, info)
        if len(chunks) == 1 and chunks[0].sizes == info.shape:
            # One chunk is the whole tensor: its storage is the tensor's, read in place. A chunk
            # whose bytes are missing keeps its key, so the panel says they are missing.
            c = chunks[0]
            stride, offset = (c.rec.stride, c.rec.offset) if c.rec else (info.stride, 0)
            t = TensorInfo(
                info.shape, info.dtype, stride, c.key if c.linkable else None, offset,
                info.itemsize, "cpu", info.requires_grad,
            )  # fmt: skip
            return Node.make(NodeKind.TENSOR, "torch.Tensor", key, tensor=t)
        if sum(_numel(c.sizes) for c in chunks) < info.numel:
            self.problems.add("", "uncovered", fqn)
        t = TensorInfo(
            info.shape, info.dtype, info.stride, None, 0, info.itemsize, "cpu",
            info.requires_grad, layout="chunked",
        )  # fmt: skip
        attrs = (
            ("chunks", tuple((c.offsets, c.sizes, c.file) for c in chunks)),
            ("chunk_storages", tuple(c.key for c in chunks)),
        )
        return Node.make(NodeKind.TENSOR, "torch.Tensor", key, tensor=t, attrs=attrs)

    def file_stats(self, rel: str) -> dict[str, int]:
        return self.per_file.setdefault(
            rel, {"tensor_items": 0, "tensor_bytes": 0, "object_items": 0, "object_bytes": 0}
        )

    def chunk(self, c: Chunk, info: TensorInfo) -> None:
        """Locate a chunk's raw bytes; sets `c.rec` when they can be read in place."""
        nbytes = _numel(c.sizes) * info.itemsize
        loc = self.md.storage.get((c.fqn, c.offsets))
        if loc is None:
            self.problems.add("", "no_storage_data", c.fqn)
            self.storages[c.key] = Storage(c.key, info.dtype, nbytes, "cpu")
            c.linkable = True
            return
        rel, at, length, transformed = loc
        c.file, c.offset, c.length = rel, at, length
        self.file_stats(rel)["tensor_items"] += 1
        src = self.source(rel)
        problem = None
        if src is None:
            problem = "missing"
        elif at + length > src.size:
            problem = "short"
        elif transformed:
            problem = "transformed"
        if problem is not None or src is None:
            self.problems.add(rel, problem or "missing", c.fqn)
            have = length if problem == "transformed" else None
            self.storages[c.key] = Storage(
                c.key, info.dtype, nbytes, "cpu", file=rel, record_nbytes=have
            )
            c.linkable = True
            return
        try:
            rec, located = _read_item(src, at, length, rel, self.item_cache, "", self.zips)
            if not isinstance(rec, TensorRec) or rec.storage is None or len(located) != 1:
                raise _Malformed("item is not one tensor")
        except (CkptError, _Malformed):
            self.problems.add(rel, "unreadable", c.fqn)
            self.storages[c.key] = Storage(
                c.key, info.dtype, nbytes, "cpu", file=rel, record_nbytes=length
            )
            return
        (_, _, dtype, declared, location), record, off, have = located[0]
        st = Storage(c.key, dtype, declared, location, rel, record, off, have)
        self.storages[c.key] = st
        self.file_stats(rel)["tensor_bytes"] += st.record_nbytes or 0
        if (
            rec.shape != c.sizes
            or rec.dtype != info.dtype
            or rec.layout != "strided"
            or any(s < 0 for s in rec.stride)
            or _span(rec) * itemsize_of(rec.dtype) > min(st.nbytes, st.record_nbytes or 0)
        ):
            self.problems.add(rel, "mismatch", c.fqn)
            return
        c.rec = rec
        c.linkable = True

    # -- pickled objects ----------------------------------------------------------------------
    def object(self, fqn: str) -> Node:
        loc = self.md.storage.get((fqn, None))
        path = self.path_of(fqn)
        key = path[-1]
        if loc is None:
            self.problems.add("", "no_storage_data", fqn)
            return Node.make(NodeKind.VALUE, "missing", key, text="pickled object with no data")
        rel, at, length, transformed = loc
        stats = self.file_stats(rel)
        stats["object_items"] += 1
        stats["object_bytes"] += length
        text = f"pickled object of {length:,} bytes in {rel}"
        src = self.source(rel)
        if src is None:
            self.problems.add(rel, "missing", fqn)
            return Node.make(NodeKind.VALUE, "missing", key, text=f"{text} (file missing)")
        if at + length > src.size:
            self.problems.add(rel, "short", fqn)
            return Node.make(NodeKind.VALUE, "missing", key, text=f"{text} (file cut short)")
        summary = Node.make(NodeKind.VALUE, "pickled object", key, text=text, nbytes=length)
        if transformed or length > MAX_OBJECT_BYTES or self.objects_read >= MAX_OBJECT_ITEMS:
            return summary
        self.objects_read += 1
        try:
            obj, located = _read_item(src, at, length, rel, None, f"{fqn}@obj/")
        except (CkptError, _Malformed):
            self.problems.add(rel, "unreadable", fqn)
            return summary
        for (_, key, dtype, declared, location), record, off, have in located:
            self.storages[key] = Storage(key, dtype, declared, location, rel, record, off, have)
        return self.builder.build(obj, key, path)

    # -- the tree -------------------------------------------------------------------------------
    def path_of(self, fqn: str) -> Path:
        planner = self.md.planner
        if planner is not None and fqn in planner:
            return planner[fqn]
        return (fqn,)

    def nest(self, leaves: dict[str, Node]) -> Node:
        from dataclasses import replace

        tree: dict[Any, Any] = {}
        for fqn in self.md.order:
            node = leaves[fqn]
            path = self.path_of(fqn)
            d = tree
            ok = True
            for k in path[:-1]:
                nxt = d.setdefault(k, {})
                if isinstance(nxt, Node):
                    ok = False
                    break
                d = nxt
            if not ok or path[-1] in d:
                self.problems.add("", "clash", fqn)
                path = (fqn,)
                d = tree
                if fqn in d:
                    continue
            d[path[-1]] = node if node.key == path[-1] else replace(node, key=path[-1])

        def build(key: Any, d: dict[Any, Any]) -> Node:
            children = tuple(v if isinstance(v, Node) else build(k, v) for k, v in d.items())
            if d and all(type(k) is int for k in d):
                return Node.make(NodeKind.SEQUENCE, "list", key, children)
            return Node.make(NodeKind.MAPPING, "dict", key, children)

        return build(None, tree)

    def report(self) -> None:
        what = {
            "missing": ("missing_file", Severity.WARNING, "is missing: {n} items are unavailable"),
            "short": (
                "short_file",
                Severity.WARNING,
                "is shorter than .metadata says: {n} items are cut off",
            ),
            "unreadable": (
                "corrupt_item",
                Severity.WARNING,
                "holds {n} items that are not readable torch.save archives",
            ),
            "mismatch": (
                "chunk_mismatch",
                Severity.WARNING,
                "holds {n} chunks whose shape or dtype differ from .metadata",
            ),
            "transformed": (
                "transformed_items",
                Severity.INFO,
                (
                    "holds {n} items written through stream transforms (e.g. compression): "
                    "values cannot be read in place"
                ),
            ),
            "no_storage_data": (
                "no_storage_data",
                Severity.WARNING,
                ".metadata names no data for {n} items",
            ),
            "uncovered": (
                "uncovered_tensor",
                Severity.WARNING,
                "{n} tensors are not fully covered by their chunks",
            ),
            "clash": (
                "key_clash",
                Severity.WARNING,
                "{n} keys clash in planner_data; shown under their flat names",
            ),
        }
        for (file, kind), fqns in self.problems.by_file.items():
            fkind, sev, msg = what[kind]
            head = f"{file} " if file else ""
            example = f" (first: {fqns[0]})"
            path = self.path_of(fqns[0])
            self.findings.append(
                Finding(fkind, sev, head + msg.format(n=f"{len(fqns):,}") + example, path)
            )


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _span(rec: TensorRec) -> int:
    if any(d == 0 for d in rec.shape):
        return 0
    return rec.offset + sum((d - 1) * s for d, s in zip(rec.shape, rec.stride, strict=False)) + 1


# -- one item: a torch.save zip at (offset, length) of a .distcp file -------------------------
class _Item:
    """Bytes `start:start+length` of a source, read through at most three small windows.

    A small item is read whole with one pread; a large one by its tail (the central directory)
    and its head (data.pkl's local header and the pickle); anything else by a pread of its own.
    """

    __slots__ = ("head", "length", "src", "start", "tail", "tail_at")

    def __init__(self, src: Source, start: int, length: int) -> None:
        self.src, self.start, self.length = src, start, length
        if length <= _WHOLE:
            self.head = self.tail = src.read_at(start, length)
            self.tail_at = 0
        else:
            self.head = b""
            self.tail_at = length - _TAIL
            self.tail = src.read_at(start + self.tail_at, _TAIL)
        if len(self.tail) != length - self.tail_at:
            raise _Malformed("item cut short")

    def read(self, at: int, n: int) -> bytes:
        """`n` bytes at item offset `at` (fewer only past the item's end)."""
        n = max(0, min(n, self.length - at))
        if at >= self.tail_at:
            return self.tail[at - self.tail_at : at - self.tail_at + n]
        if not self.head:
            self.head = self.src.read_at(self.start, min(self.length, _HEAD))
        if at + n <= len(self.head):
            return self.head[at : at + n]
        return self.src.read_at(self.start + at, n)


_Zip = tuple[bytes, dict[bytes, tuple[int, int, int]], int]
_ZipCache = dict[tuple[int, int, int, int], list[tuple[bytearray, tuple[int, ...], _Zip]]]


def _parse_zip(item: _Item, cache: _ZipCache | None = None) -> _Zip:
    """(archive name, archive-relative name -> (local header offset, size, method), offset of the
    central directory), from the central directory at the item's end.

    Items of one shape and dtype have central directories that differ only in their CRC-32
    fields (which the parse ignores), so with a `cache` a directory equal to an earlier one but
    for those fields reuses its parse (measured: half of reading 10,000 items went here).
    """
    length, tail = item.length, item.tail
    eocd = tail.rfind(b"PK\x05\x06", max(0, len(tail) - 22 - 65535))
    if eocd < 0 or eocd + 22 > len(tail):
        raise _Malformed("item is not a zip archive")
    _, _, _, _, count, cd_size, cd_off, _ = struct.unpack_from("<IHHHHIIH", tail, eocd)
    if count == 0xFFFF or cd_size == 0xFFFFFFFF or cd_off == 0xFFFFFFFF:
        loc = eocd - 20
        if loc < 0 or tail[loc : loc + 4] != b"PK\x06\x07":
            raise _Malformed("zip64 locator missing")
        (z64,) = struct.unpack_from("<Q", tail, loc + 8)
        rec = item.read(z64, 56)
        if len(rec) < 56 or rec[:4] != b"PK\x06\x06":
            raise _Malformed("zip64 end record missing")
        count, cd_size, cd_off = struct.unpack_from("<QQQ", rec, 32)
    if cd_off + cd_size > length or count > 1 << 20:
        raise _Malformed("central directory outside the item")
    cd = item.read(cd_off, cd_size)
    shape = (length, count, cd_off, cd_size)
    seen = cache.get(shape) if cache is not None else None
    for masked, crcs, parsed in seen or ():
        mine = bytearray(cd)
        for p in crcs:
            mine[p : p + 4] = b"\0\0\0\0"
        if mine == masked:
            return parsed
    records: dict[bytes, tuple[int, int, int]] = {}
    archive = b""
    pos = 0
    crcs: list[int] = []
    for _ in range(count):
        crcs.append(pos + 16)
        sig, method, csize, usize, nlen, elen, clen, local = _CD.unpack_from(cd, pos)
        if sig != 0x02014B50:
            raise _Malformed("bad central directory entry")
        name = cd[pos + 46 : pos + 46 + nlen]
        if 0xFFFFFFFF in (csize, usize, local):
            extra = cd[pos + 46 + nlen : pos + 46 + nlen + elen]
            csize, usize, local = _zip64_extra(extra, csize, usize, local)
        pos += 46 + nlen + elen + clen
        slash = name.find(b"/")
        archive = archive or name[:slash]
        if slash <= 0 or name[:slash] != archive or name[slash + 1 :] in records:
            raise _Malformed("not a torch.save archive (records outside one folder, or twice)")
        if local + 30 > length:
            raise _Malformed("zip record outside the item")
        records[name[slash + 1 :]] = (local, csize, method)
    if cache is not None:
        masked = bytearray(cd)
        for p in crcs:
            masked[p : p + 4] = b"\0\0\0\0"
        entries = cache.setdefault(shape, [])
        if len(entries) < 4:
            entries.append((masked, tuple(crcs), (archive, records, cd_off)))
    return archive, records, cd_off


def _zip64_extra(extra: bytes, csize: int, usize: int, local: int) -> tuple[int, int, int]:
    pos = 0
    while pos + 4 <= len(extra):
        hid, size = struct.unpack_from("<HH", extra, pos)
        if hid == 1:
            vals = list(struct.unpack_from(f"<{size // 8}Q", extra, pos + 4))
            if usize == 0xFFFFFFFF:
                usize = vals.pop(0)
            if csize == 0xFFFFFFFF:
                csize = vals.pop(0)
            if local == 0xFFFFFFFF:
                local = vals.pop(0)
            return csize, usize, local
        pos += 4 + size
    raise _Malformed("zip64 sizes missing")


def _record(
    item: _Item, records: dict[bytes, tuple[int, int, int]], name: bytes
) -> tuple[int, int]:
    """(item offset of the data, size) of a stored record, from its local header."""
    entry = records.get(name)
    if entry is None:
        raise _Malformed(f"item has no {name!r} record")
    local, csize, method = entry
    if method != 0:
        raise _Malformed(f"{name!r} is compressed")
    h = item.read(local, 30)
    if len(h) < 30:
        raise _Malformed("item cut short")
    f = _LOCAL.unpack(h)
    if f[0] != 0x04034B50:
        raise _Malformed("bad local header")
    data = local + 30 + f[9] + f[10]
    if data + csize > item.length:
        raise _Malformed(f"{name!r} runs past the item")
    return data, csize


_Ref = tuple[str, str, str, int, str]
"""A storage the item's pickle names: (its key, key shown, dtype, declared bytes, location)."""


def _unpickle_item(
    src: Source, item: _Item, data: bytes, at: int, where: str, prefix: str
) -> tuple[Any, list[_Ref]]:
    """The item's data.pkl, unpickled inertly; storages are only noted (located later)."""
    refs: dict[str, _Ref] = {}
    storage_refs: dict[str, StorageRef] = {}

    def persistent_load(pid: Any) -> Any:
        if not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage":
            raise _Malformed("unexpected persistent id")
        _, cls, key, location, count = pid
        if not isinstance(cls, Global) or cls.full not in STORAGE_DTYPES:
            raise _Malformed(f"unknown storage class {cls!r}")
        if not isinstance(key, str) or type(count) is not int or not 0 <= count < 1 << 62:
            raise _Malformed("malformed storage persistent id")
        ref = storage_refs.get(key)
        if ref is None:
            dtype = STORAGE_DTYPES[cls.full]
            nbytes = count * itemsize_of(dtype)
            loc = parse_pid_location(location)
            ref = storage_refs[key] = StorageRef(prefix + key, dtype, nbytes, loc)
            refs[key] = (key, prefix + key, dtype, nbytes, loc)
        return ref

    u = src.unpickler(data, where, persistent_load, base=item.start + at)
    obj, _ = u.load(0, len(data))
    return obj, list(refs.values())


def _read_item(
    src: Source,
    start: int,
    length: int,
    rel: str,
    cache: dict[bytes, tuple[Any, list[_Ref]]] | None,
    prefix: str = "",
    zips: _ZipCache | None = None,
) -> tuple[Any, list[tuple[_Ref, str, int, int]]]:
    """Unpickle the torch.save archive at `start` of `src` and locate its storages.

    Returns:
        (the root object, [(storage ref, record name, absolute data offset, bytes held)]).
        With a `cache`, identical data.pkl bytes (every chunk of one shape and dtype) are
        unpickled once: the inert result depends on the bytes alone. `zips` caches central
        directory parses (`_parse_zip`).
    """
    item = _Item(src, start, length)
    archive, records, _ = _parse_zip(item, zips)
    at, size = _record(item, records, b"data.pkl")
    data = item.read(at, size)
    hit = cache.get(data) if cache is not None else None
    if hit is None:
        hit = _unpickle_item(src, item, data, at, f"{rel} item at byte {start}", prefix)
        if cache is not None:
            cache[data] = hit
    obj, refs = hit
    located = []
    for ref in refs:
        name = b"data/" + ref[0].encode("utf-8", "surrogateescape")
        off, have = _record(item, records, name)
        record = (archive + b"/" + name).decode("utf-8", "replace")
        located.append((ref, record, start + off, min(have, ref[3])))
    return obj, located
