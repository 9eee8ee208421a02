"""Provides the reader for the oldest checkpoints: tar archives (PyTorch < 0.4), read as torch.load
reads them.

`torch.load` tries a file that is no zip as a tar first (`_legacy_load`'s `legacy_load`): when
`tarfile` can open it, it unpickles the `storages` member (a count, then per storage a pickle of
`(key, location, storage type)` followed by an 8-byte element count and the raw bytes, then a
pickle of storage views), then the `tensors` member (a count, then per tensor a pickle of
`(key, storage key, type)` and its sizes, strides and offset as packed integers), then the
`pickle` member (the object, whose persistent ids are tensor keys or module source tuples). Any
of those pickles runs code under `torch.load`, so all are read (inertly) here. A tar whose first
member *name* is itself a protocol-0 pickle is a polyglot: reading it as a pickle, as the sniffer
would, misses what torch runs.
"""

from __future__ import annotations

import struct
import tarfile
from typing import Any

from ckptui.core.dtypes import STORAGE_DTYPES, itemsize_of
from ckptui.core.tree import Checkpoint
from ckptui.formats.source import Source, assemble, corrupt, parse_pid_location
from ckptui.formats.zipdir import SliceFile
from ckptui.unpickler.inert import Global, Malformed
from ckptui.unpickler.recorded import MAX_DIMS, StorageRef, TensorRec

MEMBERS = ("storages", "tensors", "pickle")


def looks_like_tar(head: bytes) -> bool:
    """True when the first 512 bytes are a tar header with a valid checksum (tarfile's test)."""
    if len(head) < 512:
        return False
    try:
        stored = int(head[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
    except ValueError:
        return False
    unsigned = 256 + sum(head[:148]) + sum(head[156:512])
    signed = (
        256 + sum(struct.unpack("148b", head[:148])) + sum(struct.unpack("356b", head[156:512]))
    )
    return stored in (unsigned, signed)


def open_tar(src: Source) -> tarfile.TarFile | None:
    """The file as torch's `tarfile.open(fileobj=f, mode="r:")` sees it, or None (no tar)."""
    if not looks_like_tar(src.read_at(0, 512)):
        return None
    try:
        tar = tarfile.open(fileobj=SliceFile(src, 0, src.size), mode="r:")  # type: ignore[call-overload]  # noqa: SIM115 (returned open)
        tar.getmembers()
    except (tarfile.TarError, OSError, ValueError, EOFError):
        return None
    return tar


def _counted(src: Source, info: tarfile.TarInfo, what: str) -> tuple[int, int, int]:
    """The `storages`/`tensors` member's leading count pickle: (count, position after it, end of
    the member). A count larger than the bytes left cannot be real, so it is refused before any
    loop runs on it."""
    member = f"{what}s"
    pos, end = info.offset_data, info.offset_data + info.size
    count, pos = _pickle(src, pos, end, member)
    if type(count) is not int or not 0 <= count <= end - pos:
        raise corrupt(src.path, f"tar {member} member: the {what} count is not a count")
    return count, pos, end


def read_legacy_tar(src: Source, tar: tarfile.TarFile) -> Checkpoint:
    """Read a legacy tar checkpoint: every pickle torch.load would unpickle, in its order."""
    names = set(tar.getnames())
    missing = [m for m in MEMBERS if m not in names]
    if missing:
        raise corrupt(src.path, f"tar archive has no {missing[0]!r} member, which torch.load needs")
    members = {name: tar.getmember(name) for name in MEMBERS}
    storages: dict[str, StorageRef] = {}
    tensors: dict[str, TensorRec] = {}
    count, pos, end = _counted(src, members["storages"], "storage")
    for _ in range(count):
        args, pos = _pickle(src, pos, end, "storages")
        if not isinstance(args, tuple) or len(args) != 3:
            raise corrupt(src.path, "tar storages member: a storage is not (key, location, type)")
        key, location, cls = args
        dtype = STORAGE_DTYPES.get(cls.full) if isinstance(cls, Global) else None
        if dtype is None or not isinstance(key, str | int):
            raise corrupt(src.path, f"tar storages member: unknown storage type {cls!r}")
        raw = src.read_at(pos, 8)
        if len(raw) < 8:
            raise corrupt(src.path, "tar storages member is cut short")
        (numel,) = struct.unpack("<q", raw)
        nbytes = numel * itemsize_of(dtype)
        if numel < 0 or pos + 8 + nbytes > end:
            raise corrupt(src.path, f"tar storage {key} runs past its member")
        ref = StorageRef(f"tar/{key}", dtype, nbytes, parse_pid_location(location))
        storages[str(key)] = ref
        src.storages[ref.key] = ref.entry("storages", data_offset=pos + 8, record_nbytes=nbytes)
        pos += 8 + nbytes
    _views, pos = _pickle(src, pos, end, "storages")  # (target, root, offset, numel) views
    count, pos, end = _counted(src, members["tensors"], "tensor")
    for _ in range(count):
        args, pos = _pickle(src, pos, end, "tensors")
        if not isinstance(args, tuple) or len(args) != 3:
            raise corrupt(src.path, "tar tensors member: a tensor is not (key, storage, type)")
        key, storage_id, _type = args
        raw = src.read_at(pos, 8)
        (ndim,) = struct.unpack("<i", raw[:4]) if len(raw) == 8 else (-1,)
        if not 0 <= ndim <= MAX_DIMS:
            raise corrupt(src.path, "tar tensors member: a tensor's dimensions are not sane")
        fields = src.read_at(pos + 8, 16 * ndim + 8)
        if len(fields) < 16 * ndim + 8:
            raise corrupt(src.path, "tar tensors member is cut short")
        vals = struct.unpack(f"<{2 * ndim + 1}q", fields)
        pos += 8 + len(fields)
        st = storages.get(str(storage_id))
        if st is None:
            raise corrupt(src.path, f"tar tensor {key} names no storage ({storage_id!r})")
        shape, stride = vals[:ndim], vals[ndim : 2 * ndim]
        tensors[str(key)] = TensorRec(st, vals[-1], shape, stride, st.dtype)

    def persistent_load(pid: Any) -> Any:
        if isinstance(pid, tuple) and pid:
            return pid[0]  # (module class, source file, source): the class itself
        t = tensors.get(str(pid))
        if t is None:
            raise Malformed(f"persistent id {pid!r} names no tensor")
        return t

    info = members["pickle"]
    root, _ = src.unpickler(src.buf, "tar pickle member", persistent_load).load(
        info.offset_data, info.offset_data + info.size
    )
    return assemble(src, "torch-legacy-tar", root, {"tar_members": len(tar.getmembers())})


def _pickle(src: Source, pos: int, end: int, member: str) -> tuple[Any, int]:
    return src.unpickler(src.buf, f"tar {member} member", None).load(pos, end)
