"""Provides `RemoteSource`: a checkpoint at a URL (`http(s)://`, `s3://`, any fsspec URL), read
by range requests so that opening fetches metadata only, never tensor data.

fsspec is the one I/O layer (HTTP through its aiohttp-based HTTPFileSystem), imported only here and
only when a URL is opened, so local files never pay for it. Each `read_at` that misses the cache is
one exact range request; nothing is read ahead, because any read-ahead past a record would pull
tensor bytes.

Zip checkpoints would otherwise cost one request per storage: the zip reader reads each storage's
30-byte local header to learn its data offset (torch's 64-byte alignment padding lives only there,
FORMATS.md). Instead, the central directory is fetched once and each storage's local header is
*predicted* from it: the gap to the next record gives the extra field's length, and that must agree
with torch's padding rule (the data starts on the next `.storage_alignment` boundary after a 4-byte
`FB` field). A prediction that agrees is served without a request; the real header is checked the
first time any byte of that record is read (values, export), and a mismatch is a `CorruptFile`.
Records that are not storages (`data.pkl`, `byteorder`, `version`, ...) are fetched in a few
coalesced requests, since they lie next to each other.
"""

from __future__ import annotations

import bisect
import re
import struct
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..dtypes import itemsize_of
from ..errors import CkptError, CorruptFile, NotFound, NotReadable, Unsupported
from ._common import Source

CONNECT_TIMEOUT = 10.0
"""Seconds to connect to a server (HTTP)."""
READ_TIMEOUT = 60.0
"""Seconds a read may wait for the next bytes from the server (HTTP)."""
MAX_CACHED_READ = 64 << 20
"""Reads up to this size are kept for re-reads (metadata); larger ones (tensor data) are not."""
ATTEMPTS = 3
"""Tries per tensor-data range (`read_range`) before a dropped connection is an error."""
RETRY_WAIT = 0.25
"""Seconds before the second try; doubled before each later one."""
WINDOW = 16 << 20
"""Bytes one request may read on through a planned run of tensor data (`plan_reads`)."""
MAX_GAP = 4096
"""Planned ranges at most this far apart are read in one request: the zip local header between
two neighbouring storages is about a hundred bytes."""
MERGE_BACK = 64 << 10
"""A prediction at most this far before a data range is fetched in the same request."""
BLOCK = 64 << 10
"""First read-ahead of the pickle buffer; doubled while reads stay sequential, up to MAX_AHEAD."""
MAX_AHEAD = 8 << 20

_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_EOCD = struct.Struct("<IHHHHIIH")
_EOCD64 = struct.Struct("<IQHHIIQQQQ")
_LOCATOR = struct.Struct("<IIQI")
_TAIL = _EOCD.size + _LOCATOR.size + _EOCD64.size
_STORAGE_RECORD = re.compile(r"^[^/]*/(data|constants)/")
_U32 = 0xFFFFFFFF
_RANGE_HELP = (
    "the server does not support HTTP range requests; reading this checkpoint would need a "
    "full download"
)


@dataclass
class _Record:
    name: str
    header: int
    """Absolute offset of the local header."""
    name_len: int
    method: int
    flags: int
    crc: int
    csize: int
    usize: int
    end: int = 0
    """Where the record's data (and data descriptor) end: the next record or the directory."""


@dataclass
class _Expect:
    """Bytes predicted at `at` without a request, to be checked on the first read of the
    record they describe, which ends at `end`."""

    at: int
    want: bytes
    end: int
    what: str
    record: _Record | None
    """The zip record whose local header this is; None for a legacy storage count."""


@dataclass
class RemoteSource(Source):
    """A `Source` whose bytes come from range requests; counts what it fetched."""

    file: Any = None
    """The open fsspec file (no cache: every miss is one exact range request)."""
    bytes_read: int = 0
    """Bytes received from the server (cache hits and predicted headers cost nothing)."""
    requests: int = 0
    _spans: list[tuple[int, bytes]] = field(default_factory=list)
    _predicted: dict[int, _Expect] = field(default_factory=dict)
    """Offset -> bytes predicted there (a zip local header, a legacy storage count), until
    checked against the real bytes."""
    _pred_starts: list[int] = field(default_factory=list)
    _extras: dict[int, bytes] = field(default_factory=dict)
    """Offset -> a storage record's predicted extra field: torch's padding field ('FB', then
    'Z's), whose length the gap between records fixes (zip64 records are not predicted)."""
    _buffer: _Buffer | None = None
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
            info = fs.info(fpath)
            if info.get("partial") is False:  # HTTP "Accept-Ranges: none"
                raise Unsupported(path, _RANGE_HELP)
            kw = {"size": info["size"]} if isinstance(info.get("size"), int) else {}
            f = fs.open(fpath, "rb", block_size=1 << 20, cache_type="none", **kw)
        except Exception as e:  # noqa: BLE001 - any back-end's error becomes one CkptError line
            raise translate(path, e) from None
        size = getattr(f, "size", None)
        if type(f).__name__ == "HTTPStreamFile" or not isinstance(size, int):
            f.close()
            raise Unsupported(path, _RANGE_HELP)
        src = cls(path, None, size, file=f)
        src._version = _version(path, size, {**info, **(getattr(f, "details", None) or {})})
        src._spans = _remembered(src._version)
        return src

    @property
    def buf(self) -> _Buffer:
        """The file as a buffer for the pickle parser (legacy and plain-pickle files): blocks
        fetched on first touch, with read-ahead that doubles while reads stay sequential, so a
        run of pickles costs a few requests and a skipped large payload costs none."""
        if self._buffer is None:
            self._buffer = _Buffer(self)
        return self._buffer

    def expect_count(self, pos: int, count: int, end: int) -> int:
        """A legacy storage's 8-byte element count at `pos`, taken to be `count` (what the
        pickle declares) without a request; checked when bytes up to `end` (the storage's end)
        are first read. Returns `count`."""
        self._expect(_Expect(pos, struct.pack("<q", count), end, "storage count", None))
        return count

    def read_at(self, offset: int, n: int) -> bytes:
        """Up to `n` bytes at `offset`: from the cache, a predicted header, or one request."""
        if offset < 0 or n <= 0 or offset >= self.size:
            return b""
        n = min(n, self.size - offset)
        pred = self._predicted.get(offset)
        if pred is not None and pred.record is not None and n <= _LOCAL.size:
            return pred.want[:n]  # a zip reader reading the header it predicted: no request
        extra = self._extras.get(offset)
        if extra is not None and n <= len(extra):
            return extra[:n]  # the size breakdown measuring a record's padding
        if self._predicted:
            self._check_predictions(offset, offset + n)
        hit = self._cached(offset, n)
        if hit is not None:
            return hit
        head = self._cached_prefix(offset)  # e.g. the sniffed first bytes of a header
        data = head + self._fetch(offset + len(head), n - len(head))
        if n <= MAX_CACHED_READ:
            self._add_span(offset, data)
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
        if w_at <= offset and offset + n <= w_at + len(window):
            return window[offset - w_at : offset - w_at + n]
        stop = offset + n
        k = bisect.bisect_right(self._run_starts, offset) - 1
        if k >= 0 and stop <= self._runs[k][1]:  # read on through the planned run
            stop = max(stop, min(self._runs[k][1], offset + WINDOW))
        data = self._fetch_checked(offset, stop)
        if stop > offset + n:
            self._window = (offset, data)
            return data[:n]
        return data

    def expect_layout(self, ckpt: Any) -> None:
        """Predict what lies just before each storage's bytes of `ckpt` (this file, as opened)
        so that the first read of each checks it in the same request: a torch zip's local
        headers (`prefetch_zip`, its directory usually still cached from the opening) or a
        legacy file's element counts."""
        if ckpt.format == "torch-zip":
            self.prefetch_zip()
        elif ckpt.format == "torch-legacy":
            for st in ckpt.storages.values():
                if st.data_offset is not None and st.file is None and st.nbytes:
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
        checks = self._touching(offset, stop)
        lo = min([offset, *(e.at for e in checks if offset - e.at <= MERGE_BACK)])
        n = stop - offset
        for attempt in range(1, ATTEMPTS + 1):
            try:
                data = self._fetch(lo, offset + n - lo)
                break
            except (NotFound, Unsupported):
                raise  # the file is gone or the server changed: trying again will not help
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
        for extra in (4 + 28 + 64, 0xFFFF):  # torch's FB field, zip64 fields, 64-byte alignment
            lo = max(0, data_offset - _LOCAL.size - len(name) - extra)
            window = self.read_range(lo, data_offset - lo)
            at = window.rfind(b"PK\x03\x04")
            while at >= 0:
                fields = _LOCAL.unpack_from(window, at) if at + _LOCAL.size <= len(window) else None
                if fields is not None and (
                    at + _LOCAL.size + fields[9] + fields[10] == len(window)
                    and window[at + _LOCAL.size : at + _LOCAL.size + fields[9]] == name
                ):
                    return
                at = window.rfind(b"PK\x03\x04", 0, at)
            if lo == 0:
                break
        raise CorruptFile(
            self.path,
            f"record {record}: its local header does not match the central directory, so its "
            "data offset is not where torch's layout puts it",
        )

    def close(self) -> None:
        """Close the remote file, keeping what it fetched for the next opening of the same
        version of the file (`_METADATA`)."""
        if self._spans and self._version is not None:
            _remember(self._version, self._spans)
        if self.file is not None:
            try:
                self.file.close()
            finally:
                self.file = None
        self._spans.clear()
        self._buffer = None
        self._window = (0, b"")

    def prefetch_zip(self) -> None:
        """Fetch a zip's directory and non-storage records in a few requests, and predict every
        storage's local header so that no request per storage is needed."""
        tail_at = max(0, self.size - _TAIL)
        self._fetch_span(tail_at, self.size)
        located = self._directory(self._cached(tail_at, self.size - tail_at) or b"", tail_at)
        if located is None:
            return  # not a plain torch zip end: let zipfile find its way with exact reads
        cd_at, cd_size = located
        if not 0 <= cd_at <= tail_at or cd_at + cd_size > self.size:
            return
        self._fetch_span(cd_at, tail_at)
        records = _parse_directory(self._cached(cd_at, cd_size) or b"", cd_size)
        if records is None:
            return
        records.sort(key=lambda r: r.header)
        for rec, nxt in zip(records, [*records[1:], None], strict=True):
            rec.end = nxt.header if nxt is not None else cd_at
        plain = [r for r in records if not _STORAGE_RECORD.match(r.name)]
        run: list[_Record] = []
        for rec in plain:  # coalesce records that touch into one request
            if run and rec.header != run[-1].end:
                self._fetch_span(run[0].header, run[-1].end)
                run = []
            run.append(rec)
        if run:
            self._fetch_span(run[0].header, run[-1].end)
        alignment = self._alignment(records)
        for rec in records:
            if _STORAGE_RECORD.match(rec.name):
                self._predict(rec, alignment)

    def _predict(self, rec: _Record, alignment: int) -> None:
        if rec.method != 0 or rec.header >= self.size:
            return
        big = rec.csize >= _U32 or rec.usize >= _U32
        desc = (24 if big else 16) if rec.flags & 8 else 0
        extra = rec.end - rec.header - _LOCAL.size - rec.name_len - rec.csize - desc
        start = rec.header + _LOCAL.size + rec.name_len + 4  # the 4-byte FB field's header
        if big or rec.header >= _U32:  # torch's getPadding: zip64 extra fields come first
            start += 4 + (16 if big else 0) + (8 if rec.header >= _U32 else 0)
        rule = start + (-start) % alignment - (rec.header + _LOCAL.size + rec.name_len)
        if extra != rule or not 4 <= extra <= 0xFFFF:
            return  # not torch's layout: the reader fetches the real header
        header = _LOCAL.pack(
            0x04034B50,
            45 if big else 20,
            rec.flags,
            0,
            0,
            0,
            rec.crc,
            min(rec.csize, _U32),
            min(rec.usize, _U32),
            rec.name_len,
            extra,
        )
        self._expect(_Expect(rec.header, header, rec.end, "local header", rec))
        if not big and rec.header < _U32:  # the extra field is torch's padding field alone
            field = struct.pack("<HH", 0x4246, extra - 4) + b"Z" * (extra - 4)
            self._extras[rec.header + _LOCAL.size + rec.name_len] = field

    def _expect(self, e: _Expect) -> None:
        if e.at not in self._predicted:
            bisect.insort(self._pred_starts, e.at)
        self._predicted[e.at] = e

    def _touching(self, start: int, stop: int) -> list[_Expect]:
        """The unchecked predictions whose record overlaps [start, stop)."""
        if not self._predicted:
            return []
        out = []
        i = max(0, bisect.bisect_right(self._pred_starts, start) - 1)
        while i < len(self._pred_starts) and self._pred_starts[i] < stop:
            e = self._predicted.get(self._pred_starts[i])
            if e is not None and e.end > start:
                out.append(e)
            i += 1
        return out

    def _check_predictions(self, start: int, stop: int) -> None:
        """Check every prediction whose record [start, stop) touches, one request each."""
        for e in self._touching(start, stop):
            self._check(e, None)

    def _check(self, e: _Expect, real: bytes | None) -> None:
        """Compare a prediction with the real bytes (fetched now when not given), once."""
        if self._predicted.pop(e.at, None) is None:
            return
        if real is None:
            real = self._fetch(e.at, len(e.want))
        if e.record is not None:  # a zip local header: signature, name and extra lengths
            got, want = _LOCAL.unpack(real), _LOCAL.unpack(e.want)
            ok = (got[0], got[9], got[10]) == (want[0], want[9], want[10])
            what = (
                f"record {e.record.name}: its local header does not match the central "
                "directory, so its data offset is not where torch's layout puts it"
            )
        else:
            ok = real == e.want
            (got_n,), (want_n,) = struct.unpack("<q", real), struct.unpack("<q", e.want)
            what = f"the {e.what} at byte {e.at:,} is {got_n}, the pickle says {want_n}"
        if not ok:
            raise CorruptFile(self.path, what)

    def _alignment(self, records: list[_Record]) -> int:
        """`.storage_alignment` when present (torch >= 2.5 lets it be configured), else 64."""
        for rec in records:
            if rec.name.endswith("/.storage_alignment") and rec.method == 0:
                head = self._cached(rec.header, _LOCAL.size)
                if head is None:
                    break
                fields = _LOCAL.unpack(head)
                data = self._cached(rec.header + _LOCAL.size + fields[9] + fields[10], rec.csize)
                if data is not None and data.strip().isdigit() and 0 < int(data) <= 1 << 20:
                    return int(data)
        return 64

    def _directory(self, tail: bytes, tail_at: int) -> tuple[int, int] | None:
        """(offset, size) of the central directory, from the end records; None if unusual."""
        if len(tail) < _EOCD.size:
            return None
        sig, _, _, _, _, cd_size, cd_at, comment = _EOCD.unpack(tail[-_EOCD.size :])
        if sig != 0x06054B50 or comment:
            return None
        if cd_at != _U32 and cd_size != _U32:
            return cd_at, cd_size
        loc = tail[-_EOCD.size - _LOCATOR.size : -_EOCD.size]
        if len(loc) < _LOCATOR.size:
            return None
        lsig, _, eocd64_at, _ = _LOCATOR.unpack(loc)
        if lsig != 0x07064B50 or eocd64_at < tail_at:
            return None
        rec = tail[eocd64_at - tail_at : eocd64_at - tail_at + _EOCD64.size]
        if len(rec) < _EOCD64.size:
            return None
        fields = _EOCD64.unpack(rec)
        if fields[0] != 0x06064B50:
            return None
        return fields[9], fields[8]

    def _fetch_span(self, start: int, stop: int) -> None:
        if stop > start and self._cached(start, stop - start) is None:
            self._add_span(start, self._fetch(start, stop - start))

    def _cached(self, offset: int, n: int) -> bytes | None:
        i = bisect.bisect_right(self._spans, offset, key=lambda s: s[0]) - 1
        if i >= 0:
            at, data = self._spans[i]
            if offset + n <= at + len(data):
                return data[offset - at : offset - at + n]
        return None

    def _cached_prefix(self, offset: int) -> bytes:
        """The cached bytes from `offset` up to the end of the span holding it (maybe none)."""
        i = bisect.bisect_right(self._spans, offset, key=lambda s: s[0]) - 1
        if i < 0:
            return b""
        at, data = self._spans[i]
        return data[offset - at :]

    def _add_span(self, start: int, data: bytes) -> None:
        """Keep `data`, merged with the spans it touches, so a read across both is a hit."""
        stop = start + len(data)
        keep: list[tuple[int, bytes]] = []
        for at, old in self._spans:
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
        self._spans = keep

    def _fetch(self, offset: int, n: int) -> bytes:
        """One range request for exactly [offset, offset + n)."""
        if self.file is None:
            raise NotReadable(self.path, "the remote file is closed")
        try:
            self.file.seek(offset)
            data = self.file.read(n)
        except Exception as e:  # noqa: BLE001 - any back-end's error becomes one CkptError line
            raise translate(self.path, e) from None
        self.requests += 1
        self.bytes_read += len(data)
        if len(data) != n:
            raise NotReadable(
                self.path,
                f"the server returned {len(data):,} bytes for a {n:,}-byte range at {offset:,}",
            )
        return data


_METADATA: OrderedDict[tuple[Any, ...], tuple[float, list[tuple[int, bytes]]]] = OrderedDict()
"""What each recently closed remote file fetched (its directory, pickles, headers), by URL, size
and ETag or modification time: the reports computed after opening (`weights_only` re-reads the
pickle, an export re-reads the directory) then cost no transfer. Bounded by METADATA_BUDGET
bytes and METADATA_TTL seconds."""
METADATA_BUDGET = 64 << 20
METADATA_TTL = 300.0


def _version(url: str, size: int, details: dict[str, Any]) -> tuple[Any, ...] | None:
    """What identifies one version of a remote file (URL, size, ETag or modification time), or
    None when the server names no version: then nothing is cached, as a changed file could not
    be told from the one cached."""
    keys = ("ETag", "etag", "LastModified", "last_modified", "Last-Modified", "mtime")
    tag = next((details[k] for k in keys if details.get(k) is not None), None)
    return None if tag is None else (url, size, str(tag))


def _remembered(version: tuple[Any, ...] | None) -> list[tuple[int, bytes]]:
    entry = _METADATA.get(version) if version is not None else None
    if entry is None or time.monotonic() - entry[0] > METADATA_TTL:
        return []
    return list(entry[1])


def _remember(version: tuple[Any, ...], spans: list[tuple[int, bytes]]) -> None:
    _METADATA.pop(version, None)
    _METADATA[version] = (time.monotonic(), list(spans))
    total = sum(len(d) for _, entry in _METADATA.values() for _, d in entry)
    while total > METADATA_BUDGET and len(_METADATA) > 1:
        _, (_, old) = _METADATA.popitem(last=False)
        total -= sum(len(d) for _, d in old)


def _parse_directory(cd: bytes, cd_size: int) -> list[_Record] | None:
    """The central directory's records, or None when it is not laid out as expected."""
    out: list[_Record] = []
    pos = 0
    while pos + _CENTRAL.size <= cd_size:
        f = _CENTRAL.unpack_from(cd, pos)
        if f[0] != 0x02014B50:
            return None
        flags, method, crc, csize, usize = f[3], f[4], f[7], f[8], f[9]
        nlen, xlen, clen, header = f[10], f[11], f[12], f[16]
        name_bytes = cd[pos + _CENTRAL.size : pos + _CENTRAL.size + nlen]
        extra = cd[pos + _CENTRAL.size + nlen : pos + _CENTRAL.size + nlen + xlen]
        xpos = 0
        while xpos + 4 <= len(extra):  # zip64: 8-byte values for the fields that hold 0xFFFFFFFF
            tag, size = struct.unpack_from("<HH", extra, xpos)
            if tag == 1:
                vals = extra[xpos + 4 : xpos + 4 + size]
                k = 0
                if usize == _U32 and k + 8 <= len(vals):
                    usize, k = struct.unpack_from("<Q", vals, k)[0], k + 8
                if csize == _U32 and k + 8 <= len(vals):
                    csize, k = struct.unpack_from("<Q", vals, k)[0], k + 8
                if header == _U32 and k + 8 <= len(vals):
                    header = struct.unpack_from("<Q", vals, k)[0]
            xpos += 4 + size
        name = name_bytes.decode("utf-8" if flags & 0x800 else "cp437", "replace")
        out.append(_Record(name, header, nlen, method, flags, crc, csize, usize))
        pos += _CENTRAL.size + nlen + xlen + clen
    return out


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem for `url`, with bounded timeouts where the back-end takes them."""
    try:
        import fsspec
    except ImportError:
        raise Unsupported(
            url, "reading URLs needs the remote extra: pip install 'ckptui[remote]'"
        ) from None
    options: dict[str, Any] = {}
    if url.split("://", 1)[0].lower() in ("http", "https"):
        try:
            import aiohttp
        except ImportError:
            raise Unsupported(
                url, "reading http(s) URLs needs aiohttp: pip install 'ckptui[remote]'"
            ) from None
        options["client_kwargs"] = {
            "timeout": aiohttp.ClientTimeout(
                total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT
            )
        }
    elif url.split("://", 1)[0].lower() in ("s3", "s3a"):
        # botocore's defaults: 60 s to connect and 5 tries, so a dead endpoint took minutes
        options["config_kwargs"] = {
            "connect_timeout": CONNECT_TIMEOUT,
            "read_timeout": READ_TIMEOUT,
            "retries": {"max_attempts": ATTEMPTS},
        }
    try:
        return fsspec.core.url_to_fs(url, **options)
    except Exception as e:  # noqa: BLE001 - unknown protocols, bad options: one CkptError line
        raise translate(url, e) from None


_NO_CREDENTIALS = (
    "no credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
)


def _status(e: BaseException) -> tuple[int | None, str]:
    """The HTTP status and the server's error code (S3's `NoSuchBucket`, ...), if any."""
    status = getattr(e, "status", None)
    response = getattr(e, "response", None)  # botocore's ClientError (s3fs)
    if isinstance(response, dict):
        status = status or response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status, str(response.get("Error", {}).get("Code", ""))
    return status, ""


def translate(url: str, e: BaseException) -> CkptError:
    """One-line `CkptError` for whatever fsspec or its back-end raised."""
    if isinstance(e, CkptError):
        return e
    if isinstance(e, FileNotFoundError) and e.__cause__ is not None:
        return translate(url, e.__cause__)  # fsspec's HTTP info() and s3fs hide the cause here
    status, code = _status(e)
    name = type(e).__name__
    if code == "NoSuchBucket":
        return NotFound(url, "the bucket does not exist (404)")
    if isinstance(e, FileNotFoundError) or status == 404:
        return NotFound(url, "not found on the server (404)")
    if isinstance(e, PermissionError) or status in (401, 403):
        return NotReadable(url, "access denied (401/403, or credentials missing)")
    if name in ("NoCredentialsError", "PartialCredentialsError"):  # botocore
        return NotReadable(url, _NO_CREDENTIALS)
    if isinstance(status, int):
        return NotReadable(url, f"the server answered HTTP {status} {getattr(e, 'message', '')}")
    if name in ("ClientPayloadError", "ServerDisconnectedError"):  # aiohttp
        return NotReadable(url, f"the connection dropped mid-transfer ({name})")
    if name in ("EndpointConnectionError", "ConnectTimeoutError"):  # botocore
        return NotReadable(url, f"cannot reach the server ({e})")
    if isinstance(e, ValueError) and "range" in str(e).lower():
        return Unsupported(url, _RANGE_HELP)
    if isinstance(e, TimeoutError):
        return NotReadable(url, f"the server did not answer within {READ_TIMEOUT:g} s")
    if isinstance(e, ImportError):
        return Unsupported(url, f"this kind of URL needs a package that is not installed ({e})")
    if isinstance(e, OSError):
        return NotReadable(url, f"cannot reach the server ({e})")
    return NotReadable(url, f"remote read failed ({name}: {e})")


class _Buffer:
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
        spans = src._spans
        k = bisect.bisect_right(spans, i, key=lambda s: s[0]) - 1
        if k >= 0 and i < spans[k][0] + len(spans[k][1]):
            self._lo, self._data = spans[k]
            return
        ahead = BLOCK
        if k >= 0 and spans[k][0] + len(spans[k][1]) == i:  # reading on: double the read-ahead
            ahead = min(MAX_AHEAD, max(BLOCK, len(spans[k][1])))
        n = min(ahead, src.size - i)
        if k + 1 < len(spans):
            n = min(n, spans[k + 1][0] - i)  # up to the next cached span, which it then joins
        src._add_span(i, src._fetch(i, n))
        self._span(i)

    def _cover(self, start: int, stop: int) -> None:
        """Make one cached span hold [start, stop): a long slice fetches exactly what lacks."""
        self._span(start)
        while self._lo + len(self._data) < stop:
            at = self._lo + len(self._data)
            src = self._src
            k = bisect.bisect_right(src._spans, at, key=lambda s: s[0])
            upto = stop if k >= len(src._spans) else min(stop, src._spans[k][0])
            src._add_span(at, src._fetch(at, max(1, upto - at)))
            self._span(start)


_STRUCTS: dict[str, struct.Struct] = {}
