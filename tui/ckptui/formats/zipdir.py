"""Provides `read_central_directory`: a zip's record list from one read and one `struct` walk.

`zipfile.ZipFile` builds a `ZipInfo` per record (dates, extras, attributes) before anything can
be looked up: 2.3 s on a `torch.save` of 100,000 tensors, which is then used for a few dozen
records. Here the central directory is read in one piece and walked once for the names; a
record's fields are unpacked only when it is asked for (`CentralDirectory[i]`).

Only the plain case is walked: no archive comment, no prepended data, no extra fields (so no
zip64 per-record sizes), no multi-disk locator, names that are NUL-free ASCII and a version
zipfile supports. That is what torch's writer produces below 4 GiB per record. Anything else
returns None and the caller uses `zipfile` as before, so every damaged or unusual archive meets
exactly the checks and messages it met before; the plain case yields the same names, offsets
and sizes `zipfile` would (a test compares the two).
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ckptui.formats.source import Source

LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
"""A zip local file header (30 bytes before its name)."""
ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    struct.error,
    ValueError,
    OSError,
    EOFError,
    IndexError,
    NotImplementedError,
    RuntimeError,
    zlib.error,
)
"""What zipfile raises on damaged, encrypted or exotic archives (method 99, version 6.4, ...)."""
_EOCD = struct.Struct("<4s4H2LH")
_LOC64 = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_CD = struct.Struct("<4s4B4HL2L5H2L")
_CD_SIG = b"PK\x01\x02"
_SIZES = struct.Struct("<10xH8xII14xI")
"""compress_type, compress_size, file_size and header_offset of a `_CD` record, alone."""
_MAX_EXTRACT_VERSION = 63  # zipfile's MAX_EXTRACT_VERSION: above it, zipfile refuses


class ZipRecord:
    """One central-directory record, with the `ZipInfo` attribute names ckptui reads."""

    __slots__ = (
        "CRC",
        "compress_size",
        "compress_type",
        "file_size",
        "filename",
        "flag_bits",
        "header_offset",
        "index",
    )

    def __init__(self, index: int, filename: str, fields: tuple[Any, ...]) -> None:
        self.index = index
        """Position in the central directory (the same as in `zipfile`'s `infolist()`)."""
        self.filename = filename
        self.flag_bits = fields[5]
        self.compress_type = fields[6]
        self.CRC = fields[9]
        self.compress_size = fields[10]
        self.file_size = fields[11]
        self.header_offset = fields[18]


class CentralDirectory:
    """Record names in directory order, and each record on demand."""

    def __init__(
        self,
        names: list[str],
        start_dir: int,
        get: Callable[[int], Any],
        raw: list[bytes] | None,
    ) -> None:
        self.names = names
        self.start_dir = start_dir
        """Offset of the central directory, where the last record's bytes end."""
        self.raw_names = raw
        """The names as bytes, as miniz compares them (`ZipLookup`); None when every name is
        ASCII, its own bytes (not kept: 5 MB for 100,000 records)."""
        self._get = get
        self._cd: bytes | None = None
        """The central directory's bytes and where each record starts in them, when walked
        here (`read_central_directory`); None over `zipfile`'s list."""
        self._starts: list[int] = []

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> Any:
        return self._get(i)

    def sizes(self, i: int) -> tuple[int, int, int, int]:
        """(compress_type, compress_size, file_size, header_offset) of record `i`: what a
        storage's entry needs, without making its `ZipRecord` (once per storage)."""
        if self._cd is not None:
            return _SIZES.unpack_from(self._cd, self._starts[i])
        zi = self._get(i)
        return zi.compress_type, zi.compress_size, zi.file_size, zi.header_offset

    @classmethod
    def of_zipfile(cls, infos: list[Any], start_dir: int) -> CentralDirectory:
        """The same view over `zipfile`'s `infolist()` (the fallback)."""
        names = [i.filename for i in infos]
        raw = [n.encode("utf-8", "surrogateescape") for n in names]
        return cls(names, start_dir, infos.__getitem__, raw)


def read_central_directory(
    read_at: Callable[[int, int], bytes], size: int
) -> CentralDirectory | None:
    """The records of the zip in bytes [0, size) of `read_at`, or None outside the plain case."""
    if size < _EOCD.size + _LOC64.size + _EOCD64.size:
        return None  # too small for zipfile's zip64 probe to behave as on a real file
    end = read_at(size - _EOCD.size, _EOCD.size)
    if len(end) != _EOCD.size or end[:4] != b"PK\x05\x06" or end[-2:] != b"\0\0":
        return None  # not a zip, or a comment: zipfile's search handles both
    size_cd, offset_cd = _EOCD.unpack(end)[5:7]
    location = size - _EOCD.size
    loc = read_at(location - _LOC64.size, _LOC64.size)
    concat = location - size_cd - offset_cd
    if len(loc) == _LOC64.size and loc[:4] == b"PK\x06\x07":
        _, diskno, _, disks = _LOC64.unpack(loc)
        if diskno != 0 or disks > 1:
            return None  # zipfile raises for multi-disk archives
        rec = read_at(location - _LOC64.size - _EOCD64.size, _EOCD64.size)
        if len(rec) != _EOCD64.size or rec[:4] != b"PK\x06\x06":
            return None
        fields = _EOCD64.unpack(rec)
        size_cd, offset_cd = fields[8], fields[9]
        concat = location - size_cd - offset_cd - _EOCD64.size - _LOC64.size
    if concat != 0 or size_cd <= 0:
        return None  # data before the archive, or an empty one: zipfile's own handling
    cd = read_at(offset_cd, size_cd)
    if len(cd) != size_cd:
        return None
    starts: list[int] = []
    raw: list[bytes] = []
    unpack = _CD.unpack_from
    pos = 0
    try:
        while pos < size_cd:
            f = unpack(cd, pos)
            n, e, c = f[12], f[13], f[14]
            if f[0] != _CD_SIG or e or f[3] > _MAX_EXTRACT_VERSION:
                return None  # extra fields (zip64 sizes) and odd versions: zipfile decides
            name = cd[pos + 46 : pos + 46 + n]
            if len(name) != n:
                return None
            starts.append(pos)
            raw.append(name)
            pos += 46 + n + c
    except struct.error:
        return None
    if pos > size_cd:
        return None  # a comment running past the directory: zipfile's reads go short there
    joined = b"\n".join(raw)
    if b"\0" in joined or not joined.isascii():
        return None  # zipfile cuts a name at NUL, and decodes others by the record's flag
    names = joined.decode("ascii").split("\n")  # ASCII reads the same as cp437 and UTF-8
    if len(names) != len(raw):
        return None  # a newline in a name

    def get(i: int) -> ZipRecord:
        return ZipRecord(i, names[i], unpack(cd, starts[i]))

    out = CentralDirectory(names, offset_cd, get, None)  # ASCII names (checked above)
    out._cd, out._starts = cd, starts
    return out


class SliceFile:
    """A read-only, seekable file over bytes `start:end` of a source (a zip may be embedded)."""

    def __init__(self, src: Source, start: int, end: int) -> None:
        self.src, self.start, self.end, self.pos = src, start, end, start

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: self.start, 1: self.pos, 2: self.end}[whence]
        self.pos = min(max(base + offset, self.start), self.end)
        return self.pos - self.start

    def tell(self) -> int:
        return self.pos - self.start

    def read(self, n: int = -1) -> bytes:
        stop = self.end if n is None or n < 0 else min(self.end, self.pos + n)
        data = self.src.read_at(self.pos, stop - self.pos)
        self.pos += len(data)
        return data

    def seekable(self) -> bool:
        return True
