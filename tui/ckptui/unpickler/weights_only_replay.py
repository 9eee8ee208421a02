"""Provides `Replay`: torch's weights-only unpickler loop (`torch/_weights_only_unpickler.py`)
run on type names instead of objects, recording what torch would refuse instead of raising.

It is the opcode-level half of `weights_only`: that module turns what a replay recorded into
verdicts and fix lines; this one only follows the stack. Values are type names (`_Obj`) or
GLOBAL names (`_G`), so nothing is imported or called, and the tables come from
`data/weights_only_allowlist.py`. Kept apart because it mirrors torch's loop opcode by opcode
and changes when torch's unpickler does, not when the report's wording does.
"""

from __future__ import annotations

import io
import pickletools
import struct
from dataclasses import dataclass, field
from typing import Any

from ckptui.data import weights_only_allowlist as wo
from ckptui.unpickler.safety import looks_like_class


class _Obj:
    """A value on the symbolic stack: only its type name (None when unknown)."""

    __slots__ = ("type",)

    def __init__(self, type_name: str | None) -> None:
        self.type = type_name


class _G:
    """A GLOBAL: its full name."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


_SIZES = {0x4B: 1, 0x4A: 4, 0x4D: 2, 0x47: 8}
_DICTS = {"builtins.dict", "collections.OrderedDict", "collections.Counter"}
_LISTS = {"builtins.list"}
_BUILD_ALWAYS = {"torch.Tensor", "torch.nn.parameter.Parameter", "collections.OrderedDict"}
_TENSOR, _PARAM = _Obj("torch.Tensor"), _Obj("torch.nn.parameter.Parameter")
_FIXED = {**dict.fromkeys(wo.TENSOR_REBUILDS, _TENSOR),
          **dict.fromkeys(wo.PARAMETER_REBUILDS, _PARAM),
          "_codecs.encode": _Obj("builtins.bytes"), "torch.device": _Obj("torch.device"),
          "torch.serialization._get_layout": _Obj("torch.layout")}  # fmt: skip
"""Functions whose result type does not depend on their arguments (the common case: fast)."""
_UNKNOWN, _DICT, _LIST, _SET = (
    _Obj(None),
    _Obj("builtins.dict"),
    _Obj("builtins.list"),
    _Obj("builtins.set"),
)


_BY_ARGS = {"numpy.dtype", "torch._tensor._rebuild_from_type_v2"}
_RECONSTRUCTORS = (
    "multiarray._reconstruct",
    "copyreg._reconstructor",
    "_pickle.__bit_generator_ctor",
)
"""Functions whose REDUCE result `_result` derives from the arguments: never cached."""


def _allowed(name: str) -> bool:
    return name in wo.ALLOWED or name in wo.ALLOWED_AFTER_IMPORT_TORCH


@dataclass
class Replay:
    """torch's weights-only `Unpickler.load`, run on type names instead of objects."""

    refused: dict[str, str] = field(default_factory=dict)
    """Refused global -> the module its GLOBAL names (imported as pickle would)."""
    also_needed: dict[str, None] = field(default_factory=dict)
    exprs: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Type name -> (expression, module to import) for `also_needed` entries."""
    blockers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def _block(self, why: str) -> None:
        if why not in self.blockers:
            self.blockers.append(why)

    def run(self, buf: bytes, pos: int, end: int) -> int:
        """Replay the pickle at `pos`; record refusals and failures instead of raising.

        Returns:
            Where the pickle ends (after STOP).
        """
        try:
            return self._run(buf, pos, end)
        except (IndexError, KeyError, struct.error, ValueError, TypeError) as e:
            self._block(f"the pickle is malformed where torch would read it ({e!r})")
            return end

    def name_global(self, module: str, name: str) -> None:
        """Note a GLOBAL the pickle names, as the loop does (refused unless allowed)."""
        self._global(module, name)

    def _global(self, module: str, name: str) -> _G:
        if (module, name) in wo.NAME_MAPPING:
            module, name = wo.NAME_MAPPING[(module, name)]
        elif module in wo.IMPORT_MAPPING:
            module = wo.IMPORT_MAPPING[module]
        full = f"{module}.{name}"
        if not _allowed(full):
            self.refused.setdefault(full, module)
        return _G(full)

    def _result(self, func: str, args: Any) -> _Obj:
        """The type a REDUCE of `func(*args)` yields, as far as it can be known."""
        a = args if isinstance(args, tuple) else ()
        first = a[0] if a else None
        if func == "numpy.dtype" and isinstance(first, str):
            code = first.lstrip("<>|=")
            cls = wo.NUMPY_DTYPE_CLASSES.get(code) or wo.NUMPY_DTYPE_CLASSES.get(code[:1])
            if cls is None:
                return _UNKNOWN
            name = f"numpy.dtypes.{cls}"
            self.exprs.setdefault(name, (f"type(numpy.dtype({code!r}))", "numpy"))
            return _Obj(name)
        if func == "numpy.random._pickle.__randomstate_ctor":
            name = "numpy.random.mtrand.RandomState"
            self.exprs.setdefault(name, (name, "numpy.random.mtrand"))
            return _Obj(name)
        if func == "torch._tensor._rebuild_from_type_v2" and len(a) > 1:
            first = a[1]  # the tensor subclass
        elif not func.endswith(("multiarray._reconstruct", "copyreg._reconstructor",
                                "_pickle.__bit_generator_ctor")):  # fmt: skip
            # calling a class makes an instance of it; a function's result is unknown
            is_class = func in wo.LOWERCASE_CLASSES or looks_like_class(func)
            return _Obj(func) if is_class else _UNKNOWN
        return _Obj(first.name) if isinstance(first, _G) else _UNKNOWN

    def _build(self, inst: Any) -> None:
        t = inst.type if isinstance(inst, _Obj) else None
        if t is None:
            note = "BUILD on an object of unknown type: torch also needs that type allowed"
            if note not in self.notes:
                self.notes.append(note)
        elif not (t in _BUILD_ALWAYS or _allowed(t) or t in self.refused):
            self.also_needed.setdefault(t)

    def _fill(self, target: Any, kinds: set[str], what: str) -> None:
        t = target.type if isinstance(target, _Obj) else type(target).__name__
        if t not in kinds:
            self._block(f"torch's weights-only unpickler can only {what}, not "
                        f"{t or 'an object of unknown type'}: no allow-list makes it load")  # fmt: skip

    def _run(self, buf: bytes, pos: int, end: int) -> int:
        """The opcode loop, most frequent opcodes first; values are type names only."""
        stack: list[Any] = []
        meta: list[list[Any]] = []
        memo: dict[int, Any] = {}
        u = struct.unpack_from
        fixed = _FIXED
        known: dict[str, _Obj] = {}
        while True:
            op = buf[pos]
            pos += 1
            if op == 0x71:  # BINPUT
                memo[buf[pos]] = stack[-1]
                pos += 1
            elif op == 0x68:  # BINGET
                stack.append(memo[buf[pos]])
                pos += 1
            elif op == 0x72:  # LONG_BINPUT: past 256 memo entries, i.e. most of a large file
                memo[u("<I", buf, pos)[0]] = stack[-1]
                pos += 4
            elif op == 0x6A:  # LONG_BINGET
                stack.append(memo[u("<I", buf, pos)[0]])
                pos += 4
            elif op == 0x28:  # MARK
                meta.append(stack)
                stack = []
            elif op == 0x58:  # BINUNICODE: short strings kept (dtype codes, "storage")
                n = u("<I", buf, pos)[0]
                pos += 4
                stack.append(buf[pos : pos + n].decode("utf-8", "replace") if n <= 16 else "")
                pos += n
            elif op in (0x4B, 0x4A, 0x4D, 0x47):  # BININT1, BININT, BININT2, BINFLOAT
                stack.append(0)
                pos += _SIZES[op]
            elif op == 0x74:  # TUPLE
                items = stack
                stack = meta.pop()
                stack.append(tuple(items))
            elif op == 0x52:  # REDUCE
                args = stack.pop()
                func = stack[-1]
                if not isinstance(func, _G):
                    self._block("REDUCE of something that is not a global")
                    stack[-1] = _UNKNOWN
                else:
                    name = func.name
                    result = fixed.get(name) or known.get(name)
                    if result is None:
                        result = self._result(name, args)
                        if name not in _BY_ARGS and not name.endswith(_RECONSTRUCTORS):
                            # the result's type is the function's alone: every torch.save'd
                            # tensor calls OrderedDict() for its hooks, 100,000 times on a
                            # large state dict (results are never mutated, so one is shared)
                            known[name] = result
                    stack[-1] = result
            elif op in (0x85, 0x86, 0x87):  # TUPLE1-3
                n = op - 0x84
                if n > len(stack):
                    raise IndexError("tuple of missing items")
                stack[-n:] = [tuple(stack[-n:])]
            elif op == 0x63:  # GLOBAL
                nl = buf.index(b"\n", pos, end)
                nl2 = buf.index(b"\n", nl + 1, end)
                module, name = buf[pos:nl].decode("utf-8"), buf[nl + 1 : nl2].decode("utf-8")
                pos = nl2 + 1
                stack.append(self._global(module, name))
            elif op == 0x51:  # BINPERSID: only storages
                pid = stack.pop()
                if not (type(pid) is int or (type(pid) is tuple and pid and pid[0] == "storage")):
                    self._block("a persistent id that is not a storage")
                stack.append(_UNKNOWN)
            elif op in (0x4E, 0x88, 0x89):  # NONE, NEWTRUE, NEWFALSE
                stack.append(None)
            elif op == 0x7D:  # EMPTY_DICT
                stack.append(_DICT)
            elif op == 0x5D:  # EMPTY_LIST
                stack.append(_LIST)
            elif op == 0x29:  # EMPTY_TUPLE
                stack.append(())
            elif op in (0x75, 0x65):  # SETITEMS, APPENDS
                stack = meta.pop()
                if op == 0x75:
                    self._fill(stack[-1], _DICTS, "set items of dict, OrderedDict and Counter")
                else:
                    self._fill(stack[-1], _LISTS, "append to lists")
            elif op == 0x73:  # SETITEM
                del stack[-2:]
                self._fill(stack[-1], _DICTS, "set items of dict, OrderedDict and Counter")
            elif op == 0x61:  # APPEND
                stack.pop()
                self._fill(stack[-1], _LISTS, "append to lists")
            elif op == 0x62:  # BUILD
                stack.pop()
                self._build(stack[-1])
            elif op == 0x81:  # NEWOBJ: Parameter, or an allowed class's __new__
                stack.pop()
                cls = stack.pop()
                if not isinstance(cls, _G):
                    self._block("NEWOBJ of something that is not a global")
                stack.append(_Obj(cls.name) if isinstance(cls, _G) else _UNKNOWN)
            elif op == 0x8F:  # EMPTY_SET
                stack.append(_SET)
            elif op == 0x55:  # SHORT_BINSTRING
                n = buf[pos]
                stack.append(buf[pos + 1 : pos + 1 + n].decode("utf-8", "replace"))
                pos += 1 + n
            elif op == 0x8A:  # LONG1
                pos += 1 + buf[pos]
                stack.append(0)
            elif op == 0x80:  # PROTO: any is read (other than 2 with a warning)
                pos += 1
            elif op == 0x2E:  # STOP
                return pos
            else:
                info = pickletools.code2op.get(chr(op))
                self._block(f"pickle opcode {info.name if info else hex(op)} is not supported "
                            "by torch's weights-only unpickler (pickle protocol > 2)")  # fmt: skip
                return self._scan(buf, pos - 1, end)

    def _scan(self, buf: bytes, pos: int, end: int) -> int:
        """After an opcode torch cannot read: go on collecting the globals only, with the
        strings STACK_GLOBAL takes tracked through the memo (protocol 4 memoizes them)."""
        last: list[Any] = [None, None]
        memo: dict[int, Any] = {}
        f = io.BytesIO(buf)
        f.seek(pos)
        for op, arg, at in pickletools.genops(f):
            name = op.name
            if name in ("GLOBAL", "INST"):
                self._global(*str(arg).split(" ", 1))
            elif name == "STACK_GLOBAL" and isinstance(last[-2], str):
                self._global(last[-2], str(last[-1]))
            elif name == "STOP":
                return at + 1
            if name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                last.append(arg)
            elif name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                memo[len(memo) if name == "MEMOIZE" else int(arg)] = last[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                last.append(memo.get(int(arg)))
            elif name not in ("FRAME", "PROTO"):
                last.append(None)
            del last[:-2]
        return end
