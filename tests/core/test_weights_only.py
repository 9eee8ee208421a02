"""The `weights_only` report against the installed torch: its allow-list tables, the globals it
refuses, and whether its suggested line really makes `torch.load(weights_only=True)` succeed.

The dangerous file is never loaded with `weights_only=False`; a marker file proves its payload
never ran.
"""

from __future__ import annotations

import argparse
import collections
import inspect
import os
import pickle
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import _weights_only_unpickler as wou

from ckptui.analysis.training.weights_only import weights_only_report
from ckptui.data import weights_only_allowlist as wo
from ckptui.formats import open_checkpoint
from ckptui.report.json.training import weights_only_json
from tests.conftest import ROOT, TinyNet, run_cli, run_python, training_checkpoint


class RunConfig:
    """A user's own class, as training scripts pickle into checkpoints."""

    def __init__(self, lr: float) -> None:
        self.lr = lr


class Payload:
    """Pickles as a call that runs a command: what a malicious checkpoint does."""

    def __init__(self, marker: Path, via: str = "os.system") -> None:
        self.marker, self.via = marker, via

    def __reduce__(self) -> tuple[Any, ...]:
        if self.via == "eval":
            return (eval, (f"__import__('os').system('touch {self.marker}')",))
        if self.via == "subprocess":
            return (subprocess.call, (["touch", str(self.marker)],))
        return (os.system, (f"touch {self.marker}",))


def _report(path: Path) -> Any:
    return weights_only_report(open_checkpoint(path))


def _torch_loads(path: Path, allow: list[Any] | None = None) -> bool:
    return _load_error(path, allow or []) is None


def _load_error(path: Path, allow: list[Any]) -> Exception | None:
    """Why torch.load(weights_only=True) fails with `allow` allowed, or None if it loads."""
    try:
        with torch.serialization.safe_globals(allow), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError) as e:
        return e
    return None


def _torch_unsafe(path: Path) -> set[str]:
    """What torch itself names (static scan of data.pkl; runs nothing)."""
    return set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))


def _run_fix(fix: str, check: str, cwd: Path) -> str:
    """Run the suggested lines in a fresh interpreter, then `check` on `ck`; return stdout."""
    code = f"{fix}\nassert {check}, ck\nprint('LOADED')"
    r = run_python(code, cwd=cwd, flags=("-W", "ignore"), first=(ROOT,))
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip()


# -- the tables against the installed torch ----------------------------------------------------
def test_allow_list_equals_torchs() -> None:
    assert set(wou._get_allowed_globals()) == wo.ALLOWED
    assert set(wou._blocklisted_modules) == wo.BLOCKED_MODULES
    from torch._utils import IMPORT_MAPPING, NAME_MAPPING

    assert IMPORT_MAPPING == wo.IMPORT_MAPPING
    assert NAME_MAPPING == wo.NAME_MAPPING


def test_globals_registered_by_imports_match_torch() -> None:
    """`import torch` registers some classes; importing other torch modules registers more
    (each module checked in a fresh interpreter: torch._dynamo imports torch.distributed.tensor)."""
    import json

    def registered(module: str) -> dict[str, list[str]]:
        code = (
            "import json, torch\n"
            "from torch.serialization import get_safe_globals as g\n"
            "name = lambda f: f[1] if isinstance(f, tuple) else "
            "f'{f.__module__}.{f.__qualname__}'\n"
            "before = sorted(map(name, g()))\n"
            f"import {module}\n"
            "print(json.dumps([before, sorted(set(map(name, g())) - set(before))]))\n"
        )
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, timeout=120)  # fmt: skip
        return json.loads(r.stdout)

    everything: set[str] = set()
    for module in sorted(set(wo.NEEDS_IMPORT.values())):
        at_import_torch, added = registered(module)
        assert set(at_import_torch) == wo.ALLOWED_AFTER_IMPORT_TORCH
        assert {n for n, m in wo.NEEDS_IMPORT.items() if m == module} <= set(added)
        everything |= set(added)
    assert everything == set(wo.NEEDS_IMPORT)


def test_supported_opcodes_are_those_torchs_loop_handles() -> None:
    src = inspect.getsource(wou.Unpickler.load)
    names = set(re.findall(r"\b([A-Z][A-Z0-9_]+)\[0\]", src))
    assert {getattr(pickle, n)[0] for n in names} == set(wo.SUPPORTED_OPCODES)


def test_numpy_dtype_classes_and_stable_names() -> None:
    for code, cls in wo.NUMPY_DTYPE_CLASSES.items():
        full = code + "8" if code in ("U", "S", "V", "O") else code
        assert type(np.dtype(full)).__name__ == cls, code
    # safe_globals keys a plain object by __module__.__qualname__: these must match the name
    for name in wo.STABLE_NAMES | wo.LOWERCASE_CLASSES:
        module, _, qual = name.rpartition(".")
        obj = getattr(__import__(module, fromlist=[qual]), qual)
        assert f"{obj.__module__}.{obj.__qualname__}" == name


# -- reports on real files ---------------------------------------------------------------------
def test_plain_state_dict_loads(tmp_path: Path) -> None:
    p = tmp_path / "sd.pth"
    torch.save(TinyNet().state_dict(), p)
    r = _report(p)
    assert _torch_loads(p)
    assert (r.loads, r.refused_globals, r.fix, r.export_command) == (True, (), None, None)
    j = weights_only_json(r)
    assert j["loads"] is True and j["refused_globals"] == [] and j["fix"] is None


def test_training_checkpoint_loads(tmp_path: Path) -> None:
    p = tmp_path / "train.pth"
    torch.save(training_checkpoint(), p)
    assert _report(p).loads is True
    assert _torch_loads(p)


def test_namespace_is_benign_and_the_fix_loads_it(tmp_path: Path) -> None:
    p = tmp_path / "run.pth"
    args = argparse.Namespace(lr=0.1, name="run42")
    torch.save({"model": TinyNet().state_dict(), "args": args}, p)
    r = _report(p)
    assert not r.loads and not _torch_loads(p)
    assert {g.name for g in r.refused_globals} == _torch_unsafe(p) == {"argparse.Namespace"}
    (g,) = r.refused_globals
    assert g.benign and g.kind == "data" and g.where == ("args",)
    assert r.fix is not None and r.fix_if_trusted is None
    assert "safe_globals([argparse.Namespace])" in r.fix
    check = "ck['args'].lr == 0.1 and ck['args'].name == 'run42' and 'fc.weight' in ck['model']"
    assert _run_fix(r.fix, check, tmp_path) == "LOADED"
    assert weights_only_json(r)["refused_globals"][0]["global"] == "argparse.Namespace"


def test_numpy_scalars_and_arrays_need_their_dtype_classes_too(tmp_path: Path) -> None:
    p = tmp_path / "np.pth"
    torch.save(
        {"best": np.float64(0.9), "step": np.int64(3), "hist": np.arange(5.0),
         "mask": np.array([True, False]), "ids": np.arange(3, dtype=np.int32)}, p,
    )  # fmt: skip
    r = _report(p)
    assert not r.loads
    assert {g.name for g in r.refused_globals} == _torch_unsafe(p)
    assert all(g.benign for g in (*r.refused_globals, *r.also_needed))
    also = {g.name for g in r.also_needed}
    assert also == {f"numpy.dtypes.{c}" for c in ("Float64DType", "Int64DType", "BoolDType",
                                                    "Int32DType")}  # fmt: skip
    # torch names these only by exception, and only once the named globals are allowed
    named = [(_resolve(n), n) for n in _torch_unsafe(p)]
    with torch.serialization.safe_globals(named), pytest.raises(Exception, match="DType"):
        torch.load(p, weights_only=True)
    check = ("float(ck['best']) == 0.9 and int(ck['step']) == 3 and ck['hist'].tolist() == "
             "[0.0, 1.0, 2.0, 3.0, 4.0] and ck['mask'].tolist() == [True, False] and "
             "ck['ids'].dtype.name == 'int32'")  # fmt: skip
    assert _run_fix(r.fix, check, tmp_path) == "LOADED"


def test_custom_class_is_not_benign_but_export_removes_it(tmp_path: Path) -> None:
    p = tmp_path / "custom.pth"
    torch.save({"model": TinyNet().state_dict(), "cfg": RunConfig(0.5)}, p)
    r = _report(p)
    name = f"{RunConfig.__module__}.RunConfig"
    assert {g.name for g in r.refused_globals} == _torch_unsafe(p) == {name}
    (g,) = r.refused_globals
    assert (g.benign, g.kind, g.where) == (False, "user", ("cfg",))
    assert r.fix is None and not r.loads
    # for who trusts that code: the same line with the class, which really loads
    assert r.fix_if_trusted is not None
    assert _run_fix(r.fix_if_trusted, "ck['cfg'].lr == 0.5", tmp_path) == "LOADED"
    # the export command writes a copy that needs nothing allowed
    assert r.export_command == f"ckptui export {p} -o {tmp_path / 'custom.weights.pth'}"
    out = run_cli(*r.export_command.split()[1:])
    assert out.returncode == 0, out.stderr
    assert _torch_loads(tmp_path / "custom.weights.pth")
    assert _report(tmp_path / "custom.weights.pth").loads


@pytest.mark.parametrize(
    ("via", "name"),
    [("os.system", f"{os.system.__module__}.system"), ("eval", "builtins.eval"),
     # protocol 2 writes Python 2's module name, which torch's table does not map back
     ("subprocess", "commands.call")],
)  # fmt: skip
def test_dangerous_global_gets_no_fix_and_never_runs(tmp_path: Path, via: str, name: str) -> None:
    marker = tmp_path / "marker"
    p = tmp_path / "evil.pth"
    torch.save({"w": torch.ones(2), "x": Payload(marker, via)}, p)
    r = _report(p)
    unsafe = _torch_unsafe(p)
    assert {g.name for g in r.refused_globals} == unsafe == {name}
    (g,) = r.refused_globals
    assert not g.benign and g.kind == "dangerous"
    assert (r.loads, r.fix, r.fix_if_trusted) == (False, None, None)
    with pytest.raises(Exception, match=r"blocked|Unsupported global"):
        torch.load(p, weights_only=True)
    assert not marker.exists()


def test_dangerous_global_beside_benign_ones_still_gets_no_fix(tmp_path: Path) -> None:
    p = tmp_path / "mixed.pth"
    torch.save({"args": argparse.Namespace(a=1), "x": Payload(tmp_path / "m", "eval")}, p)
    r = _report(p)
    assert {g.name for g in r.refused_globals} == _torch_unsafe(p)
    assert {g.benign for g in r.refused_globals} == {True, False}
    assert r.fix is None and r.fix_if_trusted is None
    assert not (tmp_path / "m").exists()


def test_non_empty_defaultdict_cannot_be_fixed_by_an_allow_list(tmp_path: Path) -> None:
    p = tmp_path / "dd.pth"
    torch.save({"counts": collections.defaultdict(list, a=[1])}, p)
    r = _report(p)
    assert {g.name for g in r.refused_globals} == _torch_unsafe(p)
    assert r.blockers and "collections.defaultdict" in r.blockers[0]
    assert r.fix is None and r.fix_if_trusted is None
    named = [(_resolve(n), n) for n in _torch_unsafe(p)]
    with torch.serialization.safe_globals(named), pytest.raises(Exception, match="SETITEM"):
        torch.load(p, weights_only=True)


def test_legacy_format_fix_loads(tmp_path: Path) -> None:
    p = tmp_path / "old.pth"
    obj = {
        "model": TinyNet().state_dict(),
        "args": argparse.Namespace(lr=0.1),
        "loss": np.float64(2),
    }
    torch.save(obj, p, _use_new_zipfile_serialization=False)
    r = _report(p)
    assert not r.loads
    named, built = _refused_by_exception(p)
    assert named == {g.name for g in r.refused_globals}
    assert built == {g.name for g in r.also_needed} == {"numpy.dtypes.Float64DType"}
    assert _run_fix(r.fix, "float(ck['loss']) == 2.0 and ck['args'].lr == 0.1", tmp_path)


def test_protocol_4_fails_on_its_opcodes_and_still_lists_globals(tmp_path: Path) -> None:
    p = tmp_path / "p4.pth"
    torch.save({"args": argparse.Namespace(a=1), "w": torch.ones(1)}, p, pickle_protocol=4)
    r = _report(p)
    assert not r.loads and not _torch_loads(p)
    assert any("FRAME" in b for b in r.blockers)
    assert {g.name for g in r.refused_globals} == {"argparse.Namespace"}
    assert r.fix is None and r.export_command is not None
    with pytest.raises(Exception, match="Unsupported operand"):
        torch.load(p, weights_only=True)


def test_torchscript_and_safetensors(tmp_path: Path) -> None:
    ts = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), ts)
    r = _report(ts)
    assert not r.loads and "TorchScript" in r.blockers[0] and not _torch_loads(ts)
    from safetensors.torch import save_file

    st = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(2)}, st)
    assert _report(st).loads == _torch_loads(st)


def test_core_module_imports_neither_torch_nor_numpy() -> None:
    code = (
        "import sys, ckptui.analysis.training.weights_only\n"
        "bad = [m for m in ('torch', 'numpy', 'textual', 'rich') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    r = run_python(code)
    assert r.returncode == 0, r.stderr


# -- helpers that ask torch ----------------------------------------------------------------------
def _resolve(name: str) -> Any:
    """Import `name` as pickle would (only for benign names in these tests)."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = __import__(".".join(parts[:i]), fromlist=["_"])
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(name)


def _refused_by_exception(path: Path) -> tuple[set[str], set[str]]:
    """The globals torch.load(weights_only=True) names one by one in its errors, allowing each
    (benign files only) until the load succeeds; and the types it names only when BUILD meets
    them."""
    seen: list[Any] = []
    for _ in range(20):
        e = _load_error(path, seen)
        if e is None:
            named = {x[1] for x in seen if isinstance(x, tuple)}
            built = {f"{x.__module__}.{x.__qualname__}" for x in seen if not isinstance(x, tuple)}
            return named, built
        m = re.search(r"GLOBAL (\S+) was not an allowed global", str(e))
        c = re.search(r"but got <class '([^']+)'>", str(e))
        if m:
            name = m.group(1) if "." in m.group(1) else f"builtins.{m.group(1)}"
            seen.append((_resolve(name), name))
        elif c:  # a type met only through BUILD: not "named in the file"
            seen.append(_resolve(c.group(1)))
        else:
            raise e
    raise AssertionError("torch kept refusing")
