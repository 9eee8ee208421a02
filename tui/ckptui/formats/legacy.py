"""Provides the reader for the legacy format (`_use_new_zipfile_serialization=False`, PyTorch < 1.6).

The file is a run of pickles (magic number, protocol version, sys_info, the object, the sorted
list of storage keys) followed by each storage as an 8-byte element count and its raw bytes. The
storages are indexed by reading each 8-byte count and seeking over the bytes, never reading them.
"""

from __future__ import annotations

from typing import Any

from ckptui.core.errors import CorruptFile
from ckptui.core.tree import Checkpoint, new_storage
from ckptui.formats.source import (
    MAGIC_NUMBER,
    STORAGE_ITEMS,
    Source,
    assemble,
    corrupt,
    parse_pid_location,
    storage_ref,
)
from ckptui.unpickler.inert import Blob, Global, Malformed, PDict, PSet
from ckptui.unpickler.recorded import StorageRef


def read_legacy_at(
    src: Source,
    start: int,
    end: int,
    key_prefix: str = "",
    where: str | None = None,
    nest: int = 0,
    magic_end: int | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Read a legacy-format checkpoint lying in bytes `start:end` of `src`.

    Args:
        magic_end: where the magic-number pickle ends, when the caller already read it.

    Returns:
        (root object, format facts).
    """
    where = where or "legacy pickles"
    pos = magic_end
    if pos is None:
        magic, pos = src.unpickler(src.buf, where, None, nest).load(start, end)
        if magic != MAGIC_NUMBER and not may_pass_ne_check(magic):
            raise corrupt(src.path, f"invalid magic number in {where}")
    version, pos = src.unpickler(src.buf, where, None, nest).load(pos, end)
    if version != 1001 and not may_pass_ne_check(version):
        raise corrupt(src.path, f"unsupported legacy protocol version {version!r} in {where}")
    sys_info, pos = src.unpickler(src.buf, where, None, nest).load(pos, end)
    refs: dict[str, StorageRef] = {}

    def persistent_load(pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) == 4 and pid[0] == "module":
            # ('module', class, source file, source): torch.load returns the class (after
            # comparing the source, which only warns)
            return pid[1]
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise Malformed("unexpected persistent id (only storages are allowed)")
        if len(pid) != 6:
            raise Malformed("legacy storage persistent id must have 6 fields")
        _, cls, key, location, count, view = pid
        if not isinstance(cls, Global) or cls.full not in STORAGE_ITEMS:
            raise Malformed(f"unknown storage class {cls!r}")
        if not isinstance(key, str) or type(count) is not int or not 0 <= count < 1 << 62:
            raise Malformed("malformed storage persistent id")
        # `storage_ref(..., parse_pid_location(location), ...)` inlined, same checks in the
        # same order: once per storage (issue 16)
        dtype, itemsize = STORAGE_ITEMS[cls.full]
        nbytes = count * itemsize
        if not isinstance(location, str) or len(location) > 100:
            parse_pid_location(location)  # raises its message
        full_key = key_prefix + key
        ref = refs.get(full_key)
        if ref is None:
            ref = refs[full_key] = StorageRef(full_key, dtype, nbytes, location, itemsize)
        elif ref.nbytes != nbytes:
            raise Malformed(f"storage {full_key} declared with two sizes")
        if view is not None:
            # Storage views (PyTorch < 1.0): (root key, offset, size). The bytes are the root's.
            if not isinstance(view, tuple) or len(view) != 3 or not isinstance(view[0], str):
                raise Malformed("malformed storage view")
            return storage_ref(
                src,
                key_prefix + view[0],
                dtype,
                nbytes,
                parse_pid_location(location),
                refs,
            )
        return ref

    root, pos = src.unpickler(src.buf, where, persistent_load, nest).load(pos, end)
    try:
        keys, pos = src.unpickler(src.buf, where, None, nest).load(pos, end)
    except CorruptFile as e:
        e.partial_root = root  # the object was read whole: that is what to show
        raise
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise corrupt(src.path, f"storage key list is not a list of strings in {where}")
    truncated = False
    storages = src.storages
    expect_count = src.expect_count
    # Once per storage (100,000 in a MoE state dict, issue 16): locals, and the entry made
    # positionally (`ref.entry`'s keywords cost a third of it).
    for key in keys:
        ref = refs.get(key_prefix + key)
        if ref is None:
            raise corrupt(src.path, f"storage {key} is listed but no tensor uses it ({where})")
        if truncated or pos + 8 > end:
            truncated = True
            storages[ref.key] = ref.entry()
            continue
        nbytes = ref.nbytes
        declared = nbytes // ref.itemsize
        count = expect_count(pos, declared, pos + 8 + nbytes)
        if count != declared:
            raise corrupt(
                src.path,
                f"storage {key} holds {count} elements, the pickle says {declared} ({where})",
            )
        data = pos + 8
        if end - data < nbytes:  # fewer bytes than declared (`end - data` may be negative)
            truncated = True
            storages[ref.key] = ref.entry()
        else:
            storages[ref.key] = new_storage(
                ref.key, ref.dtype, nbytes, ref.location, None, None, data, nbytes
            )
        pos = data + nbytes
    for key, ref in refs.items():
        if key not in storages:  # not setdefault: it made an entry per storage to drop it
            storages[key] = ref.entry()
    if truncated:
        src.warn("truncated", "the file ends before all storages: it was cut short")
    facts: dict[str, Any] = {"storages": len(keys), "data_end": pos}
    if isinstance(sys_info, PDict):
        for k in ("protocol_version", "little_endian", "type_sizes"):
            v = sys_info.get(k)
            if isinstance(v, int | bool):
                facts[k] = v
        if sys_info.get("little_endian") is False:
            src.warn("big_endian", "saved on a big-endian machine")
    return root, facts


def may_pass_ne_check(value: Any) -> bool:
    """True when torch's `if magic_number != MAGIC_NUMBER: raise` may not raise for `value`:
    an object whose `__ne__` the file chooses (`unittest.mock.ANY`, an object array, any
    instance or global). Plain values compare as Python does."""
    plain = (int, float, str, bytes, bool, tuple, list, PDict, PSet, Blob)
    return value is not None and not isinstance(value, plain)


def read_legacy(src: Source, magic_end: int) -> Checkpoint:
    """Read a whole legacy-format file whose magic pickle ends at `magic_end`."""
    root, facts = read_legacy_at(src, 0, src.size, magic_end=magic_end)
    return assemble(src, "torch-legacy", root, facts)
