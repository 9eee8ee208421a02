"""Provides `weights_only_report`: would `torch.load(path, weights_only=True)` load this file, and
if not, why, and what makes it load.

Since PyTorch 2.6 `torch.load` defaults to `weights_only=True` and refuses any GLOBAL outside its
allow-list ("Weights only load failed ... Unsupported global: GLOBAL argparse.Namespace"); users
then reach for `weights_only=False`, which runs whatever the file says. This module answers the
question without importing torch: it replays the file's pickle(s) through a *symbolic* copy of
torch's weights-only unpickler (`torch/_weights_only_unpickler.py`, tables in
`data/weights_only_allowlist.py`), where values are only type names, so nothing is imported or
called. Replaying, rather than listing GLOBAL opcodes as `get_unsafe_globals_in_checkpoint`
does, also finds what the list misses: BUILD on a numpy dtype needs its `numpy.dtypes.*DType`
class allowed although the file never names it, a non-empty `defaultdict` or `deque` fails
(torch fills only dicts and lists) whatever is allowed, and opcodes beyond protocol 2 fail.

Each refused global is judged (`kind`): `data` and `torch`/`library` classes are benign;
`user` classes and functions are not, since allowing them imports that code and runs its
`__new__`/`__setstate__`/the call (harmless only if the user trusts that code, which ckptui
cannot know); `dangerous` ones run commands or load pickles. When every refused global is benign,
`fix` is the exact snippet (imports included: `safe_globals` needs the real objects) that makes
torch.load accept the file; `fix_if_trusted` is the same for files whose only non-benign globals
are user classes; neither is given when anything is dangerous. `export_command` writes a copy
that needs nothing allowed.
"""

from __future__ import annotations

import io
import pickletools
import shlex
import struct
from dataclasses import dataclass, field
from typing import Any

from .data import weights_only_allowlist as wo
from .errors import CkptError
from .formats._common import is_url
from .model import Checkpoint, NodeKind, walk
from .safety import Safety, judge, looks_like_class


@dataclass(frozen=True, slots=True)
class RefusedGlobal:
    """A global torch.load(weights_only=True) refuses, with ckptui's judgement."""

    name: str
    """`module.qualname` as torch names it."""
    benign: bool
    """Allowing it builds data and runs no code of the file's choosing."""
    kind: str
    """`data`, `torch`, `library` (benign); `user`, `function`, `dangerous` (not)."""
    why: str
    where: tuple[Any, ...] | None = None
    """The first tree path holding an object of this type, when one is shown."""

    def to_json(self) -> dict[str, Any]:
        """The stable JSON shape (`global`, `benign`, plus details)."""
        return {
            "global": self.name,
            "benign": self.benign,
            "kind": self.kind,
            "why": self.why,
            "where": list(self.where) if self.where is not None else None,
        }


@dataclass(frozen=True, slots=True)
class WeightsOnlyReport:
    """The verdict for one checkpoint."""

    loads: bool
    """`torch.load(path, weights_only=True)` succeeds (torch 2.13's rules, nothing allowed)."""
    refused_globals: tuple[RefusedGlobal, ...] = ()
    """GLOBALs the pickle names that torch refuses (= `get_unsafe_globals_in_checkpoint`)."""
    also_needed: tuple[RefusedGlobal, ...] = ()
    """Types torch must also be allowed to build although no GLOBAL names them."""
    blockers: tuple[str, ...] = ()
    """Reasons it fails that no allow-list fixes (format, opcodes, containers, damage)."""
    fix: str | None = None
    fix_if_trusted: str | None = None
    export_command: str | None = None
    notes: tuple[str, ...] = ()
    allow_list: str = f"torch {wo.TORCH_VERSION}"

    def to_json(self) -> dict[str, Any]:
        """`{"loads", "refused_globals": [{"global", "benign", ...}], "fix", ...}`."""
        return {
            "loads": self.loads,
            "refused_globals": [g.to_json() for g in self.refused_globals],
            "also_needed": [g.to_json() for g in self.also_needed],
            "blockers": list(self.blockers),
            "fix": self.fix,
            "fix_if_trusted": self.fix_if_trusted,
            "export_command": self.export_command,
            "notes": list(self.notes),
            "allow_list": self.allow_list,
        }


_MULTI_FILE = {
    "hf-sharded": "a sharded model",
    "folder": "a folder of checkpoints",
    "dcp": "a torch.distributed.checkpoint folder",
}
_ST_SUFFIX = (
    "a safetensors file without the .safetensors suffix: torch.load does not read it; "
    "use safetensors.torch.load_file"
)
_TORCHSCRIPT = (
    "a TorchScript archive: torch.load refuses weights_only=True for it; use torch.jit.load"
)
_DAMAGE = {"missing_storage", "short_storage", "out_of_bounds", "truncated"}


def weights_only_report(ckpt: Checkpoint) -> WeightsOnlyReport:
    """Judge whether `torch.load(ckpt.path, weights_only=True)` would load the checkpoint.

    Reads the file's pickle(s) again (metadata only; nothing is imported or run).

    Args:
        ckpt: an opened checkpoint (`open_checkpoint`).

    Returns:
        The report; `to_json()` gives the `inspect --json` field.
    """
    export = _export_command(ckpt)
    if ckpt.format in _MULTI_FILE:
        return WeightsOnlyReport(
            False,
            blockers=(f"{_MULTI_FILE[ckpt.format]}: torch.load reads one file",),
            export_command=export,
        )
    if ckpt.format == "safetensors":
        ok = ckpt.path.endswith(".safetensors")
        note = (
            "torch >= 2.13 hands *.safetensors paths to safetensors.torch.load_file (the "
            "safetensors package must be installed); older torch cannot torch.load it: "
            "use safetensors.torch.load_file"
        )
        block = () if ok else (_ST_SUFFIX,)
        return WeightsOnlyReport(ok, blockers=block, notes=(note,))
    if ckpt.format == "torchscript":
        return WeightsOnlyReport(False, blockers=(_TORCHSCRIPT,), export_command=export)
    sim = _Replay()
    try:
        buf, count = _pickles(ckpt)
    except (OSError, CkptError) as e:  # changed or removed since it was opened
        return WeightsOnlyReport(False, blockers=(f"cannot read the file again: {e}",))
    pos = 0
    for _ in range(count):
        pos = sim.run(buf, pos, len(buf))
    blockers = list(sim.blockers)
    if ckpt.format == "pickle":
        blockers.insert(
            0,
            "not a torch.save file (a plain pickle): torch.load reads its first "
            "pickle, then fails with 'Invalid magic number'",
        )
    damage = sorted({f.kind for f in ckpt.findings if f.kind in _DAMAGE})
    if damage:
        blockers.append(
            f"the file is damaged ({', '.join(damage)}): torch.load fails whatever is allowed"
        )
    where = _where(ckpt)
    refused = tuple(_judge(n, where.get(n)) for n in sim.refused)
    also = tuple(_judge(n, where.get(n)) for n in sim.also_needed if n not in sim.refused)
    notes = list(sim.notes)
    devices = sorted({s.location for s in ckpt.storages.values()} - {"cpu", "meta"})
    if devices:
        notes.append(f"storages were saved on {', '.join(devices[:3])}: on a machine without "
                     "that device, torch.load also needs map_location='cpu'")  # fmt: skip
    loads = not refused and not also and not blockers
    fix = trusted = None
    every = (*refused, *also)
    if every and not blockers and not any(g.kind == "dangerous" for g in every):
        line = _fix_line(ckpt.path, sim, every)
        if all(g.benign for g in every):
            fix = line
        else:
            trusted = line
    if any(g.kind == "dangerous" for g in every):
        notes.append("a dangerous global: never load this file with weights_only=False")
    return WeightsOnlyReport(
        loads, refused, also, tuple(blockers), fix, trusted, None if loads else export, tuple(notes)
    )


def _export_command(ckpt: Checkpoint) -> str | None:
    """`ckptui export` writes the detected weights to a file torch.load accepts as it is."""
    if not ckpt.storages:
        return None
    base = ckpt.path.rstrip("/")
    if is_url(base):  # written here, named after the remote file (a shard index: its folder)
        parts = base.split("://", 1)[1].split("/")
        base = parts[-2] if base.endswith(".index.json") and len(parts) > 1 else parts[-1]
    elif base.endswith(".index.json") and "/" in base:  # a shard index: named after its folder
        base = base.rsplit("/", 1)[0]
    stem = base.rsplit(".", 1)[0] if "." in base.rsplit("/", 1)[-1] else base
    return f"ckptui export {shlex.quote(ckpt.path)} -o {shlex.quote(stem + '.weights.pth')}"


def _pickles(ckpt: Checkpoint) -> tuple[bytes, int]:
    """The bytes holding the pickle(s) torch.load would unpickle, and how many there are."""
    from .formats._common import Source
    from .formats.torchzip import ZipCheckpoint

    src = Source.open(ckpt.path)
    try:
        if ckpt.format == "torch-zip":
            return bytes(ZipCheckpoint(src).read_pickle("data.pkl")[0]), 1
        if ckpt.format == "torch-legacy":
            # magic, protocol, sys_info, the object, storage keys; then each storage's bytes
            starts = [s.data_offset for s in ckpt.storages.values() if s.data_offset]
            return src.read_at(0, min(starts) - 8 if starts else src.size), 5
        return src.read_at(0, int(ckpt.info.get("pickle_bytes", src.size))), 1
    finally:
        src.close()


def _judge(name: str, where: Any = None) -> RefusedGlobal:
    """Benign or not, and why, for one refused global (see the module docstring)."""
    benign, kind, why = _verdict(name)
    return RefusedGlobal(name, benign, kind, why, where)


def _verdict(name: str) -> tuple[bool, str, str]:
    module, _, qual = name.rpartition(".")
    if module.split(".")[0] in wo.BLOCKED_MODULES:
        return False, "dangerous", f"from {module}, which torch refuses even when allow-listed"
    if name == "torch.storage._load_from_bytes":
        return False, "dangerous", "runs torch.load(weights_only=False) on bytes in the file"
    verdict = judge(module, qual)
    if verdict.safety is Safety.DANGER:
        return False, "dangerous", verdict.reason or "runs code, commands or touches files"
    if name in wo.NEEDS_IMPORT:
        return True, "torch", f"torch's own; accepted after `import {wo.NEEDS_IMPORT[name]}`"
    why = wo.BENIGN.get(name)
    if why is None and looks_like_class(name):
        why = next((w for p, w in wo.BENIGN_PREFIXES if name.startswith(p)), None)
    if why is not None:
        return True, "data", why
    if name.startswith("__torch__."):
        return False, "user", "a TorchScript class: not importable from Python"
    if verdict.safety is Safety.KNOWN and name.startswith("torch."):
        return True, "torch", "torch's own class or function: allowing it runs only torch code"
    if verdict.safety is Safety.KNOWN:
        lib = name.split(".")[0]
        return True, "library", f"a {lib} class: allowing it runs only that library's own code"
    if looks_like_class(name):
        return False, "user", (f"a class torch does not know: allowing it imports {module} and "
                               "runs its code; benign only if you trust that code")  # fmt: skip
    return False, "function", f"a function torch.load would call (imports {module})"


def _where(ckpt: Checkpoint) -> dict[str, tuple[Any, ...]]:
    """First tree path of each placeholder type (`argparse.Namespace`, `numpy.ndarray`)."""
    out: dict[str, tuple[Any, ...]] = {}
    for path, node in walk(ckpt.root):
        if node.kind is NodeKind.OBJECT or node.type == "numpy.ndarray":
            out.setdefault(node.type, path)
    return out


def _fix_line(path: str, sim: _Replay, needed: tuple[RefusedGlobal, ...]) -> str:
    """Two lines of Python: the imports, then torch.load inside `safe_globals([...])`."""
    imports = {"torch"}
    items: list[str] = []
    for g in needed:
        if g.name in wo.NEEDS_IMPORT:
            imports.add(wo.NEEDS_IMPORT[g.name])  # importing it registers the class
            continue
        expr = sim.exprs.get(g.name)
        if expr is not None:  # a type met through BUILD: `type(numpy.dtype("f8"))`
            imports.add(expr[1])
            items.append(expr[0])
            continue
        module = sim.refused.get(g.name) or g.name.rpartition(".")[0]
        imports.add(module)
        stable = g.name in wo.STABLE_NAMES or (
            module == "builtins" and g.name in wo.LOWERCASE_CLASSES
        )
        items.append(g.name if stable else f'({g.name}, "{g.name}")')
    mods = sorted(m for m in imports if not any(o.startswith(m + ".") for o in imports))
    return (
        f"import {', '.join(mods)}\nwith torch.serialization.safe_globals([{', '.join(items)}"
        f"]): ck = torch.load({path!r}, weights_only=True)"
    )


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


def _allowed(name: str) -> bool:
    return name in wo.ALLOWED or name in wo.ALLOWED_AFTER_IMPORT_TORCH


@dataclass
class _Replay:
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
        while True:
            op = buf[pos]
            pos += 1
            if op == 0x71:  # BINPUT
                memo[buf[pos]] = stack[-1]
                pos += 1
            elif op == 0x68:  # BINGET
                stack.append(memo[buf[pos]])
                pos += 1
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
                    stack[-1] = fixed.get(func.name) or self._result(func.name, args)
            elif op in (0x85, 0x86, 0x87):  # TUPLE1-3
                n = op - 0x84
                if n > len(stack):
                    raise IndexError("tuple of missing items")
                stack[-n:] = [tuple(stack[-n:])]
            elif op in (0x72, 0x6A):  # LONG_BINPUT, LONG_BINGET
                i = u("<I", buf, pos)[0]
                pos += 4
                if op == 0x72:
                    memo[i] = stack[-1]
                else:
                    stack.append(memo[i])
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
