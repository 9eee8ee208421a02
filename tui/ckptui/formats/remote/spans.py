"""Provides `Spans`: the byte ranges already fetched from one remote file, sorted and merged.

Every read of a remote checkpoint asks here first: a hit costs no request. Spans that touch
are merged, so a read across two earlier fetches is still a hit. The list itself is what
`fs.remember` keeps between two openings of the same version of a file.
"""

from __future__ import annotations

import bisect


class Spans:
    """Fetched (offset, bytes) spans of one file, sorted by offset, none touching another."""

    def __init__(self, items: list[tuple[int, bytes]] | None = None) -> None:
        self.items: list[tuple[int, bytes]] = items if items is not None else []

    def index(self, offset: int) -> int:
        """Index in `items` of the last span starting at or before `offset`, or -1."""
        return bisect.bisect_right(self.items, offset, key=lambda s: s[0]) - 1

    def get(self, offset: int, n: int) -> bytes | None:
        """The `n` bytes at `offset` when one span holds them all, else None."""
        i = self.index(offset)
        if i >= 0:
            at, data = self.items[i]
            if offset + n <= at + len(data):
                return data[offset - at : offset - at + n]
        return None

    def prefix(self, offset: int) -> bytes:
        """The cached bytes from `offset` up to the end of the span holding it (maybe none)."""
        i = self.index(offset)
        if i < 0:
            return b""
        at, data = self.items[i]
        return data[offset - at :]

    def add(self, start: int, data: bytes) -> None:
        """Keep `data`, merged with the spans it touches, so a read across both is a hit."""
        stop = start + len(data)
        keep: list[tuple[int, bytes]] = []
        for at, old in self.items:
            if at + len(old) < start or at > stop:
                keep.append((at, old))
                continue
            lo, hi = min(at, start), max(at + len(old), stop)
            merged = bytearray(hi - lo)
            merged[at - lo : at - lo + len(old)] = old
            merged[start - lo : start - lo + len(data)] = data
            start, stop, data = lo, hi, bytes(merged)
        keep.append((start, data))
        keep.sort(key=lambda s: s[0])
        self.items = keep

    def clear(self) -> None:
        """Forget every span (the file is closed)."""
        self.items = []
