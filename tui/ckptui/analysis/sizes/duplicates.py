"""Provides `find_duplicates`: tensors whose values are stored twice, in different storages.

This is the one part of the size breakdown that reads tensor data, so it runs on demand (a worker
in the app, after the breakdown is shown) and streams: candidates are tensors of equal dtype,
shape and size in different storages (found from the storage table by (dtype, nbytes) first, so
a file of 100,000 small tensors costs one pass over its metadata); a hash of their first and last
64 KiB, read in file order, drops most of them cheaply (and is the whole hash of a tensor that
small), and only what still matches is hashed whole, in the large sequential blocks of the one
tensor reader (`tensors.reader`), reporting progress at most every 50 ms and checking for
cancellation between reads.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable

from ckptui.analysis.roles import Role
from ckptui.analysis.sizes.breakdown import Breakdown
from ckptui.analysis.sizes.findings import SizeFinding
from ckptui.core.cancel import Cancelled
from ckptui.core.keypath import describe_path
from ckptui.core.progress import Progress
from ckptui.core.tree import Checkpoint, KeyPath, TensorInfo
from ckptui.core.units import size
from ckptui.formats.source import is_url
from ckptui.tensors.reader import Piece, SourceBytes

DUPLICATE_MIN = 64 << 10
"""Tensors smaller than this are not compared: the saving would not matter."""

_EDGE = 64 << 10


_Member = tuple[KeyPath, TensorInfo, int]
"""A candidate: its path, its tensor, and where its bytes start in the file."""

_REPORT_EVERY = 0.05
"""Seconds between progress calls: the app's callback waits for the UI thread, so calling it
per small tensor would cost more than the hashing."""


class _Reporter:
    """Calls `progress` at most every `_REPORT_EVERY` seconds, always for the last figure."""

    def __init__(self, progress: Progress | None) -> None:
        self._progress = progress
        self._at = -1.0

    def __call__(self, done: int, total: int, force: bool = False) -> None:
        if self._progress is None:
            return
        now = time.monotonic()
        if force or done >= total or now - self._at >= _REPORT_EVERY:
            self._at = now
            self._progress(done, total)


def skip_reason(ckpt: Checkpoint) -> str | None:
    """Why the search does not run on `ckpt`, or None: at a URL it would fetch tensor data,
    which `why` otherwise never does (the breakdown itself reads metadata only)."""
    if is_url(ckpt.path):
        return "not compared: comparing tensors would fetch their data from the server"
    return None


def find_duplicates(
    ckpt: Checkpoint,
    b: Breakdown,
    progress: Progress | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> list[SizeFinding]:
    """Findings for groups of identical tensors stored in different storages.

    Optimizer state is left out: its buffers often start out all zeros, and a weights-only
    export drops them anyway.

    Raises:
        Cancelled: when `cancelled()` returns True between chunks.
        OSError: when the file cannot be read.
    """
    skip = [g.path for g in b.groups if g.role is Role.OPTIMIZER]
    groups: dict[tuple[str, tuple[int, ...], int], list[_Member]] = {}
    for key, path in b.owner.items():
        st = ckpt.storages.get(key)
        # A tensor must fit in its storage's record (checked below), so a small record rules it
        # out before any node is looked up: on 100,000 small tensors this loop is all there is.
        if st is None or st.file is not None or st.data_offset is None:
            continue
        if (st.record_nbytes or 0) < DUPLICATE_MIN:
            continue
        node = ckpt.find(path)  # O(1) per level: Node.child indexes large mappings
        t = node.tensor if node is not None else None
        if t is None or t.nbytes < DUPLICATE_MIN or not t.is_contiguous or t.layout != "strided":
            continue
        if any(path[: len(s)] == s for s in skip):
            continue
        start = t.storage_offset * t.itemsize
        if start + t.nbytes > (st.record_nbytes or 0):
            continue
        groups.setdefault((t.dtype, t.shape, t.nbytes), []).append(
            (path, t, st.data_offset + start)
        )
    candidates = [g for g in groups.values() if len(g) > 1]
    if not candidates:
        if progress:
            progress(0, 0)
        return []
    report = _Reporter(progress)
    with SourceBytes(ckpt, cancelled) as src:

        def piece(m: _Member) -> Piece:
            return Piece(describe_path(m[0]), m[1], m[1].dtype)

        # Stage 1: the edges, in file order. A tensor of at most two edges is read whole here,
        # and that digest is final: it is never read a second time.
        edge_total = sum(min(m[1].nbytes, 2 * _EDGE) for g in candidates for m in g)
        edge_done = 0
        report(0, edge_total)
        narrowed: list[list[_Member]] = []
        for group in candidates:
            group.sort(key=lambda m: m[2])
            if cancelled and cancelled():
                raise Cancelled
            narrowed += _split(group, lambda m: _edge_hash(src, piece(m)))
            edge_done += sum(min(m[1].nbytes, 2 * _EDGE) for m in group)
            report(edge_done, edge_total)
        same = [g for g in narrowed if g[0][1].nbytes <= 2 * _EDGE]
        narrowed = [g for g in narrowed if g[0][1].nbytes > 2 * _EDGE]
        total = sum(m[1].nbytes for g in narrowed for m in g)
        done = 0
        report(0, total, force=True)

        def full(m: _Member) -> bytes:
            nonlocal done
            h = hashlib.blake2b(digest_size=16)
            for data in src.chunks(piece(m)):  # large sequential reads
                if cancelled and cancelled():
                    raise Cancelled
                h.update(data)
                done += len(data)
                report(done, total)
            return h.digest()

        for group in narrowed:
            same += _split(group, full)
        report(done, total, force=True)
    out = []
    for group in same:
        if len(group) < 2:
            continue
        t = group[0][1]
        paths = tuple(m[0] for m in group)
        n = len(group)
        shape = "[" + ", ".join(str(d) for d in t.shape) + "]"
        out.append(
            SizeFinding(
                "duplicate",
                t.nbytes * n,
                t.nbytes * (n - 1),
                paths,
                f"{n} identical {t.dtype} {shape} tensors ({size(t.nbytes)} each) stored "
                f"separately: {', '.join(describe_path(p) for p in paths[:3])}"
                f"{' ...' if n > 3 else ''}; keep one (or tie them before saving)",
            )
        )
    return out


def _split(group: list, key: Callable) -> list[list]:
    by: dict[bytes, list] = {}
    for m in group:
        by.setdefault(key(m), []).append(m)
    return [g for g in by.values() if len(g) > 1]


def _edge_hash(src: SourceBytes, p: Piece) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    nbytes = p.tensor.nbytes
    if nbytes <= 2 * _EDGE:  # the whole tensor: this digest is final (see find_duplicates)
        h.update(src.read(p, 0, nbytes))
        return h.digest()
    h.update(src.read(p, 0, _EDGE))
    h.update(src.read(p, nbytes - _EDGE, _EDGE))
    return h.digest()


def under_file(f: SizeFinding, name: str) -> SizeFinding:
    """A finding of one checkpoint file of a folder, as the folder's: its paths and message
    under the file's relative name (the folder's breakdown keys each file's tree by it)."""
    paths = tuple((name, *p) for p in f.paths)
    return SizeFinding(f.kind, f.bytes, f.saving_bytes, paths, f"{name}: {f.message}")


def duplicates_per_file(
    files: Iterable[tuple[str, Checkpoint, Breakdown]],
    search: Callable[[Checkpoint, Breakdown], list[SizeFinding]],
) -> list[SizeFinding]:
    """The duplicate search of a folder: each checkpoint file searched on its own (`search`,
    e.g. `find_duplicates` with a progress bar), its findings named under the file."""
    return [under_file(f, name) for name, ckpt, b in files for f in search(ckpt, b)]


def duplicates_of(
    ckpt: Checkpoint,
    b: Breakdown,
    files: Iterable[tuple[str, Checkpoint, Breakdown]],
    search: Callable[[Checkpoint, Breakdown], list[SizeFinding]],
) -> list[SizeFinding]:
    """The duplicate search of an opened checkpoint, for the CLI's `why` and the app's `w` alike.

    A single file is searched whole; a folder of checkpoint files (shards, a run's checkpoints)
    file by file, from the `(name, checkpoint, breakdown)` of each that `breakdown_of`'s hook
    collected (`duplicates_per_file`); a DCP folder's `.distcp` files are items, not
    checkpoints, so it is not searched.

    Args:
        search: `find_duplicates` with the caller's progress and cancellation.
    """
    if ckpt.info.get("folder") is None:
        return search(ckpt, b)
    if ckpt.format == "dcp":
        return []
    return duplicates_per_file(files, search)
