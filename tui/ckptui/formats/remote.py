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
from dataclasses import dataclass, field
from typing import Any

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
class RemoteSource(Source):
    """A `Source` whose bytes come from range requests; counts what it fetched."""

    file: Any = None
    """The open fsspec file (no cache: every miss is one exact range request)."""
    bytes_read: int = 0
    """Bytes received from the server (cache hits and predicted headers cost nothing)."""
    requests: int = 0
    _spans: list[tuple[int, bytes]] = field(default_factory=list)
    _predicted: dict[int, tuple[bytes, _Record]] = field(default_factory=dict)
    """Local header offset -> (predicted 30-byte header, record), until checked."""
    _pred_starts: list[int] = field(default_factory=list)

    @classmethod
    def open(cls, path: str) -> RemoteSource:  # type: ignore[override]
        """Open the URL `path`: learn its size; no bytes of the file are read yet."""
        fs, fpath = _filesystem(path)
        try:
            f = fs.open(fpath, "rb", block_size=1 << 20, cache_type="none")
        except Exception as e:  # noqa: BLE001 - any back-end's error becomes one CkptError line
            raise translate(path, e) from None
        size = getattr(f, "size", None)
        if type(f).__name__ == "HTTPStreamFile" or not isinstance(size, int):
            f.close()
            raise Unsupported(path, _RANGE_HELP)
        return cls(path, None, size, file=f)

    @property
    def buf(self) -> Any:
        """Pickle streams (legacy and plain-pickle files) are parsed from a buffer of the whole
        file, which a remote source does not offer yet."""
        raise Unsupported(
            self.path,
            "remote legacy and plain-pickle checkpoints are not supported yet "
            "(torch zip and safetensors are)",
        )

    def read_at(self, offset: int, n: int) -> bytes:
        """Up to `n` bytes at `offset`: from the cache, a predicted header, or one request."""
        if offset < 0 or n <= 0 or offset >= self.size:
            return b""
        n = min(n, self.size - offset)
        pred = self._predicted.get(offset)
        if pred is not None and n <= _LOCAL.size:
            return pred[0][:n]
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
        cached, so memory stays at one block; a dropped connection or short answer is retried
        up to `ATTEMPTS` times in all, then raised as one `NotReadable` line.

        Any predicted local header the range touches is checked first (`prefetch_zip`).
        """
        if self._predicted:
            self._check_predictions(offset, offset + n)
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return self._fetch(offset, n)
            except (NotFound, Unsupported):  # noqa: PERF203 - one try per request, not per byte
                raise  # the file is gone or the server changed: trying again will not help
            except CkptError as e:
                if attempt == ATTEMPTS:
                    why = " ".join(e.message.split())
                    raise NotReadable(
                        self.path, f"{why} (gave up after {ATTEMPTS} attempts)"
                    ) from None
                time.sleep(RETRY_WAIT * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

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
        """Close the remote file."""
        if self.file is not None:
            try:
                self.file.close()
            finally:
                self.file = None
        self._spans.clear()

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
        self._pred_starts = sorted(self._predicted)

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
        self._predicted[rec.header] = (header, rec)

    def _check_predictions(self, start: int, stop: int) -> None:
        """Check the real local header of every predicted record that [start, stop) touches."""
        i = bisect.bisect_right(self._pred_starts, start) - 1
        i = max(i, 0)
        while i < len(self._pred_starts) and self._pred_starts[i] < stop:
            at = self._pred_starts[i]
            pred = self._predicted.get(at)
            if pred is not None and pred[1].end > start:
                header, rec = pred
                del self._predicted[at]
                real = _LOCAL.unpack(self._fetch(at, _LOCAL.size))
                want = _LOCAL.unpack(header)
                if (real[0], real[9], real[10]) != (want[0], want[9], want[10]):
                    raise CorruptFile(
                        self.path,
                        f"record {rec.name}: its local header does not match the central "
                        "directory, so its data offset is not where torch's layout puts it",
                    )
            i += 1

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


def _filesystem(url: str) -> tuple[Any, str]:
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
    try:
        return fsspec.core.url_to_fs(url, **options)
    except Exception as e:  # noqa: BLE001 - unknown protocols, bad options: one CkptError line
        raise translate(url, e) from None


def translate(url: str, e: BaseException) -> CkptError:
    """One-line `CkptError` for whatever fsspec or its back-end raised."""
    if isinstance(e, CkptError):
        return e
    if isinstance(e, FileNotFoundError) and e.__cause__ is not None:
        return translate(url, e.__cause__)  # fsspec's HTTP info() hides every failure this way
    status = getattr(e, "status", None)
    if isinstance(e, FileNotFoundError) or status == 404:
        return NotFound(url, "not found on the server (404)")
    if isinstance(e, PermissionError) or status in (401, 403):
        return NotReadable(url, "access denied (401/403, or credentials missing)")
    if isinstance(status, int):
        return NotReadable(url, f"the server answered HTTP {status} {getattr(e, 'message', '')}")
    if type(e).__name__ in ("ClientPayloadError", "ServerDisconnectedError"):  # aiohttp
        return NotReadable(url, f"the connection dropped mid-transfer ({type(e).__name__})")
    if isinstance(e, ValueError) and "range" in str(e).lower():
        return Unsupported(url, _RANGE_HELP)
    if isinstance(e, TimeoutError):
        return NotReadable(url, f"the server did not answer within {READ_TIMEOUT:g} s")
    if isinstance(e, ImportError):
        return Unsupported(url, f"this kind of URL needs a package that is not installed ({e})")
    if isinstance(e, OSError):
        return NotReadable(url, f"cannot reach the server ({e})")
    return NotReadable(url, f"remote read failed ({type(e).__name__}: {e})")
