"""Provides the judgement of every GLOBAL a pickle names: data, known, unknown or dangerous.

`pickle.load` and `torch.load(weights_only=False)` import every GLOBAL and call whatever REDUCE,
NEWOBJ, INST or OBJ apply them to. ckptui never does either; it only needs to tell the user what
*would* run. Whether a global is dangerous depends on what calling it does, not on whether it is
known: a user's model class is merely unknown (info), `os.system` is dangerous wherever it
appears, also behind a dotted path such as `torch.serialization.os.system`. Harmless globals that
ordinary checkpoints contain (FORMATS.md) must not be flagged, or the warning cries wolf.

The rule, not a list: a global is safe only when it is known to be a pure data constructor
(ckptui's recorders, torch's own weights-only allow-list, the harmless names of FORMATS.md);
anything else is judged by what calling it can reach. For the standard library, torch and numpy
that is read from their source (`data/reach.py`, made by `tests/tools/make_reach.py`): a function,
class or method that can reach `exec`, a process, the file system or the network is dangerous,
and any other torch or numpy callable is at least a warning. Prefixes (`torch.`, `numpy.`) are
never trusted wholesale.

Some globals are judged by how the pickle uses them, which `judge` alone cannot see:
`Verdict.if_called` is the verdict once the pickle calls the global (a reference to a method,
`getattr`, runs nothing until called), and `judge_call` judges one call from its arguments
(`getattr(G, "name")` is the dotted global `G.name`; calling a class also runs its `__init__`).
Every unpickler (the inert opcode loop, and any faster path) must apply both, in that order, so
that the same file gets the same findings whichever reads it; `finding_of` turns the final
verdict into the finding's kind and severity.
"""

from __future__ import annotations

import _compat_pickle
import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ckptui.data import weights_only_allowlist as wo

# Python 2 names are mapped with the table pickle's own fix_imports uses (cStringIO -> io, ...).
_PY2_NAMES: dict[tuple[str, str], tuple[str, str]] = _compat_pickle.NAME_MAPPING
_PY2_MODULES: dict[str, str] = _compat_pickle.IMPORT_MAPPING


class Safety(str, enum.Enum):
    """The verdict on one global."""

    DATA = "data"
    """Allow-listed pure data constructor; ckptui records it with its own code."""
    KNOWN = "known"
    """Known harmless class or function seen in ordinary checkpoints; shown as a placeholder."""
    UNKNOWN = "unknown"
    """Not known either way: a user's class or function. Would be imported and run by torch.load."""
    DANGER = "danger"
    """Runs code, touches files/processes/network, or loads another pickle."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """A global's verdict and the reason shown to the user."""

    safety: Safety
    reason: str = ""
    if_called: Verdict | None = None
    """The verdict once the pickle calls the global, when that differs (a method reference
    runs nothing until called); None: the same."""


@dataclass(frozen=True, slots=True)
class CallJudgement:
    """What one call of a global does, judged from its arguments (`judge_call`)."""

    resolves_to: tuple[str, str] | None = None
    """The call only looks up an attribute: it stands for this (module, qualname) global."""
    verdict: Verdict | None = None
    """The verdict for the global after this call, when the arguments make it worse."""


# Builtins that only construct data. Every other builtin (eval, exec, getattr, open,
# __import__, compile, setattr, print, ...) is a capability, hence dangerous.
_DATA_BUILTINS = frozenset(
    {
        "set", "frozenset", "list", "dict", "tuple", "int", "float", "complex", "bool", "str",
        "bytes", "bytearray", "slice", "range", "object", "long", "unicode", "xrange",
        "NotImplemented", "Ellipsis",
    }
)  # fmt: skip

# Builtins that compute a value from data and call nothing of the file's choosing beyond the
# dunder methods of objects whose own classes are judged (`len`, `min` over a list).
_PURE_BUILTINS = frozenset(
    {
        "len", "min", "max", "abs", "sum", "round", "divmod", "ord", "chr", "hex", "oct", "bin",
        "all", "any", "sorted", "reversed", "enumerate", "zip", "iter", "hash", "repr", "ascii",
        "format", "isinstance", "issubclass", "callable", "id", "pow", "bool", "memoryview",
    }
)  # fmt: skip

# Modules whose members execute code, spawn processes, touch the file system or network, or
# load further pickles. Any member, reached directly or through a dotted path, is dangerous.
_DANGER_MODULES = frozenset(
    {
        "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "sys", "shutil", "socket",
        "importlib", "runpy", "code", "codeop", "pty", "ctypes", "pickle", "_pickle", "marshal",
        "types", "webbrowser", "multiprocessing", "asyncio", "pdb", "bdb", "timeit", "cProfile",
        "profile", "trace", "tempfile", "glob", "io", "_io", "fileinput", "signal", "threading",
        "_thread", "thread", "commands", "popen2", "platform", "urllib", "urllib2", "http",
        "ftplib", "smtplib", "telnetlib", "requests", "pip", "setuptools", "distutils", "site",
        "zipimport", "pydoc", "dill", "cloudpickle", "joblib", "shelve", "dbm", "sqlite3",
        "ensurepip", "venv", "imp", "gc", "inspect", "ast", "linecache", "zipfile", "tarfile",
        "_posixsubprocess", "_winapi", "msvcrt", "winreg", "_ctypes", "nturl2path", "mmap",
        "select", "selectors", "ssl", "xmlrpc", "socketserver", "wsgiref", "logging",
    }
)  # fmt: skip

# Single callables that are dangerous although their module is not.
_DANGER_NAMES = frozenset(
    {
        "operator.attrgetter", "operator.methodcaller", "functools.reduce", "codecs.open",
        "torch.save", "torch.serialization.save", "torch._utils._import_dotted_name",
        "torch.fx.graph_module._forward_from_src", "torch.fx.graph_module._exec_with_source",
        "torch.fx.graph_module.reduce_graph_module", "torch.fx.graph_module.reduce_package_graph_module",
        "torch.fx.graph_module.reduce_deploy_graph_module", "numpy.savez", "numpy.savez_compressed",
        "numpy.savetxt", "numpy.memmap",
        "torch.load", "torch.serialization.load", "torch.serialization._load",
        "torch.serialization._legacy_load", "torch.jit.load", "torch.jit._serialization.load",
        "torch.hub.load", "torch.hub.load_state_dict_from_url", "torch.hub.download_url_to_file",
        "torch.ops.load_library", "torch.classes.load_library", "torch._ops.load_library",
        "torch.utils.cpp_extension.load", "torch.utils.cpp_extension.load_inline",
        "torch.package.PackageImporter", "torch.compile",
        "numpy.load", "numpy.lib.npyio.load", "numpy.fromfile", "numpy.loadtxt", "numpy.genfromtxt",
        "numpy.save", "numpy.tofile", "numpy.ctypeslib.load_library",
        "collections.namedtuple", "string.Template",
    }
)  # fmt: skip

# Prefixes inside otherwise trusted packages that load code or pickles.
_DANGER_PREFIXES = (
    "torch.utils.cpp_extension.", "torch.hub.", "torch.package.", "numpy.f2py.",
    "numpy.distutils.", "numpy.testing.", "torch._dynamo.", "torch._inductor.",
    "torch.utils.collect_env.", "torch.multiprocessing.", "torch.distributed.rpc.",
    "numpy.lib.npyio.", "numpy.lib._npyio_impl.", "numpy.lib._datasource.", "numpy.lib.format.",
    "numpy._core.memmap.", "numpy.core.memmap.", "numpy.ctypeslib.", "torch._C._distributed",
    "torch.distributed.elastic.", "torch.distributed.launcher.", "torch.distributed.run.",
    "torch.utils.data.datapipes.", "torch.utils.model_zoo.", "torch.utils.benchmark.",
    "torch.utils.tensorboard.", "torch.onnx.", "torch.export.", "torch._export.",
    "torch.compiler.", "torch.library.", "torch.utils.bottleneck.", "torch.testing.",
)  # fmt: skip

# C++ classes that torch exports and source cannot show: stores and process groups open
# sockets or files when constructed.
_DANGER_NAMES_C = frozenset(
    {
        f"torch.distributed.{n}"
        for n in ("TCPStore", "FileStore", "HashStore", "PrefixStore", "ProcessGroup",
                  "ProcessGroupGloo", "ProcessGroupNCCL", "ProcessGroupMPI", "init_process_group",
                  "new_group", "rendezvous", "distributed_c10d.init_process_group")
    }
)  # fmt: skip

# Attribute names whose presence in a dotted path means introspection escapes.
_DANGER_ATTRS = frozenset(
    {
        "__globals__",
        "__builtins__",
        "__subclasses__",
        "__getattribute__",
        "__import__",
        "__code__",
        "__class__",
        "__bases__",
        "__mro__",
        "__dict__",
        "__reduce__",
        "__reduce_ex__",
        "__init__",
        "__call__",
        "__getattr__",
        "__setattr__",
        "__loader__",
        "__spec__",
    }
)

# Harmless classes and functions seen in ordinary checkpoints (FORMATS.md); shown as
# placeholders without a finding.
_KNOWN = frozenset(
    {
        "argparse.Namespace", "pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.Path",
        "pathlib.PurePosixPath", "pathlib.PureWindowsPath", "datetime.datetime", "datetime.date",
        "datetime.time", "datetime.timedelta", "datetime.timezone", "decimal.Decimal",
        "fractions.Fraction", "uuid.UUID", "re._compile", "re.compile", "enum.Enum",
        "collections.deque", "collections.ChainMap", "functools.partial", "copyreg._reconstructor",
        "copyreg.__newobj__", "copyreg.__newobj_ex__", "builtins.object", "numpy.random._pickle.__generator_ctor",
        "numpy.random._pickle.__bit_generator_ctor", "numpy.random._pickle.__randomstate_ctor",
        "numpy.random.mtrand.RandomState", "numpy.random._generator.Generator",
        "numpy.random.bit_generator.SeedSequence", "numpy.random._pcg64.PCG64",
        "numpy.random._mt19937.MT19937", "random.Random", "omegaconf.dictconfig.DictConfig",
        "numpy.ndarray", "numpy.dtype", "numpy.ma.core._mareconstruct", "numpy.ma.core.MaskedArray",
        "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
        "torch.jit._pickle.build_intlist", "torch.jit._pickle.build_tensorlist",
        "torch.jit._pickle.build_doublelist", "torch.jit._pickle.build_boollist",
        "torch.jit._pickle.build_tensor_from_id", "torch.jit._pickle.restore_type_tag",
        "torch.nn.modules.module._WrappedHook", "torch.utils.hooks.RemovableHandle",
        "torch.utils.hooks.BackwardHook", "torch._dynamo.decorators._DimRange",
        "torch.torch_version.TorchVersion", "torch.distributed.device_mesh.DeviceMesh",
        "torch.distributed.device_mesh._MeshEnv", "torch.distributed._mesh_layout._MeshLayout",
        "torch.distributed._mesh_layout._FlatLayout",
        "omegaconf.listconfig.ListConfig", "omegaconf.base.ContainerMetadata",
        "omegaconf.base.Metadata", "omegaconf.nodes.AnyNode", "typing.Any",
    }
)  # fmt: skip

# Packages whose *classes* are harmless to name (their instances are data: unpickling runs
# `__new__` and a `__setstate__` that sets attributes); their functions are judged one by one,
# since a function is what runs. torch and numpy are listed by the parts whose classes are data,
# never whole, and what `data/reach.py` says a class reaches is checked first.
_KNOWN_CLASS_PREFIXES = (
    "__torch__.", "deepspeed.", "lightning.", "pytorch_lightning.", "transformers.", "timm.",
    "omegaconf.", "numpy.random.", "numpy.dtypes.", "numpy.core.", "numpy._core.",
    "torch.nn.modules.", "torch.nn.parameter.", "torch.nn.utils.parametrize.",
    "torch.nn.utils.parametrizations.", "torch.nn.utils.spectral_norm.",
    "torch.nn.utils.weight_norm.", "torch.nn.intrinsic.", "torch.nn.quantized.", "torch.nn.qat.",
    "torch.ao.nn.", "torch.ao.quantization.", "torch.optim.", "torch.amp.grad_scaler.",
    "torch.cuda.amp.grad_scaler.", "torch.distributed.checkpoint.metadata.",
    "torch.distributed.checkpoint.planner.", "torch.distributed.checkpoint.filesystem.",
    "torch.distributed.tensor.",
    "torch.distributed._mesh_layout.", "torch.distributed._shard.metadata.",
    "torch.distributed._shard.sharded_tensor.metadata.", "torch.distributed._shard.sharding_spec.",
    "torch.distributed.fsdp.api.", "torch.fx.immutable_collections.", "torch.utils._pytree.",
    "torch.nested._internal.", "torch.storage.", "torch.masked.", "torch._tensor.",
    "torch.autograd.grad_mode.", "torch.ao.quantization.",
)  # fmt: skip
_SCANNED = ("torch.", "numpy.")
"""Libraries whose every callable is at least a warning unless known to be data."""
# Functions that ordinary checkpoints pickle as values (activations) or that only rebuild data.
_KNOWN_FUNCTION_PREFIXES = (
    "torch.nn.functional.", "torch._C._nn.", "torch.nn.init.", "numpy.random._pickle.",
    "numpy.random.bit_generator.__pyx_unpickle", "numpy.random._generator.__pyx_unpickle",
    "numpy.random._mt19937.", "numpy.random._pcg64.", "numpy.random._philox.",
    "numpy.random._sfc64.",
)  # fmt: skip
# torch constants pickled as globals: qschemes, layouts, memory formats.
_KNOWN_FUNCTIONS = frozenset(
    {
        "torch.per_tensor_affine", "torch.per_channel_affine", "torch.per_tensor_symmetric",
        "torch.per_channel_symmetric", "torch.per_channel_affine_float_qparams",
        "torch.strided", "torch.sparse_coo", "torch.sparse_csr", "torch.sparse_csc",
        "torch.sparse_bsr", "torch.sparse_bsc", "torch._mkldnn", "torch.jagged",
        "torch.contiguous_format", "torch.channels_last", "torch.preserve_format",
        "torch.relu", "torch.tanh", "torch.sigmoid",
    }
)  # fmt: skip


def normalize(module: str, name: str) -> tuple[str, str]:
    """The (module, name) pickle would import, with Python 2 names mapped as fix_imports does."""
    if (module, name) in _PY2_NAMES:
        return _PY2_NAMES[(module, name)]
    return _PY2_MODULES.get(module, module), name


def judge(module: str, name: str) -> Verdict:
    """Judge a global by what calling (or merely importing) it would do.

    Args:
        module: the module pickle imports, Python 2 names already mapped (`normalize`). A dotted
            module is a real import path: `numpy.random._pickle` is numpy's own submodule.
        name: the qualified name looked up in it; dots here are attribute walks, so
            `torch` + `serialization.os.system` really is `os.system`.

    Returns:
        The verdict; `reason` says what it resolves to when that differs from its name.
    """
    full_name = f"{module}.{name}" if module else name
    names = name.split(".")
    if any(p in _DANGER_ATTRS for p in names):
        return Verdict(Safety.DANGER, "reaches interpreter internals")
    if module.split(".")[0] in _DANGER_MODULES:
        return Verdict(Safety.DANGER)
    for i, part in enumerate(names[:-1]):  # an attribute walk *through* a dangerous module
        if part in _DANGER_MODULES:
            return Verdict(Safety.DANGER, _resolves(full_name, ".".join(names[i:])))
    if full_name in _SAFE_EXACT:
        return Verdict(Safety.KNOWN)
    if full_name in _DANGER_NAMES_C:
        return Verdict(Safety.DANGER, "opens a socket or file (torch's C++ class)")
    parts = full_name.split(".")
    for i in range(len(parts)):
        tail = ".".join(parts[i:])
        if tail in _DANGER_NAMES or tail.startswith(_DANGER_PREFIXES):
            return Verdict(Safety.DANGER, _resolves(full_name, tail))
    if module == "builtins":
        if name in _DATA_BUILTINS or name in _PURE_BUILTINS:
            return Verdict(Safety.KNOWN)
        if name == "getattr":
            return Verdict(Safety.KNOWN, "", _GETATTR_CALLED)
        return Verdict(Safety.DANGER, "a builtin that is not a data constructor")
    reached = reaches(module, name)
    if reached:
        return Verdict(Safety.DANGER, f"can reach {reached}")
    scanned = full_name.startswith(_SCANNED) or module.split(".")[0] in _stdlib()
    if len(names) > 1:
        # A walk to an attribute (`OrderedDict.fromkeys`, `HistoryBuffer.min`; protocol 2 writes
        # method references as getattr(cls, name)): the reference runs nothing; calling it runs
        # the method. A nested class (`Outer.Inner`) cannot be told from a CapWords method.
        if scanned:
            called = Verdict(Safety.UNKNOWN, f"calls the method {name}")
        elif looks_like_class(full_name):
            called = Verdict(Safety.UNKNOWN, f"calls {name}: a nested class or a method")
        else:
            called = Verdict(Safety.DANGER, f"attribute walk to the method {name}, called")
        return Verdict(Safety.KNOWN, f"a reference to {name}, never called", called)
    if full_name in _KNOWN or full_name in _KNOWN_FUNCTIONS:
        return Verdict(Safety.KNOWN)
    if full_name.startswith(_KNOWN_FUNCTION_PREFIXES):
        return Verdict(Safety.KNOWN)
    if full_name.startswith(_KNOWN_CLASS_PREFIXES) and looks_like_class(full_name):
        return Verdict(Safety.KNOWN)
    if full_name.startswith(_SCANNED):
        # Importing torch or numpy runs only their own code: a reference is harmless, a call
        # of a callable not known to build only data is at least a warning.
        called = Verdict(Safety.UNKNOWN, f"a {parts[0]} callable not known to build only data")
        return Verdict(Safety.KNOWN, f"a reference to a {parts[0]} callable, never called", called)
    return Verdict(Safety.UNKNOWN)


PICKLED_STATE = frozenset(
    f"torch.utils.data.datapipes.datapipe.{c}"
    for c in ("_DataPipeSerializationWrapper", "_IterDataPipeSerializationWrapper",
              "_MapDataPipeSerializationWrapper")
)  # fmt: skip
"""Classes whose `__setstate__((bytes, use_dill))` runs `pickle.loads(bytes)`: an unpickler must
judge that inner pickle too."""

_GETATTR_CALLED = Verdict(Safety.DANGER, "getattr on an object built at load time reaches anything")


def judge_call(
    full_name: str,
    args: tuple[Any, ...],
    global_name: Callable[[Any], tuple[str, str] | None],
    how: str = "reduce",
) -> CallJudgement | None:
    """Judge one call of the global `full_name` from its arguments, where they decide.

    Args:
        full_name: the called global's `module.qualname`.
        args: the call's arguments as the unpickler holds them.
        global_name: (module, qualname) of an argument that is itself a global, else None.
        how: `reduce`, `inst`, `obj` (a call: a class runs `__init__`) or `newobj`
            (`cls.__new__(cls, *args)`: no `__init__`).

    Returns:
        None when the global's own verdict (with `if_called`) stands.
    """
    if full_name == "builtins.getattr":
        if len(args) == 2 and isinstance(args[1], str) and args[1].isidentifier():
            target = global_name(args[0])
            if target is not None:
                return CallJudgement(resolves_to=(target[0], f"{target[1]}.{args[1]}"))
        return CallJudgement(verdict=_GETATTR_CALLED)
    return None if how == "newobj" else _call_of_class(full_name)


@functools.lru_cache(maxsize=4096)
def _call_of_class(full_name: str) -> CallJudgement | None:
    """Calling a class runs its `__init__` (NEWOBJ does not), which `reach.py` lists apart."""
    if full_name in _SAFE_EXACT:
        return None
    reached = reaches_exact(f"{full_name}.__init__")
    if reached:
        return CallJudgement(verdict=Verdict(Safety.DANGER, f"its __init__ can reach {reached}"))
    return None


def finding_of(full_name: str, verdict: Verdict) -> tuple[str, str] | None:
    """The (finding kind, severity) a global's final verdict is reported as, or None."""
    s = verdict.safety
    if s is Safety.DANGER:
        return "dangerous_call", "danger"
    if s is Safety.UNKNOWN:
        if looks_like_class(full_name) and not full_name.startswith(_SCANNED):
            return "unknown_class", "info"
        return "unknown_callable", "warning"
    return None


def reaches(module: str, name: str) -> str | None:
    """What `module.name` can reach, from the standard library's, torch's and numpy's source
    (`data/reach.py`), or None when it reaches nothing dangerous or was not scanned."""
    return _reach_table(module).get(name)


def reaches_exact(full_name: str) -> str | None:
    """`reaches` for a dotted name whose module part is not known."""
    parts = full_name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        got = _reach_table(".".join(parts[:i])).get(".".join(parts[i:]))
        if got:
            return got
    return None


@functools.lru_cache(maxsize=4096)
def _reach_table(module: str) -> dict[str, str]:
    from ckptui.data.reach import BY_MODULE  # 1 MB of names: loaded only when a name needs it

    text = BY_MODULE.get(module)
    if not text:
        return {}
    return dict(item.split("=", 1) for item in text.split())


@functools.cache
def _stdlib() -> frozenset[str]:
    import sys

    return frozenset(sys.stdlib_module_names)


def _safe_exact() -> frozenset[str]:
    return frozenset(
        {*wo.ALLOWED, *wo.ALLOWED_AFTER_IMPORT_TORCH, *wo.NEEDS_IMPORT, *_KNOWN, *_KNOWN_FUNCTIONS}
        - {"torch._tensor._rebuild_from_type_v2"}  # calls its first argument: judged by that
    )


def _resolves(full_name: str, target: str) -> str:
    return "" if target == full_name else f"resolves to {target}"


def looks_like_class(full_name: str) -> bool:
    """True when the last name is CapWords, as classes are by convention (`_WrappedHook`,
    a private class, too)."""
    last = full_name.rsplit(".", 1)[-1].lstrip("_")
    return bool(last) and last[0].isupper()


_SAFE_EXACT = _safe_exact()
"""Known to build only data: torch's weights-only allow-list and ckptui's known names."""
