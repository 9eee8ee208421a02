"""Provides the confined fast path of the inert unpickler: CPython's C `pickle.Unpickler` run over
a checked, rewritten copy of the pickle, so that it makes exactly the objects the inert loop
(`inert.py`) makes, at C speed, and never imports or calls anything the file names.

The inert loop costs ~7 s of CPU per 100,000 tensors; the C unpickler walks the same opcodes in a
fraction of that. `ConfinedUnpickler.load` tries this path first and falls back to the inert loop
for the whole pickle whenever it cannot decide, undoing what the attempt did (globals, storages,
findings), so the result is the inert loop's in every case. Why it is safe and exact:

1. Opcode allow-list, checked before the C unpickler sees a byte. `rewrite` walks the pickle
   from its PROTO to its STOP with one anchored regex of plain opcodes (MARK, the TUPLE opcodes,
   EMPTY_TUPLE, NONE/NEWTRUE/NEWFALSE, BININT*, LONG1 up to 32 bytes, BINFLOAT, BINUNICODE and
   SHORT_BINUNICODE, SHORT_BINBYTES/BINBYTES up to 64 bytes, GLOBAL, STACK_GLOBAL, BINPERSID,
   BINGET/LONG_BINGET, BINPUT/MEMOIZE, LONG_BINPUT below a bound set by the pickle's size,
   APPEND(S), SETITEM(S)) and a few it rewrites (below). Anything else declines the file:
   - EXT1/2/4: the C unpickler serves them from the process-wide copyreg cache without asking
     `find_class`; INST/OBJ/NEWOBJ_EX: calls the rewrite cannot mark; POP/POP_MARK/DUP and a
     PROTO past the first byte: they could leave a MARK with nothing above it, and the C
     unpickler skips an empty APPENDS/SETITEMS where the inert loop checks its target (a MARK
     right before APPENDS/SETITEMS is rewritten into that check, below; a MARK before a FRAME
     or ending a frame declines);
   - DICT/LIST/EMPTY_SET/ADDITEMS/FROZENSET/BYTEARRAY8: real dicts and sets hash their keys in C
     without a depth guard (a million-deep tuple key crashes the interpreter); bytes over 64
     bytes and strings over `Limits.inline_text` (the inert loop makes `Blob`s of them);
     protocol 0/1 text opcodes and BINSTRING (their decoding differs in corners);
   - a LONG_BINPUT index of 2**28 would make the C unpickler allocate and zero a 4 GiB memo,
     so the index must stay below a bound no real pickle reaches (a quarter of its bytes).
   FRAMEs are dropped (framing only groups reads) after checking that every opcode lies wholly
   inside its frame: a crossing opcode is read two ways by CPython (`inert.load`), declined.
2. Rewrites, spliced in as opcodes, most pushing a marker by a STACK_GLOBAL of a random nonce
   module (fresh per load, so a file cannot name it): EMPTY_DICT becomes a call of `PDict()`
   and EMPTY_LIST of `_List()` (a list whose `__setitem__` refuses, so SETITEM on a list fails
   as in the inert loop); REDUCE becomes `func((args,))` and NEWOBJ `cls((args, None))` (the
   args wrapped by TUPLE opcodes, no marker: a marker costs a `find_class` call, two per
   tensor), so a call reaches `Global.__call__` with the args tuple itself (a Python
   `__call__(*args)` would get a copy, losing its identity for the tree's refs) and how it
   was made. Every REDUCE and NEWOBJ of the file is rewritten so, and no opcode left makes any
   other call, so the file cannot hand a call another shape; BUILD passes `(state, BUILD_MARK)` to `__setstate__`; `MARK SETITEMS`
   and `MARK APPENDS` with nothing between (the C pickler writes one after a dict or list of a
   multiple of 1,000 items) become a BUILD that only checks the target's type.
3. What the remaining opcodes can reach: every object on the stack is a str/bytes/int/float/
   bool/None/tuple, a `_List`, or what `find_class` and `persistent_load` return, which are
   the inert loop's own `_global` and `_persistent` (a `Global`, a dtype constant, a storage
   reference), and what calls of those return (the recorders' records, `PObject`s).
   - REDUCE/NEWOBJ call only a `Global` (`Global.__call__` -> the inert loop's `_call`: a
     recorder or a placeholder, never the named object); nothing else on the stack is callable.
   - BUILD finds `__setstate__` only on the classes the inert loop's `_build` accepts (it runs
     `_build`); on any other object pickle's default BUILD fails on the marked state.
   - SETITEM(S) call `__setitem__` of `PDict` (the inert loop's `PDict.set`, key checks
     included) or `PObject`; `_List` refuses; nothing else has one. APPEND(S) extend a `_List`
     or call `PObject.extend`; nothing else has `extend` or `append`.
   - An embedded checkpoint (`torch.storage._load_from_bytes`) declines before it is read.
   Any exception at all declines the file. Memory stays bounded by the pickle's size.

In the same pass it notes whether torch's weights-only unpickler, replayed on the file
(`weights_only_replay`), could record anything: only the opcodes that replay supports, every
global allowed, persistent ids that are storages, no placeholder made, BUILD only on an
OrderedDict. When so (`exact`), the weights-only verdict skips reading and replaying the pickle.
"""

from __future__ import annotations

import mmap
import os
import pickle
from typing import Any

from ckptui.core.bulk import gc_paused
from ckptui.unpickler.inert import CONFINED, Global, InertUnpickler, PDict, PObject
from ckptui.unpickler.recorders.builtin import ordered_dict
from ckptui.unpickler.recorders.torch_types import rebuild_tensor_v2
from ckptui.unpickler.rewrite import (
    Decline,
    PieceReader,
    Progress,
    Rewritten,
    counted,
    pieces,
    rewrite,
)
from ckptui.unpickler.weights_only_replay import Replay

ENABLED = True
"""Try the C path first (tests turn it off to compare with the inert loop alone)."""


class _Mark:
    """A marker the rewrite pushes (module docstring, point 2); unreachable by the file."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what


BUILD_MARK = _Mark("BUILD")
"""BUILD's state becomes `(state, BUILD_MARK)`: on an object without `__setstate__`, pickle's
default BUILD then refuses the slot state (not a dict) instead of skipping a None state."""
EMPTY_SETITEMS = _Mark("MARK SETITEMS")
"""`MARK SETITEMS` with nothing between (the C pickler writes one after a dict of a multiple of
1,000 items) becomes BUILD with this state: the C unpickler would skip it without looking at
the target, which the inert loop checks."""
EMPTY_APPENDS = _Mark("MARK APPENDS")
"""The same for `MARK APPENDS`."""


class _List(list):  # type: ignore[type-arg]
    """Every list of the confined path: SETITEM(S) on it fails, as the inert loop's check does."""

    __slots__ = ()

    def __setitem__(self, index: Any, value: Any) -> None:
        raise Decline("SETITEM on a list")

    def __setstate__(self, state: Any) -> None:
        if state is not EMPTY_APPENDS:  # BUILD on a list fails in the inert loop
            raise Decline("BUILD on a list")


_List.__name__ = _List.__qualname__ = "list"  # the tree names a node by its object's type


class _CUnpickler(pickle.Unpickler):
    """The C unpickler, resolving globals and persistent ids through the inert loop only."""

    def __init__(self, stream: PieceReader, u: ConfinedUnpickler, nonce: str) -> None:
        # Set before `__init__`, where the C unpickler takes its persistent_load once. A
        # reader's function that raises on every id but a storage tuple (`storage_pids_only`,
        # torchzip's) is called directly: the check in `checked_persistent_load` could never
        # clear `exact` for it, and it runs once per tensor (issue 16).
        load = u.persistent_load
        direct = load is not None and getattr(load, "storage_pids_only", False)
        self.persistent_load = load if direct else self.checked_persistent_load
        super().__init__(stream, encoding="utf-8")
        self.u = u
        self.nonce = nonce
        self.names: list[tuple[str, str]] = []
        """Every (module, name) the file's GLOBALs name, as written (for the replay check)."""

    def find_class(self, module: str, name: str) -> Any:  # never super(): nothing is imported
        if module == self.nonce:
            return _MARKERS[name]
        self.names.append((module, name))
        return self.u.named(module, name)

    def checked_persistent_load(self, pid: Any) -> Any:
        """BINPERSID: the reader's own persistent_load, noting ids the replay blocks on."""
        if not (type(pid) is int or (type(pid) is tuple and pid and pid[0] == "storage")):
            self.u.exact = False  # the replay blocks on it
        load = self.u.persistent_load  # `u.persistent`, two calls sooner (once per storage)
        if load is None:
            return self.u.persistent(pid)  # raises the inert loop's own error
        return load(pid)


def _no_nested(u: InertUnpickler, blob: Any) -> Any:
    raise Decline("embedded checkpoint")  # read by the inert loop, with its own limits


_MARKERS: dict[str, Any] = {
    "B": BUILD_MARK,
    "U": EMPTY_SETITEMS,
    "E": EMPTY_APPENDS,
    "D": PDict,
    "L": _List,
}
_BUFFERS = (bytes, bytearray, memoryview, mmap.mmap)


class ConfinedUnpickler(InertUnpickler):
    """The inert unpickler, tried first through the confined C unpickler (module docstring).

    `extra["save_state"]`, when set, returns a function undoing what a declined attempt did to
    the reader's own state (storages, findings); `extra["exact"]` hears, after each load, whether
    the weights-only replay of this pickle could record anything (False when it could).
    """

    exact = False
    _plain_pair: tuple[Any, Any] = (None, None)
    """(F, hooks global) of the last fused tensor found to be torch.save's plain one
    (`confined_fused`): the 100,000 tensors of a state dict name the same two Globals."""

    def load(self, pos: int, end: int) -> tuple[Any, int]:
        """As `InertUnpickler.load`, at C speed when the confined path accepts the pickle."""
        with gc_paused():  # a million objects made, none in a cycle (`core.bulk`)
            got = self._confined(pos, end) if ENABLED else None
            if got is None:
                self.exact = False
                got = super().load(pos, end)
        note = self.extra.get("exact")
        if note is not None:
            note(self.exact)
        return got

    def _confined(self, pos: int, end: int) -> tuple[Any, int] | None:
        limits = self.limits
        if not isinstance(self.buf, _BUFFERS) or limits.inline_bytes < 64:
            return None
        if limits.inline_text < 255:
            return None
        buf = self.buf
        if end - pos < 2 or buf[pos] != 0x80 or buf[pos + 1] > 5:
            return None  # protocol 0/1 (text opcodes), or no PROTO: the inert loop reads those
        nonce = os.urandom(12).hex().encode()
        done = Progress()
        # Streamed: the C unpickler reads each piece only after `pieces` has checked it, and
        # a decline further on raises out of `load`, undone below like any other failure.
        stream = PieceReader(pieces(buf, pos, end, limits.inline_text, nonce, done))
        saved = {k: (g.verdict, g.called, g.call_args) for k, g in self.globals.items()}
        save_state = self.extra.get("save_state")
        restore = save_state() if save_state is not None else None
        nested = self.extra.get("load_nested")
        self.extra["load_nested"] = _no_nested
        previous = CONFINED.u
        CONFINED.u = self
        self.exact = True  # and the rewrite's verdict, at the end
        c = _CUnpickler(stream, self, nonce.decode())
        try:
            root = c.load()
            if done.stop is None:
                raise Decline("the C unpickler stopped before the rewrite's STOP")
        except Exception:  # noqa: BLE001  # any failure at all: the inert loop decides
            for k in [k for k in self.globals if k not in saved]:
                del self.globals[k]
            for k, (verdict, called, call_args) in saved.items():
                g = self.globals[k]
                g.verdict, g.called, g.call_args = verdict, called, call_args
            if restore is not None:
                restore()
            return None
        finally:
            CONFINED.u = previous
            if nested is None:
                del self.extra["load_nested"]
            else:
                self.extra["load_nested"] = nested
        self.exact = self.exact and done.exact
        if self.exact:
            replay = Replay()
            for module, name in c.names:
                replay.name_global(module, name)
            self.exact = not replay.refused
        return root, done.stop

    def named(self, module: str, name: str) -> Any:
        """A GLOBAL (`find_class`): the inert loop's `_global`."""
        return self._global(module, name)

    def persistent(self, pid: Any) -> Any:
        """BINPERSID (`persistent_load`): the inert loop's `_persistent`."""
        return self._persistent(pid)

    def confined_call(self, func: Any, wrapped: Any) -> Any:
        """REDUCE/NEWOBJ of a `Global` (`Global.__call__`): the inert loop's `_call`.
        `wrapped` is `(args,)` for REDUCE and `(args, None)` for NEWOBJ (the rewrite's)."""
        if type(wrapped) is not tuple:
            raise Decline("a call the rewrite did not make")
        if len(wrapped) == 1:
            how = "reduce"
        elif len(wrapped) == 2 and wrapped[1] is None:
            how = "newobj"
        else:
            raise Decline("a call the rewrite did not make")
        args = wrapped[0]
        if type(args) is not tuple:
            raise Decline("arguments are not a tuple")
        rec = self.recorders.get(func.full)  # what `_call` does first, one call sooner
        got = rec(self, args) if rec is not None else self._call(func, args, how)
        if type(got) is PObject:
            self.exact = False  # the replay would judge the placeholder's class
        return got

    def confined_fused(self, func: Global, args: Any) -> Any:
        """A tensor `fast_pattern` fused: `func(storage, offset, size, stride, requires_grad,
        OrderedDict())`'s two REDUCEs, in their order, through the same functions the C
        unpickler would have called (the storage is its BINPERSID's, left as it was)."""
        if type(args) is not tuple or len(args) != 7:
            raise Decline("a fused call the rewrite did not make")
        hooks_type = args[5]
        if func is self._plain_pair[0] and hooks_type is self._plain_pair[1]:
            # the pair checked below, again (a Global's name and the recorders never change)
            return rebuild_tensor_v2(self, args)
        storage, offset, size, stride, grad, hooks_type, empty = args
        if type(hooks_type) is not Global:
            raise Decline("the hooks are not a call")  # the C unpickler's TypeError
        if (
            func.full == "torch._utils._rebuild_tensor_v2"
            and hooks_type.full == "collections.OrderedDict"
            and self.recorders.get(func.full) is rebuild_tensor_v2
            and self.recorders.get(hooks_type.full) is ordered_dict
        ):
            # The recorder reads only its first five arguments (the hooks and the metadata it
            # ignores), and `OrderedDict()` only makes an empty PDict: not made (its memo slot
            # was left out, `fast_pattern`). The seven values are passed as they are: a
            # 7-tuple is `_rebuild_tensor_v2`'s call with metadata, read the same way.
            self._plain_pair = (func, hooks_type)
            return rebuild_tensor_v2(self, args)
        hooks = hooks_type((empty,))  # REDUCE, as the rewrite makes it
        return func(((storage, offset, size, stride, grad, hooks),))

    def confined_build(self, inst: Any, wrapped: Any) -> None:
        """BUILD (`__setstate__` of the inert loop's objects): its `_build`, or the check of an
        empty SETITEMS/APPENDS's target."""
        if wrapped is EMPTY_SETITEMS or wrapped is EMPTY_APPENDS:
            # as `_setitems`/`_appends` with no items: only the target's type is checked
            if type(inst) is PObject or (type(inst) is PDict and wrapped is EMPTY_SETITEMS):
                return
            raise Decline(f"{wrapped.what} on {type(inst).__name__}")
        if type(wrapped) is not tuple or len(wrapped) != 2 or wrapped[1] is not BUILD_MARK:
            raise Decline("a BUILD the rewrite did not make")
        if not (type(inst) is PDict and inst.type == "collections.OrderedDict"):
            self.exact = False  # the replay may need the type allowed
        self._build(inst, wrapped[0])


__all__ = ["ENABLED", "ConfinedUnpickler", "Decline", "Rewritten", "counted", "rewrite"]
