"""Provides the reading of one DCP item: the `torch.save` zip archive at (offset, length) of a
`.distcp` file, unpickled inertly, with its storages located in place.

In torch 2.13 (and every earlier release) `FileSystemWriter` writes each item as a complete
`torch.save` zip archive (`_write_item`: `torch.save(tensor, stream)`; objects are `torch.save`d
into a BytesIO first). So a chunk's raw bytes lie inside its item at the zip's `data/<key>`
record, and its view (stride, storage offset) is in the item's own `data.pkl`: ckptui reads the
item's central directory and its `data.pkl` (a few hundred bytes each, never the tensor data)
and points `Storage.data_offset` at the raw bytes, so values and export read them in place.

Separate from `dcp` (which builds the tree and the storages from `.metadata`) because this is
zip and pickle plumbing that `dcp_sizes` shares: it walks the same central directories to
account for the items' framing.
"""

from __future__ import annotations

import struct
from typing import Any

from ckptui.core.dtypes import STORAGE_DTYPES, itemsize_of
from ckptui.formats.source import Source, parse_pid_location
from ckptui.unpickler.inert import Global, Malformed
from ckptui.unpickler.recorded import StorageRef

_TAIL = 4096
_HEAD = 2048
_WHOLE = 16384
"""Items up to this size are read with one pread; larger ones by a head and a tail window."""
_CD = struct.Struct("<I6xH8xIIHHH8xI")
"""A central directory entry: signature, method, sizes, name/extra/comment lengths, offset."""
_LOCAL = struct.Struct("<IHHHHHIIIHH")


class Item:
    """Bytes `start:start+length` of a source, read through at most three small windows.

    A small item is read whole with one pread; a large one by its tail (the central directory)
    and its head (data.pkl's local header and the pickle); anything else by a pread of its own.
    """

    __slots__ = ("head", "length", "src", "start", "tail", "tail_at")

    def __init__(self, src: Source, start: int, length: int) -> None:
        self.src, self.start, self.length = src, start, length
        if length <= _WHOLE:
            self.head = self.tail = src.read_at(start, length)
            self.tail_at = 0
        else:
            self.head = b""
            self.tail_at = length - _TAIL
            self.tail = src.read_at(start + self.tail_at, _TAIL)
        if len(self.tail) != length - self.tail_at:
            raise Malformed("item cut short")

    def read(self, at: int, n: int) -> bytes:
        """`n` bytes at item offset `at` (fewer only past the item's end)."""
        n = max(0, min(n, self.length - at))
        if at >= self.tail_at:
            return self.tail[at - self.tail_at : at - self.tail_at + n]
        if not self.head:
            self.head = self.src.read_at(self.start, min(self.length, _HEAD))
        if at + n <= len(self.head):
            return self.head[at : at + n]
        return self.src.read_at(self.start + at, n)


_Zip = tuple[bytes, dict[bytes, tuple[int, int, int]], int]
ZipCache = dict[tuple[int, int, int, int], list[tuple[bytearray, tuple[int, ...], _Zip]]]


def parse_zip(item: Item, cache: ZipCache | None = None) -> _Zip:
    """(archive name, archive-relative name -> (local header offset, size, method), offset of the
    central directory), from the central directory at the item's end.

    Items of one shape and dtype have central directories that differ only in their CRC-32
    fields (which the parse ignores), so with a `cache` a directory equal to an earlier one but
    for those fields reuses its parse (measured: half of reading 10,000 items went here).

    Raises:
        Malformed: for any damage, including fields whose counts or sizes point past the
            bytes really there (a struct or index error in the parse is that, not a bug).
    """
    try:
        return _parse_zip_unchecked(item, cache)
    except (struct.error, IndexError) as e:
        raise Malformed(f"damaged zip directory in the item ({e})") from None


def _parse_zip_unchecked(item: Item, cache: ZipCache | None) -> _Zip:
    length, tail = item.length, item.tail
    eocd = tail.rfind(b"PK\x05\x06", max(0, len(tail) - 22 - 65535))
    if eocd < 0 or eocd + 22 > len(tail):
        raise Malformed("item is not a zip archive")
    _, _, _, _, count, cd_size, cd_off, _ = struct.unpack_from("<IHHHHIIH", tail, eocd)
    if count == 0xFFFF or cd_size == 0xFFFFFFFF or cd_off == 0xFFFFFFFF:
        loc = eocd - 20
        if loc < 0 or tail[loc : loc + 4] != b"PK\x06\x07":
            raise Malformed("zip64 locator missing")
        (z64,) = struct.unpack_from("<Q", tail, loc + 8)
        rec = item.read(z64, 56)
        if len(rec) < 56 or rec[:4] != b"PK\x06\x06":
            raise Malformed("zip64 end record missing")
        count, cd_size, cd_off = struct.unpack_from("<QQQ", rec, 32)
    if cd_off + cd_size > length or count > 1 << 20:
        raise Malformed("central directory outside the item")
    cd = item.read(cd_off, cd_size)
    shape = (length, count, cd_off, cd_size)
    seen = cache.get(shape) if cache is not None else None
    for masked, crcs, parsed in seen or ():
        mine = bytearray(cd)
        for p in crcs:
            mine[p : p + 4] = b"\0\0\0\0"
        if mine == masked:
            return parsed
    records: dict[bytes, tuple[int, int, int]] = {}
    archive = b""
    pos = 0
    crcs: list[int] = []
    for _ in range(count):
        if pos + 46 > len(cd):
            raise Malformed("central directory shorter than its entry count")
        crcs.append(pos + 16)
        sig, method, csize, usize, nlen, elen, clen, local = _CD.unpack_from(cd, pos)
        if sig != 0x02014B50:
            raise Malformed("bad central directory entry")
        name = cd[pos + 46 : pos + 46 + nlen]
        if 0xFFFFFFFF in (csize, usize, local):
            extra = cd[pos + 46 + nlen : pos + 46 + nlen + elen]
            csize, usize, local = _zip64_extra(extra, csize, usize, local)
        pos += 46 + nlen + elen + clen
        slash = name.find(b"/")
        archive = archive or name[:slash]
        if slash <= 0 or name[:slash] != archive or name[slash + 1 :] in records:
            raise Malformed("not a torch.save archive (records outside one folder, or twice)")
        if local + 30 > length:
            raise Malformed("zip record outside the item")
        records[name[slash + 1 :]] = (local, csize, method)
    if cache is not None:
        masked = bytearray(cd)
        for p in crcs:
            masked[p : p + 4] = b"\0\0\0\0"
        entries = cache.setdefault(shape, [])
        if len(entries) < 4:
            entries.append((masked, tuple(crcs), (archive, records, cd_off)))
    return archive, records, cd_off


def _zip64_extra(extra: bytes, csize: int, usize: int, local: int) -> tuple[int, int, int]:
    pos = 0
    while pos + 4 <= len(extra):
        hid, size = struct.unpack_from("<HH", extra, pos)
        if hid == 1:
            vals = list(struct.unpack_from(f"<{size // 8}Q", extra, pos + 4))
            if usize == 0xFFFFFFFF:
                usize = vals.pop(0)
            if csize == 0xFFFFFFFF:
                csize = vals.pop(0)
            if local == 0xFFFFFFFF:
                local = vals.pop(0)
            return csize, usize, local
        pos += 4 + size
    raise Malformed("zip64 sizes missing")


def _record(item: Item, records: dict[bytes, tuple[int, int, int]], name: bytes) -> tuple[int, int]:
    """(item offset of the data, size) of a stored record, from its local header."""
    entry = records.get(name)
    if entry is None:
        raise Malformed(f"item has no {name!r} record")
    local, csize, method = entry
    if method != 0:
        raise Malformed(f"{name!r} is compressed")
    h = item.read(local, 30)
    if len(h) < 30:
        raise Malformed("item cut short")
    f = _LOCAL.unpack(h)
    if f[0] != 0x04034B50:
        raise Malformed("bad local header")
    data = local + 30 + f[9] + f[10]
    if data + csize > item.length:
        raise Malformed(f"{name!r} runs past the item")
    return data, csize


Ref = tuple[str, str, str, int, str]
"""A storage the item's pickle names: (its key, key shown, dtype, declared bytes, location)."""


def _unpickle_item(
    src: Source, item: Item, data: bytes, at: int, where: str, prefix: str
) -> tuple[Any, list[Ref]]:
    """The item's data.pkl, unpickled inertly; storages are only noted (located later)."""
    refs: dict[str, Ref] = {}
    storage_refs: dict[str, StorageRef] = {}

    def persistent_load(pid: Any) -> Any:
        if not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage":
            raise Malformed("unexpected persistent id")
        _, cls, key, location, count = pid
        if not isinstance(cls, Global) or cls.full not in STORAGE_DTYPES:
            raise Malformed(f"unknown storage class {cls!r}")
        if not isinstance(key, str) or type(count) is not int or not 0 <= count < 1 << 62:
            raise Malformed("malformed storage persistent id")
        ref = storage_refs.get(key)
        if ref is None:
            dtype = STORAGE_DTYPES[cls.full]
            nbytes = count * itemsize_of(dtype)
            loc = parse_pid_location(location)
            ref = storage_refs[key] = StorageRef(prefix + key, dtype, nbytes, loc)
            refs[key] = (key, prefix + key, dtype, nbytes, loc)
        return ref

    u = src.unpickler(data, where, persistent_load, base=item.start + at)
    obj, _ = u.load(0, len(data))
    return obj, list(refs.values())


def read_item(
    src: Source,
    start: int,
    length: int,
    rel: str,
    cache: dict[bytes, tuple[Any, list[Ref]]] | None,
    prefix: str = "",
    zips: ZipCache | None = None,
) -> tuple[Any, list[tuple[Ref, str, int, int]]]:
    """Unpickle the torch.save archive at `start` of `src` and locate its storages.

    Returns:
        (the root object, [(storage ref, record name, absolute data offset, bytes held)]).
        With a `cache`, identical data.pkl bytes (every chunk of one shape and dtype) are
        unpickled once: the inert result depends on the bytes alone. `zips` caches central
        directory parses (`parse_zip`).
    """
    item = Item(src, start, length)
    archive, records, _ = parse_zip(item, zips)
    at, size = _record(item, records, b"data.pkl")
    data = item.read(at, size)
    hit = cache.get(data) if cache is not None else None
    if hit is None:
        hit = _unpickle_item(src, item, data, at, f"{rel} item at byte {start}", prefix)
        if cache is not None:
            cache[data] = hit
    obj, refs = hit
    located = []
    for ref in refs:
        name = b"data/" + ref[0].encode("utf-8", "surrogateescape")
        off, have = _record(item, records, name)
        record = (archive + b"/" + name).decode("utf-8", "replace")
        located.append((ref, record, start + off, min(have, ref[3])))
    return obj, located
