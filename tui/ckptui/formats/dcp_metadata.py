"""Provides the loading of a DCP folder's `.metadata` pickle into `DcpMetadata`, without running it.

`.metadata` is a pickle of torch's `Metadata` dataclass (FORMATS.md). It names, for every
flattened key (FQN), either a tensor (dtype, global size and the chunks that tile it) or a
pickled object, and for every chunk or object the `.distcp` file, offset and length of its item
(`storage_data`). A 10,000-tensor checkpoint writes a 2 MiB pickle of about a million opcodes:
ckptui's pure-Python inert loop (`unpickle.py`) needs ~0.8 s for it, so this module first tries
a fast path, and falls back to the inert loop for anything the fast path does not accept.

The fast path: CPython's C `pickle.Unpickler`, made unable to reach anything but ckptui's own
record classes below. It must never import or call anything from the file; this is how:

1. Opcode allow-list, checked before the C unpickler sees a byte. `_rewrite` walks the whole
   pickle with one anchored regex of the opcodes a protocol 4/5 DCP pickle uses (MEMOIZE,
   BINGET/LONG_BINGET, MARK, the TUPLE opcodes, EMPTY_DICT/EMPTY_LIST, APPEND(S), SETITEM(S),
   NEWOBJ, BUILD, REDUCE, STACK_GLOBAL, NONE/NEWTRUE/NEWFALSE, BININT*, LONG1 up to 8 bytes,
   SHORT_BINUNICODE, FRAME, STOP) and declines the file unless they cover it from PROTO to a
   STOP at its last byte. So no GLOBAL/INST/OBJ (text globals), no PERSID/BINPERSID, no
   EXT1/2/4 (copyreg extension codes: the C unpickler serves those from the process-wide
   `copyreg._extension_cache` without asking `find_class`), no NEWOBJ_EX, no PUT/BINPUT/
   LONG_BINPUT (a LONG_BINPUT of index 2**28 makes the C unpickler allocate and zero 4 GiB),
   no DICT/set/bytes/long-string opcodes ever reach it. Inside the walk it replaces every
   EMPTY_DICT by a STACK_GLOBAL of `_Dict` + EMPTY_TUPLE + NEWOBJ and drops the FRAME opcodes
   (framing is optional; it only groups reads), so the stream the C unpickler runs holds the
   same objects in the same memo slots, except that every dict is a `_Dict`.
2. Globals: STACK_GLOBAL is the only opcode left that names one, and the C unpickler resolves
   it by calling `find_class`, overridden here without `super()`: it returns a record class of
   this module for an exact allow-list of (module, name) pairs (the classes torch 2.13 pickles
   into `.metadata`: `Metadata`, `TensorStorageMetadata`, `BytesStorageMetadata`,
   `ChunkStorageMetadata`, `TensorProperties`, `MetadataIndex`, `StorageMeta`,
   `_MEM_FORMAT_ENCODING`, `filesystem._StorageInfo`, `torch.Size`,
   `torch.serialization._get_layout`, `pathlib.PosixPath`/`WindowsPath`), a fresh `_Dtype` for
   `torch.<dtype>` names, `_Dict` for the rewrite's own global, and raises `_NotFast` for any
   other name (`os.system`, `builtins.eval`, `torch.load`, dotted walks, ...). Nothing is
   imported: the classes are defined here and the names are only compared.
3. What the remaining opcodes can call, given that every object on the stack is one of those
   classes, a record or `_Dict`/`_Size`/`_Dtype` instance, or a str/int/bool/None/tuple/list:
   - REDUCE calls `callable(*args)`: only types are callable among those objects, and the only
     reachable types are the classes of point 2, whose `__new__`/`__init__` are defined here and
     store their arguments (`_Call`), build a tuple (`_Size`), an empty dict (`_Dict`, whose
     `__init__` refuses arguments: `dict(pairs)` would hash keys unchecked), or are `object`'s
     own (`_Record`: no arguments accepted).
   - NEWOBJ calls `cls.__new__(cls, *args)` and refuses a `cls` that is not a type: the same
     classes again.
   - BUILD looks up `__setstate__` on the object: every class of point 2 defines one (records
     keep the state; `_Dict`, `_Size`, `_Dtype` raise), none has an instance `__dict__` that
     could shadow it, and the builtin values have none and no `__dict__` either, so BUILD on
     them fails before `setattr` could run.
   - APPEND(S) extend a list, or look up `extend`/`append` on the target: no class here
     defines them, so they fail. SETITEM(S) call `_Dict.__setitem__` (every dict is a `_Dict`),
     which admits only str keys and record keys, hashed by identity: a tuple key is refused,
     because hashing a million-deep tuple recurses in C and crashes the interpreter (measured:
     a 1 MB pickle does it), and int keys could be made to collide. SETITEM(S) on a list calls
     `list.__setitem__`, on anything else fails.
   - `persistent_load` raises (unreachable: the opcodes are not allowed).
   Any exception at all (a refused global, a bad opcode sequence, a failed check) makes the
   fast path decline, and the inert loop reads the file, reporting dangerous or unknown
   globals as findings exactly as before. Memory stays bounded by the file's size: every
   opcode left creates at most one object, strings are at most 255 bytes, memo slots grow one
   per MEMOIZE.

Both paths feed one interpretation (`_interpret`), so they produce the same `DcpMetadata`; the
fast path declines what the interpretation would reject, and the inert path then raises the
`CorruptFile` it always did. The fast path is a shade more lenient on values the
interpretation never reads (`torch.Size()` without arguments is `()`, as torch has it).

No torch here: opening must not pay torch's start-up.
"""

from __future__ import annotations

import gc
import io
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from ..dtypes import DTYPES, itemsize_of
from ..errors import CorruptFile
from ..model import TensorInfo
from ..recorders import TensorRec, TorchDtype
from ..unpickle import Global, PDict, PObject, _Malformed, classify_global
from ._common import Source

METADATA = ".metadata"
_MD = "torch.distributed.checkpoint.metadata."
DCP_GLOBALS = frozenset(
    {
        f"{_MD}Metadata", f"{_MD}TensorStorageMetadata", f"{_MD}BytesStorageMetadata",
        f"{_MD}ChunkStorageMetadata", f"{_MD}TensorProperties", f"{_MD}MetadataIndex",
        f"{_MD}StorageMeta", f"{_MD}_MEM_FORMAT_ENCODING",
        "torch.distributed.checkpoint.filesystem._StorageInfo",
        "torch.distributed.checkpoint.filesystem._StoragePrefix",
    }
)  # fmt: skip
"""torch's own metadata classes: interpreted here as data, so not reported as unknown."""
FAST_MAX_BYTES = 256 << 20
"""A larger `.metadata` goes to the inert loop, which maps the file instead of copying it."""
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


def load_metadata(src: Source) -> DcpMetadata:
    """Read and check `.metadata`: by the fast path when it accepts the pickle, else inertly.

    Args:
        src: the open `.metadata` file.

    Returns:
        The checked metadata.

    Raises:
        CorruptFile: not a readable DCP Metadata pickle.
    """
    if src.size == 0:
        raise CorruptFile(src.path, "empty .metadata file")
    if src.size <= FAST_MAX_BYTES:
        md = load_fast(src.read_at(0, src.size))
        if md is not None:
            return md
    return load_inert(src)


# -- the inert path ---------------------------------------------------------------------------
def load_inert(src: Source) -> DcpMetadata:
    """Read `.metadata` with ckptui's inert opcode loop (every pickle, hostile ones included)."""
    path = src.path
    if src.size == 0:
        raise CorruptFile(path, "empty .metadata file")
    root, _ = src.unpickler(src.buf, METADATA, None).load(0, src.size)
    if not (isinstance(root, PObject) and root.name == f"{_MD}Metadata"):
        found = root.name if isinstance(root, PObject) else type(root).__name__
        raise CorruptFile(path, f"not a DCP Metadata pickle (it holds {found}){_danger(src)}")
    try:
        return _interpret(root, src.globals)
    except _Malformed as e:
        raise CorruptFile(path, f"malformed DCP metadata: {e}{_danger(src)}") from None


def _danger(src: Source) -> str:
    ran = [
        g.full for g in src.globals.values() if classify_global(g) == ("dangerous_call", "danger")
    ]
    if not ran:
        return ""
    return f"; pickle.load (and torch's reader) would run {', '.join(ran[:3])}: ckptui did not"


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic collector while a reader builds its many small objects: each collection
    walks every object made so far (measured on 10,000 tensors: the C unpickler's 1 M opcodes
    and the interpretation take 2-3x longer with it on). Nothing is freed late: the objects
    live on after the read anyway, and collection resumes as it was."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# -- the fast path: records ---------------------------------------------------------------------
class _NotFast(Exception):
    """The fast path declines the file; the inert loop reads it instead."""


class _Record:
    """An instance of an allow-listed DCP dataclass, built by NEWOBJ with object's own `__new__`
    (which takes no arguments) and filled by BUILD through `__setstate__`."""

    __slots__ = ("state",)
    name: ClassVar[str] = ""
    """The class's qualified name in torch."""

    def __setstate__(self, state: Any) -> None:
        old = getattr(self, "state", None)
        if type(old) is _Dict and type(state) is _Dict:
            dict.update(old, state)  # a second BUILD merges, as the inert loop's does
        else:
            self.state = state


class _Call(_Record):
    """A call of an allow-listed constructor (REDUCE): remembers its arguments."""

    __slots__ = ("args",)

    def __new__(cls, *args: Any) -> Self:
        self = object.__new__(cls)
        self.args = args
        return self

    def __init__(self, *args: Any) -> None:
        pass


class _Size(tuple):  # type: ignore[type-arg]
    """`torch.Size(dims)`: a tuple of whatever `dims` iterates (checked when read)."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise _NotFast("BUILD on torch.Size")


class _Dtype(TorchDtype):
    """A `torch.<dtype>` global used as a value; a fresh one per STACK_GLOBAL."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise _NotFast("BUILD on a dtype")


class _Dict(dict):  # type: ignore[type-arg]
    """Every dict of the fast path (the rewrite turns EMPTY_DICT into one): keys are checked."""

    __slots__ = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args or kwargs:
            raise _NotFast("dict built from arguments")

    def __setitem__(self, key: Any, value: Any) -> None:
        if type(key) is not str and not isinstance(key, _Record):
            raise _NotFast(f"dict key of type {type(key).__name__}")
        dict.__setitem__(self, key, value)

    def __setstate__(self, state: Any) -> None:
        raise _NotFast("BUILD on a dict")


def _record(full: str, base: type[_Record]) -> type[_Record]:
    return type(full.rsplit(".", 1)[-1], (base,), {"__slots__": (), "name": full})


_CLASSES: dict[tuple[str, str], type] = {
    tuple(full.rsplit(".", 1)): _record(full, base)  # type: ignore[misc]
    for full, base in (
        (f"{_MD}Metadata", _Record),
        (f"{_MD}TensorStorageMetadata", _Record),
        (f"{_MD}BytesStorageMetadata", _Record),
        (f"{_MD}ChunkStorageMetadata", _Record),
        (f"{_MD}TensorProperties", _Record),
        (f"{_MD}MetadataIndex", _Record),
        (f"{_MD}StorageMeta", _Record),
        (f"{_MD}_MEM_FORMAT_ENCODING", _Call),
        ("torch.distributed.checkpoint.filesystem._StorageInfo", _Record),
        ("torch.serialization._get_layout", _Call),
        ("pathlib.PosixPath", _Call),
        ("pathlib.WindowsPath", _Call),
    )
}
_CLASSES[("torch", "Size")] = _Size
_CLASSES[("", "")] = _Dict  # the rewrite's own global (a file may name it too: it is harmless)
_DTYPE_NAMES: dict[tuple[str, str], str] = {("torch", a): d.name for a, d in DTYPES.items()}
FAST_GLOBALS = frozenset(f"{m}.{n}" for m, n in (*_CLASSES, *_DTYPE_NAMES) if m)
"""The globals the fast path accepts; any other sends the file to the inert loop."""


class _FastUnpickler(pickle.Unpickler):
    """The C unpickler, resolving globals only to this module's records (module docstring)."""

    def find_class(self, module: str, name: str) -> Any:  # never super(): nothing is imported
        cls = _CLASSES.get((module, name))
        if cls is not None:
            return cls
        dtype = _DTYPE_NAMES.get((module, name))
        if dtype is not None:
            return _Dtype(dtype)
        raise _NotFast(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise _NotFast("persistent id")


# -- the fast path: the opcode walk ---------------------------------------------------------
def _counted(op: bytes, most: int) -> bytes:
    """`op`, a 1-byte length n <= most, then n bytes: one alternative per length, so the regex
    engine picks the branch by the length byte (it skips branches whose first literal differs)."""
    bodies = b"|".join(
        re.escape(bytes([n])) + (b".{%d}" % n if n else b"") for n in range(most + 1)
    )
    return re.escape(op) + b"(?:" + bodies + b")"


_TOKEN = (
    rb"(?:[\x94()\x85\x86\x87t\]aesu\x81bR\x93\x88\x89N]"  # 1 byte, no argument
    rb"|[hK].|M.{2}|[Jj].{4}"  # BINGET, BININT1; BININT2; BININT, LONG_BINGET
    + b"|"
    + _counted(b"\x8c", 255)  # SHORT_BINUNICODE
    + b"|"
    + _counted(b"\x8a", 8)  # LONG1
    + b")"
)
_SEGMENT = re.compile(b"(?s)(" + _TOKEN + rb"*+)(?:(\})|\x95.{8})")
"""Tokens up to an EMPTY_DICT (group 2) or a FRAME, anchored by `match`."""
_TAIL = re.compile(b"(?s)" + _TOKEN + rb"*+\.")
_NEW_DICT = b"\x8c\x00\x8c\x00\x93)\x81"
"""STACK_GLOBAL('', '') -> `_Dict`, EMPTY_TUPLE, NEWOBJ: an empty `_Dict` on the stack."""


def _rewrite(data: bytes) -> bytes | None:
    """The pickle with EMPTY_DICT made `_Dict` and FRAMEs dropped, or None when an opcode outside
    the allow-list occurs or anything follows STOP (module docstring, point 1)."""
    if data[:2] not in (b"\x80\x04", b"\x80\x05"):
        return None
    pieces = [data[:2]]
    pos = 2
    match = _SEGMENT.match
    while (m := match(data, pos)) is not None:  # anchored at pos: every byte is walked
        pieces.append(m[1])
        if m.start(2) >= 0:
            pieces.append(_NEW_DICT)
        pos = m.end()
    tail = _TAIL.match(data, pos)
    if tail is None or tail.end() != len(data):
        return None
    pieces.append(data[pos:])
    return b"".join(pieces)


def load_fast(data: bytes) -> DcpMetadata | None:
    """Read `.metadata` bytes by the fast path, or None when it declines them (the caller then
    reads them inertly). Never raises."""
    try:
        stream = _rewrite(data)
        if stream is None:
            return None
        root = _FastUnpickler(io.BytesIO(stream)).load()
        if not (isinstance(root, _Record) and root.name == f"{_MD}Metadata"):
            return None
        md = _interpret(root, {})
    except Exception:  # noqa: BLE001  # any failure: the inert loop reads it and says what is wrong
        return None
    md.fast = True
    return md


# -- interpretation, shared by both paths ---------------------------------------------------
_MAPS = (PDict, _Dict)
_OBJECTS = (PObject, _Record)


def _pairs(d: PDict | _Dict) -> Any:
    return d.items if type(d) is PDict else d.items()


def _raw_state(obj: Any) -> Any:
    if isinstance(obj, PObject):
        return obj.state
    if isinstance(obj, _Record):
        return getattr(obj, "state", None)
    return None


def _state(obj: Any, what: str, fqn: str = "") -> Any:
    st = _raw_state(obj)
    if not isinstance(st, _MAPS):
        raise _Malformed(f"{fqn}{': ' if fqn else ''}{what} is not a dataclass instance")
    return st


def _name(obj: Any) -> str:
    return obj.name if isinstance(obj, _OBJECTS) else type(obj).__name__


def _args(obj: Any) -> tuple[Any, ...]:
    if isinstance(obj, PObject | _Call):
        return obj.args
    return ()


def _ints(v: Any, fqn: str, what: str) -> tuple[int, ...]:
    if type(v) is not tuple:
        if not isinstance(v, list | _Size):
            raise _Malformed(f"{fqn}: {what} is not a tuple")
        v = tuple(v)
    if len(v) > _MAX_DIMS:
        raise _Malformed(f"{fqn}: {what} has more than {_MAX_DIMS} dimensions")
    for x in v:
        if type(x) is not int or not 0 <= x < _BIG:
            raise _Malformed(f"{fqn}: {what} is not a tuple of non-negative ints")
    return v


def _interpret(root: Any, globals_: dict[str, Global]) -> DcpMetadata:
    st = _state(root, "Metadata")
    sdm = st.get("state_dict_metadata")
    if not isinstance(sdm, _MAPS):
        raise _Malformed("state_dict_metadata is not a dict")
    tensors: dict[str, tuple[TensorInfo, list[Chunk]]] = {}
    objects: dict[str, None] = {}
    order: list[str] = []
    infos: dict[tuple[Any, ...], TensorInfo] = {}
    for fqn, entry in _pairs(sdm):
        if not isinstance(fqn, str):
            raise _Malformed(f"state_dict_metadata key {fqn!r} is not a string")
        order.append(fqn)
        name = _name(entry)
        if name == f"{_MD}TensorStorageMetadata":
            tensors[fqn] = _tensor_entry(fqn, _state(entry, "TensorStorageMetadata", fqn), infos)
        elif name == f"{_MD}BytesStorageMetadata":
            objects[fqn] = None
        else:
            raise _Malformed(f"{fqn}: unknown storage metadata {name}")
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
        raise _Malformed(f"{fqn}: tensor properties carry no dtype")
    shape = _ints(st.get("size"), fqn, "size")
    chunks_in = st.get("chunks")
    if not isinstance(chunks_in, list):
        raise _Malformed(f"{fqn}: chunks is not a list")
    chunks: list[Chunk] = []
    for c in chunks_in:
        cs = _state(c, "chunk", fqn)
        offsets = _ints(cs.get("offsets"), fqn, "chunk offsets")
        sizes = _ints(cs.get("sizes"), fqn, "chunk sizes")
        if len(offsets) != len(shape) or len(sizes) != len(shape):
            raise _Malformed(f"{fqn}: a chunk's rank differs from the tensor's")
        for o, s, d in zip(offsets, sizes, shape, strict=True):
            if o + s > d:
                raise _Malformed(f"{fqn}: a chunk reaches outside the tensor")
        chunks.append(Chunk(fqn, offsets, sizes, f"{fqn}@[{','.join(map(str, offsets))}]"))
    # Many tensors share shape and dtype (every layer's weight): one TensorInfo for them all.
    ident = (shape, dtype.name, requires_grad)
    info = infos.get(ident)
    if info is None:
        name = dtype.name
        info = TensorInfo(
            shape, name, _contiguous(shape), None, 0, itemsize_of(name), "cpu", requires_grad
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
        raise _Malformed("storage_data is not a dict (not written by FileSystemWriter?)")
    out: dict[StorageIndex, tuple[str, int, int, bool]] = {}
    inside: set[str] = set()
    for k, v in _pairs(sd):
        ks = _state(k, "storage_data key")
        fqn = ks.get("fqn")
        off = ks.get("offset")
        if not isinstance(fqn, str):
            raise _Malformed("storage_data key without an fqn")
        offsets = None if off is None else _ints(off, fqn, "storage offset")
        vs = _state(v, "storage info", fqn)
        rel, at, n = vs.get("relative_path"), vs.get("offset"), vs.get("length")
        if not isinstance(rel, str) or type(at) is not int or type(n) is not int or at < 0 or n < 0:
            raise _Malformed(f"{fqn}: storage info is not (relative_path, offset, length)")
        if rel not in inside:
            if not rel or rel in (".", "..") or "/" in rel or "\\" in rel or "\0" in rel:
                raise _Malformed(f"{fqn}: data file {rel!r} lies outside the folder")
            inside.add(rel)
        out[(fqn, offsets)] = (rel, at, n, bool(vs.get("transform_descriptors")))
    return out


def _contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride: list[int] = []
    acc = 1
    for d in reversed(shape):
        stride.append(acc)
        acc *= max(d, 1)
    return tuple(reversed(stride))
