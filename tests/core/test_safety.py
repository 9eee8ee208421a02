"""Hand-written malicious pickles: one test per attack, each named for it.

Every payload, if it were executed, creates a marker file in `tmp_path`. Each test checks that
ckptui opens the file, that the marker does not exist afterwards, and that a finding of severity
danger names the callable that would run. Payloads are emitted opcode by opcode (`emit` below),
never by pickling a real callable. Most tests then prove the payload is live: a *separate*
process runs `pickle.load` / `torch.load(weights_only=False)` on the same file and the marker
appears, so a typo in a payload cannot make a test pass vacuously.

The second half checks that ordinary checkpoints raise no danger finding, and that hostile
sizes (a million memo references, claimed lengths of 2**60) cost bounded time and memory.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import shlex
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ckptui.core.errors import CkptError, CorruptFile
from ckptui.core.tree import Checkpoint, NodeKind, Severity
from ckptui.formats import open_checkpoint
from tests.conftest import run_cli

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]

# -- a tiny opcode emitter ------------------------------------------------------------------


@dataclass(frozen=True)
class G:
    """GLOBAL `module\\nname\\n` (the `c` opcode)."""

    module: str
    name: str


@dataclass(frozen=True)
class SG:
    """STACK_GLOBAL: two strings on the stack, then `\\x93` (protocol 4 dotted names)."""

    module: str
    name: str


@dataclass(frozen=True)
class Call:
    """`func(*args)` via REDUCE."""

    func: Any
    args: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Inst:
    """INST: MARK args... `i module\\nname\\n` (protocol 0 class call)."""

    module: str
    name: str
    args: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Obj:
    """OBJ: MARK cls args... `o`."""

    cls: Any
    args: tuple[Any, ...] = ()


@dataclass(frozen=True)
class NewObj:
    """NEWOBJ: cls args `\\x81` (cls.__new__(cls, *args))."""

    cls: Any
    args: tuple[Any, ...] = ()


@dataclass(frozen=True)
class NewObjEx:
    """NEWOBJ_EX: cls args kwargs `\\x92`."""

    cls: Any
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Build:
    """BUILD: obj state `b` (calls obj.__setstate__(state) when it has one)."""

    obj: Any
    state: Any


@dataclass(frozen=True)
class Raw:
    """Opcodes spliced in verbatim (must leave exactly one object on the stack)."""

    data: bytes


@dataclass(frozen=True)
class Bin:
    """A bytes value (BINBYTES)."""

    data: bytes


def emit(x: Any, out: bytearray, text: bool) -> None:
    """Append opcodes that push `x`. `text` restricts to protocol 0 opcodes."""
    if isinstance(x, Raw):
        out += x.data
    elif isinstance(x, G):
        out += b"c" + f"{x.module}\n{x.name}\n".encode()
    elif isinstance(x, SG):
        emit(x.module, out, text)
        emit(x.name, out, text)
        out += b"\x93"
    elif isinstance(x, Call):
        emit(x.func, out, text)
        emit(tuple(x.args), out, text)
        out += b"R"
    elif isinstance(x, Inst):
        out += b"("
        for a in x.args:
            emit(a, out, text)
        out += b"i" + f"{x.module}\n{x.name}\n".encode()
    elif isinstance(x, Obj):
        out += b"("
        emit(x.cls, out, text)
        for a in x.args:
            emit(a, out, text)
        out += b"o"
    elif isinstance(x, NewObj):
        emit(x.cls, out, text)
        emit(tuple(x.args), out, text)
        out += b"\x81"
    elif isinstance(x, NewObjEx):
        emit(x.cls, out, text)
        emit(tuple(x.args), out, text)
        emit(dict(x.kwargs), out, text)
        out += b"\x92"
    elif isinstance(x, Build):
        emit(x.obj, out, text)
        emit(x.state, out, text)
        out += b"b"
    elif isinstance(x, Bin):
        out += b"B" + struct.pack("<I", len(x.data)) + x.data
    elif x is None:
        out += b"N"
    elif isinstance(x, bool):
        out += (b"I01\n" if x else b"I00\n") if text else (b"\x88" if x else b"\x89")
    elif isinstance(x, int):
        if text or not -(2**31) <= x < 2**31:
            out += b"I%d\n" % x
        else:
            out += b"J" + struct.pack("<i", x)
    elif isinstance(x, float):
        out += b"F%r\n" % x if text else b"G" + struct.pack(">d", x)
    elif isinstance(x, str):
        if text:
            out += b"S" + repr(x).encode("ascii") + b"\n"
        else:
            data = x.encode("utf-8")
            out += b"X" + struct.pack("<I", len(data)) + data
    elif isinstance(x, tuple):
        out += b"("
        for a in x:
            emit(a, out, text)
        out += b"t"
    elif isinstance(x, list):
        out += b"("
        for a in x:
            emit(a, out, text)
        out += b"l"
    elif isinstance(x, dict):
        out += b"("
        for k, v in x.items():
            emit(k, out, text)
            emit(v, out, text)
        out += b"d"
    else:
        raise TypeError(f"cannot emit {type(x).__name__}")


def opcodes(x: Any, proto: int = 2) -> bytes:
    """Opcodes for `x` without PROTO or STOP."""
    out = bytearray()
    emit(x, out, text=proto == 0)
    return bytes(out)


def make_pickle(x: Any, proto: int = 2) -> bytes:
    """A whole pickle: PROTO (protocol >= 2), the opcodes for `x`, STOP."""
    head = b"\x80" + bytes([proto]) if proto >= 2 else b""
    return head + opcodes(x, proto) + b"."


# -- payloads: each would create `marker` if run ----------------------------------------------


def sh(marker: Path) -> str:
    return f"touch {shlex.quote(str(marker))}"


def py_create(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def p_os_system(m: Path) -> Any:
    return Call(G("os", "system"), (sh(m),))


def p_setstate_hijack(m: Path) -> Any:
    # BUILD #1 puts os.system into the instance __dict__ as __setstate__; BUILD #2 calls it.
    ns = Call(G("argparse", "Namespace"))
    return Build(Build(ns, {"__setstate__": G("os", "system")}), sh(m))


def p_getattr_chain(m: Path) -> Any:
    os_mod = Call(G("builtins", "__import__"), ("os",))
    return Call(Call(G("builtins", "getattr"), (os_mod, "system")), (sh(m),))


# -- helpers ---------------------------------------------------------------------------------


def dangers(ckpt: Checkpoint) -> list[str]:
    return [f.message for f in ckpt.findings if f.severity is Severity.DANGER]


def assert_flags(ckpt: Checkpoint, name: str) -> None:
    msgs = dangers(ckpt)
    assert any(name in m for m in msgs), (
        f"no danger finding names {name!r}; findings: "
        f"{[(f.kind, f.severity.value, f.message) for f in ckpt.findings]}"
    )
    for f in ckpt.findings:
        if f.severity is Severity.DANGER:
            assert f.kind == "dangerous_call", f


def open_inert(path: Path, marker: Path, spawns: bool = False) -> Checkpoint:
    """Open with ckptui; the marker must not exist afterwards."""
    assert not marker.exists()
    ckpt = open_checkpoint(path)
    if spawns:  # a Popen payload would create the marker asynchronously
        time.sleep(0.3)
    assert not marker.exists(), f"ckptui executed the payload in {path}"
    return ckpt


_LOADERS = {
    "pickle": "import pickle, sys\nwith open(sys.argv[1], 'rb') as f:\n    pickle.load(f)",
    "torch": "import sys, torch\ntorch.load(sys.argv[1], weights_only=False)",
}


def assert_live(path: Path, marker: Path, loader: str = "pickle") -> None:
    """Prove the payload works: a separate process loads the file and the marker appears."""
    code = "try:\n" + textwrap.indent(_LOADERS[loader], "    ") + "\nexcept Exception:\n    pass"
    subprocess.run(
        [sys.executable, "-c", code, str(path)],
        cwd=path.parent,
        timeout=300,
        capture_output=True,
        check=False,
    )
    deadline = time.monotonic() + 10
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), f"payload in {path} is a dud under {loader} load (test bug)"
    marker.unlink()


def check_plain(
    tmp_path: Path,
    build: Any,
    name: str,
    proto: int = 2,
    *,
    live: bool = True,
    loader: str = "pickle",
    spawns: bool = False,
) -> Checkpoint:
    """Write `build(marker)` as a plain pickle file, open it, check flags and liveness."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "payload.pkl"
    path.write_bytes(make_pickle(build(marker), proto))
    ckpt = open_inert(path, marker, spawns)
    if live:  # first, so a failing flag check is known to be about a real attack
        assert_live(path, marker, loader)
    assert ckpt.format == "pickle"
    assert_flags(ckpt, name)
    return ckpt


# -- REDUCE ----------------------------------------------------------------------------------


def test_reduce_os_system(tmp_path: Path) -> None:
    check_plain(tmp_path, p_os_system, "os.system")


def test_reduce_posix_system(tmp_path: Path) -> None:
    check_plain(tmp_path, lambda m: Call(G("posix", "system"), (sh(m),)), "posix.system")


def test_reduce_subprocess_popen_argv(tmp_path: Path) -> None:
    check_plain(
        tmp_path,
        lambda m: Call(G("subprocess", "Popen"), (["touch", str(m)],)),
        "subprocess.Popen",
        spawns=True,
    )


def test_reduce_subprocess_getoutput(tmp_path: Path) -> None:
    check_plain(
        tmp_path, lambda m: Call(G("subprocess", "getoutput"), (sh(m),)), "subprocess.getoutput"
    )


def test_reduce_builtins_exec(tmp_path: Path) -> None:
    check_plain(tmp_path, lambda m: Call(G("builtins", "exec"), (py_create(m),)), "builtins.exec")


def test_reduce_builtins_eval(tmp_path: Path) -> None:
    src = "lambda m: __import__('os').system(m)"
    check_plain(
        tmp_path, lambda m: Call(Call(G("builtins", "eval"), (src,)), (sh(m),)), "builtins.eval"
    )


def test_reduce_py2_builtin_eval_protocol2(tmp_path: Path) -> None:
    # `__builtin__` is mapped to builtins by pickle's fix_imports for protocols < 3.
    expr = f"__import__('os').system({sh(tmp_path / 'PWNED')!r})"
    check_plain(tmp_path, lambda m: Call(G("__builtin__", "eval"), (expr,)), "eval")


def test_reduce_builtins_open_for_writing(tmp_path: Path) -> None:
    check_plain(tmp_path, lambda m: Call(G("builtins", "open"), (str(m), "w")), "builtins.open")


def test_reduce_getattr_import_chain(tmp_path: Path) -> None:
    ckpt = check_plain(tmp_path, p_getattr_chain, "builtins.getattr")
    assert_flags(ckpt, "builtins.__import__")


def test_stack_global_torch_serialization_os_system(tmp_path: Path) -> None:
    # Protocol 4 STACK_GLOBAL resolves the dotted name by attribute walk: this IS os.system.
    check_plain(
        tmp_path,
        lambda m: Call(SG("torch.serialization", "os.system"), (sh(m),)),
        "os.system",
        proto=4,
    )


def test_stack_global_plain_os_system(tmp_path: Path) -> None:
    check_plain(tmp_path, lambda m: Call(SG("os", "system"), (sh(m),)), "os.system", proto=4)


def test_functools_partial_of_os_system(tmp_path: Path) -> None:
    def build(m: Path) -> Any:
        return Call(Call(G("functools", "partial"), (G("os", "system"), sh(m))))

    check_plain(tmp_path, build, "os.system")


def test_copyreg_reconstructor_with_dangerous_base(tmp_path: Path) -> None:
    # _reconstructor(cls, base, state) runs base.__init__(obj, state): Popen(['touch', marker]).
    def build(m: Path) -> Any:
        popen = G("subprocess", "Popen")
        return Call(G("copyreg", "_reconstructor"), (popen, popen, ["touch", str(m)]))

    check_plain(tmp_path, build, "subprocess.Popen", spawns=True)


def test_operator_attrgetter_walks_to_os_system(tmp_path: Path) -> None:
    # Only operator.attrgetter names the danger: `torch.serialization` itself is a harmless module.
    def build(m: Path) -> Any:
        getter = Call(G("operator", "attrgetter"), ("os.system",))
        return Call(Call(getter, (G("torch", "serialization"),)), (sh(m),))

    check_plain(tmp_path, build, "operator.attrgetter")


def test_torch_rebuild_from_type_v2_calls_os_system(tmp_path: Path) -> None:
    # torch._tensor._rebuild_from_type_v2(func, new_type, args, state) runs func(*args).
    def build(m: Path) -> Any:
        return Call(
            G("torch._tensor", "_rebuild_from_type_v2"),
            (G("os", "system"), G("torch", "Tensor"), (sh(m),), {}),
        )

    check_plain(tmp_path, build, "os.system")


# -- INST / OBJ / NEWOBJ / NEWOBJ_EX / BUILD ---------------------------------------------------


def test_inst_os_system_protocol0(tmp_path: Path) -> None:
    check_plain(tmp_path, lambda m: Inst("os", "system", (sh(m),)), "os.system", proto=0)


def test_inst_subprocess_popen_protocol0(tmp_path: Path) -> None:
    check_plain(
        tmp_path,
        lambda m: Inst("subprocess", "Popen", (["touch", str(m)],)),
        "subprocess.Popen",
        proto=0,
        spawns=True,
    )


def test_inst_py2_builtin_eval_protocol0(tmp_path: Path) -> None:
    expr = f"__import__('os').system({sh(tmp_path / 'PWNED')!r})"
    check_plain(tmp_path, lambda m: Inst("__builtin__", "eval", (expr,)), "eval", proto=0)


def test_reduce_os_system_protocol0_text(tmp_path: Path) -> None:
    data = b"cos\nsystem\n(S'" + sh(tmp_path / "PWNED").encode() + b"'\ntR."
    path = tmp_path / "payload.pkl"
    path.write_bytes(data)
    ckpt = open_inert(path, tmp_path / "PWNED")
    assert_flags(ckpt, "os.system")
    assert_live(path, tmp_path / "PWNED")


def test_obj_os_system_protocol0(tmp_path: Path) -> None:
    check_plain(tmp_path, lambda m: Obj(G("os", "system"), (sh(m),)), "os.system", proto=0)


def test_obj_builtins_exec_protocol1_binary(tmp_path: Path) -> None:
    # Protocol 1: binary opcodes, no PROTO header; the file starts with MARK.
    check_plain(
        tmp_path, lambda m: Obj(G("builtins", "exec"), (py_create(m),)), "builtins.exec", proto=1
    )


def test_newobj_functools_partial_then_call(tmp_path: Path) -> None:
    # partial's constructor is its __new__, so NEWOBJ builds partial(os.system, cmd); REDUCE calls it.
    def build(m: Path) -> Any:
        return Call(NewObj(G("functools", "partial"), (G("os", "system"), sh(m))))

    check_plain(tmp_path, build, "os.system")


def test_newobj_ex_partial_kwargs_shell_true(tmp_path: Path) -> None:
    def build(m: Path) -> Any:
        part = NewObjEx(
            G("functools", "partial"),
            (G("subprocess", "check_call"),),
            {"args": sh(m), "shell": True},
        )
        return Call(part)

    check_plain(tmp_path, build, "subprocess.check_call", proto=4)


def test_build_setstate_hijack(tmp_path: Path) -> None:
    check_plain(tmp_path, p_setstate_hijack, "os.system")


def test_build_setstate_hijack_stack_global(tmp_path: Path) -> None:
    def build(m: Path) -> Any:
        ns = NewObj(SG("argparse", "Namespace"))
        return Build(Build(ns, {"__setstate__": SG("posix", "system")}), sh(m))

    check_plain(tmp_path, build, "posix.system", proto=4)


def test_payload_hidden_in_dict_value_and_list(tmp_path: Path) -> None:
    def build(m: Path) -> Any:
        return {"epoch": 3, "lr": [0.1, {"note": p_os_system(m)}]}

    ckpt = check_plain(tmp_path, build, "os.system")
    assert ckpt.root.kind is NodeKind.MAPPING


# -- known bypasses: globals that look harmless but run code or write files -------------------
# These name something under a trusted prefix (torch., numpy.) or a stdlib module that is not
# on the deny-list. Each is live under pickle.load; each must be reported as danger.


def test_bypass_torch_utils_import_dotted_name(tmp_path: Path) -> None:
    # torch._utils._import_dotted_name('os.system') returns os.system; REDUCE then calls it.
    def build(m: Path) -> Any:
        return Call(Call(G("torch._utils", "_import_dotted_name"), ("os.system",)), (sh(m),))

    check_plain(tmp_path, build, "_import_dotted_name")


def test_bypass_torch_utils_collect_env_run(tmp_path: Path) -> None:
    # collect_env.run(command) is subprocess.Popen(command, shell=True).
    check_plain(
        tmp_path,
        lambda m: Call(G("torch.utils.collect_env", "run"), (sh(m),)),
        "torch.utils.collect_env.run",
    )


def test_bypass_torch_fx_forward_from_src_exec(tmp_path: Path) -> None:
    # _forward_from_src(src, globals) exec()s src.
    def build(m: Path) -> Any:
        return Call(G("torch.fx.graph_module", "_forward_from_src"), (py_create(m), {}))

    check_plain(tmp_path, build, "_forward_from_src")


def test_bypass_torch_save_writes_file(tmp_path: Path) -> None:
    check_plain(tmp_path, lambda m: Call(G("torch", "save"), (None, str(m))), "torch.save")


def test_bypass_numpy_savetxt_writes_file(tmp_path: Path) -> None:
    check_plain(tmp_path, lambda m: Call(G("numpy", "savetxt"), (str(m), [1])), "numpy.savetxt")


def test_bypass_py2_cstringio_open_is_io_open(tmp_path: Path) -> None:
    # fix_imports maps cStringIO -> io for protocols < 3 (_compat_pickle.IMPORT_MAPPING).
    check_plain(tmp_path, lambda m: Call(G("cStringIO", "open"), (str(m), "w")), "open")


def test_bypass_codecs_open_writes_file(tmp_path: Path) -> None:
    check_plain(tmp_path, lambda m: Call(G("codecs", "open"), (str(m), "w")), "codecs.open")


def test_bypass_pathlib_touch_by_dotted_name(tmp_path: Path) -> None:
    def build(m: Path) -> Any:
        path_obj = Call(G("pathlib", "PosixPath"), (str(m),))
        return Call(SG("pathlib", "PosixPath.touch"), (path_obj,))

    check_plain(tmp_path, build, "touch", proto=4)


def test_payload_before_corruption_is_still_reported(tmp_path: Path) -> None:
    """pickle.load runs os.system, then fails on the junk after it; ckptui must still say so.

    Either the file opens with the danger finding, or the error message names the callable:
    a bare "corrupt file" would hide that torch.load runs a command before failing.
    """
    marker = tmp_path / "PWNED"
    path = tmp_path / "payload.pkl"
    body = opcodes({"ok": 1, "x": p_os_system(marker)})
    path.write_bytes(b"\x80\x02" + body + b"\xff")  # an invalid opcode instead of STOP
    try:
        ckpt = open_inert(path, marker)
    except CkptError as e:
        assert not marker.exists()
        assert "os.system" in e.message, f"danger hidden behind: {e.message}"
    else:
        assert_flags(ckpt, "os.system")
    assert_live(path, marker)


# -- payloads inside real checkpoints ------------------------------------------------------------


def pickle_end(data: bytes, start: int) -> int:
    """Position just after the STOP of the pickle that starts at `start`."""
    f = io.BytesIO(data)
    f.seek(start)
    end = start
    for op, _, pos in pickletools.genops(f):
        if op.name == "STOP":
            end = pos + 1
    return end


def wrap_with_payload(real_pickle: bytes, payload: bytes) -> bytes:
    """{'model': <the real pickle's object>, 'evil': <payload>} as one protocol-2 pickle.

    The payload uses no memo, so the real body's BINPUT/BINGET indices stay valid.
    """
    assert real_pickle[:2] in (b"\x80\x02", b"\x80\x03"), real_pickle[:4]
    assert real_pickle[-1:] == b".", real_pickle[-4:]
    body = real_pickle[2:-1]
    return b"\x80\x02(" + opcodes("model") + body + opcodes("evil") + payload + b"d."


def splice_zip(zip_bytes: bytes, payload: bytes, record: str = "data.pkl") -> bytes:
    """Rebuild a torch zip with `<archive>/<record>` wrapped around a payload (stored)."""
    src = zipfile.ZipFile(io.BytesIO(zip_bytes))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.split("/", 1)[1] == record:
                data = wrap_with_payload(data, payload)
            dst.writestr(zipfile.ZipInfo(info.filename), data)
    return out.getvalue()


def legacy_pickles(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of the 5 pickles of a legacy file: magic, protocol, sys_info, main, keys."""
    spans = []
    pos = 0
    for _ in range(5):
        end = pickle_end(data, pos)
        spans.append((pos, end))
        pos = end
    return spans


def splice_legacy(legacy: bytes, payload: bytes) -> bytes:
    spans = legacy_pickles(legacy)
    start, end = spans[3]
    return legacy[:start] + wrap_with_payload(legacy[start:end], payload) + legacy[end:]


@pytest.fixture(scope="module")
def real_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Real checkpoints of each pickle-based format, as bytes."""
    d = tmp_path_factory.mktemp("real")
    torch.manual_seed(0)
    sd = {"fc.weight": torch.randn(4, 3), "fc.bias": torch.zeros(4), "step": 7}
    torch.save(sd, d / "zip.pt")
    torch.save(sd, d / "legacy.pt", _use_new_zipfile_serialization=False)
    buf = io.BytesIO()
    # protocol 3: storages' bytes are BINBYTES (protocol 2 is covered by the benign tests)
    pickle.dump({"fc.weight": sd["fc.weight"], "fc.bias": sd["fc.bias"]}, buf, protocol=3)
    return {
        "zip": (d / "zip.pt").read_bytes(),
        "legacy": (d / "legacy.pt").read_bytes(),
        "plain": buf.getvalue(),
    }


def _make_container(kind: str, real: dict[str, bytes], payload: bytes) -> bytes:
    if kind == "zip":
        return splice_zip(real["zip"], payload)
    if kind == "legacy":
        return splice_legacy(real["legacy"], payload)
    if kind == "plain-with-tensors":
        return wrap_with_payload(real["plain"], payload)
    if kind == "nested-legacy":  # the payload inside the bytes given to _load_from_bytes
        inner = splice_legacy(real["legacy"], payload)
        evil = opcodes(Call(G("torch.storage", "_load_from_bytes"), (Bin(inner),)))
        return wrap_with_payload(real["plain"], evil)
    if kind == "nested-zip":
        inner = splice_zip(real["zip"], payload)
        evil = opcodes(Call(G("torch.storage", "_load_from_bytes"), (Bin(inner),)))
        return wrap_with_payload(real["plain"], evil)
    raise AssertionError(kind)


CONTAINERS = {
    "zip": ("torch-zip", "torch"),
    "legacy": ("torch-legacy", "torch"),
    "plain-with-tensors": ("pickle", "pickle"),
    "nested-legacy": ("pickle", "pickle"),
    "nested-zip": ("pickle", "pickle"),
}
PAYLOADS = {
    "os_system": (p_os_system, "os.system"),
    "setstate_hijack": (p_setstate_hijack, "os.system"),
    "getattr_chain": (p_getattr_chain, "builtins.getattr"),
}


@pytest.mark.parametrize("payload", list(PAYLOADS))
@pytest.mark.parametrize("container", list(CONTAINERS))
def test_payload_inside_real_checkpoint(
    tmp_path: Path, real_files: dict[str, bytes], container: str, payload: str
) -> None:
    marker = tmp_path / "PWNED"
    build, name = PAYLOADS[payload]
    path = tmp_path / f"{container}.pt"
    path.write_bytes(_make_container(container, real_files, opcodes(build(marker))))
    ckpt = open_inert(path, marker)
    fmt, loader = CONTAINERS[container]
    assert ckpt.format == fmt
    assert_flags(ckpt, name)
    # the real tensors are still shown next to the payload
    shapes = sorted(t.shape for _, t in ckpt.tensors() if t.layout == "strided")
    assert (4,) in shapes and (4, 3) in shapes, shapes
    if payload == "os_system":  # one liveness proof per container is enough
        assert_live(path, marker, loader)


class _Evil:
    """Its pickle calls os.system; torch.save only writes that, it never runs it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (sh(self.marker),))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_torch_save_of_reduce_object(tmp_path: Path, zip_format: bool) -> None:
    """The attacker's usual tool: torch.save of an object whose __reduce__ is (os.system, ...)."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save(
        {"w": torch.ones(2), "evil": _Evil(marker)}, path, _use_new_zipfile_serialization=zip_format
    )
    ckpt = open_inert(path, marker)
    assert ckpt.format == ("torch-zip" if zip_format else "torch-legacy")
    assert_flags(ckpt, "system")  # pickled as posix.system on Linux
    assert_live(path, marker, "torch")


# -- the CLI -----------------------------------------------------------------------------------


@pytest.mark.parametrize("container", ["plain", "zip", "legacy", "nested-legacy"])
def test_cli_reports_danger_and_fail_on_unsafe(
    tmp_path: Path, real_files: dict[str, bytes], container: str
) -> None:
    marker = tmp_path / "PWNED"
    payload = opcodes(p_os_system(marker))
    path = tmp_path / f"{container}.pt"
    if container == "plain":
        path.write_bytes(b"\x80\x02" + payload + b".")
    else:
        path.write_bytes(_make_container(container, real_files, payload))

    r = run_cli("inspect", str(path), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    found = [f for f in doc["findings"] if f["severity"] == "danger"]
    assert any("os.system" in f["message"] and f["kind"] == "dangerous_call" for f in found), doc[
        "findings"
    ]

    r = run_cli("inspect", str(path), "--json", "--fail-on-unsafe")
    assert r.returncode == 1, (r.returncode, r.stderr)
    r = run_cli("inspect", str(path), "--fail-on-unsafe")
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert not marker.exists()


def test_cli_benign_file_passes_fail_on_unsafe(tmp_path: Path) -> None:
    path = tmp_path / "ok.pt"
    torch.save({"w": torch.ones(2), "args": {"lr": 0.1}}, path)
    r = run_cli("inspect", str(path), "--json", "--fail-on-unsafe")
    assert r.returncode == 0, r.stderr
    assert not [f for f in json.loads(r.stdout)["findings"] if f["severity"] == "danger"]


def test_cli_corrupt_payload_file_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "cut.pkl"
    path.write_bytes(make_pickle(p_os_system(tmp_path / "PWNED"))[:-6])
    r = run_cli("inspect", str(path), "--json", "--fail-on-unsafe")
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ckptui: {path}: "), r.stderr
    assert r.stdout == ""


# -- benign files: no danger finding -------------------------------------------------------------


def assert_no_danger(ckpt: Checkpoint) -> None:
    assert not dangers(ckpt), [(f.kind, f.message) for f in ckpt.findings]


def test_benign_whole_module_pickle_with_unimportable_class(tmp_path: Path) -> None:
    mod_name = f"ckptui_safety_net_{os.getpid()}"
    src = tmp_path / f"{mod_name}.py"
    src.write_text(
        textwrap.dedent("""
        import torch

        class SafetyNet(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(3, 2)
                self.register_buffer("running", torch.zeros(2))
                self.register_buffer("scratch", torch.zeros(5), persistent=False)

            def forward(self, x):
                return self.fc(x)
    """)
    )
    sys.path.insert(0, str(tmp_path))
    try:
        import importlib

        mod = importlib.import_module(mod_name)
        path = tmp_path / "model.pt"
        torch.save(mod.SafetyNet(), path)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(mod_name, None)
        src.unlink()
    ckpt = open_checkpoint(path)
    assert_no_danger(ckpt)
    assert any(f.kind == "unknown_class" and "SafetyNet" in f.message for f in ckpt.findings)
    names = {t.state_dict_key for _, t in ckpt.tensors()}
    assert {"fc.weight", "fc.bias", "running"} <= names, names
    assert "scratch" not in names


def _benign_objects() -> dict[str, Any]:
    import argparse
    import collections
    import datetime
    import functools
    import pathlib

    import numpy as np

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 4])
    model(torch.randn(1, 3)).sum().backward()
    opt.step()
    sched.step()
    return {
        "args": argparse.Namespace(lr=0.1, layers=[1, 2], name="run", out=pathlib.Path("/x")),
        "counter": collections.Counter("abracadabra"),
        "defaultdict": collections.defaultdict(list, {"a": [1]}),
        "defaultdict_int": collections.defaultdict(int, {"b": 2}),
        "ordered": collections.OrderedDict(a=1, b=2),
        "deque": collections.deque([1, 2]),
        "path": pathlib.PosixPath("/data/run1"),
        "when": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        "day": datetime.date(2024, 1, 2),
        "delta": datetime.timedelta(hours=1),
        "act": functools.partial(torch.nn.functional.gelu, approximate="tanh"),
        "np_f32": np.arange(6, dtype=np.float32).reshape(2, 3),
        "np_i64": np.array([1, 2, 3]),
        "np_scalar": np.float64(1.5),
        "np_int": np.int64(3),
        "np_dtype": np.dtype("float16"),
        "np_rng": np.random.default_rng(0).bit_generator.state,
        "sched": sched.state_dict(),
        "optim": opt.state_dict(),
        "model": model.state_dict(),
        "set": {1, 2},
        "frozen": frozenset({"a"}),
        "complex": 1 + 2j,
        "bytes": b"\x00" * 100,
        "slice": slice(1, 2),
        "range": range(3),
    }


@pytest.mark.parametrize("how", ["torch-zip", "torch-legacy"])
def test_benign_training_extras_have_no_danger(tmp_path: Path, how: str) -> None:
    path = tmp_path / "extras.pt"
    torch.save(_benign_objects(), path, _use_new_zipfile_serialization=how == "torch-zip")
    ckpt = open_checkpoint(path)
    assert ckpt.format == how
    assert_no_danger(ckpt)
    assert ckpt.root.child("sched") is not None


@pytest.mark.parametrize("proto", [2, 4, 5])
def test_benign_plain_pickle_numpy_and_stdlib(tmp_path: Path, proto: int) -> None:
    objs = _benign_objects()
    for k in ("sched", "optim", "model"):  # tensors in a plain pickle: covered below
        objs.pop(k)
    path = tmp_path / f"extras{proto}.pkl"
    path.write_bytes(pickle.dumps(objs, protocol=proto))
    ckpt = open_checkpoint(path)
    assert ckpt.format == "pickle"
    assert_no_danger(ckpt)
    arr = ckpt.root.child("np_f32")
    assert arr is not None and dict(arr.attrs).get("shape") == (2, 3), arr


@pytest.mark.parametrize("proto", range(pickle.HIGHEST_PROTOCOL + 1))
def test_benign_plain_pickle_dump_of_state_dict(tmp_path: Path, proto: int) -> None:
    """Storages pickled by `_load_from_bytes(b)`; protocols <= 2 carry b as _codecs.encode."""
    model = torch.nn.Linear(3, 2)
    path = tmp_path / "sd.pkl"
    with path.open("wb") as f:
        pickle.dump(model.state_dict(), f, protocol=proto)
    ckpt = open_checkpoint(path)
    assert_no_danger(ckpt)
    assert sorted(t.shape for _, t in ckpt.tensors()) == [(2,), (2, 3)]


@pytest.mark.parametrize("proto", [2, 4])
def test_benign_plain_pickle_dump_of_big_tensor(tmp_path: Path, proto: int) -> None:
    """A storage over 1 MB: protocol 2 stores it as a long latin-1 string (UTF-8 on disk)."""
    path = tmp_path / "big.pkl"
    with path.open("wb") as f:
        pickle.dump({"big": torch.zeros(300_000) + 200.0}, f, protocol=proto)
    ckpt = open_checkpoint(path)
    assert_no_danger(ckpt)
    assert [t.shape for _, t in ckpt.tensors()] == [(300_000,)]


def test_benign_scheduler_state_dict_alone(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[3, 6, 9])
    path = tmp_path / "sched.pt"
    torch.save(sched.state_dict(), path)
    ckpt = open_checkpoint(path)
    assert_no_danger(ckpt)
    milestones = ckpt.root.child("milestones")
    assert milestones is not None and milestones.type == "collections.Counter", milestones


# -- resource exhaustion ----------------------------------------------------------------------


def _in_child(path: Path) -> dict[str, Any]:
    """Open `path` in a fresh interpreter; returns its facts and its own peak RSS growth.

    VmHWM is per address space and starts afresh at exec, unlike ru_maxrss which inherits the
    parent's high-water mark; the child never imports torch.
    """
    code = textwrap.dedent("""
        import json, sys, time

        def hwm():
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
            return 0

        from ckptui.core.errors import CkptError
        from ckptui.formats import open_checkpoint
        from ckptui.core.tree import NodeKind
        before = hwm()
        t = time.perf_counter()
        out = {}
        try:
            c = open_checkpoint(sys.argv[1])
            kinds = {}
            stack = [c.root]
            while stack:
                n = stack.pop()
                kinds[n.kind.value] = kinds.get(n.kind.value, 0) + 1
                stack.extend(n.children)
            out.update(ok=True, kinds=kinds, findings=[f.kind for f in c.findings])
        except CkptError as e:
            out.update(ok=False, error=type(e).__name__, message=e.message)
        out.update(seconds=time.perf_counter() - t, rss_growth=hwm() - before)
        print(json.dumps(out))
    """)
    r = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, (
        f"the child opening {path.name} exited with {r.returncode} "
        f"(negative: killed by that signal): {r.stderr[-2000:]}"
    )
    return json.loads(r.stdout)


MB = 1 << 20


def test_billion_laughs_million_memo_refs(tmp_path: Path) -> None:
    """One list referenced a million times via BINGET: 2 MB of pickle, not 2**20 copies."""
    n = 1_000_000
    path = tmp_path / "laughs.pkl"
    path.write_bytes(b"\x80\x02]q\x000(" + b"h\x00" * n + b"l.")
    res = _in_child(path)
    assert res["ok"], res
    assert res["kinds"].get("ref", 0) >= n - 1, res["kinds"]
    assert res["rss_growth"] < 200 * MB, f"peak RSS grew {res['rss_growth'] / MB:.0f} MB ({res})"


def test_billion_laughs_nested_doubling(tmp_path: Path) -> None:
    """l30 = [l29, l29], ..., l1 = [l0, l0]: 2**30 leaves if expanded, 61 nodes if shared."""
    data = bytearray(b"\x80\x02]q\x00")
    for i in range(1, 31):
        data += b"h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"\x86q" + bytes([i])
    data += b"."
    path = tmp_path / "doubling.pkl"
    path.write_bytes(bytes(data))
    tracemalloc.start()
    try:
        ckpt = open_checkpoint(path)
        from ckptui.report.json.inspect import checkpoint_json

        text = json.dumps(checkpoint_json(ckpt))
        list(ckpt.tensors())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 * MB
    assert len(text) < 100_000
    refs = 0
    stack = [ckpt.root]
    while stack:
        node = stack.pop()
        refs += node.kind is NodeKind.REF
        stack.extend(node.children)
    assert refs == 30


def test_billion_laughs_shared_tensor_in_zip(tmp_path: Path, real_files: dict[str, bytes]) -> None:
    """A real tensor referenced 100k times by memo inside a torch zip: REFs, no blow-up."""
    real = zipfile.ZipFile(io.BytesIO(real_files["zip"]))
    name = next(i.filename for i in real.infolist() if i.filename.endswith("/data.pkl"))
    body = real.read(name)
    # the real dict is memo 0 (first BINPUT after EMPTY_DICT): a list of 100k refs to it
    assert body[2:5] == b"}q\x00", body[:8]
    payload = Raw(b"(" + b"h\x00" * 100_000 + b"l")
    path = tmp_path / "shared.pt"
    path.write_bytes(splice_zip(real_files["zip"], opcodes(payload)))
    res = _in_child(path)
    assert res["ok"], res
    assert res["kinds"].get("ref", 0) >= 100_000
    assert res["rss_growth"] < 200 * MB, res


def _huge_claims() -> dict[str, bytes]:
    return {
        "long_binput_2**32-1": b"\x80\x02]r\xff\xff\xff\xff.",
        "long_binget_2**32-1_missing": b"\x80\x02j\xff\xff\xff\xff.",
        "binunicode8_2**60": b"\x80\x04\x8d" + struct.pack("<Q", 2**60) + b"abc.",
        "binbytes8_2**63": b"\x80\x04\x8e" + struct.pack("<Q", 2**63) + b"abc.",
        "bytearray8_2**64-1": b"\x80\x05\x96" + struct.pack("<Q", 2**64 - 1) + b"abc.",
        "binunicode_2**32-1": b"\x80\x02X" + struct.pack("<I", 2**32 - 1) + b"abc.",
        "binbytes_2**32-1": b"\x80\x03B" + struct.pack("<I", 2**32 - 1) + b"abc.",
        "binstring_negative": b"\x80\x02T" + struct.pack("<i", -5) + b"abc.",
        "long4_2**31-1": b"\x80\x02\x8b" + struct.pack("<i", 2**31 - 1) + b"\x01.",
        "long4_negative": b"\x80\x02\x8b" + struct.pack("<i", -1) + b"\x01.",
        "frame_2**63": b"\x80\x04\x95" + struct.pack("<Q", 2**63) + b"N.",
        "memoize_then_get_huge": b"\x80\x04N\x94j\x00\x00\x00\x80.",
        "int_text_million_digits": b"I" + b"9" * 1_000_000 + b"\n.",
        "long_text_million_digits": b"L" + b"9" * 1_000_000 + b"L\n.",
        "builtins_bytes_2**31": make_pickle(Call(G("builtins", "bytes"), (2**31,))),
        "builtins_bytearray_2**31": make_pickle(Call(G("builtins", "bytearray"), (2**31,))),
        "torch_size_huge_dims": make_pickle(Call(G("torch", "Size"), ((2**61,) * 64,))),
    }


@pytest.mark.parametrize("case", list(_huge_claims()))
def test_huge_claimed_sizes_do_not_allocate(tmp_path: Path, case: str) -> None:
    path = tmp_path / f"{case}.pkl"
    path.write_bytes(_huge_claims()[case])
    tracemalloc.start()
    try:
        try:
            ckpt = open_checkpoint(path)
            assert ckpt.root is not None
        except CorruptFile as e:
            assert "\n" not in e.message
        except CkptError as e:  # e.g. NotACheckpoint for a text file
            assert "\n" not in e.message
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 * MB, f"{case}: peak {peak / MB:.0f} MB"


def test_huge_claims_outcome_long_binput_opens(tmp_path: Path) -> None:
    path = tmp_path / "memo.pkl"
    path.write_bytes(_huge_claims()["long_binput_2**32-1"])
    assert open_checkpoint(path).root.kind is NodeKind.SEQUENCE


@pytest.mark.parametrize("case", ["binunicode8_2**60", "long4_2**31-1", "binbytes8_2**63"])
def test_huge_claims_outcome_corrupt(tmp_path: Path, case: str) -> None:
    path = tmp_path / "x.pkl"
    path.write_bytes(_huge_claims()[case])
    with pytest.raises(CorruptFile):
        open_checkpoint(path)


@pytest.mark.parametrize("depth", [1000, 1_000_000])
def test_deeply_nested_tuple_as_dict_key_does_not_crash(tmp_path: Path, depth: int) -> None:
    """{((((None,),),...),): 1}: hashing the key recurses in C; a million levels overflow it."""
    path = tmp_path / "deepkey.pkl"
    path.write_bytes(b"\x80\x02}N" + b"\x85" * depth + b"K\x01s.")
    res = _in_child(path)  # a crash would kill the child, not pytest
    assert res["ok"] or res["error"] == "CorruptFile", res


@pytest.mark.parametrize("depth", [1_000_000])
def test_deeply_nested_containers_open_bounded(tmp_path: Path, depth: int) -> None:
    cases = {
        "tuple": b"\x80\x02N" + b"\x85" * depth + b".",
        "list": b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b".",
        "mark_list": b"\x80\x02" + b"(" * depth + b"N" + b"l" * depth + b".",
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.pkl"
        path.write_bytes(data)
        res = _in_child(path)
        assert res["ok"] or res["error"] == "CorruptFile", (name, res)
        assert res["rss_growth"] < 400 * MB, (name, res)
