"""Provides `find_duplicates`: tensors whose values are stored twice, in different storages.

This is the one part of the size breakdown that reads tensor data, so it runs on demand (a worker
in the app, after the breakdown is shown) and streams: candidates are tensors of equal dtype,
shape and size in different storages; a hash of their first and last 64 KiB drops most of them
cheaply, and only what still matches is hashed whole, 4 MiB at a time, reporting progress.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path as FsPath

from .formats._common import is_url
from .model import Checkpoint, Path, TensorInfo
from .roles import Role
from .sizes import Breakdown
from .sizes_findings import SizeFinding, _show
from .units import size
from .values import Cancelled

DUPLICATE_MIN = 64 << 10
"""Tensors smaller than this are not compared: the saving would not matter."""

_EDGE = 64 << 10
_CHUNK = 4 << 20

Progress = Callable[[int, int], None]
"""Called with (bytes hashed so far, bytes to hash in all)."""


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
    groups: dict[tuple[str, tuple[int, ...], int], list[tuple[Path, TensorInfo, int]]] = {}
    for key, path in b.owner.items():
        st = ckpt.storages.get(key)
        node = ckpt.find(path)
        t = node.tensor if node is not None else None
        if st is None or t is None or st.file is not None or st.data_offset is None:
            continue
        if t.nbytes < DUPLICATE_MIN or not t.is_contiguous or t.layout != "strided":
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
    fd = os.open(FsPath(ckpt.path), os.O_RDONLY)
    try:
        # Stage 1: the edges. Stage 2: whole tensors that still match.
        narrowed: list[list[tuple[Path, TensorInfo, int]]] = []
        for group in candidates:
            narrowed += _split(group, lambda m: _edge_hash(fd, m[2], m[1].nbytes))
            if cancelled and cancelled():
                raise Cancelled
        total = sum(m[1].nbytes for g in narrowed if len(g) > 1 for m in g)
        done = 0
        if progress:
            progress(0, total)

        def full(m: tuple[Path, TensorInfo, int]) -> bytes:
            nonlocal done
            h = hashlib.blake2b(digest_size=16)
            pos, end = m[2], m[2] + m[1].nbytes
            while pos < end:
                if cancelled and cancelled():
                    raise Cancelled
                data = os.pread(fd, min(_CHUNK, end - pos), pos)
                if not data:
                    break
                h.update(data)
                pos += len(data)
                done += len(data)
                if progress:
                    progress(done, total)
            return h.digest()

        same: list[list[tuple[Path, TensorInfo, int]]] = []
        for group in narrowed:
            if len(group) > 1:
                same += _split(group, full)
    finally:
        os.close(fd)
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
                f"separately: {', '.join(_show(p) for p in paths[:3])}"
                f"{' ...' if n > 3 else ''}; keep one (or tie them before saving)",
            )
        )
    return out


def _split(group: list, key: Callable) -> list[list]:
    by: dict[bytes, list] = {}
    for m in group:
        by.setdefault(key(m), []).append(m)
    return [g for g in by.values() if len(g) > 1]


def _edge_hash(fd: int, offset: int, nbytes: int) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    h.update(os.pread(fd, min(_EDGE, nbytes), offset))
    if nbytes > 2 * _EDGE:
        h.update(os.pread(fd, _EDGE, offset + nbytes - _EDGE))
    return h.digest()
