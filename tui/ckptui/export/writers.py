"""Provides the output formats: a torch zip (`.pth`) and `.safetensors`, written from a plan.

Both stream tensor by tensor from the memory-mapped source (`SourceBytes`), so memory stays at
a few chunks whatever the checkpoint's size, and both know their exact size before writing.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any, BinaryIO

from ckptui.core.dtypes import DTYPES, SAFETENSORS_CODE
from ckptui.core.progress import NamedProgress
from ckptui.export.pickle_out import (
    DtypeOut,
    NjtOut,
    TensorOut,
    Value,
    plain_pickle_size,
    state_dict_pickle,
)
from ckptui.export.zipwriter import ZipWriter, size_of_lengths
from ckptui.tensors.reader import SourceBytes

try:  # encodes a 100,000-entry header 10x faster; json gives the same bytes (see below)
    import orjson

    _orjson_dumps: Any = orjson.dumps
except ImportError:  # pragma: no cover - orjson is installed with ckptui
    _orjson_dumps = None

if TYPE_CHECKING:  # the plan imports the writers (its exact size); they only read its type
    from ckptui.export.plan import Item, Plan


_SMALL_RECORDS = [
    (".format_version", b"1"),
    (".storage_alignment", b"64"),
    ("byteorder", b"little"),
]


def archive_name(plan: Plan) -> str:
    """The zip's top folder; torch uses the file's stem, any name loads."""
    return "archive"


def _storage_keys(storages: list[Item]) -> dict[int, str]:
    """Output storage group -> its record key (`data/<key>`), numbered in write order."""
    return {it.group: str(i) for i, it in enumerate(storages)}


def _is_rich(plan: Plan) -> bool:
    """The state dict holds more than plain tensors (a torch.ao quantized model's tuples,
    dtypes and versions, a jagged tensor): `_entries` gathers them."""
    rich = any(it.qscheme or it.jagged is not None for it in plan.items)
    return bool(plan.tuples or plan.values or plan.versions or rich)


def _plain_entries(plan: Plan, keys: dict[int, str]) -> Iterator[tuple[str, str, str, int, tuple]]:
    """(name, dtype, storage key, storage elements, shape) of each tensor: `state_dict_pickle`'s
    plain entries (each tensor contiguous at offset 0 of its own or its tied storage)."""
    return (
        (it.name, it.dtype, keys[it.group], it.tensor.numel, it.tensor.shape) for it in plan.items
    )


def _pickle(plan: Plan, keys: dict[int, str]) -> bytes:
    """The export's `data.pkl`."""
    if _is_rich(plan):
        return state_dict_pickle(_entries(plan, keys), plan.versions)
    return state_dict_pickle(_plain_entries(plan, keys))


def _pth_records(
    plan: Plan, storages: list[Item], keys: dict[int, str], pkl_len: int
) -> list[tuple[str, int]]:
    """[(record name, size)] in write order, for a `data.pkl` of `pkl_len` bytes."""
    a = archive_name(plan)
    named = [(f"{a}/data/{keys[it.group]}", it.nbytes) for it in storages]
    return _pth_records_of(a, pkl_len, named)


def _pth_records_of(a: str, pkl_len: int, storages: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The records of archive `a`: data.pkl and the small ones, the storages, the last two."""
    records = [(f"{a}/data.pkl", pkl_len)]
    records += [(f"{a}/{n}", len(b)) for n, b in _SMALL_RECORDS]
    records += storages
    records += [(f"{a}/version", 2), (f"{a}/.data/serialization_id", 40)]
    return records


def _entries(plan: Plan, keys: dict[int, str]) -> list[tuple[str, Value]]:
    """A quantized model's state dict: tuple entries gathered from their slots, per-channel
    scales inside their tensor, dtype and None values after the tensors; a jagged tensor over
    its values and offsets."""
    parts: dict[str, dict[str, TensorOut]] = {}
    for it in plan.items:
        if it.part_of is not None:
            parts.setdefault(it.part_of, {})[it.name.rpartition(".")[2]] = _out(it, keys)
    out: list[tuple[str, Value]] = []
    slots: dict[str, list[TensorOut | None]] = {}
    for it in plan.items:
        if it.part_of is not None:
            continue
        if it.jagged is not None:
            own = parts.get(it.name, {})
            nt = NjtOut(own["values"], own["offsets"], own.get("lengths"), it.jagged)
            out.append((it.name, nt))
            continue
        t = _out(it, keys)
        q = it.qscheme
        if q is not None:
            own = parts.get(it.name, {})
            channel = (own["scale"], own["zero_point"]) if q.per_channel else None
            t = replace(
                t,
                qscheme=q.scheme,
                scale=q.scale or 0.0,
                zero_point=q.zero_point or 0,
                axis=q.axis or 0,
                channel=channel,
            )
        if it.slot is None:
            out.append((it.name, t))
            continue
        entry = it.name.rpartition(".")[0]
        if entry not in slots:
            slots[entry] = [None] * plan.tuples.get(entry, it.slot + 1)
            out.append((entry, None))  # its place; filled below
        slots[entry][it.slot] = t
    out = [(n, tuple(slots[n]) if n in slots else v) for n, v in out]
    out += [(n, DtypeOut(v) if v is not None else None) for n, v in plan.values]
    return out


def _out(it: Item, keys: dict[int, str]) -> TensorOut:
    return TensorOut(it.dtype, keys[it.group], it.tensor.numel, it.tensor.shape)


def safetensors_header(plan: Plan) -> bytes:
    """The JSON header `write` puts in a `.safetensors` output, padded to 8 bytes; built once
    per export (`run.export` hands it to `predicted_size` and `write`: 100,000 entries)."""
    header: dict = {}
    if plan.metadata:
        header["__metadata__"] = {"format": "pt", **plan.metadata}
    offset = 0
    itemsize = {d: DTYPES[d].itemsize for d in {it.dtype for it in plan.items}}
    for it in plan.items:
        shape = list(it.tensor.shape)
        dtype = it.dtype
        if dtype == "float4_e2m1fn_x2":  # safetensors' F4 counts 4-bit values, not pairs
            shape[-1] *= 2
        end = offset + it.tensor.numel * itemsize[dtype]  # `Item.nbytes`, without 2 calls
        header[it.name] = {
            "dtype": SAFETENSORS_CODE[dtype],
            "shape": shape,
            "data_offsets": [offset, end],
        }
        offset = end
    raw = _dumps(header)
    return raw + b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors does


def _dumps(header: dict) -> bytes:
    """`json.dumps(header, separators=(",", ":"))` as bytes. orjson writes the same bytes for
    ASCII text but for DEL (0x7f), which json escapes; it writes other characters as UTF-8
    where json escapes them: so its output is kept only when it is ASCII without DEL."""
    if _orjson_dumps is not None:
        try:
            raw = _orjson_dumps(header)
        except TypeError:  # orjson.JSONEncodeError: json decides
            pass
        else:
            if raw.isascii() and b"\x7f" not in raw:
                return raw
    return json.dumps(header, separators=(",", ":")).encode()


def pth_pickle(plan: Plan) -> bytes:
    """The `data.pkl` `write` puts in a `.pth` output: `run.export` makes it once and hands it
    to `predicted_size` and `write` as their `header` (measuring it apart cost 0.1 s more at
    100,000 tensors than making it, issue 16)."""
    return _pickle(plan, _storage_keys(plan.storages))


def predicted_size(plan: Plan, header: bytes | None = None) -> int:
    """The exact size of the file `write` produces for `plan`, computed without writing it:
    the safetensors header is made (it is JSON of the plan), the `.pth` pickle is not
    (`plain_pickle_size`), nor its record names (`size_of_lengths`). `header`: what the
    caller has made already, the safetensors header (`safetensors_header`) or the `.pth`'s
    `data.pkl` (`pth_pickle`).

    A quantized or jagged export's pickle is built to be measured: its tuples, per-channel
    scales and nested rebuilds have no short arithmetic form worth a second copy of their
    writer, and such models hold hundreds of entries, not 100,000 (milliseconds to build).
    """
    if plan.format == "safetensors":
        header = safetensors_header(plan) if header is None else header
        return 8 + len(header) + plan.data_bytes
    storages = plan.storages
    keys = _storage_keys(storages)
    if header is not None:
        pkl_len = len(header)
    elif _is_rich(plan):
        pkl_len = len(_pickle(plan, keys))
    else:
        pkl_len = plain_pickle_size(_plain_entries(plan, keys))
    # `_pth_records`'s names, by their lengths: `<archive>/data/<key>` for each storage
    a = archive_name(plan)
    few = _pth_records_of(a, pkl_len, [])
    data = len(f"{a}/data/".encode())
    records = [(len(n.encode()), size) for n, size in few[:4]]
    records += [(data + len(keys[it.group]), it.nbytes) for it in storages]
    records += [(len(n.encode()), size) for n, size in few[4:]]
    return size_of_lengths(records)


def write(
    plan: Plan,
    f: BinaryIO,
    progress: NamedProgress | None = None,
    cancelled: Callable[[], bool] | None = None,
    header: bytes | None = None,
) -> int | None:
    """Write the output of `plan` to `f` (a seekable binary file at offset 0). `cancelled` is
    polled while a read from a URL waits (`core.cancel.Cancelled` is raised when it says so).
    `header`: the safetensors header or the `.pth`'s `data.pkl` when the caller has made it
    (`safetensors_header`, `pth_pickle`).

    Returns:
        Bytes fetched from the server for a source at a URL; None for a local one.
    """
    with SourceBytes(plan.ckpt, cancelled) as src:
        _write(plan, f, progress, src, header)
        return src.bytes_read if src.is_remote else None


def _write(
    plan: Plan,
    f: BinaryIO,
    progress: NamedProgress | None,
    src: SourceBytes,
    header: bytes | None = None,
) -> None:
    total = plan.data_bytes
    done = 0
    src.plan(plan.items)

    def stream(item):
        nonlocal done
        blocks = src.chunks(item)
        if type(blocks) is tuple:
            # read already (a small tensor, in one block): no generator around it, which at
            # 100,000 tensors cost as much as the reads (issue 16)
            for block in blocks:
                done += len(block)
            if progress:
                progress(done, total, item.name)
            return blocks
        return counted(blocks, item.name)

    def counted(blocks, name):
        nonlocal done
        for chunk in blocks:
            done += len(chunk)
            yield chunk
            if progress:
                progress(done, total, name)

    if plan.format == "safetensors":
        header = safetensors_header(plan) if header is None else header
        f.write(struct.pack("<Q", len(header)) + header)
        for it in plan.items:
            f.writelines(stream(it))
        return
    storages = plan.storages
    keys = _storage_keys(storages)
    pkl = _pickle(plan, keys) if header is None else header
    records = _pth_records(plan, storages, keys, len(pkl))
    z = ZipWriter(f)
    z.write_record(records[0][0], [pkl], len(pkl))
    for (name, _), (_, data) in zip(records[1:4], _SMALL_RECORDS, strict=True):
        z.write_record(name, [data], len(data))
    for (name, size), it in zip(records[4:-2], storages, strict=True):
        z.write_record(name, stream(it), size)
    z.write_record(records[-2][0], [b"3\n"], 2)
    # torch writes random digits; these are derived from the pickle, so exports repeat
    digest = int.from_bytes(hashlib.blake2b(pkl, digest_size=16).digest(), "big")
    z.write_record(records[-1][0], [str(digest).zfill(40)[:40].encode()], 40)
    z.close()
    if progress:
        progress(total, total, "")
