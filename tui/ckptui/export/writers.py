"""Provides the output formats: a torch zip (`.pth`) and `.safetensors`, written from a plan.

Both stream tensor by tensor from the memory-mapped source (`SourceBytes`), so memory stays at
a few chunks whatever the checkpoint's size, and both know their exact size before writing.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, BinaryIO

from ckptui.core.dtypes import SAFETENSORS_CODE
from ckptui.core.progress import NamedProgress
from ckptui.export.pickle_out import DtypeOut, NjtOut, TensorOut, Value, state_dict_pickle
from ckptui.export.zipwriter import ZipWriter, size_of
from ckptui.tensors.reader import SourceBytes

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


def _pth_records(plan: Plan) -> tuple[bytes, list[tuple[str, int]]]:
    """(data.pkl bytes, [(record name, size)] in write order)."""
    keys = {it.group: str(i) for i, it in enumerate(plan.storages)}
    rich = any(it.qscheme or it.jagged is not None for it in plan.items)
    if plan.tuples or plan.values or plan.versions or rich:
        pkl = state_dict_pickle(_entries(plan, keys), plan.versions)
    else:
        entries = [
            (it.name, it.dtype, keys[it.group], it.tensor.numel, it.tensor.shape)
            for it in plan.items
        ]
        pkl = state_dict_pickle(entries)
    a = archive_name(plan)
    records = [(f"{a}/data.pkl", len(pkl))]
    records += [(f"{a}/{n}", len(b)) for n, b in _SMALL_RECORDS]
    records += [(f"{a}/data/{keys[it.group]}", it.nbytes) for it in plan.storages]
    records += [(f"{a}/version", 2), (f"{a}/.data/serialization_id", 40)]
    return pkl, records


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


def _safetensors_header(plan: Plan) -> bytes:
    header: dict = {}
    if plan.metadata:
        header["__metadata__"] = {"format": "pt", **plan.metadata}
    offset = 0
    for it in plan.items:
        shape = list(it.tensor.shape)
        if it.dtype == "float4_e2m1fn_x2":  # safetensors' F4 counts 4-bit values, not pairs
            shape[-1] *= 2
        header[it.name] = {
            "dtype": SAFETENSORS_CODE[it.dtype],
            "shape": shape,
            "data_offsets": [offset, offset + it.nbytes],
        }
        offset += it.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors does


def predicted_size(plan: Plan) -> int:
    """The exact size of the file `write` produces for `plan`."""
    if plan.format == "safetensors":
        return 8 + len(_safetensors_header(plan)) + plan.data_bytes
    _, records = _pth_records(plan)
    return size_of(records)


def write(
    plan: Plan,
    f: BinaryIO,
    progress: NamedProgress | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> int | None:
    """Write the output of `plan` to `f` (a seekable binary file at offset 0). `cancelled` is
    polled while a read from a URL waits (`core.cancel.Cancelled` is raised when it says so).

    Returns:
        Bytes fetched from the server for a source at a URL; None for a local one.
    """
    with SourceBytes(plan.ckpt, cancelled) as src:
        _write(plan, f, progress, src)
        return src.bytes_read if src.is_remote else None


def _write(plan: Plan, f: BinaryIO, progress: NamedProgress | None, src: SourceBytes) -> None:
    total = plan.data_bytes
    done = 0
    src.plan(plan.items)

    def stream(item):
        nonlocal done
        for chunk in src.chunks(item):
            done += len(chunk)
            yield chunk
            if progress:
                progress(done, total, item.name)

    if plan.format == "safetensors":
        header = _safetensors_header(plan)
        f.write(struct.pack("<Q", len(header)) + header)
        for it in plan.items:
            f.writelines(stream(it))
        return
    pkl, records = _pth_records(plan)
    z = ZipWriter(f)
    z.write_record(records[0][0], [pkl], len(pkl))
    for (name, _), (_, data) in zip(records[1:4], _SMALL_RECORDS, strict=True):
        z.write_record(name, [data], len(data))
    for (name, size), it in zip(records[4:-2], plan.storages, strict=True):
        z.write_record(name, stream(it), size)
    z.write_record(records[-2][0], [b"3\n"], 2)
    # torch writes random digits; these are derived from the pickle, so exports repeat
    digest = int.from_bytes(hashlib.blake2b(pkl, digest_size=16).digest(), "big")
    z.write_record(records[-1][0], [str(digest).zfill(40)[:40].encode()], 40)
    z.close()
    if progress:
        progress(total, total, "")
