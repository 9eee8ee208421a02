"""Provides the fast path of reading `.metadata`: CPython's C `pickle.Unpickler`, made unable to
reach anything but ckptui's own record classes below.

A 10,000-tensor checkpoint writes a 2 MiB `.metadata` pickle of about a million opcodes: ckptui's
pure-Python inert loop (`unpickle.py`) needs ~0.8 s for it, so `dcp_metadata` first tries this
path (the same confinement `unpickler/confined.py` gives every other pickle, here with
DCP's own record classes and a stricter opcode set; the opcode regex pieces are shared).
Separate from `dcp_metadata` (which chooses the path) and `dcp_interpretation` (which turns
what either path unpickled into `DcpMetadata`) because its safety argument is self-contained and
must be read whole: the C unpickler must never import or call anything from the file; this is
how:

1. Opcode allow-list, checked before the C unpickler sees a byte. `rewrite` walks the whole
   pickle with one anchored regex of the opcodes a protocol 4/5 DCP pickle uses (MEMOIZE,
   BINGET/LONG_BINGET, MARK, the TUPLE opcodes, EMPTY_DICT/EMPTY_LIST, APPEND(S), SETITEM(S),
   NEWOBJ, BUILD, REDUCE, STACK_GLOBAL, NONE/NEWTRUE/NEWFALSE, BININT*, LONG1 up to 8 bytes,
   SHORT_BINUNICODE, FRAME, STOP) and declines the file unless they cover it from PROTO to a
   STOP at its last byte. So no GLOBAL/INST/OBJ (text globals), no PERSID/BINPERSID, no
   EXT1/2/4 (copyreg extension codes: the C unpickler serves those from the process-wide
   `copyreg._extension_cache` without asking `find_class`), no NEWOBJ_EX, no PUT/BINPUT/
   LONG_BINPUT (a LONG_BINPUT of index 2**28 makes the C unpickler allocate and zero 4 GiB),
   no DICT/set/bytes/long-string opcodes ever reach it. Inside the walk it replaces every
   EMPTY_DICT by a STACK_GLOBAL of `Dict` + EMPTY_TUPLE + NEWOBJ and drops the FRAME opcodes
   (framing is optional; it only groups reads), so the stream the C unpickler runs holds the
   same objects in the same memo slots, except that every dict is a `Dict`.
2. Globals: STACK_GLOBAL is the only opcode left that names one, and the C unpickler resolves
   it by calling `find_class`, overridden here without `super()`: it returns a record class of
   this module for an exact allow-list of (module, name) pairs (the classes torch 2.13 pickles
   into `.metadata`: `Metadata`, `TensorStorageMetadata`, `BytesStorageMetadata`,
   `ChunkStorageMetadata`, `TensorProperties`, `MetadataIndex`, `StorageMeta`,
   `_MEM_FORMAT_ENCODING`, `filesystem._StorageInfo`, `torch.Size`,
   `torch.serialization._get_layout`, `pathlib.PosixPath`/`WindowsPath`), a fresh `_Dtype` for
   `torch.<dtype>` names, `Dict` for the rewrite's own global, and raises `_NotFast` for any
   other name (`os.system`, `builtins.eval`, `torch.load`, dotted walks, ...). Nothing is
   imported: the classes are defined here and the names are only compared.
3. What the remaining opcodes can call, given that every object on the stack is one of those
   classes, a record or `Dict`/`Size`/`_Dtype` instance, or a str/int/bool/None/tuple/list:
   - REDUCE calls `callable(*args)`: only types are callable among those objects, and the only
     reachable types are the classes of point 2, whose `__new__`/`__init__` are defined here and
     store their arguments (`Call`), build a tuple (`Size`), an empty dict (`Dict`, whose
     `__init__` refuses arguments: `dict(pairs)` would hash keys unchecked), or are `object`'s
     own (`Record`: no arguments accepted).
   - NEWOBJ calls `cls.__new__(cls, *args)` and refuses a `cls` that is not a type: the same
     classes again.
   - BUILD looks up `__setstate__` on the object: every class of point 2 defines one (records
     keep the state; `Dict`, `Size`, `_Dtype` raise), none has an instance `__dict__` that
     could shadow it, and the builtin values have none and no `__dict__` either, so BUILD on
     them fails before `setattr` could run.
   - APPEND(S) extend a list, or look up `extend`/`append` on the target: no class here
     defines them, so they fail. SETITEM(S) call `Dict.__setitem__` (every dict is a `Dict`),
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

No torch here: opening must not pay torch's start-up.
"""

from __future__ import annotations

import pickle
import re
from typing import Any, ClassVar, Self

from ckptui.core.dtypes import DTYPES
from ckptui.unpickler.confined import counted
from ckptui.unpickler.recorded import TorchDtype

MD_PREFIX = "torch.distributed.checkpoint.metadata."
"""The module of torch's metadata classes, the prefix of most names on the allow-list."""


# -- the fast path: records ---------------------------------------------------------------------
class _NotFast(Exception):
    """The fast path declines the file; the inert loop reads it instead."""


class Record:
    """An instance of an allow-listed DCP dataclass, built by NEWOBJ with object's own `__new__`
    (which takes no arguments) and filled by BUILD through `__setstate__`."""

    __slots__ = ("state",)
    name: ClassVar[str] = ""
    """The class's qualified name in torch."""

    def __setstate__(self, state: Any) -> None:
        old = getattr(self, "state", None)
        if type(old) is Dict and type(state) is Dict:
            dict.update(old, state)  # a second BUILD merges, as the inert loop's does
        else:
            self.state = state


class Call(Record):
    """A call of an allow-listed constructor (REDUCE): remembers its arguments."""

    __slots__ = ("args",)

    def __new__(cls, *args: Any) -> Self:
        self = object.__new__(cls)
        self.args = args
        return self

    def __init__(self, *args: Any) -> None:
        pass


class Size(tuple):  # type: ignore[type-arg]
    """`torch.Size(dims)`: a tuple of whatever `dims` iterates (checked when read)."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise _NotFast("BUILD on torch.Size")


class _Dtype(TorchDtype):
    """A `torch.<dtype>` global used as a value; a fresh one per STACK_GLOBAL."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise _NotFast("BUILD on a dtype")


class Dict(dict):  # type: ignore[type-arg]
    """Every dict of the fast path (the rewrite turns EMPTY_DICT into one): keys are checked."""

    __slots__ = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args or kwargs:
            raise _NotFast("dict built from arguments")

    def __setitem__(self, key: Any, value: Any) -> None:
        if type(key) is not str and not isinstance(key, Record):
            raise _NotFast(f"dict key of type {type(key).__name__}")
        dict.__setitem__(self, key, value)

    def __setstate__(self, state: Any) -> None:
        raise _NotFast("BUILD on a dict")


def _record(full: str, base: type[Record]) -> type[Record]:
    return type(full.rsplit(".", 1)[-1], (base,), {"__slots__": (), "name": full})


_CLASSES: dict[tuple[str, str], type] = {
    tuple(full.rsplit(".", 1)): _record(full, base)  # type: ignore[misc]
    for full, base in (
        (f"{MD_PREFIX}Metadata", Record),
        (f"{MD_PREFIX}TensorStorageMetadata", Record),
        (f"{MD_PREFIX}BytesStorageMetadata", Record),
        (f"{MD_PREFIX}ChunkStorageMetadata", Record),
        (f"{MD_PREFIX}TensorProperties", Record),
        (f"{MD_PREFIX}MetadataIndex", Record),
        (f"{MD_PREFIX}StorageMeta", Record),
        (f"{MD_PREFIX}_MEM_FORMAT_ENCODING", Call),
        ("torch.distributed.checkpoint.filesystem._StorageInfo", Record),
        ("torch.serialization._get_layout", Call),
        ("pathlib.PosixPath", Call),
        ("pathlib.WindowsPath", Call),
    )
}
_CLASSES[("torch", "Size")] = Size
_CLASSES[("", "")] = Dict  # the rewrite's own global (a file may name it too: it is harmless)
_DTYPE_NAMES: dict[tuple[str, str], str] = {("torch", a): d.name for a, d in DTYPES.items()}
FAST_GLOBALS = frozenset(f"{m}.{n}" for m, n in (*_CLASSES, *_DTYPE_NAMES) if m)
"""The globals the fast path accepts; any other sends the file to the inert loop."""


class FastUnpickler(pickle.Unpickler):
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
_TOKEN = (
    rb"(?:[\x94()\x85\x86\x87t\]aesu\x81bR\x93\x88\x89N]"  # 1 byte, no argument
    rb"|[hK].|M.{2}|[Jj].{4}"  # BINGET, BININT1; BININT2; BININT, LONG_BINGET
    + b"|"
    + counted(b"\x8c", 255)  # SHORT_BINUNICODE
    + b"|"
    + counted(b"\x8a", 8)  # LONG1
    + b")"
)
_SEGMENT = re.compile(b"(?s)(" + _TOKEN + rb"*+)(?:(\})|\x95.{8})")
"""Tokens up to an EMPTY_DICT (group 2) or a FRAME, anchored by `match`."""
_TAIL = re.compile(b"(?s)" + _TOKEN + rb"*+\.")
_NEW_DICT = b"\x8c\x00\x8c\x00\x93)\x81"
"""STACK_GLOBAL('', '') -> `Dict`, EMPTY_TUPLE, NEWOBJ: an empty `Dict` on the stack."""


def rewrite(data: bytes) -> bytes | None:
    """The pickle with EMPTY_DICT made `Dict` and FRAMEs dropped, or None when an opcode outside
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
