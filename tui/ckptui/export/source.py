"""Provides `SourceBytes`: an output tensor's bytes, read from the memory-mapped source file.

A contiguous tensor is read with pread in blocks of CHUNK bytes (cast with numpy when asked);
a non-contiguous view goes through numpy over the memory map in bounded blocks, and its pages
are released afterwards. bfloat16 comes from ml_dtypes (round to nearest even, as torch's
`.to(torch.bfloat16)`).
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterator
from typing import Any, Self

from ..model import Checkpoint
from ..values import _chunks, element_type, strided_view
from .plan import Item

CHUNK = 16 << 20
"""Bytes per block handed to the writer."""


class SourceBytes:
    """The source file mapped read-only for the duration of an export."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt
        self._fd: int | None = None
        self._map: mmap.mmap | None = None

    def __enter__(self) -> Self:
        self._fd = os.open(self.ckpt.path, os.O_RDONLY)
        size = os.fstat(self._fd).st_size
        if size != self.ckpt.file_bytes:
            os.close(self._fd)
            from .plan import ExportError

            raise ExportError(self.ckpt.path, "the file changed size since it was opened")
        self._map = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ) if size else None
        if self._map is not None and hasattr(self._map, "madvise"):
            self._map.madvise(mmap.MADV_SEQUENTIAL)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._map is not None:
            with contextlib.suppress(BufferError):  # a traceback may hold a slice
                self._map.close()
        if self._fd is not None:
            os.close(self._fd)

    def chunks(self, item: Item) -> Iterator[Any]:
        """The output bytes of `item`, in order, in blocks of at most about CHUNK bytes."""
        t = item.tensor
        st = self.ckpt.storages[t.storage_key or ""]
        assert self._map is not None and st.data_offset is not None
        start = st.data_offset + t.storage_offset * t.itemsize
        if t.is_contiguous:
            # pread, not the map: pages touched through a map count in the process's RSS
            # until unmapped (a 200 MB export peaked at 225 MiB that way).
            yield from self._contiguous(item, start)
            return
        yield from self._strided(item, start)

    def _contiguous(self, item: Item, start: int) -> Iterator[Any]:
        t = item.tensor
        assert self._fd is not None
        target = None
        if item.dtype != t.dtype:
            dtype, _, _ = element_type(self.ckpt.path, t, False)
            target = (dtype, _numpy_dtype(item.dtype))
        step = CHUNK - CHUNK % max(1, t.itemsize)
        end = start + t.nbytes
        for a in range(start, end, step):
            data = os.pread(self._fd, min(step, end - a), a)
            if len(data) != min(step, end - a):
                raise OSError(f"{self.ckpt.path}: file ended while reading {item.name}")
            if target is None:
                yield data
            else:
                import numpy as np

                yield np.frombuffer(data, target[0]).astype(target[1]).tobytes()

    def _strided(self, item: Item, start: int) -> Iterator[bytes]:
        import numpy as np

        t = item.tensor
        dtype, kind, _ = element_type(self.ckpt.path, t, False)
        view = strided_view(self._map, start, dtype, kind, t)  # type: ignore[arg-type]
        target = _numpy_dtype(item.dtype) if item.dtype != t.dtype else None
        per = max(1, CHUNK // max(1, t.itemsize))
        for block in _chunks(view, len(t.shape), per):
            out = np.ascontiguousarray(block)
            if target is not None:
                out = out.astype(target)
            yield out.tobytes()
        del view
        # Give the pages this view touched back, so they stop counting in the RSS.
        assert self._map is not None
        page = mmap.PAGESIZE
        lo = start - start % page
        hi = min(len(self._map), start + t.span_elements() * t.itemsize)
        if hasattr(self._map, "madvise") and hi > lo:
            with contextlib.suppress(OSError, ValueError):
                self._map.madvise(mmap.MADV_DONTNEED, lo, hi - lo)


def _numpy_dtype(name: str) -> Any:
    import numpy as np

    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)
