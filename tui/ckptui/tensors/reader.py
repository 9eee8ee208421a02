"""Provides `SourceBytes`: the one reader of a tensor's bytes for export, value comparison and the
duplicate search, from
the memory-mapped source file or, for a URL, by range requests.

A contiguous tensor is read with pread in blocks of CHUNK bytes (cast with numpy when asked);
a non-contiguous view goes through numpy over the memory map in bounded blocks, and its pages
are released afterwards. bfloat16 comes from ml_dtypes (round to nearest even, as torch's
`.to(torch.bfloat16)`).

A remote checkpoint (a URL) is read through `formats.remote.RemoteSource` instead: one range
request per CHUNK of a kept tensor, so only the kept storages' bytes travel (never the
optimizer's), each range retried on a dropped connection. A sharded model at a URL gets one
`RemoteSource` per shard, opened when its first tensor is read and checked against the size the
shard had when the checkpoint was opened. While `recorded_digests` is active,
every remote tensor's output bytes are hashed as they stream past, so that verification can check
the local output against those digests instead of fetching the source a second time: a remote
export transfers the kept bytes once.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol, Self

from ckptui.core.cancel import interruptible
from ckptui.core.errors import CkptError, ExportError
from ckptui.core.tree import Checkpoint, TensorInfo
from ckptui.formats.source import is_url
from ckptui.tensors.values import chunks_of, element_type, strided_view


class Item(Protocol):
    """What the reader needs of a tensor to read: its name (for errors), the tensor, and the
    dtype to deliver (the tensor's own, or a cast). The export plan's items are such."""

    @property
    def name(self) -> str: ...
    @property
    def tensor(self) -> TensorInfo: ...
    @property
    def dtype(self) -> str: ...
    @property
    def data(self) -> bytes | None:
        """Bytes made rather than read (None: read the tensor's from the file)."""


@dataclass(frozen=True)
class Piece:
    """A tensor to read as it is stored (value comparison; the export uses its plan's items)."""

    name: str
    tensor: TensorInfo
    dtype: str
    data: bytes | None = None


CHUNK = 16 << 20
"""Bytes per block handed to the writer (and per range request from a remote source)."""

Digests = dict[tuple[Any, ...], bytes]
"""`digest_key(item)` -> blake2b of that item's output bytes."""
_DIGESTS: ContextVar[Digests | None] = ContextVar("ckptui_export_digests", default=None)


@contextlib.contextmanager
def recorded_digests() -> Iterator[Digests]:
    """While active (in this thread), every remote item that `SourceBytes.chunks` streams in full
    leaves the digest of its output bytes in the yielded dict."""
    digests: Digests = {}
    token = _DIGESTS.set(digests)
    try:
        yield digests
    finally:
        _DIGESTS.reset(token)


def digest_key(item: Item) -> tuple[Any, ...]:
    """What fixes an item's output bytes: its view of its storage and its output dtype (tied
    items share it, so a `.pth` storage written once covers every name on it)."""
    t = item.tensor
    return (t.storage_key, t.storage_offset, t.shape, t.stride, t.dtype, item.dtype)


class SourceBytes:
    """The source's files, opened read-only for the duration of an export.

    A checkpoint of many files (shards) opens each file on first use, so memory and descriptors
    stay bounded by the files actually read; each is checked against the size it had when the
    checkpoint was opened.
    """

    def __init__(self, ckpt: Checkpoint, cancelled: Callable[[], bool] | None = None) -> None:
        self.ckpt = ckpt
        self.cancelled = cancelled
        """Polled while a remote read waits, so that stopping never waits on the network."""
        self._open: dict[str, tuple[int, mmap.mmap | None]] = {}
        self._own: tuple[int, mmap.mmap | None] | None = None
        """The checkpoint's own file in `_open`, once opened (`_source`)."""
        self.remote: Any = None
        """The `RemoteSource` of a one-file URL checkpoint, while open."""
        self._remotes: dict[str, Any] = {}
        """URL -> `RemoteSource` of each file of a many-file URL checkpoint read so far."""
        self._closed_bytes = 0
        self._plans: dict[str, list[tuple[int, int]]] = {}
        """URL -> the byte ranges `plan` announced for that file."""
        folder = ckpt.info.get("folder")
        self._url_folder = folder is not None and is_url(str(folder))
        """A sharded model or folder at a URL: each file is opened on first use."""

    def __enter__(self) -> Self:
        if self._url_folder:
            return self  # each shard on first use, like the local per-file descriptors
        if is_url(self.ckpt.path):
            self.remote = self._open_remote(self.ckpt.path, self.ckpt.file_bytes, self._is_zip())
            if self.ckpt.format == "torch-legacy":  # each storage's count, checked on read
                for st in self.ckpt.storages.values():
                    self.remote.expect_legacy_count(st)
        elif self.ckpt.info.get("folder") is None:
            self._file(self.ckpt.path, self.ckpt.file_bytes)  # fail early, before any writing
        return self

    def _is_zip(self) -> bool:
        return self.ckpt.format == "torch-zip"

    def _open_remote(self, url: str, expected: int | None, is_zip: bool) -> Any:
        """A `RemoteSource` on `url`, checked against the size it had when it was opened."""
        # deferred: local reads never load the remote modules (nor fsspec)
        from ckptui.formats.remote.reader import RemoteSource

        try:
            src = RemoteSource.open(url)
            if expected is not None and src.size != expected:
                src.close()
                raise ExportError(url, "the file changed size since it was opened")
            if is_zip:
                # The directory and pickle again (metadata, a few requests): it re-predicts
                # each storage's local header, checked on the first read of its data.
                src.prefetch_zip()
        except ExportError:
            raise
        except CkptError as e:
            raise ExportError(e.path, e.message) from None
        return src

    def plan(self, items: Iterable[Item]) -> None:
        """Tell a remote source which byte ranges are coming (each item's span of its storage),
        so that neighbouring kept storages are fetched in one request instead of one each
        (`RemoteSource.plan_reads`). Nothing to do for a local source."""
        if self.remote is None and not self._url_folder:
            return
        spans: dict[str, list[tuple[int, int]]] = {}
        for it in items:
            t = it.tensor
            st = self.ckpt.storages.get(t.storage_key or "")
            if st is None or st.data_offset is None:
                continue
            start = st.data_offset + t.storage_offset * t.itemsize
            spans.setdefault(self.ckpt.file_of(st), []).append((start, start + t.span_bytes()))
        self._plans = spans
        if self.remote is not None:
            self.remote.plan_reads(spans.get(self.ckpt.path, []))
        for url, src in self._remotes.items():
            src.plan_reads(spans.get(url, []))

    def _remote_of(self, item: Item) -> Any:
        """The `RemoteSource` holding `item`'s bytes (a shard's opened on first use)."""
        if self.remote is not None:
            return self.remote
        st = self.ckpt.storages[item.tensor.storage_key or ""]
        url = self.ckpt.file_of(st)
        src = self._remotes.get(url)
        if src is None:
            expected = self.ckpt.info.get("files", {}).get(st.file)
            # a zip record name marks a torch-zip shard (safetensors storages have none)
            src = self._remotes[url] = self._open_remote(url, expected, st.record is not None)
            src.plan_reads(self._plans.get(url, []))
        return src

    @property
    def is_remote(self) -> bool:
        """The source is at a URL (one file, or a folder of them)."""
        return self.remote is not None or self._url_folder

    @property
    def bytes_read(self) -> int:
        """Bytes fetched from a remote source so far (0 for a local one)."""
        live = [self.remote] if self.remote is not None else []
        live += self._remotes.values()
        return self._closed_bytes + sum(src.bytes_read for src in live)

    def __exit__(self, *exc: object) -> None:
        remotes = [self.remote] if self.remote is not None else []
        remotes += self._remotes.values()
        self.remote, self._remotes = None, {}
        for src in remotes:
            self._closed_bytes += src.bytes_read
            with contextlib.suppress(Exception):  # closing must not hide the export's own error
                src.close()
        for fd, mm in self._open.values():
            if mm is not None:
                with contextlib.suppress(BufferError):  # a traceback may hold a slice
                    mm.close()
            os.close(fd)
        self._open = {}
        self._own = None

    def _file(self, path: str, expected: int | None) -> tuple[int, mmap.mmap | None]:
        got = self._open.get(path)
        if got is not None:
            return got
        fd = os.open(path, os.O_RDONLY)
        size = os.fstat(fd).st_size
        if expected is not None and size != expected:
            os.close(fd)
            raise ExportError(path, "the file changed size since it was opened")
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ) if size else None
        if mm is not None and hasattr(mm, "madvise"):
            mm.madvise(mmap.MADV_SEQUENTIAL)
        self._open[path] = (fd, mm)
        return fd, mm

    def _source(self, item: Item) -> tuple[int, mmap.mmap | None, int]:
        """(fd, map, byte offset of the view's first element) for `item`."""
        t = item.tensor
        st = self.ckpt.storages[t.storage_key or ""]
        assert st.data_offset is not None
        if st.file is None:
            # the checkpoint's own file, opened once: 100,000 tensors asked for it by name
            own = self._own
            if own is None:
                own = self._own = self._file(self.ckpt.path, self.ckpt.file_bytes)
            fd, mm = own
        else:
            expected = self.ckpt.info.get("files", {}).get(st.file)
            fd, mm = self._file(self.ckpt.file_of(st), expected)
        return fd, mm, st.data_offset + t.storage_offset * t.itemsize

    def chunks(self, item: Item) -> Iterable[Any]:
        """The output bytes of `item`, in order, in blocks of at most about CHUNK bytes."""
        if item.data is not None:  # made by the export (a quantized module's 0-d scale)
            return (item.data,)
        if self.remote is not None or self._url_folder:
            return self._remote_chunks(item)
        fd, mm, start = self._source(item)
        t = item.tensor
        if t.is_contiguous:
            n = t.nbytes
            if 0 < n <= CHUNK and item.dtype == t.dtype:
                # One block, read now: two generators per tensor were most of a 100,000-tensor
                # export's write and of its verification (issue 16).
                data = os.pread(fd, n, start)
                if len(data) != n:
                    raise OSError(f"{self.ckpt.path}: file ended while reading {item.name}")
                return (data,)
            # pread, not the map: pages touched through a map count in the process's RSS
            # until unmapped (a 200 MB export peaked at 225 MiB that way).
            return self._contiguous(item, fd, start)
        assert mm is not None
        return self._strided(item, mm, start)

    def read(self, item: Item, offset: int, n: int) -> bytes:
        """`n` stored bytes of a contiguous `item`, from `offset` bytes into it: the duplicate
        search hashes a tensor's first and last bytes before it reads the whole of it.

        Raises:
            OSError: when the file ends first.
        """
        if self.remote is not None or self._url_folder:
            t = item.tensor
            st = self.ckpt.storages[t.storage_key or ""]
            assert st.data_offset is not None
            start = st.data_offset + t.storage_offset * t.itemsize
            return self._read_remote(self._remote_of(item), start + offset, n)
        fd, _, start = self._source(item)
        data = os.pread(fd, n, start + offset)
        if len(data) != n:
            raise OSError(f"{self.ckpt.path}: file ended while reading {item.name}")
        return data

    def _remote_chunks(self, item: Item) -> Iterator[Any]:
        """`chunks` from a URL, hashing the output when `recorded_digests` is active."""
        t = item.tensor
        st = self.ckpt.storages[t.storage_key or ""]
        assert st.data_offset is not None
        start = st.data_offset + t.storage_offset * t.itemsize
        src = self._remote_of(item)
        digests = _DIGESTS.get()
        h = hashlib.blake2b(digest_size=32) if digests is not None else None
        if t.is_contiguous:
            blocks = self._contiguous(item, -1, start, src)
        else:  # a view: fetch the span it covers (one block's worth at most per request)
            span = t.span_bytes()
            buf = bytearray()
            for a in range(start, start + span, CHUNK):
                buf += self._read_remote(src, a, min(CHUNK, start + span - a))
            blocks = self._strided(item, buf, 0)
        for block in blocks:
            if h is not None:
                h.update(block)
            yield block
        if h is not None and digests is not None:
            digests[digest_key(item)] = h.digest()

    def _read_remote(self, src: Any, offset: int, n: int) -> bytes:
        try:
            return interruptible(lambda: src.read_range(offset, n), self.cancelled)
        except CkptError as e:
            raise ExportError(e.path, f"reading the source failed: {e.message}") from None

    def _contiguous(self, item: Item, fd: int, start: int, remote: Any = None) -> Iterator[Any]:
        t = item.tensor
        target = None
        if item.dtype != t.dtype:
            dtype, _, _ = element_type(self.ckpt.path, t, False)
            target = (dtype, _numpy_dtype(item.dtype))
        step = CHUNK - CHUNK % max(1, t.itemsize)
        end = start + t.nbytes
        for a in range(start, end, step):
            if remote is not None:
                data = self._read_remote(remote, a, min(step, end - a))
            else:
                data = os.pread(fd, min(step, end - a), a)
            if len(data) != min(step, end - a):
                raise OSError(f"{self.ckpt.path}: file ended while reading {item.name}")
            if target is None:
                yield data
            else:
                import numpy as np

                yield np.frombuffer(data, target[0]).astype(target[1]).tobytes()

    def _strided(self, item: Item, mm: mmap.mmap | bytearray, start: int) -> Iterator[bytes]:
        import numpy as np

        t = item.tensor
        if t.numel == 0:  # a zero-size dimension anywhere: no bytes to write
            return
        dtype, kind, _ = element_type(self.ckpt.path, t, False)
        view = strided_view(mm, start, dtype, kind, t)
        target = _numpy_dtype(item.dtype) if item.dtype != t.dtype else None
        per = max(1, CHUNK // max(1, t.itemsize))
        for block in chunks_of(view, len(t.shape), per):
            out = np.ascontiguousarray(block)
            if target is not None:
                out = out.astype(target)
            yield out.tobytes()
        del view
        # Give the pages this view touched back, so they stop counting in the RSS.
        page = mmap.PAGESIZE
        lo = start - start % page
        hi = min(len(mm), start + t.span_elements() * t.itemsize)
        if isinstance(mm, mmap.mmap) and hasattr(mm, "madvise") and hi > lo:
            with contextlib.suppress(OSError, ValueError):
                mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def _numpy_dtype(name: str) -> Any:
    import numpy as np

    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)
