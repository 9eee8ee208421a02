"""Provides `ZipWriter`: a stored (uncompressed) zip laid out as `torch.save` lays out its own.

torch's writer puts each record's data on a 64-byte boundary with a padding extra field (`FB`) in
the **local** header only, and leaves the central directory's extra field empty (FORMATS.md).
The standard library's zipfile writes one extra field into both headers and decides on zip64
extras itself, so neither the alignment nor the exact output size could be known before writing;
this writer is the few dozen lines of the zip spec (APPNOTE 4.3, 4.5.3) that torch's files use,
which also lets `size_of` predict the output to the byte.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from typing import BinaryIO

ALIGN = 64
_LOCAL = struct.Struct("<IHHHHHIIIHH")
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_EOCD = struct.Struct("<IHHHHIIH")
_EOCD64 = struct.Struct("<IQHHIIQQQQ")
_LOCATOR = struct.Struct("<IIQI")
_MAX32 = 0xFFFFFFFF
_DOS_DATE = (1980 - 1980) << 9 | 1 << 5 | 1  # 1980-01-01: fixed, so outputs are reproducible
_FLAGS = 0x0800  # names are UTF-8
_SMALL = 1 << 20
"""Records up to this size are gathered in memory and written at once, CRC included."""
_PADDING: dict[int, bytes] = {}
"""Padding extra field by its length (4 + 0..63 bytes): made once each (`_write_small`)."""


def _local_len(name: bytes, offset: int, size: int) -> tuple[int, int]:
    """(local header length, padding extra length) for a record starting at `offset`."""
    base = 30 + len(name) + (20 if size >= _MAX32 else 0)
    pad = (-(offset + base + 4)) % ALIGN + 4  # the FB field: 4-byte header + padding
    return base + pad, pad


def _central_len(name: bytes, offset: int, size: int) -> int:
    n = (size >= _MAX32) * 16 + (offset >= _MAX32) * 8
    return 46 + len(name) + (4 + n if n else 0)


def size_of(records: Iterable[tuple[str, int]]) -> int:
    """The exact size of a zip holding records of these (name, byte size), in order."""
    return size_of_lengths((len(name.encode()), size) for name, size in records)


def size_of_lengths(records: Iterable[tuple[int, int]]) -> int:
    """`size_of` from each record's (UTF-8 name length, byte size): an export of 100,000
    tensors need not make 100,000 record names only to measure them. The sums are
    `_local_len` and `_central_len`, inlined: this loop runs once per record."""
    offset = 0
    central = 0
    count = 0
    for name_len, size in records:
        if size >= _MAX32 or offset >= _MAX32:  # zip64 extras: the general rule
            header, _ = _local_len(b"x" * name_len, offset, size)
            central += _central_len(b"x" * name_len, offset, size)
        else:
            base = 30 + name_len
            header = base + (-(offset + base + 4)) % ALIGN + 4
            central += 46 + name_len
        offset += header + size
        count += 1
    end = 22
    if count >= 0xFFFF or offset >= _MAX32 or central >= _MAX32:
        end += _EOCD64.size + _LOCATOR.size
    return offset + central + end


class ZipWriter:
    """Writes stored records one after the other; `close` writes the central directory."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.offset = 0
        self._entries: list[tuple[bytes, int, int, int]] = []  # name, offset, size, crc

    def write_record(self, name: str, chunks: Iterable[bytes | memoryview], size: int) -> None:
        """Write one record of exactly `size` bytes given as chunks (CRC patched in after)."""
        raw = name.encode()
        header_len, pad = _local_len(raw, self.offset, size)
        if size <= _SMALL:
            self._write_small(name, raw, chunks, size, header_len, pad)
            return
        zip64 = size >= _MAX32
        extra = b""
        if zip64:
            extra += struct.pack("<HHQQ", 1, 16, size, size)
        extra += struct.pack("<HH", 0x4246, pad - 4) + b"Z" * (pad - 4)
        start = self.offset
        small = _MAX32 if zip64 else size
        head = _LOCAL.pack(
            0x04034B50, 45 if zip64 else 20, _FLAGS, 0, 0, _DOS_DATE, 0, small, small,
            len(raw), len(extra),
        )  # fmt: skip
        assert len(head) + len(raw) + len(extra) == header_len
        self.f.write(head + raw + extra)
        crc = 0
        written = 0
        for chunk in chunks:
            crc = zlib.crc32(chunk, crc)
            written += len(chunk)
            self.f.write(chunk)
        if written != size:
            raise ValueError(f"record {name}: wrote {written} bytes, expected {size}")
        end = self.f.tell()
        self.f.seek(start + 14)
        self.f.write(struct.pack("<I", crc))
        self.f.seek(end)
        self.offset = end
        self._entries.append((raw, start, size, crc))

    def _write_small(
        self,
        name: str,
        raw: bytes,
        chunks: Iterable[bytes | memoryview],
        size: int,
        header_len: int,
        pad: int,
    ) -> None:
        """A record of at most `_SMALL` bytes (never zip64): gathered first, so the header
        carries its CRC and the record is one write (a 100,000-tensor export made two seeks and
        three writes per record, issue 16); the padding field is made once per length."""
        data = chunks[0] if type(chunks) is tuple and len(chunks) == 1 else b"".join(chunks)
        if len(data) != size:
            raise ValueError(f"record {name}: wrote {len(data)} bytes, expected {size}")
        crc = zlib.crc32(data)
        extra = _PADDING.get(pad)
        if extra is None:
            extra = _PADDING[pad] = struct.pack("<HH", 0x4246, pad - 4) + b"Z" * (pad - 4)
        head = _LOCAL.pack(
            0x04034B50, 20, _FLAGS, 0, 0, _DOS_DATE, crc, size, size, len(raw), len(extra)
        )
        start = self.offset
        self.f.write(b"".join((head, raw, extra, data)))
        self.offset = start + header_len + size
        self._entries.append((raw, start, size, crc))

    def close(self) -> None:
        """Write the central directory and the end records."""
        cd_start = self.offset
        for raw, offset, size, crc in self._entries:
            fields = b""
            if size >= _MAX32:
                fields += struct.pack("<QQ", size, size)
            if offset >= _MAX32:
                fields += struct.pack("<Q", offset)
            extra = struct.pack("<HH", 1, len(fields)) + fields if fields else b""
            zip64 = bool(fields)
            small = min(_MAX32, size)
            self.f.write(
                _CENTRAL.pack(
                    0x02014B50,
                    45 if zip64 else 20,
                    45 if zip64 else 20,
                    _FLAGS,
                    0,
                    0,
                    _DOS_DATE,
                    crc,
                    small,
                    small,
                    len(raw),
                    len(extra),
                    0,
                    0,
                    0,
                    0,
                    min(offset, _MAX32),
                )
                + raw
                + extra
            )
        cd_end = self.f.tell()
        count, cd_size = len(self._entries), cd_end - cd_start
        if count >= 0xFFFF or cd_start >= _MAX32 or cd_size >= _MAX32:
            self.f.write(
                _EOCD64.pack(0x06064B50, 44, 45, 45, 0, 0, count, count, cd_size, cd_start)
            )
            self.f.write(_LOCATOR.pack(0x07064B50, 0, cd_end, 1))
        self.f.write(
            _EOCD.pack(
                0x06054B50,
                0,
                0,
                min(count, 0xFFFF),
                min(count, 0xFFFF),
                min(cd_size, _MAX32),
                min(cd_start, _MAX32),
                0,
            )
        )
        self.offset = self.f.tell()
