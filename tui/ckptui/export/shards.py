"""Provides `export_sharded`: one plan written as Hugging Face-style shards plus an index.

`model.safetensors` with a 2 GB limit becomes `model-00001-of-00003.safetensors`, ... and
`model.safetensors.index.json` (`metadata.total_size`, `weight_map`), which `transformers`'
`from_pretrained` and `huggingface_hub` read. Each shard goes through `export` (temporary file,
fsync, bit-for-bit check, rename); the index is written last, the same way. If anything fails,
the shards already written are removed, so a half set never sits under the target names.
Tensors sharing a storage (tied weights in `.pth`) stay in one shard.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from pathlib import Path

from ckptui.core.errors import ExportError
from ckptui.core.progress import NamedProgress
from ckptui.export.atomic import check_target, temp_beside
from ckptui.export.plan import Item, Plan, Result
from ckptui.export.run import export

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_size(text: str) -> int:
    """`5GB`, `500MB`, `2GiB`, `100000`: bytes (decimal units as transformers reads them)."""
    m = _SIZE.match(text)
    if m is None:
        raise ValueError(f"not a size: {text!r} (try 2GB, 500MB or 2GiB)")
    number, unit = float(m.group(1)), m.group(2).upper()
    base = unit[:1] if unit[:1] in "KMGT" else ""
    scale = 1024 ** ("KMGT".index(base) + 1) if base and "I" in unit else _UNITS[base]
    return int(number * scale)


def shard_names(target: str, count: int) -> tuple[list[str], str]:
    """(shard paths, index path) for `target` = `dir/model.safetensors` split `count` ways."""
    p = Path(target)
    stem, suffix = p.stem, p.suffix
    names = [
        str(p.with_name(f"{stem}-{i:05d}-of-{count:05d}{suffix}")) for i in range(1, count + 1)
    ]
    return names, str(p.with_name(f"{p.name}.index.json"))


def split(plan: Plan, max_bytes: int) -> list[list[Item]]:
    """The plan's items in order, cut into shards of at most `max_bytes` of tensor data (a
    single larger tensor gets a shard of its own); a shared storage's items stay together."""
    shards: list[list[Item]] = [[]]
    size = 0
    counted: set[int] = set()
    group_shard: dict[int, int] = {}
    for it in plan.items:
        if plan.format == "pth" and it.group in group_shard:
            shards[group_shard[it.group]].append(it)  # rides with its storage
            continue
        n = it.nbytes
        if shards[-1] and size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(it)
        group_shard[it.group] = len(shards) - 1
        if it.group not in counted or plan.format == "safetensors":
            size += n
            counted.add(it.group)
    return shards


def export_sharded(
    plan: Plan,
    target: str,
    max_bytes: int,
    force: bool = False,
    progress: NamedProgress | None = None,
) -> tuple[list[Result], str]:
    """Write `plan` as shards of at most `max_bytes` of tensor data and an index beside them.

    Returns:
        The per-shard results and the index path.

    Raises:
        ExportError: as `export`, for any shard or the index; nothing written is left behind.
    """
    parts = split(plan, max_bytes)
    names, index = shard_names(target, len(parts))
    for name in [*names, index]:
        problem = check_target(name, plan.ckpt)
        if problem is not None and (problem[0] != "exists" or not force):
            raise ExportError(name, problem[1])
    total = sum(it.nbytes for it in plan.storages)
    written: list[str] = []
    results: list[Result] = []
    base = 0
    try:
        for name, items in zip(names, parts, strict=True):
            sub = dataclasses.replace(plan, items=items)

            def report(done: int, _total: int, tensor: str, base: int = base) -> None:
                if progress:
                    progress(base + done, total, tensor)

            results.append(export(sub, name, force=force, progress=report))
            written.append(name)
            base += sub.data_bytes
        weight_map = {
            it.name: Path(name).name for name, items in zip(names, parts, strict=True)
            for it in items
        }  # fmt: skip
        body = {"metadata": {"total_size": total}, "weight_map": weight_map}
        _write_atomic(index, json.dumps(body, indent=2, sort_keys=True).encode() + b"\n")
    except BaseException as e:
        for name in written:
            with contextlib.suppress(OSError):
                Path(name).unlink()
        if isinstance(e, OSError):
            raise ExportError(index, f"cannot write: {e.strerror or e}; nothing was kept") from None
        raise
    return results, index


def _write_atomic(path: str, data: bytes) -> None:
    folder = Path(path).parent
    fd, tmp = temp_beside(Path(path), folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise
