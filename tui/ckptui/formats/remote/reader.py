"""Provides `RemoteSource`: a checkpoint at a URL (`http(s)://`, `s3://`, any fsspec URL), read
by range requests so that opening fetches metadata only, never tensor data.

fsspec is the one I/O layer (HTTP through its aiohttp-based HTTPFileSystem), imported (`fs`)
only when a URL is opened, so local files never pay for it. Each `read_at` that misses the cache is
one exact range request; nothing is read ahead, because any read-ahead past a record would pull
tensor bytes.

Zip checkpoints would otherwise cost one request per storage, to read its local header: each is
predicted from the central directory instead (`zip_index`, kept in `predictions`) and checked
against the real bytes when that record's data is first read, in the same request (values,
export); a mismatch is a `CorruptFile`. Legacy storage counts are predicted from the pickle the
same way. Records that are not storages (`data.pkl`, `byteorder`, `version`, ...) are fetched in
a few coalesced requests, since they lie next to each other. Pickle streams are parsed through
`buffer`; what was fetched is kept in `spans`; timeouts, errors and the metadata cache are in
`fs`.
"""

from __future__ import annotations

import bisect
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ckptui.core.dtypes import itemsize_of
from ckptui.core.errors import (
    CkptError,
    CorruptFile,
    NotFound,
    NotReadable,
    Redirected,
    TimedOut,
    Unsupported,
)
from ckptui.core.tree import Storage
from ckptui.formats.remote.buffer import PickleBuffer
from ckptui.formats.remote.fs import (
    ATTEMPTS,
    CONNECT_TIMEOUT,
    RANGE_HELP,
    READ_TIMEOUT,
    bounded,
    fetch_range,
    filesystem,
    remember,
    remembered,
    translate,
    version_of,
)
from ckptui.formats.remote.predictions import Expected, Predictions
from ckptui.formats.remote.spans import Spans
from ckptui.formats.remote.zip_index import (
    LOCAL,
    STORAGE_RECORD,
    TAIL,
    Record,
    find_directory,
    header_ends,
    parse_directory,
    predicted_header,
)
from ckptui.formats.source import Source

__all__ = ["CONNECT_TIMEOUT", "READ_TIMEOUT", "RemoteSource", "filesystem", "translate"]

MAX_CACHED_READ = 64 << 20
"""Reads up to this size are kept for re-reads (metadata); larger ones (tensor data) are not."""
RETRY_WAIT = 0.25
"""Seconds before the second try; doubled before each later one."""
WINDOW = 16 << 20
"""Bytes one request may read on through a planned run of tensor data (`plan_reads`)."""
MAX_GAP = 4096
"""Planned ranges at most this far apart are read in one request: the zip local header between
two neighbouring storages is about a hundred bytes."""
MERGE_BACK = 64 << 10
"""A prediction at most this far before a data range is fetched in the same request."""
HEADER_SLACK = 4 + 28 + 64
"""Extra-field bytes a torch local header may have: the FB field, zip64 fields, alignment."""


@dataclass
class RemoteSource(Source):
    """A `Source` whose bytes come from range requests; counts what it fetched."""

    file: Any = None
    """The open fsspec file (no cache: every miss is one exact range request)."""
    bytes_read: int = 0
    """Bytes received from the server (cache hits and predicted headers cost nothing)."""
    spans: Spans = field(default_factory=Spans)
    """What was fetched so far (metadata; tensor data only inside a planned window)."""
    predicted: Predictions = field(default_factory=Predictions)
    """Offset -> bytes predicted there (a zip local header, a legacy storage count), until
    checked against the real bytes."""
    _extras: dict[int, bytes] = field(default_factory=dict)
    """Offset -> a storage record's predicted extra field: torch's padding field ('FB', then
    'Z's), whose length the gap between records fixes (zip64 records are not predicted)."""
    _buffer: PickleBuffer | None = None
    _version: tuple[Any, ...] | None = None
    _runs: list[tuple[int, int]] = field(default_factory=list)
    """Planned runs of tensor data (`plan_reads`)."""
    _run_starts: list[int] = field(default_factory=list)
    _window: tuple[int, bytes] = (0, b"")
    """The last read-ahead through a planned run: (offset, bytes)."""

    @classmethod
    def open(cls, path: str) -> RemoteSource:  # type: ignore[override]
        """Open the URL `path`: learn its size; no bytes of the file are read yet."""
        fs, fpath = filesystem(path)
        try:
            # One HEAD (or the back-end's stat) for the size and the version tag (ETag), which
            # fsspec's HTTP file would otherwise drop.
            info = bounded(fs, "info", fpath)
            if info.get("partial") is False:  # HTTP "Accept-Ranges: none"
                raise Unsupported(path, RANGE_HELP)
            kw = {"size": info["size"]} if isinstance(info.get("size"), int) else {}
            try:
                f = fs.open(fpath, "rb", block_size=1 << 20, cache_type="none", **kw)
            except TypeError:  # a back-end whose files take no size: they stat on their own
                f = fs.open(fpath, "rb", block_size=1 << 20, cache_type="none")
        except Exception as e:  # noqa: BLE001 - any back-end's error becomes one CkptError line
            raise translate(path, e) from None
        size = getattr(f, "size", None)
        if type(f).__name__ == "HTTPStreamFile" or not isinstance(size, int):
            f.close()
            raise Unsupported(path, RANGE_HELP)
        src = cls(path, None, size, file=f)
        src._version = version_of(path, size, {**info, **(getattr(f, "details", None) or {})})
        src.spans = Spans(remembered(src._version))
        return src

    @property
    def buf(self) -> PickleBuffer:
        """The file as a buffer for the pickle parser (legacy and plain-pickle files): blocks
        fetched on first touch, with read-ahead that doubles while reads stay sequential, so a
        run of pickles costs a few requests and a skipped large payload costs none."""
        if self._buffer is None:
            self._buffer = PickleBuffer(self)
        return self._buffer

    def expect_count(self, pos: int, count: int, end: int) -> int:
        """A legacy storage's 8-byte element count at `pos`, taken to be `count` (what the
        pickle declares) without a request; checked when bytes up to `end` (the storage's end)
        are first read. Returns `count`."""
        self.predicted.add(Expected(pos, struct.pack("<q", count), end, "storage count", None))
        return count

    def read_at(self, offset: int, n: int) -> bytes:
        """Up to `n` bytes at `offset`: from the cache, a predicted header, or one request."""
        if offset < 0 or n <= 0 or offset >= self.size:
            return b""
        n = min(n, self.size - offset)
        pred = self.predicted.at(offset)
        if pred is not None and pred.record is not None and n <= LOCAL.size:
            return pred.want[:n]  # a zip reader reading the header it predicted: no request
        extra = self._extras.get(offset)
        if extra is not None and n <= len(extra):
            return extra[:n]  # the size breakdown measuring a record's padding
        if self.predicted:
            self._check_predictions(offset, offset + n)
        hit = self.spans.get(offset, n)
        if hit is not None:
            return hit
        head = self.spans.prefix(offset)  # e.g. the sniffed first bytes of a header
        data = head + self.fetch(offset + len(head), n - len(head))
        if n <= MAX_CACHED_READ:
            self.spans.add(offset, data)
        return data

    def read_range(self, offset: int, n: int) -> bytes:
        """Exactly `n` bytes at `offset` for tensor data (values, export): one request, never
        cached, so memory stays at one block (inside a run declared by `plan_reads`, the
        request reads on, up to `WINDOW`, and the next reads are served from it); a dropped
        connection or short answer is retried up to `ATTEMPTS` times in all, then raised as one
        `NotReadable` line.

        A predicted header or count just before the range (`prefetch_zip`, `expect_count`) is
        fetched in the same request and checked, so checking costs no extra round trip.
        """
        w_at, window = self._window
        w_end = w_at + len(window)
        if w_at <= offset and offset + n <= w_end:
            return window[offset - w_at : offset - w_at + n]
        head = b""
        if w_at <= offset < w_end:  # starts in the read-ahead: fetch only what follows it
            head = window[offset - w_at :]
            offset, n = w_end, n - len(head)
        stop = offset + n
        k = bisect.bisect_right(self._run_starts, offset) - 1
        if k >= 0 and stop <= self._runs[k][1]:  # read on through the planned run
            stop = max(stop, min(self._runs[k][1], offset + WINDOW))
        data = self._fetch_checked(offset, stop)
        if stop > offset + n:
            self._window = (offset, data)
            data = data[:n]
        return head + data if head else data

    def expect_legacy_count(self, st: Storage) -> None:
        """Predict the element count a legacy file keeps in the 8 bytes before storage `st`'s
        data (`expect_count`), so that the first read of the data checks it in the same
        request."""
        if st.data_offset is not None and st.nbytes:
            count = st.nbytes // itemsize_of(st.dtype)
            self.expect_count(st.data_offset - 8, count, st.data_offset + st.nbytes)

    def plan_reads(self, spans: Iterable[tuple[int, int]]) -> None:
        """Declare the byte ranges [start, stop) that `read_range` will be asked for (an
        export's kept storages). Ranges less than `MAX_GAP` apart form a run, and a read inside
        a run fetches up to `WINDOW` bytes of it in the same request: neighbouring small tensors
        cost one request instead of one each, for the few bytes of zip headers between them."""
        runs: list[list[int]] = []
        for a, b in sorted(spans):
            if runs and a - runs[-1][1] <= MAX_GAP:
                runs[-1][1] = max(runs[-1][1], b)
            else:
                runs.append([a, b])
        self._runs = [(a, b) for a, b in runs]
        self._run_starts = [a for a, _ in runs]
        self._window = (0, b"")

    def _fetch_checked(self, offset: int, stop: int) -> bytes:
        """[offset, stop) in one request (retried), checking the predictions it touches."""
        checks = self.predicted.touching(offset, stop)
        lo = min([offset, *(e.at for e in checks if offset - e.at <= MERGE_BACK)])
        n = stop - offset
        for attempt in range(1, ATTEMPTS + 1):
            try:
                data = self.fetch(lo, offset + n - lo)
                break
            except (NotFound, Unsupported, TimedOut, Redirected):
                # the file is gone, the server changed, trickles or sends us elsewhere: trying
                # again will not help (and a trickle would cost another whole deadline)
                raise
            except CkptError as e:
                if attempt == ATTEMPTS:
                    why = " ".join(e.message.split())
                    raise NotReadable(
                        self.path, f"{why} (gave up after {ATTEMPTS} attempts)"
                    ) from None
                time.sleep(RETRY_WAIT * 2 ** (attempt - 1))
        for e in checks:
            inside = lo <= e.at and e.at + len(e.want) <= offset + n
            self._check(e, data[e.at - lo : e.at - lo + len(e.want)] if inside else None)
        return data[offset - lo :] if lo < offset else data

    def check_local_header(self, record: str, data_offset: int) -> None:
        """Check that the zip record `record`'s local header really puts its data at
        `data_offset` (a remote open predicts it from the central directory), from one small
        range just before the data; a larger one only for an unusually long extra field.

        Raises:
            CorruptFile: no such local header ends at `data_offset`.
        """
        name = record.encode()
        for extra in (HEADER_SLACK, 0xFFFF):
            lo = max(0, data_offset - LOCAL.size - len(name) - extra)
            if header_ends(self.read_range(lo, data_offset - lo), name):
                return
            if lo == 0:
                break
        raise self._misplaced(record)

    def read_checked(self, record: str, data_offset: int, start: int, n: int) -> bytes:
        """`read_range(start, n)` of zip record `record`'s data, fetching the local header just
        before it in the same request and checking it (`check_local_header`, which costs a
        request of its own, only when the header is unusual or the read starts far in)."""
        name = record.encode()
        lo = max(0, data_offset - LOCAL.size - len(name) - HEADER_SLACK)
        if not lo <= data_offset <= start <= data_offset + MERGE_BACK:
            self.check_local_header(record, data_offset)
            return self.read_range(start, n)
        data = self.read_range(lo, start + n - lo)
        if not header_ends(data[: data_offset - lo], name):
            self.check_local_header(record, data_offset)
        return data[start - lo :]

    def close(self) -> None:
        """Close the remote file, keeping what it fetched for the next opening of the same
        version of the file (`_METADATA`)."""
        if self.spans.items and self._version is not None:
            remember(self._version, self.spans.items)
        if self.file is not None:
            try:
                self.file.close()
            finally:
                self.file = None
        self.spans.clear()
        self._buffer = None
        self._window = (0, b"")

    def prefetch_zip(self) -> None:
        """Fetch a zip's directory and non-storage records in a few requests, and predict every
        storage's local header so that no request per storage is needed."""
        tail_at = max(0, self.size - TAIL)
        self._fetch_span(tail_at, self.size)
        located = find_directory(self.spans.get(tail_at, self.size - tail_at) or b"", tail_at)
        if located is None:
            return  # not a plain torch zip end: let zipfile find its way with exact reads
        cd_at, cd_size = located
        if not 0 <= cd_at <= tail_at or cd_at + cd_size > self.size:
            return
        self._fetch_span(cd_at, tail_at)
        records = parse_directory(self.spans.get(cd_at, cd_size) or b"", cd_size)
        if records is None:
            return
        records.sort(key=lambda r: r.header)
        for rec, nxt in zip(records, [*records[1:], None], strict=True):
            rec.end = nxt.header if nxt is not None else cd_at
        plain = [r for r in records if not STORAGE_RECORD.match(r.name)]
        run: list[Record] = []
        for rec in plain:  # coalesce records that touch into one request
            if run and rec.header != run[-1].end:
                self._fetch_span(run[0].header, run[-1].end)
                run = []
            run.append(rec)
        if run:
            self._fetch_span(run[0].header, run[-1].end)
        alignment = self._alignment(records)
        for rec in records:
            if STORAGE_RECORD.match(rec.name):
                self._predict(rec, alignment)

    def _predict(self, rec: Record, alignment: int) -> None:
        got = predicted_header(rec, alignment) if rec.header < self.size else None
        if got is None:
            return  # not torch's layout: the reader fetches the real header
        header, extra = got
        self.predicted.add(Expected(rec.header, header, rec.end, "local header", rec))
        if extra is not None:
            self._extras[rec.header + LOCAL.size + rec.name_len] = extra

    def _check_predictions(self, start: int, stop: int) -> None:
        """Check every prediction whose record [start, stop) touches, one request each."""
        for e in self.predicted.touching(start, stop):
            self._check(e, None)

    def _check(self, e: Expected, real: bytes | None) -> None:
        """Compare a prediction with the real bytes (fetched now when not given), once."""
        if not self.predicted.pop(e):
            return
        if real is None:
            real = self.fetch(e.at, len(e.want))
        if e.record is not None:  # a zip local header: signature, name and extra lengths
            got, want = LOCAL.unpack(real), LOCAL.unpack(e.want)
            if (got[0], got[9], got[10]) != (want[0], want[9], want[10]):
                raise self._misplaced(e.record.name)
        elif real != e.want:
            (got_n,), (want_n,) = struct.unpack("<q", real), struct.unpack("<q", e.want)
            raise CorruptFile(
                self.path, f"the {e.what} at byte {e.at:,} is {got_n}, the pickle says {want_n}"
            )

    def _misplaced(self, record: str) -> CorruptFile:
        return CorruptFile(
            self.path,
            f"record {record}: its local header does not match the central directory, so its "
            "data offset is not where torch's layout puts it",
        )

    def _alignment(self, records: list[Record]) -> int:
        """`.storage_alignment` when present (torch >= 2.5 lets it be configured), else 64."""
        for rec in records:
            if rec.name.endswith("/.storage_alignment") and rec.method == 0:
                head = self.spans.get(rec.header, LOCAL.size)
                if head is None:
                    break
                fields = LOCAL.unpack(head)
                data = self.spans.get(rec.header + LOCAL.size + fields[9] + fields[10], rec.csize)
                if data is not None and data.strip().isdigit() and 0 < int(data) <= 1 << 20:
                    return int(data)
        return 64

    def _fetch_span(self, start: int, stop: int) -> None:
        if stop > start and self.spans.get(start, stop - start) is None:
            self.spans.add(start, self.fetch(start, stop - start))

    def fetch(self, offset: int, n: int) -> bytes:
        """One range request for exactly [offset, offset + n)."""
        if self.file is None:
            raise NotReadable(self.path, "the remote file is closed")
        try:
            data = fetch_range(self.file, offset, n)  # ended by its deadline on every back-end
        except Exception as e:  # noqa: BLE001 - any back-end's error becomes one CkptError line
            raise translate(self.path, e, n) from None
        self.bytes_read += len(data)
        if len(data) != n:
            raise NotReadable(
                self.path,
                f"the server returned {len(data):,} bytes for a {n:,}-byte range at {offset:,}",
            )
        return data
