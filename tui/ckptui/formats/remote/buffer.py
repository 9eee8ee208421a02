"""Provides `PickleBuffer`: a remote file seen as a read-only buffer by the pickle parser
(legacy and plain-pickle checkpoints at a URL), its bytes fetched on first touch into the
`RemoteSource`'s span cache."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ckptui.formats.remote.reader import RemoteSource

BLOCK = 64 << 10
"""First read-ahead of the pickle buffer; doubled while reads stay sequential, up to MAX_AHEAD."""
MAX_AHEAD = 8 << 20


class PickleBuffer:
    """A remote file seen as a read-only buffer by the pickle parser (`InertUnpickler`): the
    bytes of `RemoteSource`'s span cache, fetched on first touch.

    A miss fetches `BLOCK` bytes, or as many as the cached span ending there when the parser
    reads on sequentially, so a pickle of n bytes costs about log2(n / BLOCK) requests and the
    read-ahead past its end is at most what it read; a large payload the parser skips (`Blob`)
    is never fetched. The parser indexes byte by byte, so the current span is kept at hand.
    """

    def __init__(self, src: RemoteSource) -> None:
        self._src = src
        self._lo = 0
        self._data = b""

    def __len__(self) -> int:
        return self._src.size

    def __getitem__(self, key: Any) -> Any:
        if key.__class__ is int:
            j = key - self._lo
            if 0 <= j < len(self._data):
                return self._data[j]
            if not 0 <= key < self._src.size:
                raise IndexError("read past the end of the file")
            self._span(key)
            return self._data[key - self._lo]
        start, stop, step = key.indices(self._src.size)
        if step != 1:
            raise ValueError("strided slices are not supported")
        if stop <= start:
            return b""
        if not (self._lo <= start and stop <= self._lo + len(self._data)):
            self._cover(start, stop)
        return self._data[start - self._lo : stop - self._lo]

    def find(self, sub: bytes, start: int, end: int) -> int:
        """Like `bytes.find`, fetching on as far as the search needs."""
        end = min(end, self._src.size)
        while start < end:
            if not self._lo <= start < self._lo + len(self._data):
                self._span(start)
            hi = min(end, self._lo + len(self._data))
            k = self._data.find(sub, start - self._lo, hi - self._lo)
            if k >= 0:
                return k + self._lo
            if hi >= end:
                return -1
            self._span(hi)  # fetches on from hi, merged with the span holding start
        return -1

    def unpack_from(self, fmt: str, _buf: Any, pos: int) -> tuple[Any, ...]:
        """`struct.unpack_from(fmt, self, pos)`, which needs a real buffer."""
        st = _STRUCTS.get(fmt)
        if st is None:
            st = _STRUCTS[fmt] = struct.Struct(fmt)
        return st.unpack(self[pos : pos + st.size])

    def _span(self, i: int) -> None:
        """Make the cached span holding byte `i` current, fetching from `i` on a miss."""
        src = self._src
        spans = src.spans.items
        k = src.spans.index(i)
        if k >= 0 and i < spans[k][0] + len(spans[k][1]):
            self._lo, self._data = spans[k]
            return
        ahead = BLOCK
        if k >= 0 and spans[k][0] + len(spans[k][1]) == i:  # reading on: double the read-ahead
            ahead = min(MAX_AHEAD, max(BLOCK, len(spans[k][1])))
        n = min(ahead, src.size - i)
        if k + 1 < len(spans):
            n = min(n, spans[k + 1][0] - i)  # up to the next cached span, which it then joins
        src.spans.add(i, src.fetch(i, n))
        self._span(i)

    def _cover(self, start: int, stop: int) -> None:
        """Make one cached span hold [start, stop): a long slice fetches exactly what lacks."""
        self._span(start)
        while self._lo + len(self._data) < stop:
            at = self._lo + len(self._data)
            src = self._src
            k = src.spans.index(at) + 1  # the next span after `at`, if any
            upto = stop if k >= len(src.spans.items) else min(stop, src.spans.items[k][0])
            src.spans.add(at, src.fetch(at, max(1, upto - at)))
            self._span(start)


_STRUCTS: dict[str, struct.Struct] = {}
