"""Provides the inert unpickler: an opcode loop that never imports or calls anything from the file.

Every GLOBAL becomes a `Global` record judged by `safety.judge`; allow-listed data constructors
(torch's tensor rebuild functions, OrderedDict, numpy's array reconstructors, ...) are replaced by
ckptui's own metadata recorders (`recorders.py`); everything else becomes a `PObject` placeholder
that remembers its class, arguments and state. The loop keeps its own memo (a dict, so a claimed
memo index costs nothing), checks every declared length against the bytes really there, and turns
any malformation into one `CorruptFile`, as torch's weights-only unpickler does.

Large inline payloads (bytes, long strings) are not copied: a `Blob` records where they lie, so a
pickle that embeds whole checkpoints (`torch.storage._load_from_bytes`) or numpy arrays costs
metadata only.

The objects also answer the few protocol hooks CPython's C unpickler calls (`__call__` on a
`Global`, `__setitem__`, `extend`, `__setstate__`): `confined.py` runs the same loop at C speed
over a checked, rewritten copy of the pickle, and every hook routes back into this loop's own
`_call`/`_build` through `CONFINED`, so both paths make the same objects the same way.
"""

from __future__ import annotations

import codecs
import contextlib
import re
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ckptui.core.errors import CorruptFile
from ckptui.unpickler.safety import (
    PICKLED_STATE,
    Safety,
    Verdict,
    finding_of,
    judge,
    judge_call,
    normalize,
)


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds that keep hostile pickles from costing more than their own size."""

    inline_bytes: int = 64
    """Bytes payloads longer than this become `Blob`s instead of copies."""
    inline_text: int = 1 << 20
    """Strings longer than this become `Blob`s (not decoded)."""
    max_nested_checkpoints: int = 1_000_000
    """Embedded checkpoints (`_load_from_bytes`) a pickle may hold."""
    max_nesting: int = 8
    """How deep embedded checkpoints may nest inside one another."""


class _Confined(threading.local):
    """The unpickler on whose behalf `confined.py`'s C unpickler runs on this thread, if any."""

    u: Any = None


CONFINED = _Confined()


def confined_build(inst: Any, state: Any) -> None:
    """`__setstate__` of the objects BUILD may target: `confined.py`'s rewritten BUILD, which
    runs the inert loop's `_build`."""
    u = CONFINED.u
    if u is None:
        raise TypeError("only ckptui's confined unpickler builds this object")
    u.confined_build(inst, state)


class Global:
    """A GLOBAL named by the pickle; never imported."""

    __slots__ = ("call_args", "called", "full", "module", "name", "verdict")

    def __init__(self, full: str, verdict: Verdict, module: str = "", name: str = "") -> None:
        self.full = full
        self.verdict = verdict
        self.module = module
        self.name = name or full
        self.call_args: str | None = None
        """A short repr of the arguments of the first call the pickle makes of it."""
        self.called = False
        """The pickle calls it (REDUCE, NEWOBJ, INST, OBJ, or BUILD through `__setstate__`)."""

    def __repr__(self) -> str:
        return self.full

    def __call__(self, wrapped: Any) -> Any:
        """REDUCE or NEWOBJ as `confined.py` rewrites them: the inert loop's `_call`.

        A REDUCE of a recorder (`wrapped` is `(args,)`, the args a tuple) is served here, as
        `confined_call` would serve it, a call sooner: twice per tensor (issue 16)."""
        u = CONFINED.u
        if u is None:
            raise TypeError("only ckptui's confined unpickler calls a Global")
        if type(wrapped) is tuple:
            n = len(wrapped)
            if n == 3:  # a fused tensor (`fast_pattern`), the commonest call of a big file
                return u.confined_fused(self, wrapped[0])
            if n == 1 and type(wrapped[0]) is tuple:
                rec = u.recorders.get(self.full)
                if rec is not None:
                    got = rec(u, wrapped[0])
                    if type(got) is PObject:
                        u.exact = False  # the replay would judge the placeholder's class
                    return got
        return u.confined_call(self, wrapped)

    __setstate__ = confined_build


class PDict:
    """A dict-like container (dict, OrderedDict, defaultdict, Counter) with its items in order."""

    __slots__ = ("attrs", "index", "items", "type")
    __hash__ = None  # type: ignore[assignment]  # dicts are unhashable, as in Python

    def __init__(self, type_name: str = "dict") -> None:
        self.type = type_name
        self.items: list[list[Any]] = []
        # Shared read-only empties until the first item or attribute: every tensor of a
        # torch.save file has an empty `OrderedDict()` of hooks, 100,000 of them alive until
        # the pickle is read (issue 16: 13 MB of peak RSS).
        self.index: Mapping[Any, int] = _EMPTY
        self.attrs: Mapping[str, Any] = _EMPTY

    def set(self, key: Any, value: Any) -> None:
        """Set `key`, overwriting an earlier value as dict assignment does."""
        if isinstance(key, tuple):
            _check_key_depth(key)
        try:
            pos = self.index.get(key)
        except TypeError as e:  # unhashable key: pickle.load fails the same way
            raise Malformed(f"unhashable dict key ({type(key).__name__})") from e
        if pos is None:
            index = self.index
            if index is _EMPTY:
                index = self.index = {}
            index[key] = len(self.items)  # type: ignore[index]
            self.items.append([key, value])
        else:
            self.items[pos][1] = value

    def set_attr(self, name: str, value: Any) -> None:
        """Set an attribute (a `defaultdict`'s factory, `state_dict()`'s `_metadata`)."""
        if self.attrs is _EMPTY:
            self.attrs = {}
        self.attrs[name] = value  # type: ignore[index]

    def get(self, key: Any, default: Any = None) -> Any:
        """Return the value for a (hashable) key, or `default`."""
        pos = self.index.get(key)
        return default if pos is None else self.items[pos][1]

    __setitem__ = set  # SETITEM(S) in the C unpickler, as `_setitems` does
    __setstate__ = confined_build


_EMPTY: Mapping[Any, Any] = MappingProxyType({})
"""The empty `PDict.index`/`attrs` all share; read-only, so a write that bypasses `set` or
`set_attr` fails loudly instead of changing every PDict."""
MAX_KEY_DEPTH = 64


def _check_key_depth(key: tuple[Any, ...]) -> None:
    """Hashing a tuple recurses in C without a guard: a million-deep key would crash Python."""
    level: list[Any] = [key]
    for _ in range(MAX_KEY_DEPTH):
        level = [x for t in level for x in t if isinstance(x, tuple)]
        if not level:
            return
    raise Malformed(f"dict key nested deeper than {MAX_KEY_DEPTH} levels")


class PSet:
    """A set or frozenset; items kept in pickle order."""

    __slots__ = ("items", "type")

    def __init__(self, type_name: str, items: list[Any] | None = None) -> None:
        self.type = type_name
        self.items = items if items is not None else []


class PObject:
    """A placeholder for an object whose class or function the file names but ckptui never runs."""

    __slots__ = ("args", "cls", "dictitems", "how", "items", "state")

    def __init__(self, cls: Any, args: tuple[Any, ...], how: str) -> None:
        self.cls = cls
        self.args = args
        self.how = how
        """`reduce` (a call), `newobj`/`inst`/`obj` (an instance of a class)."""
        self.state: Any = None
        self.items: list[Any] = []
        self.dictitems: list[list[Any]] = []

    @property
    def name(self) -> str:
        """The callable's qualified name."""
        return self.cls.full if isinstance(self.cls, Global) else f"<call of {_kind(self.cls)}>"

    def __setitem__(self, key: Any, value: Any) -> None:
        """SETITEM(S) in the C unpickler, as `_setitems` does."""
        self.dictitems.append([key, value])

    def extend(self, items: list[Any]) -> None:
        """APPEND(S) in the C unpickler, as `_appends` does."""
        self.items.extend(items)

    __setstate__ = confined_build


class Blob:
    """A large bytes or str payload left in place: `length` bytes at `offset` of the buffer."""

    __slots__ = ("kind", "length", "offset")

    def __init__(self, offset: int, length: int, kind: str) -> None:
        self.offset = offset
        self.length = length
        self.kind = kind


class Malformed(Exception):
    """Raised inside the loop; turned into CorruptFile with the file name and position."""


Recorder = Callable[["InertUnpickler", tuple[Any, ...]], Any]


def _kind(obj: Any) -> str:
    return type(obj).__name__


_MARK = object()


class InertUnpickler:
    """Reads one pickle from a buffer without executing it.

    Args:
        buf: bytes, bytearray or mmap holding the pickle.
        where: the file's path, for error messages.
        persistent_load: maps a persistent id to an object (the format's storage reference).
        recorders: full global name -> recorder, for allow-listed data constructors.
        constants: full global name -> the value a global stands for when used as a value
            (torch dtypes), instead of a `Global`.
        limits: resource bounds.
        nest: how deep inside embedded checkpoints this pickle lies.
        part: which part of the file holds the pickle (`archive/data.pkl`), for messages.
    """

    def __init__(
        self,
        buf: Any,
        where: str,
        persistent_load: Callable[[Any], Any] | None,
        recorders: dict[str, Recorder],
        constants: dict[str, Any] | None = None,
        limits: Limits | None = None,
        nest: int = 0,
        part: str = "",
    ) -> None:
        self.buf = buf
        self.where = where
        self.part = f" in {part}" if part else ""
        self.persistent_load = persistent_load
        self.recorders = recorders
        self.constants = constants or {}
        self.limits = limits or Limits()
        self.nest = nest
        self.globals: dict[str, Global] = {}
        """Every global the pickle names, in order of first appearance."""
        self.extra: dict[str, Any] = {}
        """Scratch space recorders share (e.g. nested checkpoint results)."""

    # -- reading helpers -------------------------------------------------------------------
    def _global(self, module: Any, name: Any) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            made = next((x for x in (module, name) if isinstance(x, PObject)), None)
            if made is None:
                raise Malformed("STACK_GLOBAL needs two strings")
            # A name computed at load time (`str.join`, `codecs.decode(...)`): pickle imports
            # whatever the call returns, so it could be anything.
            return self._synthetic(
                f"<global named by {made.name}(…)>",
                Verdict(Safety.DANGER, "STACK_GLOBAL of a name computed at load time"),
            )
        module, name = normalize(module, name)
        full = f"{module}.{name}" if module else name
        g = self.globals.get(full)
        if g is None:
            if len(full) > 1000:
                raise Malformed("global name longer than 1000 characters")
            data = full in self.recorders or full in self.constants
            g = Global(full, Verdict(Safety.DATA) if data else judge(module, name), module, name)
            self.globals[full] = g
        c = self.constants.get(full)
        return g if c is None else c

    def _synthetic(self, name: str, verdict: Verdict, args: Any = None) -> Global:
        """A callable the pickle makes at load time (no GLOBAL names it), as a `Global`."""
        g = self.globals.get(name)
        if g is None:
            g = Global(name, verdict)
            if args is not None:
                g.call_args = _short_repr(args)
            self.globals[name] = g
        return g

    def _call(self, func: Any, args: Any, how: str) -> Any:
        if not isinstance(args, tuple):
            raise Malformed(f"arguments of a call are {_kind(args)}, not a tuple")
        if isinstance(func, Global):
            rec = self.recorders.get(func.full)
            if rec is not None:
                return rec(self, args)
            # The judgement of a call, shared with every other unpickler (safety.py).
            judged = judge_call(func.full, args, _global_name, how)
            if judged is not None and judged.resolves_to is not None:
                return self._global(*judged.resolves_to)  # getattr(G, "name") is G.name
            func.called = True
            if func.verdict.if_called is not None:
                func.verdict = func.verdict.if_called
            if judged is not None and judged.verdict is not None:
                func.verdict = _worse(func.verdict, judged.verdict)
            if func.call_args is None and func.verdict.safety is not Safety.KNOWN:
                func.call_args = _short_repr(args)
        elif isinstance(func, PObject):
            # Calling what another call returned (`_import_dotted_name('os.system')('x')`):
            # whatever that is would run.
            g = self._synthetic(
                f"{func.name}(…)(…)",
                Verdict(Safety.DANGER, "calls the object another call returned"),
                args,
            )
            g.called = True
            return PObject(g, args, how)
        else:
            raise Malformed(f"{_kind(func)} is not callable")
        return PObject(func, args, how)

    def _build(self, inst: Any, state: Any) -> None:
        # pickle's BUILD calls `inst.__setstate__(state)` when there is one: an earlier BUILD
        # can have put any callable there (the instance's __dict__ wins over its class).
        setstate = _setstate_of(inst)
        if setstate is not None:
            self._call(setstate, (state,), "reduce")
            return
        if isinstance(inst, PObject):
            if _class_name(inst) in PICKLED_STATE:
                self._inner_pickle(inst, state)
            if isinstance(inst.state, PDict) and isinstance(state, PDict):
                for k, v in state.items:
                    inst.state.set(k, v)
            else:
                inst.state = state
            return
        build = getattr(inst, "pickle_build", None)
        if build is not None:
            build(state)
            return
        if isinstance(inst, PDict):
            # OrderedDict from state_dict() carries `_metadata` this way; a (dict, slots) pair
            # sets attributes too.
            pair = isinstance(state, tuple) and len(state) == 2
            for part in state if pair else (state,):
                if isinstance(part, PDict):
                    for k, v in part.items:
                        inst.set_attr(str(k), v)
                elif part is not None:
                    raise Malformed(f"BUILD on {_kind(inst)} with {_kind(part)}")
            return
        if isinstance(inst, Global):
            # BUILD on a module, class or function object sets its attributes: it rewrites
            # code that runs later (`torch._utils._rebuild_tensor_v2 = ...`).
            inst.verdict = Verdict(Safety.DANGER, "BUILD overwrites its attributes (monkey-patch)")
            inst.called = True
            if inst.call_args is None:
                inst.call_args = _short_repr((state,))
            return
        raise Malformed(f"BUILD on {_kind(inst)}")

    def _inner_pickle(self, inst: PObject, state: Any) -> None:
        """Judge the pickle that `inst.__setstate__` hands to `pickle.loads` (its globals join
        this pickle's; damage inside it is its own affair, as pickle.loads would raise there)."""
        data = state[0] if isinstance(state, tuple) and state else state
        if isinstance(data, Blob):
            data = bytes(self.buf[data.offset : data.offset + data.length])
        if not isinstance(data, bytes) or self.nest >= self.limits.max_nesting:
            return
        inner = InertUnpickler(
            data,
            self.where,
            None,
            self.recorders,
            self.constants,
            self.limits,
            self.nest + 1,
            f"the pickle inside {inst.name}'s state",
        )
        inner.globals = self.globals
        inner.extra = {k: v for k, v in self.extra.items() if k != "base"}
        with contextlib.suppress(CorruptFile):
            inner.load(0, len(data))

    def danger_ran(self) -> list[str]:
        """The dangerous globals the pickle has called so far (what torch.load already ran)."""
        return [
            g.full for g in self.globals.values() if g.called and g.verdict.safety is Safety.DANGER
        ]

    # -- the loop --------------------------------------------------------------------------
    def load(self, pos: int, end: int) -> tuple[Any, int]:
        """Run the opcode loop from `pos` until STOP.

        Returns:
            (the root object, the position just after STOP).

        Raises:
            CorruptFile: on any malformation, truncation or inconsistency.
        """
        # An opcode whose argument crosses the end of its FRAME is read two ways by CPython's
        # C unpickler: when the frame came from the file's buffer (peek) reads go on
        # contiguously; when it was read whole (large frames) the rest of the frame is dropped
        # and the read starts after it (cpython#154848). No writer makes such a file; a crafted
        # one can hide opcodes from a scanner that knows one way. Read it both ways: every
        # global either way is judged.
        self.desync, self.crossed = False, None
        try:
            result = self._load_once(pos, end)
        except CorruptFile as e:
            if self.crossed is None:
                raise
            first_error, result = e, None
        crossed = self.crossed
        if crossed is None:
            return result
        self.desync = True
        try:
            alt = self._load_once(pos, end)
        except CorruptFile:
            alt = None
        warn = self.extra.get("warn")
        if warn is not None:
            warn(
                "frame_desync",
                f"an opcode at byte {crossed}{self.part} crosses the end of its FRAME: CPython "
                "reads on, or drops the rest of the frame, depending on buffering; "
                "both readings are judged",
            )
        if result is None:
            if alt is None:
                raise first_error
            return alt
        return result

    def _load_once(self, pos: int, end: int) -> tuple[Any, int]:
        try:
            return self._load(pos, end)
        except Malformed as e:
            err = CorruptFile(self.where, f"corrupt pickle{self.part}: {e}{self._ran()}")
            err.partial_root = self._snapshot()
            raise err from None
        except CorruptFile as e:
            # Raised inside an embedded checkpoint: this pickle's tree holds more of the file.
            root = self._snapshot()
            if root is not None:
                e.partial_root = root
            raise
        except (
            IndexError,
            struct.error,
            KeyError,
            UnicodeDecodeError,
            ValueError,
            TypeError,
            OverflowError,
            RecursionError,
            MemoryError,
            AttributeError,
            LookupError,
        ) as e:
            err = CorruptFile(
                self.where, f"corrupt pickle{self.part}: {type(e).__name__}: {e}{self._ran()}"
            )
            err.partial_root = self._snapshot()
            raise err from None

    def _snapshot(self) -> Any:
        """The outermost object the pickle had built when it failed (what was read)."""
        return None

    def _ran(self) -> str:
        """What torch.load would already have run before failing on this corruption."""
        ran = self.danger_ran()
        if not ran:
            return ""
        more = f" and {len(ran) - 3} more" if len(ran) > 3 else ""
        return f"; before failing, torch.load would already have run {', '.join(ran[:3])}{more}"

    def _load(self, pos: int, end: int) -> tuple[Any, int]:
        buf = self.buf
        limits = self.limits
        memo: dict[int, Any] = {}
        stack: list[Any] = []
        metastack: list[list[Any]] = []
        # A buffer that is not one (a remote file's block cache) brings its own unpack_from.
        unpack_from = getattr(buf, "unpack_from", struct.unpack_from)
        append = stack.append
        frame_end = -1
        """Where the current FRAME ends (-1: none); see `load` for reads that cross it."""

        def crossing(n: int) -> None:
            # pos < frame_end < pos + n: the read starts inside the frame and ends past it
            nonlocal pos, frame_end
            if self.crossed is None:
                self.crossed = pos
            if self.desync:
                pos = frame_end
            frame_end = -1

        def snapshot() -> Any:
            outer = metastack[0] if metastack else stack
            return outer[0] if outer else None

        self._snapshot = snapshot  # type: ignore[method-assign]

        def need(n: int, framed: bool = True) -> None:
            # `framed`: CPython reads it with _Unpickler_Read, which drops the rest of a frame
            # read whole; bytes payloads go through _Unpickler_ReadInto, which does not.
            if framed and pos < frame_end < pos + n:
                crossing(n)
            if n < 0 or pos + n > end:
                raise Malformed(f"truncated: {n} bytes declared at byte {pos}, file ends first")

        def readline() -> bytes:
            nonlocal pos
            nl = buf.find(b"\n", pos, end)
            if pos < frame_end <= nl:
                crossing(nl + 1 - pos)
                nl = buf.find(b"\n", pos, end)
            if nl < 0:
                raise Malformed(f"truncated text opcode at byte {pos}")
            line = bytes(buf[pos:nl])
            pos = nl + 1
            return line

        def pop_mark() -> list[Any]:
            nonlocal stack, append
            items = stack
            if not metastack:
                raise Malformed("MARK expected")
            stack = metastack.pop()
            append = stack.append
            return items

        def take_bytes(n: int, framed: bool = False) -> Any:
            nonlocal pos
            need(n, framed)
            if n > limits.inline_bytes:
                blob = Blob(pos, n, "bytes")
                pos += n
                return blob
            data = bytes(buf[pos : pos + n])
            pos += n
            return data

        def take_text(n: int) -> Any:
            nonlocal pos
            need(n)
            if n > limits.inline_text:
                blob = Blob(pos, n, "str")
                pos += n
                return blob
            data = bytes(buf[pos : pos + n])
            pos += n
            return data.decode("utf-8", "surrogatepass")

        while True:
            if pos >= end:
                raise Malformed("pickle ends without STOP")
            op = buf[pos]
            pos += 1
            if op == 0x71:  # BINPUT
                if not stack:
                    raise Malformed("PUT on empty stack")
                memo[buf[pos]] = stack[-1]
                pos += 1
            elif op == 0x68:  # BINGET
                append(memo[buf[pos]])
                pos += 1
            elif op == 0x94:  # MEMOIZE
                if not stack:
                    raise Malformed("MEMOIZE on empty stack")
                memo[len(memo)] = stack[-1]
            elif op == 0x28:  # MARK
                metastack.append(stack)
                stack = []
                append = stack.append
            elif op == 0x58:  # BINUNICODE
                need(4)
                (n,) = unpack_from("<I", buf, pos)
                pos += 4
                append(take_text(n))
            elif op == 0x8C:  # SHORT_BINUNICODE
                need(1)
                n = buf[pos]
                pos += 1
                append(take_text(n))
            elif op == 0x4B:  # BININT1
                append(buf[pos])
                pos += 1
            elif op == 0x4A:  # BININT
                need(4)
                append(unpack_from("<i", buf, pos)[0])
                pos += 4
            elif op == 0x4D:  # BININT2
                need(2)
                append(unpack_from("<H", buf, pos)[0])
                pos += 2
            elif op == 0x74:  # TUPLE
                items = pop_mark()  # first: it rebinds `append` to the outer stack
                append(tuple(items))
            elif op == 0x85:  # TUPLE1
                stack[-1] = (stack[-1],)
            elif op == 0x86:  # TUPLE2
                stack[-2:] = [(stack[-2], stack[-1])]
            elif op == 0x87:  # TUPLE3
                stack[-3:] = [(stack[-3], stack[-2], stack[-1])]
            elif op == 0x29:  # EMPTY_TUPLE
                append(())
            elif op == 0x52:  # REDUCE
                args = stack.pop()
                stack[-1] = self._call(stack[-1], args, "reduce")
            elif op == 0x51:  # BINPERSID
                pid = stack.pop()
                append(self._persistent(pid))
            elif op == 0x6A:  # LONG_BINGET
                need(4)
                append(memo[unpack_from("<I", buf, pos)[0]])
                pos += 4
            elif op == 0x72:  # LONG_BINPUT
                need(4)
                if not stack:
                    raise Malformed("PUT on empty stack")
                memo[unpack_from("<I", buf, pos)[0]] = stack[-1]
                pos += 4
            elif op == 0x89:  # NEWFALSE
                append(False)
            elif op == 0x88:  # NEWTRUE
                append(True)
            elif op == 0x4E:  # NONE
                append(None)
            elif op == 0x63:  # GLOBAL
                module = readline().decode("utf-8")
                name = readline().decode("utf-8")
                append(self._global(module, name))
            elif op == 0x93:  # STACK_GLOBAL
                name = stack.pop()
                module = stack.pop()
                append(self._global(module, name))
            elif op == 0x7D:  # EMPTY_DICT
                append(PDict())
            elif op == 0x5D:  # EMPTY_LIST
                append([])
            elif op == 0x75:  # SETITEMS
                items = pop_mark()
                if len(items) % 2:
                    raise Malformed("SETITEMS with an odd number of items")
                self._setitems(stack[-1], items)
            elif op == 0x73:  # SETITEM
                value = stack.pop()
                key = stack.pop()
                self._setitems(stack[-1], [key, value])
            elif op == 0x65:  # APPENDS
                items = pop_mark()
                self._appends(stack[-1], items)
            elif op == 0x61:  # APPEND
                value = stack.pop()
                self._appends(stack[-1], [value])
            elif op == 0x62:  # BUILD
                state = stack.pop()
                self._build(stack[-1], state)
            elif op == 0x81:  # NEWOBJ
                args = stack.pop()
                cls = stack.pop()
                append(self._call(cls, args, "newobj"))
            elif op == 0x92:  # NEWOBJ_EX
                stack.pop()  # kwargs: recorded nowhere, the class is a placeholder anyway
                args = stack.pop()
                cls = stack.pop()
                append(self._call(cls, args, "newobj"))
            elif op == 0x2E:  # STOP
                if not stack:
                    raise Malformed("STOP on empty stack")
                return stack.pop(), pos
            elif op == 0x80:  # PROTO
                need(1)
                if buf[pos] > 5:
                    raise Malformed(f"unsupported pickle protocol {buf[pos]}")
                pos += 1
            elif op == 0x95:  # FRAME
                need(8)
                (n,) = unpack_from("<Q", buf, pos)
                pos += 8
                if pos < frame_end < pos + n:
                    crossing(n)
                frame_end = pos + n if 0 < n <= end - pos else -1
            elif op == 0x47:  # BINFLOAT
                need(8)
                append(unpack_from(">d", buf, pos)[0])
                pos += 8
            elif op == 0x42:  # BINBYTES
                need(4)
                (n,) = unpack_from("<I", buf, pos)
                pos += 4
                append(take_bytes(n))
            elif op == 0x43:  # SHORT_BINBYTES
                need(1)
                n = buf[pos]
                pos += 1
                append(take_bytes(n))
            elif op in (0x8E, 0x96):  # BINBYTES8, BYTEARRAY8
                need(8)
                (n,) = unpack_from("<Q", buf, pos)
                pos += 8
                append(take_bytes(n))
            elif op == 0x8D:  # BINUNICODE8
                need(8)
                (n,) = unpack_from("<Q", buf, pos)
                pos += 8
                append(take_text(n))
            elif op == 0x8A:  # LONG1
                need(1)
                n = buf[pos]
                pos += 1
                need(n)
                append(int.from_bytes(buf[pos : pos + n], "little", signed=True))
                pos += n
            elif op == 0x8B:  # LONG4
                need(4)
                (n,) = unpack_from("<i", buf, pos)
                pos += 4
                need(n)
                append(int.from_bytes(buf[pos : pos + n], "little", signed=True))
                pos += n
            elif op == 0x8F:  # EMPTY_SET
                append(PSet("builtins.set"))
            elif op == 0x90:  # ADDITEMS
                items = pop_mark()
                target = stack[-1]
                if not isinstance(target, PSet) or target.type != "builtins.set":
                    raise Malformed(f"ADDITEMS on {_kind(target)}")
                target.items.extend(items)
            elif op == 0x91:  # FROZENSET
                items = pop_mark()
                append(PSet("builtins.frozenset", items))
            elif op == 0x6C:  # LIST
                items = pop_mark()
                append(items)
            elif op == 0x64:  # DICT
                items = pop_mark()
                d = PDict()
                if len(items) % 2:
                    raise Malformed("DICT with an odd number of items")
                self._setitems(d, items)
                append(d)
            elif op == 0x30:  # POP
                if stack:
                    stack.pop()
                else:
                    pop_mark()
            elif op == 0x31:  # POP_MARK
                pop_mark()
            elif op == 0x32:  # DUP
                append(stack[-1])
            elif op == 0x49:  # INT (also protocol 0 booleans)
                append(_load_int(readline()))
            elif op == 0x4C:  # LONG
                line = readline()
                # C's load_long: PyLong_FromString(s, NULL, 0), so `0x...L` is hex
                append(int(line[:-1] if line.endswith(b"L") else line, 0))
            elif op == 0x46:  # FLOAT
                append(float(readline()))
            elif op == 0x53:  # STRING
                line = readline()
                if len(line) < 2 or line[0] != line[-1] or line[0] not in b"\"'":
                    raise Malformed("STRING opcode argument must be quoted")
                append(_decode_py2(codecs.escape_decode(line[1:-1])[0]))
            elif op == 0x54:  # BINSTRING
                need(4)
                (n,) = unpack_from("<i", buf, pos)
                pos += 4
                data = take_bytes(n, True)
                append(_decode_py2(data) if isinstance(data, bytes) else data)
            elif op == 0x55:  # SHORT_BINSTRING
                need(1)
                n = buf[pos]
                pos += 1
                append(_decode_py2(take_bytes(n, True)))
            elif op == 0x56:  # UNICODE
                append(readline().decode("raw-unicode-escape"))
            elif op == 0x70:  # PUT
                if not stack:
                    raise Malformed("PUT on empty stack")
                memo[int(readline())] = stack[-1]
            elif op == 0x67:  # GET
                append(memo[int(readline())])
            elif op == 0x50:  # PERSID
                append(self._persistent(readline().decode("ascii")))
            elif op == 0x69:  # INST
                module = readline().decode("utf-8")
                name = readline().decode("utf-8")
                cls = self._global(module, name)
                items = pop_mark()
                append(self._call(cls, tuple(items), "inst"))
            elif op == 0x6F:  # OBJ
                items = pop_mark()
                if not items:
                    raise Malformed("OBJ without a class")
                append(self._call(items[0], tuple(items[1:]), "obj"))
            elif op in (0x82, 0x83, 0x84):  # EXT1, EXT2, EXT4
                raise Malformed("extension codes are not registered (pickle.load fails too)")
            elif op == 0x97:  # NEXT_BUFFER
                raise Malformed("out-of-band buffers are not available (pickle.load fails too)")
            elif op == 0x98:  # READONLY_BUFFER
                if not stack:
                    raise Malformed("READONLY_BUFFER on empty stack")
            else:
                raise Malformed(f"unknown opcode 0x{op:02x} at byte {pos - 1}")

    def _persistent(self, pid: Any) -> Any:
        if self.persistent_load is None:
            raise Malformed("persistent id in a pickle that cannot have one")
        return self.persistent_load(pid)

    @staticmethod
    def _setitems(target: Any, items: list[Any]) -> None:
        if isinstance(target, PDict):
            for i in range(0, len(items), 2):
                target.set(items[i], items[i + 1])
        elif isinstance(target, PObject):
            target.dictitems.extend([items[i], items[i + 1]] for i in range(0, len(items), 2))
        else:
            raise Malformed(f"SETITEMS on {_kind(target)}")

    @staticmethod
    def _appends(target: Any, items: list[Any]) -> None:
        if isinstance(target, list):
            target.extend(items)
        elif isinstance(target, PObject):
            target.items.extend(items)
        else:
            raise Malformed(f"APPENDS on {_kind(target)}")


def _decode_py2(data: bytes) -> str | bytes:
    """Decode a protocol 0-2 byte string as torch.load does (utf-8), keeping bytes if it fails."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


def _short_repr(obj: Any, limit: int = 120) -> str:
    """A bounded repr of call arguments for findings."""
    parts: list[str] = []
    budget = limit

    def walk(o: Any, depth: int) -> None:
        nonlocal budget
        if budget <= 0:
            return
        if depth > 4:
            parts.append("…")
        elif isinstance(o, tuple | list):
            parts.append("(" if isinstance(o, tuple) else "[")
            for i, x in enumerate(o[:8]):
                if i:
                    parts.append(", ")
                walk(x, depth + 1)
            parts.append(")" if isinstance(o, tuple) else "]")
        elif isinstance(o, str | bytes | int | float | bool) or o is None:
            parts.append(repr(o)[:80])
        elif isinstance(o, Global):
            parts.append(o.full)
        elif isinstance(o, PObject):
            parts.append(f"{o.name}(…)")
        elif isinstance(o, Blob):
            parts.append(f"<{o.kind} of {o.length} B>")
        else:
            parts.append(f"<{type(o).__name__}>")
        budget = limit - sum(len(p) for p in parts)

    walk(obj, 0)
    text = "".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def classify_global(g: Global) -> tuple[str, str] | None:
    """Return (finding kind, severity) for a global worth reporting, or None."""
    return finding_of(g.full, g.verdict)


_ORDER = {Safety.DATA: 0, Safety.KNOWN: 1, Safety.UNKNOWN: 2, Safety.DANGER: 3}


def _worse(a: Verdict, b: Verdict) -> Verdict:
    return b if _ORDER[b.safety] > _ORDER[a.safety] else a


def _global_name(obj: Any) -> tuple[str, str] | None:
    """(module, qualname) of an argument that is a global (for `safety.judge_call`)."""
    if isinstance(obj, Global) and obj.module:
        return obj.module, obj.name
    return None


def _class_name(obj: PObject) -> str:
    """The class an instance is of (`copyreg.__newobj__(cls)` makes a `cls`)."""
    if obj.name in ("copyreg.__newobj__", "copyreg.__newobj_ex__") and obj.args:
        cls = obj.args[0]
        if isinstance(cls, Global):
            return cls.full
    return obj.name


def _setstate_of(inst: Any) -> Any:
    """A callable an earlier BUILD stored as the instance's `__setstate__`, or None."""
    if isinstance(inst, PObject):
        states = inst.state if isinstance(inst.state, tuple) else (inst.state,)
        dicts = [d for d in states if isinstance(d, PDict)]
    elif isinstance(inst, PDict):
        return _callable_or_none(inst.attrs.get("__setstate__"))
    else:
        parts = getattr(inst, "parts", None)
        if isinstance(parts, list):
            return next((_callable_or_none(v) for k, v in parts if k == "__setstate__"), None)
        return None
    for d in dicts:
        got = _callable_or_none(d.get("__setstate__"))
        if got is not None:
            return got
    return None


def _callable_or_none(x: Any) -> Any:
    return x if isinstance(x, Global | PObject) else None


def _load_int(line: bytes) -> int | bool:
    """The INT opcode as CPython's C unpickler reads it: `strtol(s, &end, 0)` (so `0x...`
    is hex and `017` octal), `00`/`01` (any 2-character 0 or 1) as booleans, and what strtol
    cannot take (too long, `1_000`) as `int(s, 0)`."""
    text = line.decode("ascii")
    m = _STRTOL.fullmatch(text)
    if m is not None:
        sign, digits = m.group(1), m.group(2)
        if digits[:2].lower() == "0x":
            x = int(digits, 0)
        elif digits.startswith("0") and len(digits) > 1:
            x = int(digits, 8)
        else:
            x = int(digits)
        x = -x if sign == "-" else x
        if -(1 << 63) <= x < 1 << 63:
            if len(line) == 2 and x in (0, 1):
                return bool(x)
            return x
    return int(text, 0)


_STRTOL = re.compile(r"\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
