"""Provides reading of checkpoints embedded in a pickle by `torch.storage._load_from_bytes(b)`.

`pickle.dump(state_dict)` stores each tensor's storage this way, and `torch.load` runs `torch.load`
on those bytes. ckptui reads them as the checkpoints they are (legacy or zip), with storage keys
made unique per embedded checkpoint and offsets absolute in the outer file.
"""

from __future__ import annotations

from typing import Any

from ckptui.formats.legacy import read_legacy_at
from ckptui.formats.source import MAGIC_NUMBER, Source
from ckptui.formats.torchzip import ZipCheckpoint
from ckptui.unpickler.inert import Blob, InertUnpickler, Malformed


def read_nested(src: Source, u: InertUnpickler, blob: Blob | bytes) -> Any:
    """Return the root object of the checkpoint in `blob` (usually a storage)."""
    base = u.extra.get("base")
    if isinstance(blob, Blob) and base is not None:
        inner = src
        start = base + blob.offset
        end = start + blob.length
        prefix = f"@{start}/"
    else:
        # Not the file's bytes as they lie: protocol <= 2 pickles carry the embedded checkpoint
        # as latin-1 text (decoded by `_codecs.encode`), and a compressed record is a copy.
        # Parse a copy; its storages cannot be memory-mapped from the file.
        data = (
            blob
            if isinstance(blob, bytes)
            else bytes(u.buf[blob.offset : blob.offset + blob.length])
        )
        inner = Source(src.path, data, len(data), limits=src.limits)
        inner.globals = src.globals
        inner.nested = src.nested
        start, end, prefix = 0, len(data), f"@copy{src.nested}/"
    where = f"embedded checkpoint at byte {start}"
    if inner.read_at(start, 4) == b"PK\x03\x04":
        z = ZipCheckpoint(inner, start, end, key_prefix=prefix, where=where)
        obj = z.load("data.pkl")
    else:
        magic, pos = inner.unpickler(inner.buf, where, None, u.nest + 1).load(start, end)
        if magic != MAGIC_NUMBER:
            raise Malformed("embedded bytes are not a torch checkpoint")
        obj, _ = read_legacy_at(
            inner, start, end, key_prefix=prefix, where=where, nest=u.nest + 1, magic_end=pos
        )
    if inner is not src:
        from dataclasses import replace

        for key, st in inner.storages.items():
            src.storages[key] = replace(st, data_offset=None, record="embedded copy")
        src.findings.extend(inner.findings)
    return obj


# See Source.read_nested: the readers that find embedded checkpoints live above source.
Source.read_nested = staticmethod(read_nested)
