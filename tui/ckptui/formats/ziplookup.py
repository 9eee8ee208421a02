"""Provides record lookup that picks the same record as torch's zip reader (miniz).

miniz sorts the central directory by lower-cased name with a heap sort and finds a name by binary
search, comparing ASCII case-insensitively. With unique names that is a plain dict lookup; with
duplicates (a crafted file can hold two `data.pkl` records) the record found depends on the heap
sort's order, which is neither the first nor the last. ckptui replays the same sort and search so
that what it shows is what `torch.load` would run.
"""

from __future__ import annotations

from collections import Counter


def _lower(name: bytes) -> bytes:
    return name.lower()  # bytes.lower() only folds ASCII, as MZ_TOLOWER does


def _less(a: bytes, b: bytes) -> bool:
    """miniz's mz_zip_reader_filename_less on lower-cased names."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return a[i] < b[i]
    return len(a) < len(b)


def _compare(a: bytes, b: bytes) -> int:
    """miniz's mz_zip_filename_compare: <0, 0, >0."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return a[i] - b[i]
    return len(a) - len(b)


class ZipLookup:
    """Name -> central-directory index, as torch's reader resolves it."""

    def __init__(self, names: list[str], raw: list[bytes] | None = None) -> None:
        """`raw`: the same names as bytes when the caller has them (saves encoding each)."""
        self._ascii: dict[str, int] | None = None
        """Lower-cased name -> index when every name is ASCII and unique (torch's are): then
        miniz's search finds the one record of a name, and nothing else is kept (the bytes
        lists and their dict were 25 MB on a 100,000-record zip, issue 16)."""
        self._names: list[bytes] = []
        self._dups: dict[bytes, int] = {}
        self._unique: dict[bytes, int] | None = None
        self._sorted: list[int] | None = None
        if all(map(str.isascii, names)):
            # str.lower() folds only A-Z on ASCII text, as bytes.lower() does
            by_name = {n.lower(): i for i, n in enumerate(names)}
            if len(by_name) == len(names):
                self._ascii = by_name
                return
        if raw is None:
            raw = [n.encode("utf-8", "surrogateescape") for n in names]
        self._names = [_lower(n) for n in raw]
        counts = Counter(self._names)
        self._dups = {n: c for n, c in counts.items() if c > 1}
        self._unique = {n: i for i, n in enumerate(self._names)} if not self._dups else None

    def locate(self, name: str) -> int | None:
        """Index of the record torch reads for `name`, or None."""
        if self._ascii is not None:
            # a non-ASCII name matches no ASCII one (its UTF-8 bytes are all >= 0x80), and is
            # not folded here ('\u212a'.lower() is 'k')
            return self._ascii.get(name.lower()) if name.isascii() else None
        key = _lower(name.encode("utf-8", "surrogateescape"))
        if self._unique is not None:
            return self._unique.get(key)
        order = self._sorted_indices()
        lo, hi = 0, len(order) - 1
        while lo <= hi:
            mid = lo + ((hi - lo) >> 1)
            idx = order[mid]
            comp = _compare(self._names[idx], key)
            if comp == 0:
                return idx
            if comp < 0:
                lo = mid + 1
            else:
                hi = mid - 1
        return None

    def duplicates(self) -> list[tuple[str, int, int]]:
        """(name, chosen index, count) for every name that appears more than once."""
        return [
            (
                n.decode("utf-8", "replace"),
                self.locate(n.decode("utf-8", "surrogateescape")) or 0,
                c,
            )
            for n, c in self._dups.items()
        ]

    def _sorted_indices(self) -> list[int]:
        """Replay mz_zip_reader_sort_central_dir_offsets_by_filename (a heap sort)."""
        if self._sorted is not None:
            return self._sorted
        names = self._names
        idx = list(range(len(names)))
        size = len(idx)
        if size > 1:

            def sift(root: int, end: int) -> None:
                while True:
                    child = 2 * root + 1
                    if child >= end:
                        return
                    if child + 1 < end and _less(names[idx[child]], names[idx[child + 1]]):
                        child += 1
                    if not _less(names[idx[root]], names[idx[child]]):
                        return
                    idx[root], idx[child] = idx[child], idx[root]
                    root = child

            for start in range((size - 2) >> 1, -1, -1):
                sift(start, size)
            for end in range(size - 1, 0, -1):
                idx[end], idx[0] = idx[0], idx[end]
                sift(0, end)
        self._sorted = idx
        return idx
