"""Provides a torch zip's layout as a remote reader needs it: the end records and central
directory (`find_directory`, `parse_directory`) and each storage record's local header predicted
from them (`predicted_header`), so opening costs no request per storage.

The gap between one record and the next fixes a local header's extra-field length, and that must
agree with torch's padding rule: the data starts on the next `.storage_alignment` boundary after
a 4-byte `FB` field (zip64 fields first, when present; FORMATS.md). A header that disagrees is
not predicted, and the reader fetches the real one.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

LOCAL = struct.Struct("<IHHHHHIIIHH")
CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
EOCD = struct.Struct("<IHHHHIIH")
EOCD64 = struct.Struct("<IQHHIIQQQQ")
LOCATOR = struct.Struct("<IIQI")
TAIL = EOCD.size + LOCATOR.size + EOCD64.size
STORAGE_RECORD = re.compile(r"^[^/]*/(data|constants)/")
U32 = 0xFFFFFFFF


@dataclass
class Record:
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


def find_directory(tail: bytes, tail_at: int) -> tuple[int, int] | None:
    """(offset, size) of the central directory, from the end records; None if unusual."""
    if len(tail) < EOCD.size:
        return None
    sig, _, _, _, _, cd_size, cd_at, comment = EOCD.unpack(tail[-EOCD.size :])
    if sig != 0x06054B50 or comment:
        return None
    if cd_at != U32 and cd_size != U32:
        return cd_at, cd_size
    loc = tail[-EOCD.size - LOCATOR.size : -EOCD.size]
    if len(loc) < LOCATOR.size:
        return None
    lsig, _, eocd64_at, _ = LOCATOR.unpack(loc)
    if lsig != 0x07064B50 or eocd64_at < tail_at:
        return None
    rec = tail[eocd64_at - tail_at : eocd64_at - tail_at + EOCD64.size]
    if len(rec) < EOCD64.size:
        return None
    fields = EOCD64.unpack(rec)
    if fields[0] != 0x06064B50:
        return None
    return fields[9], fields[8]


def predicted_header(rec: Record, alignment: int) -> tuple[bytes, bytes | None] | None:
    """(the 30-byte local header, its extra field when that is torch's padding field alone)
    that torch's writer puts before `rec`'s data, or None when the gap to the next record
    disagrees with torch's rule (or the record is compressed)."""
    if rec.method != 0:
        return None
    big = rec.csize >= U32 or rec.usize >= U32
    desc = (24 if big else 16) if rec.flags & 8 else 0
    extra = rec.end - rec.header - LOCAL.size - rec.name_len - rec.csize - desc
    start = rec.header + LOCAL.size + rec.name_len + 4  # the 4-byte FB field's header
    if big or rec.header >= U32:  # torch's getPadding: zip64 extra fields come first
        start += 4 + (16 if big else 0) + (8 if rec.header >= U32 else 0)
    rule = start + (-start) % alignment - (rec.header + LOCAL.size + rec.name_len)
    if extra != rule or not 4 <= extra <= 0xFFFF:
        return None
    header = LOCAL.pack(
        0x04034B50,
        45 if big else 20,
        rec.flags,
        0,
        0,
        0,
        rec.crc,
        min(rec.csize, U32),
        min(rec.usize, U32),
        rec.name_len,
        extra,
    )
    if big or rec.header >= U32:
        return header, None
    return header, struct.pack("<HH", 0x4246, extra - 4) + b"Z" * (extra - 4)


def parse_directory(cd: bytes, cd_size: int) -> list[Record] | None:
    """The central directory's records, or None when it is not laid out as expected."""
    out: list[Record] = []
    pos = 0
    while pos + CENTRAL.size <= cd_size:
        f = CENTRAL.unpack_from(cd, pos)
        if f[0] != 0x02014B50:
            return None
        flags, method, crc, csize, usize = f[3], f[4], f[7], f[8], f[9]
        nlen, xlen, clen, header = f[10], f[11], f[12], f[16]
        name_bytes = cd[pos + CENTRAL.size : pos + CENTRAL.size + nlen]
        extra = cd[pos + CENTRAL.size + nlen : pos + CENTRAL.size + nlen + xlen]
        xpos = 0
        while xpos + 4 <= len(extra):  # zip64: 8-byte values for the fields that hold 0xFFFFFFFF
            tag, size = struct.unpack_from("<HH", extra, xpos)
            if tag == 1:
                vals = extra[xpos + 4 : xpos + 4 + size]
                k = 0
                if usize == U32 and k + 8 <= len(vals):
                    usize, k = struct.unpack_from("<Q", vals, k)[0], k + 8
                if csize == U32 and k + 8 <= len(vals):
                    csize, k = struct.unpack_from("<Q", vals, k)[0], k + 8
                if header == U32 and k + 8 <= len(vals):
                    header = struct.unpack_from("<Q", vals, k)[0]
            xpos += 4 + size
        name = name_bytes.decode("utf-8" if flags & 0x800 else "cp437", "replace")
        out.append(Record(name, header, nlen, method, flags, crc, csize, usize))
        pos += CENTRAL.size + nlen + xlen + clen
    return out


def header_ends(window: bytes, name: bytes) -> bool:
    """Whether `window` ends exactly where a local header for record `name` puts its data."""
    at = window.rfind(b"PK\x03\x04")
    while at >= 0:
        fields = LOCAL.unpack_from(window, at) if at + LOCAL.size <= len(window) else None
        if fields is not None and (
            at + LOCAL.size + fields[9] + fields[10] == len(window)
            and window[at + LOCAL.size : at + LOCAL.size + fields[9]] == name
        ):
            return True
        at = window.rfind(b"PK\x03\x04", 0, at)
    return False
