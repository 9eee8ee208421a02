"""Provides the readers for the two zip archives torch writes that `torch.load` does not read:
`torch.export.save`'s `.pt2` and `torch.package`'s `PackageExporter` archives.

Both are zips of torch's layout (a top folder, stored records) without `data.pkl`, so a plain
reader could only say "no data.pkl". What each holds, read as metadata:

- `.pt2` (`archive_format` is `pt2`): `data/weights/model_weights_config.json` names each weight
  (its state-dict name, dtype as a `torch._export.serde.schema.ScalarType` number, sizes, strides,
  offset) and the record holding its raw bytes (`data/weights/weight_0`); constants likewise
  under `data/constants/`; `models/*.json` is the serialized graph. The tree shows `weights` and
  `constants` as state dicts of tensors, and the archive's records as `archive`, so `why` and
  `export` work on the weights as on any checkpoint.
- `torch.package` (`.data/extern_modules`): each `*.pkl` resource is a pickle whose persistent
  ids are `('storage', storage class, key, location, size)` with bytes in `.data/<key>.storage`;
  it is read inertly like `data.pkl`. `.data/extern_modules` lists what the package takes from
  the loading environment; `*.py` records are interned source code, which `PackageImporter` runs
  when the package is loaded, so each is a finding.
"""

from __future__ import annotations

import json
from typing import Any

from ckptui.core.dtypes import STORAGE_DTYPES, itemsize_of
from ckptui.core.tree import Checkpoint, Severity
from ckptui.formats.source import Source, assemble, corrupt, parse_pid_location, storage_ref
from ckptui.unpickler.inert import Global, Malformed, PDict
from ckptui.unpickler.recorded import StorageRef, TensorRec

MAX_CONFIG_BYTES = 64 << 20
"""A weights config larger than this is refused: one entry is about 300 bytes."""
MAX_RESOURCES = 10_000
"""Pickle resources read from one package, at most."""

SCALAR_TYPES = {
    1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float16", 7: "float32",
    8: "float64", 9: "complex32", 10: "complex64", 11: "complex128", 12: "bool", 13: "bfloat16",
    28: "uint16", 29: "float8_e4m3fn", 30: "float8_e5m2", 31: "float8_e4m3fnuz",
    32: "float8_e5m2fnuz", 33: "float8_e8m0fnu", 34: "uint32", 35: "uint64",
}  # fmt: skip
"""`torch._export.serde.schema.ScalarType` -> dtype name."""


def archive_kind(z: Any) -> str | None:
    """`pt2`, `torch-package`, or None for any other zip (a `ZipCheckpoint`)."""
    if z.info("data.pkl") is not None:
        return None
    fmt = z.info("archive_format")
    if fmt is not None and fmt.file_size <= 64 and _text(z, fmt, 64).strip() == "pt2":
        return "pt2"
    if z.info(".data/extern_modules") is not None:
        return "torch-package"
    return None


def read_pt2(src: Source, z: Any, facts: dict[str, Any]) -> Checkpoint:
    """A `torch.export.save` archive: its weights and constants as tensors, its records listed."""
    root = PDict("torch.export.ExportedProgram")
    refs: dict[str, StorageRef] = {}
    for part, folder in (("weights", "data/weights/"), ("constants", "data/constants/")):
        config = _json(z, f"{folder}model_{part}_config.json")
        if config is None:
            continue
        entries = config.get("config") if isinstance(config, dict) else None
        if not isinstance(entries, dict):
            raise corrupt(src.path, f"{folder}model_{part}_config.json has no config mapping")
        d = PDict("dict")
        for name, meta in entries.items():
            d.set(str(name), _pt2_tensor(src, z, folder, str(name), meta, refs))
        root.set(part, d)
    root.set("archive", _listing(z))
    facts = {**facts, "archive_format": "pt2"}
    models = [n for n in _names(z) if n.startswith("models/") and n.endswith(".json")]
    facts["models"] = len(models)
    src.warn(
        "not_a_torch_load_checkpoint",
        "a torch.export archive (.pt2): load it with torch.export.load, not torch.load; its "
        "weights are shown under their state_dict names",
        severity=Severity.INFO,
    )
    return assemble(src, "pt2", root, facts)


def _pt2_tensor(
    src: Source, z: Any, folder: str, name: str, meta: Any, refs: dict[str, StorageRef]
) -> Any:
    """One weight or constant: a tensor over its record's raw bytes, or what it is instead."""
    if not isinstance(meta, dict):
        raise corrupt(src.path, f"{folder}: entry {name!r} is not a mapping")
    record = meta.get("path_name")
    tm = meta.get("tensor_meta")
    if meta.get("use_pickle") or not isinstance(tm, dict) or not isinstance(record, str):
        return f"{record or name}: pickled, not a plain tensor (not read)"
    dtype = SCALAR_TYPES.get(tm.get("dtype"))  # type: ignore[arg-type]
    sizes, strides = _ints(tm.get("sizes")), _ints(tm.get("strides"))
    offset = _ints([tm.get("storage_offset")])
    if dtype is None or sizes is None or strides is None or offset is None:
        raise corrupt(src.path, f"{folder}: entry {name!r} has a malformed tensor_meta")
    if len(sizes) != len(strides) or len(sizes) > 64:
        raise corrupt(src.path, f"{folder}: entry {name!r} sizes and strides differ")
    device = tm.get("device") if isinstance(tm.get("device"), dict) else {}
    location = str(device.get("type") or "cpu")
    if isinstance(device.get("index"), int):
        location += f":{device['index']}"
    zi = z.info(f"{folder}{record}")
    key = f"{folder}{record}"
    nbytes = zi.file_size if zi is not None else 0
    try:
        ref = storage_ref(src, key, dtype, nbytes, parse_pid_location(location), refs)
    except Malformed as e:
        raise corrupt(src.path, f"{folder}: entry {name!r}: {e}") from None
    if key not in src.storages:
        src.storages[key] = z.storage_entry(ref, f"{folder}{record}")
    kind = "torch.nn.parameter.Parameter" if meta.get("is_param") else "torch.Tensor"
    grad = bool(tm.get("requires_grad"))
    return TensorRec(ref, offset[0], sizes, strides, dtype, grad, kind)


def read_package(src: Source, z: Any, facts: dict[str, Any]) -> Checkpoint:
    """A `torch.package` archive: each pickle resource read inertly, its storages located."""
    names = _names(z)
    root = PDict("torch.package")
    resources = [n for n in names if n.endswith(".pkl") and not n.startswith(".data/")]
    if len(resources) > MAX_RESOURCES:
        raise corrupt(src.path, f"torch.package archive holds {len(resources):,} pickles; refused")
    refs: dict[str, StorageRef] = {}
    for name in resources:
        root.set(name, _package_pickle(src, z, name, refs))
    externs = _text(z, z.info(".data/extern_modules"), 1 << 20).split()
    root.set("extern_modules", externs[:10_000])
    code = [n for n in names if n.endswith(".py")]
    if code:
        shown = ", ".join(code[:5]) + (f" and {len(code) - 5:,} more" if len(code) > 5 else "")
        src.warn(
            "package_code",
            f"the package ships Python source ({shown}) that torch.package runs when it is "
            "loaded; ckptui did not run it",
        )
    root.set("archive", _listing(z))
    src.warn(
        "not_a_torch_load_checkpoint",
        "a torch.package archive: load it with torch.package.PackageImporter, not torch.load",
        severity=Severity.INFO,
    )
    return assemble(src, "torch-package", root, {**facts, "externs": len(externs)})


def _package_pickle(src: Source, z: Any, name: str, refs: dict[str, StorageRef]) -> Any:
    buf, base, end = z.read_pickle(name)
    z.pickle_spans[name] = (base, end)

    def persistent_load(pid: Any) -> Any:
        if not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage":
            raise Malformed(f"unexpected persistent id {type(pid).__name__}")
        _, cls, key, location, count = pid
        if not isinstance(cls, Global) or cls.full not in STORAGE_DTYPES:
            raise Malformed(f"unknown storage class {cls!r}")
        if isinstance(key, bool) or not isinstance(key, int | str) or len(str(key)) > 100:
            raise Malformed("malformed storage persistent id")
        if type(count) is not int or not 0 <= count < 1 << 62:
            raise Malformed("malformed storage persistent id")
        dtype = STORAGE_DTYPES[cls.full]
        record = f".data/{key}.storage"
        ref = storage_ref(
            src, record, dtype, count * itemsize_of(dtype), parse_pid_location(location), refs
        )
        if record not in src.storages:
            src.storages[record] = z.storage_entry(ref, record)
        return ref

    u = src.unpickler(buf, f"{z.archive}/{name}", persistent_load, base=base)
    obj, _ = u.load(0, end)
    return obj


def _listing(z: Any) -> list[str]:
    """Each record as `name · size` (the manifest): text, so that no record name reads as a
    checkpoint's own key (`archive_version` is not a training counter)."""
    prefix = f"{z.archive}/"
    return [
        f"{full.removeprefix(prefix)} · {z.infos[i].file_size:,} B"
        for i, full in enumerate(z.infos.names[:100_000])
    ]


def _names(z: Any) -> list[str]:
    prefix = f"{z.archive}/"
    return [n.removeprefix(prefix) for n in z.infos.names]


def _json(z: Any, name: str) -> Any:
    zi = z.info(name)
    if zi is None:
        return None
    if zi.file_size > MAX_CONFIG_BYTES:
        raise corrupt(z.src.path, f"{name} is {zi.file_size:,} bytes; refused")
    try:
        return json.loads(_text(z, zi, MAX_CONFIG_BYTES))
    except ValueError as e:
        raise corrupt(z.src.path, f"{name} is not JSON ({e})") from None
    except RecursionError:  # `[[[[...` nested past Python's stack
        raise corrupt(z.src.path, f"{name} nests too deep to be a weights config") from None


def _text(z: Any, zi: Any, limit: int) -> str:
    if zi is None:
        return ""
    return z.small_text(zi, limit)


def _ints(items: Any) -> tuple[int, ...] | None:
    """`[{"as_int": 3}, ...]` (the serde's SymInt) as ints; None when one is not a plain int."""
    if not isinstance(items, list):
        return None
    out = []
    for x in items:
        v = x.get("as_int") if isinstance(x, dict) else None
        if type(v) is not int or not 0 <= v < 1 << 62:
            return None
        out.append(v)
    return tuple(out)
