"""Provides `DcpMetadata`, what a DCP folder's `.metadata` says once checked, and its
interpretation from the unpickled `Metadata` object.

Both ways of unpickling `.metadata` (`dcp_fast_unpickler`'s records and the inert loop's
`PDict`/`PObject`) feed this one interpretation, so they produce the same `DcpMetadata`. It is
separate from `dcp_metadata` (which unpickles and chooses the path) because it is the only part
that knows the layout of torch's `Metadata` and the checks on it (chunks inside their tensor,
data files inside the folder); it raises `Malformed` for anything it will not accept.

No torch here: opening must not pay torch's start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ckptui.core.dtypes import contiguous_strides, itemsize_of
from ckptui.core.tree import TensorInfo
from ckptui.formats.dcp.fast_unpickler import MD_PREFIX, Call, Dict, Record, Size
from ckptui.unpickler.inert import Global, Malformed, PDict, PObject
from ckptui.unpickler.recorded import TensorRec, TorchDtype

_BIG = 1 << 62
_MAX_DIMS = 64


@dataclass(slots=True)
class Chunk:
    """One chunk of a tensor as `.metadata` places it, and what the reader learns of its item."""

    fqn: str
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    key: str
    """The chunk's storage key: `fqn@[offsets]`."""
    file: str | None = None
    offset: int = 0
    length: int = 0
    rec: TensorRec | None = None
    """The chunk's tensor as its item's data.pkl describes it, when its bytes are readable."""
    linkable: bool = False
    """A whole-tensor chunk whose storage may be the tensor's (readable, or plainly missing)."""


StorageIndex = tuple[str, "tuple[int, ...] | None"]
"""(fqn, chunk offsets), or (fqn, None) for a pickled object."""


@dataclass
class DcpMetadata:
    """What `.metadata` says, checked: the tensors, objects and where their items lie."""

    tensors: dict[str, tuple[TensorInfo, list[Chunk]]]
    """FQN -> (global tensor metadata, contiguous strides; its chunks)."""
    objects: dict[str, None]
    """FQNs of pickled (non-tensor) values, in order."""
    order: list[str]
    """Every FQN in the order of `state_dict_metadata`."""
    planner: dict[str, tuple[Any, ...]] | None
    """FQN -> the original key path (DefaultSavePlanner's `planner_data`), if recorded."""
    storage: dict[StorageIndex, tuple[str, int, int, bool]]
    """(fqn, offsets) -> (file, offset, length, written through stream transforms)."""
    info: dict[str, Any]
    """`dcp_version`, `save_id`, `modules`, `checkpoint_id` when present."""
    globals: dict[str, Global]
    """Globals the inert loop met (empty after the fast path: it accepts only harmless ones)."""
    fast: bool = False
    """True when read by the fast path."""


# -- interpretation, shared by both paths ---------------------------------------------------
_MAPS = (PDict, Dict)
_OBJECTS = (PObject, Record)


def _pairs(d: PDict | Dict) -> Any:
    return d.items if type(d) is PDict else d.items()


def _raw_state(obj: Any) -> Any:
    if isinstance(obj, PObject):
        return obj.state
    if isinstance(obj, Record):
        return getattr(obj, "state", None)
    return None


def _state(obj: Any, what: str, fqn: str = "") -> Any:
    st = _raw_state(obj)
    if not isinstance(st, _MAPS):
        raise Malformed(f"{fqn}{': ' if fqn else ''}{what} is not a dataclass instance")
    return st


def _name(obj: Any) -> str:
    return obj.name if isinstance(obj, _OBJECTS) else type(obj).__name__


def _args(obj: Any) -> tuple[Any, ...]:
    if isinstance(obj, PObject | Call):
        return obj.args
    return ()


def _ints(v: Any, fqn: str, what: str) -> tuple[int, ...]:
    if type(v) is not tuple:
        if not isinstance(v, list | Size):
            raise Malformed(f"{fqn}: {what} is not a tuple")
        v = tuple(v)
    if len(v) > _MAX_DIMS:
        raise Malformed(f"{fqn}: {what} has more than {_MAX_DIMS} dimensions")
    for x in v:
        if type(x) is not int or not 0 <= x < _BIG:
            raise Malformed(f"{fqn}: {what} is not a tuple of non-negative ints")
    return v


def interpret(root: Any, globals_: dict[str, Global]) -> DcpMetadata:
    st = _state(root, "Metadata")
    sdm = st.get("state_dict_metadata")
    if not isinstance(sdm, _MAPS):
        raise Malformed("state_dict_metadata is not a dict")
    tensors: dict[str, tuple[TensorInfo, list[Chunk]]] = {}
    objects: dict[str, None] = {}
    order: list[str] = []
    infos: dict[tuple[Any, ...], TensorInfo] = {}
    for fqn, entry in _pairs(sdm):
        if not isinstance(fqn, str):
            raise Malformed(f"state_dict_metadata key {fqn!r} is not a string")
        order.append(fqn)
        name = _name(entry)
        if name == f"{MD_PREFIX}TensorStorageMetadata":
            tensors[fqn] = _tensor_entry(fqn, _state(entry, "TensorStorageMetadata", fqn), infos)
        elif name == f"{MD_PREFIX}BytesStorageMetadata":
            objects[fqn] = None
        else:
            raise Malformed(f"{fqn}: unknown storage metadata {name}")
    planner = _planner(st.get("planner_data"))
    storage = _storage_data(st.get("storage_data"))
    info: dict[str, Any] = {}
    version = st.get("version")
    if isinstance(version, str):
        info["dcp_version"] = version
    meta = _raw_state(st.get("storage_meta"))
    if isinstance(meta, _MAPS):
        for k in ("save_id", "modules"):
            v = meta.get(k)
            if isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v)):
                info[k] = v
        cid = meta.get("checkpoint_id")
        parts = _args(cid)
        if isinstance(cid, str):
            info["checkpoint_id"] = cid
        elif parts and all(isinstance(a, str) for a in parts):
            info["checkpoint_id"] = "/".join(parts).replace("//", "/")  # PosixPath(*parts)
    return DcpMetadata(tensors, objects, order, planner, storage, info, globals_)


def _tensor_entry(
    fqn: str, st: Any, infos: dict[tuple[Any, ...], TensorInfo]
) -> tuple[TensorInfo, list[Chunk]]:
    pstate = _raw_state(st.get("properties"))
    dtype: Any = None
    requires_grad = False
    if isinstance(pstate, tuple) and pstate:  # TensorProperties.__getstate__: (dtype, layout, ...)
        dtype = pstate[0]
        requires_grad = len(pstate) > 2 and pstate[2] is True
    elif isinstance(pstate, _MAPS):  # older torch: the plain __dict__
        dtype = pstate.get("dtype")
        requires_grad = pstate.get("requires_grad") is True
    if not isinstance(dtype, TorchDtype):
        raise Malformed(f"{fqn}: tensor properties carry no dtype")
    shape = _ints(st.get("size"), fqn, "size")
    chunks_in = st.get("chunks")
    if not isinstance(chunks_in, list):
        raise Malformed(f"{fqn}: chunks is not a list")
    chunks: list[Chunk] = []
    for c in chunks_in:
        cs = _state(c, "chunk", fqn)
        offsets = _ints(cs.get("offsets"), fqn, "chunk offsets")
        sizes = _ints(cs.get("sizes"), fqn, "chunk sizes")
        if len(offsets) != len(shape) or len(sizes) != len(shape):
            raise Malformed(f"{fqn}: a chunk's rank differs from the tensor's")
        for o, s, d in zip(offsets, sizes, shape, strict=True):
            if o + s > d:
                raise Malformed(f"{fqn}: a chunk reaches outside the tensor")
        chunks.append(Chunk(fqn, offsets, sizes, f"{fqn}@[{','.join(map(str, offsets))}]"))
    # Many tensors share shape and dtype (every layer's weight): one TensorInfo for them all.
    ident = (shape, dtype.name, requires_grad)
    info = infos.get(ident)
    if info is None:
        name = dtype.name
        info = TensorInfo(
            shape, name, contiguous_strides(shape), None, 0, itemsize_of(name), "cpu", requires_grad
        )
        infos[ident] = info
    return info, chunks


def _planner(pd: Any) -> dict[str, tuple[Any, ...]] | None:
    if not isinstance(pd, _MAPS):
        return None
    out: dict[str, tuple[Any, ...]] = {}
    for k, v in _pairs(pd):
        if isinstance(v, list):
            v = tuple(v)
        ok = (
            isinstance(v, tuple)
            and v
            and all(isinstance(x, str) or (type(x) is int and 0 <= x < 1 << 31) for x in v)
        )
        if isinstance(k, str) and ok:
            out[k] = v
    return out


def _storage_data(sd: Any) -> dict[StorageIndex, tuple[str, int, int, bool]]:
    if not isinstance(sd, _MAPS):
        raise Malformed("storage_data is not a dict (not written by FileSystemWriter?)")
    out: dict[StorageIndex, tuple[str, int, int, bool]] = {}
    inside: set[str] = set()
    for k, v in _pairs(sd):
        ks = _state(k, "storage_data key")
        fqn = ks.get("fqn")
        off = ks.get("offset")
        if not isinstance(fqn, str):
            raise Malformed("storage_data key without an fqn")
        offsets = None if off is None else _ints(off, fqn, "storage offset")
        vs = _state(v, "storage info", fqn)
        rel, at, n = vs.get("relative_path"), vs.get("offset"), vs.get("length")
        if not isinstance(rel, str) or type(at) is not int or type(n) is not int or at < 0 or n < 0:
            raise Malformed(f"{fqn}: storage info is not (relative_path, offset, length)")
        if rel not in inside:
            if not rel or rel in (".", "..") or "/" in rel or "\\" in rel or "\0" in rel:
                raise Malformed(f"{fqn}: data file {rel!r} lies outside the folder")
            inside.add(rel)
        out[(fqn, offsets)] = (rel, at, n, bool(vs.get("transform_descriptors")))
    return out
