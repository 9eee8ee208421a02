"""Provides `read_layout`: where an opened checkpoint's bytes lie and what each run holds.

Opening a checkpoint records only what browsing needs (each storage's offset); the size breakdown
also needs the framing: zip local headers and their alignment padding, the central directory,
pickle records, legacy storage headers, the safetensors header. That is read here, on demand, by
reopening the file: for a torch zip it is the central directory plus one small read per record,
so opening stays as fast as before for everyone who never asks where the bytes went.
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Iterator
from typing import Any

from ckptui.core.errors import CkptError, CorruptFile
from ckptui.core.slotinit import maker
from ckptui.core.tree import Checkpoint, Part, Region
from ckptui.formats.opening import open_source
from ckptui.formats.source import Source
from ckptui.formats.zipdir import (
    ZIP_ERRORS,
    CentralDirectory,
    SliceFile,
    read_central_directory,
)

_PADDING_ID = 0x4246
"""Extra-field id ("FB") that torch's zip writer uses for its 64-byte alignment padding."""

_PICKLE_RECORDS = ("data.pkl", "constants.pkl")

_WINDOW = 1 << 20
"""Bytes one read of local headers may span (`_zip_regions`)."""
_WINDOW_RECORDS = 4096
"""Records one such read may span (bounds the look-ahead)."""


_region = maker(Region)
"""`Region(...)` at half the cost (`core.slotinit`): a 100,000-storage zip has 300,000 regions."""


def read_layout(ckpt: Checkpoint) -> list[Region]:
    """The regions of `ckpt`'s file: storages, pickles, metadata and overhead.

    Regions may nest (a storage inside an embedded checkpoint inside a pickle) but never
    partly overlap in a file a real writer made; `sizes.account` gives each byte to the
    innermost region covering it, and bytes no region covers are reported as unaccounted.

    Raises:
        CorruptFile: when the file changed since it was opened.
    """
    src = open_source(ckpt.path)
    try:
        if src.size != ckpt.file_bytes:
            raise CorruptFile(ckpt.path, "the file changed size since it was opened")
        regions = list(_storage_regions(ckpt))
        if ckpt.format in ("torch-zip", "torchscript"):
            src.prefetch_zip()  # a URL: headers predicted, not one request each
            regions.extend(_zip_regions(src, ckpt))
        elif ckpt.format == "torch-legacy":
            regions.extend(_legacy_regions(ckpt))
        elif ckpt.format == "safetensors":
            n = int(ckpt.info.get("header_bytes", 0))
            regions.append(Region(0, 8, Part.OVERHEAD, "header length"))
            regions.append(Region(8, n, Part.METADATA, "JSON header"))
        elif ckpt.format == "pickle":
            regions.append(Region(0, int(ckpt.info.get("pickle_bytes", 0)), Part.PICKLE, "pickle"))
        return regions
    except CkptError:
        raise
    except ZIP_ERRORS as e:
        raise CorruptFile(ckpt.path, f"cannot read the zip layout ({e})") from None
    finally:
        src.close()


def _storage_regions(ckpt: Checkpoint) -> Iterator[Region]:
    for st in ckpt.storages.values():
        if st.file is None and st.data_offset is not None and st.record_nbytes:
            yield _region(st.data_offset, st.record_nbytes, Part.STORAGE, st.key)


def _zip_regions(src: Source, ckpt: Checkpoint) -> list[Region]:
    """Every record's local header, padding and data, and the central directory.

    A list made in one loop, not a generator: 100,000 records make 300,000 regions, and a
    yield, a lookup of each helper and a slice of each header apiece were a third of it."""
    cd = read_central_directory(src.read_at, src.size)
    if cd is None:  # not the plain case: zipfile's checks apply
        zf = zipfile.ZipFile(SliceFile(src, 0, src.size))  # type: ignore[arg-type]
        cd = CentralDirectory.of_zipfile(zf.infolist(), zf.start_dir)
    archive = ckpt.info.get("archive_name", "")
    storage_records = {st.record for st in ckpt.storages.values() if st.data_offset is not None}
    infos = sorted((cd[i] for i in range(len(cd))), key=_header_offset)
    local = type(src) is Source
    starts = [zi.header_offset for zi in infos[1:]] + [cd.start_dir]
    window, window_at = b"", 0
    paddings: dict[bytes, int] = {}
    out: list[Region] = []
    add = out.append
    make = _region
    unpack = _HEAD.unpack_from
    overhead = Part.OVERHEAD
    for k, zi in enumerate(infos):
        next_start = starts[k]
        at = zi.header_offset
        # One read for the header, its name and (usually) its extra field: torch's padding
        # field is under 64 bytes; a longer extra is read on its own. 100,000 records, 100,000
        # reads fewer.
        # (a remote source reads only the 30 bytes it fetched up front for each header)
        want = 30 + len(zi.filename) + 128 if local else 30
        if local:
            if not window_at <= at or at + want > window_at + len(window):
                # Records of small tensors lie close together: one read spans the headers of
                # as many as fit in _WINDOW bytes (100,000 records: a few dozen reads, not
                # 100,000); a record of a large storage is read alone, as before.
                end = at + want
                for later in starts[k : k + _WINDOW_RECORDS]:
                    if later + want - at > _WINDOW:
                        break
                    end = later + want
                window, window_at = src.read_at(at, end - at), at
            pos = at - window_at
        else:
            window, pos = src.read_at(at, want), 0
        # the header's bytes: `want` of them, or fewer where the file ends
        have = want if want < (left := len(window) - pos) else left
        if have < 30:
            continue
        signature, name_len, extra_len = unpack(window, pos)
        if signature != 0x04034B50:
            continue
        if not extra_len:
            padding = 0
        elif 30 + name_len + extra_len <= have:
            extra = window[pos + 30 + name_len : pos + 30 + name_len + extra_len]
            padding = paddings.get(extra)
            if padding is None:  # torch's padding fields take a few dozen distinct values
                padding = paddings[extra] = _padding_bytes(extra)
        else:
            padding = _padding_bytes(src.read_at(at + 30 + name_len, extra_len))
        data = at + 30 + name_len + extra_len
        add(make(at, data - at - padding, overhead, "zip local headers"))
        if padding:
            add(make(data - padding, padding, overhead, "alignment padding"))
        end = data + zi.compress_size
        if zi.flag_bits & 0x08 and 0 < next_start - end <= 24:
            # A data descriptor follows the data (torch's writer sets the flag); 12 to 24
            # bytes depending on its signature and zip64 sizes, so measured to the next record.
            add(make(end, next_start - end, overhead, "zip local headers"))
        if zi.filename in storage_records:
            continue  # its bytes are the storage's region
        add(make(data, zi.compress_size, *_record_kind(zi.filename, archive)))
    add(make(cd.start_dir, src.size - cd.start_dir, overhead, "zip central directory"))
    return out


_HEAD = struct.Struct("<I22xHH")
"""A zip local header's signature, name length and extra length (`LOCAL_HEADER`'s 1st, 10th
and 11th fields): all `_zip_regions` reads of it."""


def _header_offset(zi: Any) -> int:
    return zi.header_offset


def _record_kind(filename: str, archive: str) -> tuple[Part, str]:
    """(part, region name) of a zip record that holds no storage's bytes."""
    rel = filename[len(archive) + 1 :] if filename.startswith(archive + "/") else ""
    part = Part.PICKLE if rel in _PICKLE_RECORDS else Part.METADATA
    if rel.startswith(("data/", "constants/")):
        return part, "storage records no tensor uses"
    if part is Part.PICKLE:
        return part, filename
    if rel.startswith("code/"):
        return part, "TorchScript code"
    return part, "format records"


def _padding_bytes(extra: bytes) -> int:
    """Bytes of the alignment-padding field(s) in a local header's extra data."""
    pos, total = 0, 0
    while pos + 4 <= len(extra):
        field_id, size = struct.unpack_from("<HH", extra, pos)
        if field_id == _PADDING_ID:
            total += 4 + size
        pos += 4 + size
    return min(total, len(extra))


def _legacy_regions(ckpt: Checkpoint) -> Iterator[Region]:
    """The leading pickles, then each storage's 8-byte element count before its bytes."""
    # Storages of checkpoints embedded in the pickle (keys `@offset/...`) lie inside it and
    # nest there; the file's own storages follow the pickles.
    outer = sorted(
        st.data_offset - 8
        for st in ckpt.storages.values()
        if st.file is None and st.data_offset is not None and not st.key.startswith("@")
    )
    pickles_end = outer[0] if outer else int(ckpt.info.get("data_end", ckpt.file_bytes))
    yield Region(0, pickles_end, Part.PICKLE, "pickles")
    for s in outer:
        yield _region(s, 8, Part.OVERHEAD, "storage headers")
