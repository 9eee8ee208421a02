"""Provides the judgement of every GLOBAL a pickle names: data, known, unknown or dangerous.

`pickle.load` and `torch.load(weights_only=False)` import every GLOBAL and call whatever REDUCE,
NEWOBJ, INST or OBJ apply them to. ckptui never does either; it only needs to tell the user what
*would* run. Whether a global is dangerous depends on what calling it does, not on whether it is
known: a user's model class is merely unknown (info), `os.system` is dangerous wherever it
appears, also behind a dotted path such as `torch.serialization.os.system`. Harmless globals that
ordinary checkpoints contain (FORMATS.md) must not be flagged, or the warning cries wolf.
"""

from __future__ import annotations

import _compat_pickle
import enum
from dataclasses import dataclass

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


# Builtins that only construct data. Every other builtin (eval, exec, getattr, open,
# __import__, compile, setattr, print, ...) is a capability, hence dangerous.
_DATA_BUILTINS = frozenset(
    {
        "set", "frozenset", "list", "dict", "tuple", "int", "float", "complex", "bool", "str",
        "bytes", "bytearray", "slice", "range", "object", "long", "unicode", "xrange",
        "NotImplemented", "Ellipsis",
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
    "numpy.lib.npyio.", "torch.jit._",
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
        "omegaconf.listconfig.ListConfig", "omegaconf.base.ContainerMetadata",
        "omegaconf.base.Metadata", "omegaconf.nodes.AnyNode", "typing.Any",
    }
)  # fmt: skip

# Packages whose *classes* are harmless to name (their instances are data); their functions
# are judged one by one, since a function is what runs.
_KNOWN_CLASS_PREFIXES = ("torch.", "numpy.", "__torch__.", "deepspeed.", "lightning.",
                         "pytorch_lightning.", "transformers.", "timm.", "omegaconf.")  # fmt: skip
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
    parts = full_name.split(".")
    for i in range(len(parts)):
        tail = ".".join(parts[i:])
        if tail in _DANGER_NAMES or tail.startswith(_DANGER_PREFIXES):
            return Verdict(Safety.DANGER, _resolves(full_name, tail))
    if module == "builtins":
        if name in _DATA_BUILTINS:
            return Verdict(Safety.KNOWN)
        return Verdict(Safety.DANGER, "a builtin that is not a data constructor")
    if len(names) > 1 and not all(p[:1].isupper() for p in names):
        # Nested classes (`Outer.Inner`) are CapWords all the way; anything else is a walk to a
        # method (`PosixPath.touch`, `OrderedDict.fromkeys`), which is a call of code.
        return Verdict(Safety.DANGER, f"attribute walk to the method {name}")
    if full_name in _KNOWN or full_name in _KNOWN_FUNCTIONS:
        return Verdict(Safety.KNOWN)
    if full_name.startswith(_KNOWN_FUNCTION_PREFIXES):
        return Verdict(Safety.KNOWN)
    if full_name.startswith(_KNOWN_CLASS_PREFIXES) and looks_like_class(full_name):
        return Verdict(Safety.KNOWN)
    return Verdict(Safety.UNKNOWN)


def _resolves(full_name: str, target: str) -> str:
    return "" if target == full_name else f"resolves to {target}"


def looks_like_class(full_name: str) -> bool:
    """True when the last name is CapWords, as classes are by convention."""
    last = full_name.rsplit(".", 1)[-1]
    return bool(last) and last[0].isupper()
