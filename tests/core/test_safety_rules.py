"""What a global is judged by: what calling it can reach, not its name's prefix.

Hand-written opcodes, one test per attack, named for it (as in `test_safety.py`, whose emitter and
liveness check these reuse): a danger before a corruption is still a danger; torch- and
numpy-namespace code runners and the standard library's hidden ones are dangers; a method
reference that is never called, TorchScript's list helpers and the other harmless globals of real
files raise no alarm.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ckptui.core.tree import Severity
from ckptui.formats import open_checkpoint
from ckptui.unpickler.safety import Safety, judge, reaches

from .test_safety import (
    SG,
    Bin,
    Build,
    Call,
    G,
    NewObj,
    assert_flags,
    assert_live,
    dangers,
    make_pickle,
    opcodes,
    open_inert,
    py_create,
    run_cli,
    sh,
)

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")


def write(tmp_path: Path, data: bytes, name: str = "payload.pkl") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def warnings_of(ckpt: Any) -> list[str]:
    return [f.message for f in ckpt.findings if f.severity is Severity.WARNING]


# -- a dangerous call before a corruption ------------------------------------------------------


def test_posix_system_then_corruption_is_a_danger_not_just_corrupt(tmp_path: Path) -> None:
    """inspect --json prints what was read with the danger and the damage as findings; exit 2
    (the file is damaged), 1 with --fail-on-unsafe (unsafe outranks damaged for a scanner)."""
    marker = tmp_path / "PWNED"
    body = opcodes({"ok": 1, "x": Call(G("posix", "system"), (sh(marker),))})
    path = write(tmp_path, b"\x80\x02" + body + b"\xff")  # an invalid opcode instead of STOP
    r = run_cli("inspect", str(path), "--json")
    assert r.returncode == 2, (r.returncode, r.stderr)
    doc = json.loads(r.stdout)
    kinds = {(f["kind"], f["severity"]) for f in doc["findings"]}
    assert ("dangerous_call", "danger") in kinds and ("corrupt", "warning") in kinds, kinds
    assert any("posix.system" in f["message"] for f in doc["findings"] if f["severity"] == "danger")
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "posix.system" in lines[0], r.stderr
    assert run_cli("inspect", str(path), "--json", "--fail-on-unsafe").returncode == 1
    r = run_cli("inspect", str(path), "--fail-on-unsafe")
    assert r.returncode == 1 and "posix.system" in r.stdout, (r.returncode, r.stdout[-500:])
    assert not marker.exists()
    assert_live(path, marker)


def test_posix_system_inside_load_from_bytes_that_is_no_checkpoint(tmp_path: Path) -> None:
    """`_load_from_bytes(b)` runs torch.load on b: b's first pickle runs, then its magic fails."""
    marker = tmp_path / "PWNED"
    inner = make_pickle(Call(G("posix", "system"), (sh(marker),)))
    path = write(
        tmp_path, make_pickle({"w": Call(G("torch.storage", "_load_from_bytes"), (Bin(inner),))})
    )
    r = run_cli("inspect", str(path), "--json", "--fail-on-unsafe")
    assert r.returncode == 1, (r.returncode, r.stderr)
    doc = json.loads(r.stdout)
    assert any(
        "posix.system" in f["message"] for f in doc["findings"] if f["severity"] == "danger"
    ), doc["findings"]
    assert_live(path, marker)


def test_build_ordereddict_setstate_exec(tmp_path: Path) -> None:
    """BUILD #1 puts builtins.exec in an OrderedDict's __dict__ as __setstate__; BUILD #2 calls
    it. Read as the call it is (no corruption), and named."""
    marker = tmp_path / "PWNED"
    od = Call(G("collections", "OrderedDict"))
    build = Build(Build(od, {"__setstate__": G("builtins", "exec")}), py_create(marker))
    path = write(tmp_path, make_pickle(build))
    ckpt = open_inert(path, marker)
    assert_flags(ckpt, "builtins.exec")
    assert not any(f.kind == "corrupt" for f in ckpt.findings)
    assert_live(path, marker)


def test_corrupt_file_without_a_call_still_exits_2(tmp_path: Path) -> None:
    """Naming os.system is not running it: a cut file that never calls it stays corrupt only."""
    path = write(tmp_path, make_pickle(Call(G("os", "system"), ("echo",)))[:-3])
    r = run_cli("inspect", str(path), "--json", "--fail-on-unsafe")
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stdout)


# -- torch- and numpy-namespace code runners ----------------------------------------------------


def test_torch_jit_exec_wrapper_runs_exec(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    payload = Call(
        G("torch.jit.unsupported_tensor_ops", "execWrapper"), (py_create(marker), {}, {})
    )
    path = write(tmp_path, make_pickle(payload))
    ckpt = open_inert(path, marker)
    assert_flags(ckpt, "torch.jit.unsupported_tensor_ops.execWrapper")
    assert_live(path, marker)
    assert run_cli("inspect", str(path), "--fail-on-unsafe").returncode == 1


def test_torch_serialization_open_file_for_writing(tmp_path: Path) -> None:
    """A class whose __init__ opens a file: calling it is the danger (REDUCE runs __init__)."""
    marker = tmp_path / "PWNED"
    payload = Call(G("torch.serialization", "_open_file"), (str(marker), "wb"))
    path = write(tmp_path, make_pickle(payload))
    ckpt = open_inert(path, marker)
    assert_flags(ckpt, "torch.serialization._open_file")
    assert_live(path, marker)


def test_numpy2_save_writes_a_file(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED.npy"
    payload = Call(G("numpy.lib._npyio_impl", "save"), (str(marker), [1]))
    path = write(tmp_path, make_pickle(payload))
    ckpt = open_inert(path, marker)
    assert_flags(ckpt, "numpy.lib._npyio_impl.save")
    assert_live(path, marker)


def test_numpy2_memmap_creates_a_file(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    payload = Call(G("numpy._core.memmap", "memmap"), (str(marker), "uint8", "w+", 0, (1,)))
    path = write(tmp_path, make_pickle(payload))
    ckpt = open_inert(path, marker)
    assert_flags(ckpt, "numpy._core.memmap.memmap")
    assert_live(path, marker)


def test_uuid_get_command_stdout_runs_a_command(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    payload = Call(G("uuid", "_get_command_stdout"), ("touch", str(marker)))
    path = write(tmp_path, make_pickle(payload))
    ckpt = open_inert(path, marker)
    assert_flags(ckpt, "uuid._get_command_stdout")
    assert_live(path, marker)


def test_dataclasses_create_fn_execs_source(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    arg = f"x=open({str(marker)!r}, 'w')"
    payload = Call(G("dataclasses", "_create_fn"), ("f", [arg], ["pass"]))
    path = write(tmp_path, make_pickle(payload))
    ckpt = open_inert(path, marker)
    assert_flags(ckpt, "dataclasses._create_fn")
    assert_live(path, marker)


CODE_RUNNERS = [
    ("_osx_support", "_read_output"),
    ("_osx_support", "_find_build_tool"),
    ("imaplib", "IMAP4"),
    ("imaplib", "IMAP4_stream"),
    ("poplib", "POP3"),
    ("nntplib", "NNTP"),
    ("doctest", "debug_script"),
    ("doctest", "debug_src"),
    ("idlelib.calltip", "get_entity"),
    ("test.support.script_helper", "assert_python_ok"),
    ("torch.utils.data.datapipes.utils.decoder", "basichandlers"),
    ("torch.utils.model_zoo", "load_url"),
    ("torch.utils.data.datapipes.datapipe", "_DataPipeSerializationWrapper"),
    ("torch.distributed", "TCPStore"),
    ("numpy.lib._datasource", "open"),
    ("idlelib.debugobj", "ObjectTreeItem.SetText"),  # a CapWords method walk, not a nested class
]


@pytest.mark.parametrize(
    ("module", "name"), CODE_RUNNERS, ids=[f"{m}.{n}" for m, n in CODE_RUNNERS]
)
def test_callable_that_runs_code_is_a_danger(tmp_path: Path, module: str, name: str) -> None:
    """Each is called the way a pickle would (REDUCE with a string); none is run here."""
    marker = tmp_path / "PWNED"
    path = write(tmp_path, make_pickle({"x": Call(SG(module, name), ("arg",))}, proto=4))
    ckpt = open_inert(path, marker)
    assert_flags(ckpt, f"{module}.{name}")
    assert judge(module, name).safety is Safety.DANGER


def test_torch_callable_not_known_as_data_is_a_warning(tmp_path: Path) -> None:
    """Prefixes are not trusted: a torch function outside the allow-lists is at least a warning."""
    path = write(tmp_path, make_pickle({"x": Call(G("torch.functional", "einsum"), ("ij->ji",))}))
    ckpt = open_checkpoint(path)
    assert any("torch.functional.einsum" in m for m in warnings_of(ckpt)), ckpt.findings


# -- no false alarms -----------------------------------------------------------------------


def test_getattr_method_reference_never_called_runs_nothing(tmp_path: Path) -> None:
    """Protocol 2 pickles a method reference as getattr(cls, name): judged as the dotted global
    `cls.name`; stored, never called, it runs nothing (mmengine's HistoryBuffer.min)."""
    ref = Call(
        G("builtins", "getattr"), (G("mmengine.logging.history_buffer", "HistoryBuffer"), "min")
    )
    path = write(tmp_path, make_pickle({"statistics_methods": {"min": ref}}))
    ckpt = open_checkpoint(path)
    assert not dangers(ckpt), ckpt.findings
    assert not any("getattr" in f.message for f in ckpt.findings), ckpt.findings


def test_getattr_method_reference_then_called_is_a_danger(tmp_path: Path) -> None:
    """The same walk, called: `getattr(PosixPath, 'touch')(path)` touches a file."""
    marker = tmp_path / "PWNED"
    touch = Call(G("builtins", "getattr"), (G("pathlib", "PosixPath"), "touch"))
    path = write(
        tmp_path, make_pickle(Call(touch, (Call(G("pathlib", "PosixPath"), (str(marker),)),)))
    )
    ckpt = open_inert(path, marker)
    assert_flags(ckpt, "pathlib.PosixPath.touch")
    assert_live(path, marker)


def test_getattr_on_an_object_built_at_load_time_is_a_danger(tmp_path: Path) -> None:
    payload = Call(G("builtins", "getattr"), (Call(G("builtins", "__import__"), ("os",)), "system"))
    ckpt = open_checkpoint(write(tmp_path, make_pickle(payload)))
    assert_flags(ckpt, "builtins.getattr")


def test_builtins_len_and_min_on_data_are_harmless(tmp_path: Path) -> None:
    x = {"n": Call(G("builtins", "len"), ([1, 2, 3],)), "m": Call(G("builtins", "min"), ([3, 1],))}
    x["f"] = G("builtins", "len")  # stored as a value
    ckpt = open_checkpoint(write(tmp_path, make_pickle(x)))
    assert not dangers(ckpt) and not warnings_of(ckpt), ckpt.findings


@pytest.mark.parametrize(
    "full",
    [
        "torch._dynamo.decorators._DimRange",
        "torch.nn.modules.module._WrappedHook",
        "torch.distributed._mesh_layout._MeshLayout",
        "torch.distributed._mesh_layout._FlatLayout",
        "torch.jit._pickle.build_intlist",
        "torch.jit._pickle.restore_type_tag",
        "numpy.ndarray",
    ],
)
def test_harmless_globals_of_real_files_raise_nothing(tmp_path: Path, full: str) -> None:
    module, name = full.rsplit(".", 1)
    path = write(tmp_path, make_pickle({"x": G(module, name)}))
    ckpt = open_checkpoint(path)
    assert not dangers(ckpt) and not warnings_of(ckpt), ckpt.findings


def test_rng_state_file_numpy_ndarray_in_reconstruct_is_clean(tmp_path: Path) -> None:
    """HF Trainer's rng_state.pth: numpy's RNG state (an ndarray via _reconstruct), python's
    random state, torch's."""
    path = tmp_path / "rng_state.pth"
    torch.save(
        {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "cpu": torch.random.get_rng_state(),
        },
        path,
    )
    ckpt = open_checkpoint(path)
    assert not dangers(ckpt) and not warnings_of(ckpt), ckpt.findings
    r = run_cli("inspect", str(path), "--fail-on-unsafe")
    assert r.returncode == 0, r.stderr


def test_module_with_wrapped_state_dict_hook_is_clean(tmp_path: Path) -> None:
    """`_register_state_dict_hook` stores a `_WrappedHook`; a whole-module pickle carries it."""
    m = torch.nn.Linear(2, 2)
    m._register_state_dict_hook(torch.nn.Module._save_to_state_dict)  # any callable of torch's
    path = tmp_path / "m.pt"
    torch.save(m, path)
    ckpt = open_checkpoint(path)
    assert not dangers(ckpt), ckpt.findings
    assert not any("_WrappedHook" in w for w in warnings_of(ckpt)), ckpt.findings


class ConvNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.pool = torch.nn.MaxPool2d(2)
        self.fc = torch.nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(x, 1))


def test_torchscript_conv_net_is_clean(tmp_path: Path) -> None:
    """A real torch.jit.script of a conv net names torch.jit._pickle.build_intlist (padding,
    stride lists): data, recorded as values; --fail-on-unsafe exits 0."""
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(ConvNet().eval()), str(path))
    ckpt = open_checkpoint(path)
    assert ckpt.format == "torchscript"
    assert not dangers(ckpt) and not warnings_of(ckpt), ckpt.findings
    r = run_cli("inspect", str(path), "--json", "--fail-on-unsafe")
    assert r.returncode == 0, (r.returncode, r.stderr)
    text = json.dumps(json.loads(r.stdout))
    assert "build_intlist" not in text


def test_reach_table_is_read_from_the_installed_sources() -> None:
    """`data/reach.py` names functions that exist and really call what it says (a sample)."""
    import dataclasses
    import inspect as pyinspect

    import torch.jit.unsupported_tensor_ops as ops

    assert reaches("dataclasses", "_create_fn") == "exec"
    assert "exec(" in pyinspect.getsource(dataclasses._create_fn)
    assert reaches("torch.jit.unsupported_tensor_ops", "execWrapper") == "exec"
    assert "exec(" in pyinspect.getsource(ops.execWrapper)
    assert reaches("collections", "OrderedDict") is None
    from ckptui.data import reach

    # made on one Python; names that moved on another are judged by the other rules
    assert reach.PYTHON.count(".") == 2 and len(reach.BY_MODULE) > 500


def test_datapipe_wrapper_state_is_a_pickle_of_os_system(tmp_path: Path) -> None:
    """`_DataPipeSerializationWrapper.__setstate__((b, False))` runs pickle.loads(b)."""
    marker = tmp_path / "PWNED"
    inner = make_pickle(Call(G("os", "system"), (sh(marker),)))
    cls = G("torch.utils.data.datapipes.datapipe", "_DataPipeSerializationWrapper")
    obj = Build(NewObj(cls), (Bin(inner), False))
    path = write(tmp_path, make_pickle(obj))
    ckpt = open_inert(path, marker)
    assert_flags(ckpt, "os.system")
    assert_live(path, marker, "torch")


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param(b"h\x63", id="memo_keyerror"),
        pytest.param(b"X\x01\x00\x00\x00sK\x01a", id="append_to_str_type_confusion"),
    ],
)
def test_danger_then_breakage_is_a_danger(tmp_path: Path, breakage: bytes) -> None:
    """The payload runs, then the pickle breaks (a missing memo key, APPEND on an int): exit 1
    with --fail-on-unsafe, never only "corrupt"."""
    marker = tmp_path / "PWNED"
    path = write(
        tmp_path, b"\x80\x02" + opcodes(Call(G("posix", "system"), (sh(marker),))) + breakage + b"."
    )
    r = run_cli("inspect", str(path), "--json", "--fail-on-unsafe")
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert any(f["kind"] == "corrupt" for f in json.loads(r.stdout)["findings"])
    assert_live(path, marker)


def test_dcp_metadata_that_is_an_os_system_pickle(tmp_path: Path) -> None:
    """torch's DCP reader unpickles `.metadata`: a payload there is a danger, not "not DCP"."""
    marker = tmp_path / "PWNED"
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / ".metadata").write_bytes(make_pickle(Call(G("os", "system"), (sh(marker),))))
    (folder / "__0_0.distcp").write_bytes(b"")
    r = run_cli("inspect", str(folder), "--json", "--fail-on-unsafe")
    assert r.returncode == 1, (r.returncode, r.stderr)
    doc = json.loads(r.stdout)
    assert any("os.system" in f["message"] for f in doc["findings"] if f["severity"] == "danger")
    assert run_cli("inspect", str(folder)).returncode == 2
    assert not marker.exists()
    code = (
        "import sys\nfrom torch.distributed.checkpoint import FileSystemReader\n"
        "try:\n    FileSystemReader(sys.argv[1]).read_metadata()\nexcept Exception:\n    pass"
    )
    subprocess.run([sys.executable, "-c", code, str(folder)], check=False, capture_output=True)
    assert marker.exists(), "torch's DCP reader did not run the payload (test bug)"


def test_whole_objects_of_torch_classes_are_clean(tmp_path: Path) -> None:
    """NEWOBJ makes an instance without running `__init__`: a pickled GradScaler, optimizer or
    scheduler runs only their `__setstate__`; the function references they hold are never
    called."""
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.GELU())
    opt = torch.optim.AdamW(m.parameters())
    things = {
        "scaler": torch.amp.GradScaler("cpu"),
        "opt": opt,
        "sched": torch.optim.lr_scheduler.MultiStepLR(opt, [1, 2]),
    }
    for name, obj in things.items():
        path = tmp_path / f"{name}.pt"
        torch.save(obj, path)
        ckpt = open_checkpoint(path)
        assert not dangers(ckpt) and not warnings_of(ckpt), (name, ckpt.findings)


def test_legacy_whole_module_pickle_opens(tmp_path: Path) -> None:
    """The legacy format stores a module's class as a ('module', cls, file, source) persistent
    id, which torch.load resolves to the class."""
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    path = tmp_path / "legacy_model.pt"
    torch.save(m, path, _use_new_zipfile_serialization=False)
    ckpt = open_checkpoint(path)
    assert ckpt.format == "torch-legacy"
    keys = sorted(t.state_dict_key for _, t in ckpt.tensors())
    assert keys == sorted(m.state_dict()), keys
    assert not dangers(ckpt) and not warnings_of(ckpt), ckpt.findings


def test_weights_only_report_judges_a_reference_as_called() -> None:
    """Allowing a global in torch's safe_globals lets the file call it: getattr is dangerous to
    allow, a torch function is not benign, although merely naming either runs nothing."""
    from ckptui.analysis.training.weights_only import _verdict

    assert _verdict("builtins.getattr")[1] == "dangerous"
    assert _verdict("torch.functional.einsum")[0] is False
    assert _verdict("torch.nn.modules.linear.Linear")[0] is True
