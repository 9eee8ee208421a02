"""Provides `Predictions`: bytes of a remote file taken as known without a request, until checked.

Opening a zip at a URL would cost one request per storage to read its local header; the
header is predicted from the central directory instead (and a legacy storage's element count
from the pickle), and checked against the real bytes when the record it describes is first
read, in the same request as its data. The reader raises `CorruptFile` on a mismatch.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from ckptui.formats.remote.zip_index import Record


@dataclass
class Expected:
    """Bytes predicted at `at` without a request, to be checked on the first read of the
    record they describe, which ends at `end`."""

    at: int
    want: bytes
    end: int
    what: str
    record: Record | None
    """The zip record whose local header this is; None for a legacy storage count."""


class Predictions:
    """The unchecked predictions of one file, found by offset or by the range a read covers."""

    def __init__(self) -> None:
        self._by_start: dict[int, Expected] = {}
        self._starts: list[int] = []
        """Sorted offsets ever predicted (a checked one stays; its lookup then misses)."""

    def __bool__(self) -> bool:
        return bool(self._by_start)

    def add(self, e: Expected) -> None:
        """Predict `e.want` at `e.at` (replacing an earlier prediction there)."""
        if e.at not in self._by_start:
            bisect.insort(self._starts, e.at)
        self._by_start[e.at] = e

    def at(self, offset: int) -> Expected | None:
        """The unchecked prediction starting at `offset`, if any."""
        return self._by_start.get(offset)

    def pop(self, e: Expected) -> bool:
        """Mark `e` checked; False when it was checked already."""
        return self._by_start.pop(e.at, None) is not None

    def touching(self, start: int, stop: int) -> list[Expected]:
        """The unchecked predictions whose record overlaps [start, stop)."""
        if not self._by_start:
            return []
        out = []
        i = max(0, bisect.bisect_right(self._starts, start) - 1)
        while i < len(self._starts) and self._starts[i] < stop:
            e = self._by_start.get(self._starts[i])
            if e is not None and e.end > start:
                out.append(e)
            i += 1
        return out
