"""Provides the reader for `torch.distributed.checkpoint` (DCP) folders: `.metadata` + `*.distcp`.

`.metadata` is a pickle of torch's `Metadata` dataclass (FORMATS.md), read without running it by
`dcp_metadata.load_metadata` (a C-speed path confined to ckptui's own record classes, else the
inert unpickler like any other pickle). It names, for every flattened key (FQN), either a tensor (dtype,
global size and the chunks that tile it) or a pickled object, and for every chunk or object the
`.distcp` file, offset and length of its item (`storage_data`).

Each item is a complete `torch.save` zip archive; `dcp_items` reads one (its central directory
and `data.pkl`, never the tensor data) and locates its storages, so `Storage.data_offset` points
at a chunk's raw bytes inside its `.distcp` file and values and export read them in place.

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
metadata says, an item that is not a readable archive) become findings, one per file
(`dcp_findings`); the rest still opens. A `.metadata` that cannot be read is a one-line
`CorruptFile`.

No torch here: opening must not pay torch's start-up.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ckptui.core.bulk import gc_paused
from ckptui.core.dtypes import itemsize_of
from ckptui.core.errors import CkptError, CorruptFile, NotReadable
from ckptui.core.tree import (
    Checkpoint,
    Finding,
    KeyPath,
    Node,
    NodeKind,
    Severity,
    Storage,
    TensorInfo,
)
from ckptui.formats.dcp.findings import Problems, problem_findings
from ckptui.formats.dcp.interpretation import Chunk, DcpMetadata
from ckptui.formats.dcp.items import Ref, ZipCache, read_item
from ckptui.formats.dcp.listing import list_files
from ckptui.formats.dcp.metadata import DCP_GLOBALS, METADATA, load_metadata
from ckptui.formats.source import Source
from ckptui.unpickler.inert import Global, Malformed, classify_global
from ckptui.unpickler.recorded import TensorRec
from ckptui.unpickler.treebuild import TreeBuilder

MAX_OBJECT_ITEMS = 20_000
"""Pickled-object items read for their content; beyond this they are shown by size only."""
MAX_OBJECT_BYTES = 16 << 20
"""An object item larger than this is shown by size only."""


METADATA_MEMO = "dcp_metadata"
"""`Checkpoint.memo` name of the `.metadata` the folder was opened with."""


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
    outside: dict[str, str] = {}
    files = list_files(folder, outside)
    meta_path = str(Path(folder) / METADATA)
    if METADATA in outside:
        raise NotReadable(meta_path, outside[METADATA])
    if METADATA not in files and Path(meta_path).exists():
        # a folder, or a FIFO: opening one for reading would wait for a writer forever
        raise NotReadable(meta_path, "is not a regular file")
    try:
        msrc = Source.open(meta_path)
    except OSError as e:
        raise NotReadable(meta_path, e.strerror or str(e)) from None
    try:
        md = load_metadata(msrc)
    finally:
        msrc.close()
    reader = _Reader(folder, files, md, msrc)
    reader.outside = outside
    try:
        ckpt = reader.read()
        # kept for the size breakdown, which needs the chunks' places again: reading the
        # pickle a second time cost as much as the whole open (10,000 items, issue 16)
        ckpt.memo(METADATA_MEMO, lambda: md)
        return ckpt
    except (RecursionError, MemoryError) as e:
        raise CorruptFile(
            meta_path, f"too deeply nested or too large ({type(e).__name__})"
        ) from None
    finally:
        reader.close()


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
        self.problems = Problems()
        self.findings: list[Finding] = []
        self.builder = TreeBuilder()
        self.objects_read = 0
        self.item_cache: dict[bytes, tuple[Any, list[Ref]]] = {}
        self.zips: ZipCache = {}
        self.per_file: dict[str, dict[str, int]] = {}
        self.outside: dict[str, str] = {}
        """Data files that are symlinks leading out of the folder: never opened."""

    def close(self) -> None:
        for s in self.sources.values():
            if s is not None:
                s.close()

    def source(self, rel: str) -> Source | None:
        if rel not in self.sources:
            src = None
            if rel in self.files:
                try:
                    src = Source.open(str(Path(self.folder) / rel))
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
        findings = self.findings
        findings += problem_findings(self.problems, self.path_of)
        for g in md.globals.values():
            if g.full not in DCP_GLOBALS:
                self.global_finding(g, (METADATA,), in_metadata=True)
        for g in self.item_globals.values():
            self.global_finding(g, self.builder.global_paths.get(g.full), in_metadata=False)
        order = {"danger": 0, "warning": 1, "info": 2}
        findings.sort(key=lambda f: order[f.severity.value])
        info: dict[str, Any] = {
            "folder": str(Path(self.folder).absolute()),
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

    def global_finding(self, g: Global, where: KeyPath | None, in_metadata: bool) -> None:
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
        if sum(math.prod(c.sizes) for c in chunks) < info.numel:
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
        nbytes = math.prod(c.sizes) * info.itemsize
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
            problem = "outside" if rel in self.outside else "missing"
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
            rec, located = read_item(src, at, length, rel, self.item_cache, "", self.zips)
            if not isinstance(rec, TensorRec) or rec.storage is None or len(located) != 1:
                raise Malformed("item is not one tensor")
        except (CkptError, Malformed):
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
            gone = "outside" if rel in self.outside else "missing"
            self.problems.add(rel, gone, fqn)
            return Node.make(NodeKind.VALUE, "missing", key, text=f"{text} (file {gone})")
        if at + length > src.size:
            self.problems.add(rel, "short", fqn)
            return Node.make(NodeKind.VALUE, "missing", key, text=f"{text} (file cut short)")
        summary = Node.make(NodeKind.VALUE, "pickled object", key, text=text, nbytes=length)
        if transformed or length > MAX_OBJECT_BYTES or self.objects_read >= MAX_OBJECT_ITEMS:
            return summary
        self.objects_read += 1
        try:
            obj, located = read_item(src, at, length, rel, None, f"{fqn}@obj/")
        except (CkptError, Malformed):
            self.problems.add(rel, "unreadable", fqn)
            return summary
        for (_, key, dtype, declared, location), record, off, have in located:
            self.storages[key] = Storage(key, dtype, declared, location, rel, record, off, have)
        return self.builder.build(obj, key, path)

    # -- the tree -------------------------------------------------------------------------------
    def path_of(self, fqn: str) -> KeyPath:
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


def _span(rec: TensorRec) -> int:
    if any(d == 0 for d in rec.shape):
        return 0
    return rec.offset + sum((d - 1) * s for d, s in zip(rec.shape, rec.stride, strict=False)) + 1
