"""`ckptui inspect` as a user runs it: the JSON contract, the rich tree, and bad input."""

from __future__ import annotations

import json
import os
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli, run_python, save_with_location


def test_json_contract(train_ckpt: Path) -> None:
    r = run_cli("inspect", str(train_ckpt), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["path"] == str(train_ckpt)
    assert doc["format"] == "torch-zip"
    assert doc["file_bytes"] == train_ckpt.stat().st_size
    tree = doc["tree"]
    assert tree["key"] is None and tree["kind"] == "mapping" and tree["type"] == "dict"
    assert [c["key"] for c in tree["children"]] == [
        "model",
        "optimizer",
        "scheduler",
        "epoch",
        "iteration",
    ]
    loaded = torch.load(train_ckpt, weights_only=True)
    by_path = {tuple(t["path"]): t for t in doc["tensors"]}
    w = by_path[("model", "conv1.weight")]
    ref = loaded["model"]["conv1.weight"]
    assert w == {
        **w,
        "shape": [8, 3, 3, 3],
        "dtype": "float32",
        "device": "cpu",
        "nbytes": ref.numel() * 4,
        "storage_nbytes": ref.untyped_storage().nbytes(),
        "storage_offset": 0,
        "stride": list(ref.stride()),
    }
    assert isinstance(w["storage_key"], str)
    # optimizer state keys are ints in paths, as in Python
    assert ("optimizer", "state", 0, "exp_avg") in by_path
    assert all(set(f) >= {"kind", "severity", "path", "message"} for f in doc["findings"])


def test_json_lists_a_tensor_under_each_path(tmp_path: Path) -> None:
    t = torch.ones(3)
    p = tmp_path / "tied.pt"
    torch.save({"a": t, "b": t, "c": t[1:]}, p)
    doc = json.loads(run_cli("inspect", str(p), "--json").stdout)
    paths = [t["path"] for t in doc["tensors"]]
    assert paths == [["a"], ["b"], ["c"]]
    assert len({t["storage_key"] for t in doc["tensors"]}) == 1
    assert doc["tree"]["children"][1] == {
        "key": "b",
        "kind": "ref",
        "type": "torch.Tensor",
        "target": ["a"],
    }


def test_human_tree_and_total(tmp_path: Path) -> None:
    p = tmp_path / "gpu.pt"
    save_with_location({"conv.weight": torch.zeros(64, 3, 7, 7)}, p, "cuda:1")
    r = run_cli("inspect", str(p))
    assert r.returncode == 0, r.stderr
    assert "conv.weight" in r.stdout
    assert "[64, 3, 7, 7] float32" in r.stdout and "cuda:1" in r.stdout
    assert "36.8 KiB" in r.stdout
    assert "1 tensor in 1 storage" in r.stdout


def test_large_mapping_is_elided_by_default(tmp_path: Path) -> None:
    p = tmp_path / "many.pt"
    torch.save({f"k{i}": i for i in range(500)}, p)
    r = run_cli("inspect", str(p))
    assert "450 more (use --all)" in r.stdout
    assert "k499" in run_cli("inspect", str(p), "--all").stdout


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = tmp_path / "good.pt"
    torch.save({"a": torch.ones(100), "b": torch.zeros(5)}, good)
    raw = good.read_bytes()
    cases: dict[str, tuple[Path, str]] = {}

    def add(name: str, data: bytes, expect: str) -> None:
        p = tmp_path / name
        p.write_bytes(data)
        cases[name] = (p, expect)

    cases["missing"] = (tmp_path / "nope.pt", "no such file")
    d = tmp_path / "somedir"
    d.mkdir()
    (d / "config.json").write_text("{}")  # a folder, but nothing in it is a checkpoint
    cases["directory"] = (d, "no checkpoint files in this folder")
    add("empty.pt", b"", "empty file")
    add("random.bin", os.urandom(4096), "not a checkpoint")
    add("notes.txt", b"epoch 3: loss 0.12\nthis is just a text file\n", "text file")
    add("truncated.pt", raw[: len(raw) // 2], "corrupt zip")
    # corrupt data.pkl: garbage in the middle of the stored pickle
    with zipfile.ZipFile(good) as z:
        info = z.getinfo("good/data.pkl")
    start = info.header_offset + 30 + len(info.filename)
    local_extra = struct.unpack_from("<H", raw, info.header_offset + 28)[0]
    start += local_extra
    bad = bytearray(raw)
    bad[start + 2 : start + 40] = b"\xff" * 38
    add("badpickle.pt", bytes(bad), "corrupt pickle")
    # safetensors with a bogus header length
    add(
        "bogus.safetensors",
        struct.pack("<Q", 10**12) + b'{"a": 1}' + b"\0" * 64,
        "larger than the file",
    )
    add("bogus2.safetensors", struct.pack("<Q", 200) + b"{" + b" " * 20, "larger than the file")
    return cases


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "directory",
        "empty.pt",
        "random.bin",
        "notes.txt",
        "truncated.pt",
        "badpickle.pt",
        "bogus.safetensors",
        "bogus2.safetensors",
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path: Path, case: str) -> None:
    path, expect = _bad_inputs(tmp_path)[case]
    r = run_cli("inspect", str(path))
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"ckptui: {path}: ")
    assert expect in lines[0].lower(), lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_debug_shows_traceback(tmp_path: Path) -> None:
    p = tmp_path / "empty.pt"
    p.write_bytes(b"")
    r = run_cli("inspect", str(p), "--debug")
    assert r.returncode == 2 and "Traceback" in r.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_permission_denied(tmp_path: Path) -> None:
    p = tmp_path / "locked.pt"
    torch.save({"a": 1}, p)
    p.chmod(0)
    r = run_cli("inspect", str(p))
    assert r.returncode == 2 and "permission denied" in r.stderr


def test_permission_denied_in_core(tmp_path: Path, monkeypatch) -> None:
    """Root ignores file modes, so also prove the mapping directly."""
    from ckptui.core.errors import NotReadable
    from ckptui.formats import open_checkpoint

    p = tmp_path / "x.pt"
    p.write_bytes(b"\x80\x02K\x01.")

    real_open = os.open

    def deny(path, *a, **k):
        if str(path) == str(p):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr("ckptui.formats.source.os.open", deny)
    with pytest.raises(NotReadable, match="permission denied"):
        open_checkpoint(p)


def test_usage_error_exits_2() -> None:
    r = run_cli()
    assert r.returncode == 2 and "PATH" in r.stderr


HEADLESS = ("core", "unpickler", "formats", "tensors", "analysis", "export", "data", "report.json")


def test_core_imports_no_ui_or_torch() -> None:
    """The headless layers never import textual, rich, torch or numpy at import time (STYLE.md:
    prove it in a subprocess). The modules are found by walking the packages, so a new module is
    checked without being listed here."""

    code = (
        "import importlib, pkgutil, sys\n"
        f"layers = {HEADLESS!r}\n"
        "names = []\n"
        "for layer in layers:\n"
        "    pkg = importlib.import_module('ckptui.' + layer)\n"
        "    names.append(pkg.__name__)\n"
        "    names += [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "assert len(names) > 60, names\n"
        "bad = [m for m in ('textual', 'rich', 'torch', 'numpy') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print(len(names))\n"
    )
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) > 60


@pytest.mark.parametrize("case", ["missing", "directory"])
def test_browser_with_bad_path_exits_2_before_starting(tmp_path: Path, case: str) -> None:
    path, expect = _bad_inputs(tmp_path)[case]
    r = run_cli(str(path))
    assert r.returncode == 2
    assert r.stderr.strip() == f"ckptui: {path}: {expect}" or expect in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert "\x1b[" not in r.stdout  # the full-screen app never started


def test_inspect_runs_without_a_collection_and_leaves_gc_on(
    train_ckpt: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`inspect` keeps the cyclic collector off for the whole command (each bulk stage that
    turned it back on was followed by a collection of everything it had made), and as it found
    it after."""
    import gc

    from ckptui.cli import inspect_cmd

    args = inspect_cmd.parser().parse_args(["--json", str(train_ckpt)])
    starts: list[int] = []
    seen: list[tuple[int, bool]] = []  # (collections, collector on) as the command ends
    real = inspect_cmd._run

    def run(a: object) -> int:
        code = real(a)
        seen.append((len(starts), gc.isenabled()))
        return code

    def count(phase: str, info: dict) -> None:
        if phase == "start":
            starts.append(info["generation"])

    monkeypatch.setattr(inspect_cmd, "_run", run)
    assert gc.isenabled()
    gc.callbacks.append(count)
    try:
        assert inspect_cmd.run(args) == 0
    finally:
        gc.callbacks.remove(count)
    assert seen == [(0, False)]
    assert gc.isenabled()
    assert json.loads(capsys.readouterr().out)["format"] == "torch-zip"
