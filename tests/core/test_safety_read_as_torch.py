"""Every file read as torch.load reads it: tricks that make a scanner read other bytes than torch.

Hand-built files, one test per trick, named for it: a legacy tar whose first member's name is a
pickle, magic numbers that are not the magic int but pass torch's `!=` check (or are the magic
int spelt in hex), a FRAME shorter than the BINBYTES inside it, a STACK_GLOBAL whose name is
computed at load time, BUILD on a module object. Each payload, if run, creates a marker file;
`assert_live` proves with real `torch.load(weights_only=False)` (or `pickle.load`) in a
subprocess that it would, and ckptui must report a `danger` naming the callable.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from ckptui.formats import open_checkpoint

from .test_safety import (
    SG,
    Bin,
    Build,
    Call,
    G,
    Raw,
    assert_flags,
    assert_live,
    dangers,
    legacy_pickles,
    make_pickle,
    opcodes,
    open_inert,
    run_cli,
    sh,
)

torch = pytest.importorskip("torch")


def payload(marker: Path) -> Any:
    return Call(G("posix", "system"), (sh(marker),))


def assert_unsafe_cli(path: Path) -> None:
    r = run_cli("inspect", str(path), "--json", "--fail-on-unsafe")
    assert r.returncode == 1, (r.returncode, r.stderr)


# -- legacy tar ------------------------------------------------------------------------------


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def legacy_tar(storages_first: bytes | None = None, first_member: str | None = None) -> bytes:
    """A legacy tar checkpoint of {'w': tensor([1., 2., 3.])}, as torch < 0.4 wrote them."""
    storages = make_pickle(1) if storages_first is None else storages_first
    storages += make_pickle((0, "cpu", G("torch", "FloatStorage")))
    storages += struct.pack("<q", 3) + struct.pack("<3f", 1, 2, 3)
    storages += make_pickle([])
    tensors = make_pickle(1) + make_pickle((1, 0, G("torch", "FloatTensor")))
    tensors += struct.pack("<ii", 1, 0) + struct.pack("<3q", 3, 1, 0)
    main = b"\x80\x02}" + opcodes("w") + opcodes("1") + b"Qs."
    members = [("storages", storages), ("tensors", tensors), ("pickle", main)]
    if first_member is not None:
        members.insert(0, (first_member, b""))
    return _tar(members)


def test_legacy_tar_checkpoint_opens_like_torch(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    path.write_bytes(legacy_tar())
    code = "import sys, torch; print(torch.load(sys.argv[1], weights_only=False)['w'].tolist())"
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=False
    )
    assert out.stdout.strip() == "[1.0, 2.0, 3.0]", out.stderr[-2000:]
    ckpt = open_checkpoint(path)
    assert ckpt.format == "torch-legacy-tar"
    ((p, t),) = list(ckpt.tensors())
    assert p == ("w",) and t.shape == (3,) and t.dtype == "float32"
    st = ckpt.storages[t.storage_key]
    assert path.read_bytes()[st.data_offset : st.data_offset + 12] == struct.pack("<3f", 1, 2, 3)
    assert not dangers(ckpt)


def test_tar_polyglot_first_member_name_is_a_pickle(tmp_path: Path) -> None:
    """The tar's first bytes (the first member's name) are the protocol-0 pickle `N.`; read as a
    pickle the file is clean, but torch.load opens it as a tar and unpickles `storages`."""
    marker = tmp_path / "PWNED"
    evil = make_pickle(payload(marker), proto=0)[:-1] + b"0" + make_pickle(1, proto=0)
    path = tmp_path / "poly.pt"
    path.write_bytes(legacy_tar(storages_first=evil, first_member="N."))
    assert path.read_bytes()[:2] == b"N."
    ckpt = open_inert(path, marker)
    assert_flags(ckpt, "posix.system")
    assert_live(path, marker, "torch")
    assert_unsafe_cli(path)


# -- the magic number --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def legacy_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("legacy") / "l.pt"
    torch.save({"w": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    return path.read_bytes()


def _with_payload_in_sys_info(legacy: bytes, first: bytes, marker: Path) -> bytes:
    """`first` instead of the magic pickle, and the sys_info pickle replaced by a payload."""
    spans = legacy_pickles(legacy)
    return (
        first
        + legacy[spans[1][0] : spans[1][1]]
        + make_pickle(payload(marker))
        + legacy[spans[3][0] :]
    )


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(make_pickle(G("unittest.mock", "ANY")), id="mock_ANY"),
        pytest.param(
            make_pickle(
                Build(
                    Call(
                        G("numpy.core.multiarray", "_reconstruct"),
                        (G("numpy", "ndarray"), (0,), Bin(b"b")),
                    ),
                    (
                        1,
                        (1,),
                        Call(G("numpy", "dtype"), ("O8", False, True)),
                        False,
                        [G("unittest.mock", "ANY")],
                    ),
                )
            ),
            id="object_array",
        ),
    ],
)
def test_magic_number_that_compares_equal_reads_on(
    tmp_path: Path, legacy_bytes: bytes, first: bytes
) -> None:
    """torch's `if magic_number != MAGIC_NUMBER` is falsy for these: it reads the next pickles."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "odd.pt"
    path.write_bytes(_with_payload_in_sys_info(legacy_bytes, first, marker))
    ckpt = open_inert(path, marker)
    assert_flags(ckpt, "posix.system")
    assert_live(path, marker, "torch")
    assert_unsafe_cli(path)


@pytest.mark.parametrize(
    "magic", [b"I0x1950A86A20F9469CFC6C\n.", b"L0x1950A86A20F9469CFC6CL\n."], ids=["INT", "LONG"]
)
def test_magic_number_in_hex_is_the_magic_number(
    tmp_path: Path, legacy_bytes: bytes, magic: bytes
) -> None:
    """pickle parses INT and LONG with int(x, 0): hex is the magic number, and the file is a
    legacy checkpoint whose other pickles torch runs."""
    marker = tmp_path / "PWNED"
    path = tmp_path / "hex.pt"
    path.write_bytes(_with_payload_in_sys_info(legacy_bytes, magic, marker))
    ckpt = open_inert(path, marker)
    assert ckpt.format == "torch-legacy"
    assert [p for p, _ in ckpt.tensors()] == [("w",)]
    assert_flags(ckpt, "posix.system")
    assert_live(path, marker, "torch")


# -- FRAME desync ------------------------------------------------------------------------------


def test_frame_shorter_than_the_binunicode_inside_it(tmp_path: Path) -> None:
    """A FRAME large enough to be read whole ends inside a BINUNICODE that declares more:
    CPython's C file unpickler drops the frame's rest and reads the string from after the frame
    (BINBYTES, read with readinto, stays contiguous), so it runs opcodes (a GLOBAL and REDUCE)
    that a contiguous reader takes for text."""
    marker = tmp_path / "PWNED"
    hidden = opcodes(payload(marker)) + b"0"  # run it, POP the result
    n = 16
    # after the frame: n bytes that CPython takes as the payload; a contiguous reader takes
    # only n - 3 of them and resumes at `N`, then SHORT_BINBYTES swallows `hidden`
    after = b"x" * (n - 3) + b"NC" + bytes([len(hidden)]) + hidden + b"."
    filler = b"N0" * 70_000  # None, POP: a frame bigger than any read buffer (read whole)
    frame = filler + b"X" + struct.pack("<I", n) + b"N0N"  # 3 payload bytes inside the frame
    path = tmp_path / "frame.pkl"
    path.write_bytes(b"\x80\x04\x95" + struct.pack("<Q", len(frame)) + frame + after)
    ckpt = open_inert(path, marker)
    assert_flags(ckpt, "posix.system")
    assert any(f.kind == "frame_desync" for f in ckpt.findings), ckpt.findings
    assert_live(path, marker, "torch")


def test_real_framed_pickle_has_no_desync(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "big.pkl"
    path.write_bytes(pickle.dumps({"k": list(range(50_000)), "b": b"x" * 300_000}, protocol=5))
    ckpt = open_checkpoint(path)
    assert not any(f.kind == "frame_desync" for f in ckpt.findings)


# -- globals made at load time -------------------------------------------------------------------


def test_dynamic_stack_global_name_computed_by_a_call(tmp_path: Path) -> None:
    """STACK_GLOBAL of a module name that `str.join` computes: pickle imports what it returns."""
    marker = tmp_path / "PWNED"
    name = Call(Call(G("builtins", "getattr"), ("", "join")), (["po", "six"],))
    dyn = Raw(opcodes(name) + opcodes("system") + b"\x93")
    path = tmp_path / "dyn.pkl"
    path.write_bytes(make_pickle(Call(dyn, (sh(marker),)), proto=4))
    ckpt = open_inert(path, marker)
    assert_flags(ckpt, "STACK_GLOBAL")
    assert_live(path, marker)
    assert_unsafe_cli(path)


def test_build_on_a_module_object_monkey_patches_it(tmp_path: Path) -> None:
    """BUILD on `torch.serialization` (a module, via STACK_GLOBAL of torch + serialization)
    overwrites its attributes: code that runs later runs what the file chose."""
    marker = tmp_path / "PWNED"
    patch = Build(SG("torch", "serialization"), (None, {"ckptui_marker": "set"}))
    path = tmp_path / "patch.pkl"
    path.write_bytes(make_pickle([patch, 1], proto=4))
    ckpt = open_inert(path, marker)
    assert_flags(ckpt, "torch.serialization")
    code = (
        "import pickle, sys, torch.serialization as s\n"
        "pickle.load(open(sys.argv[1], 'rb'))\n"
        f"if getattr(s, 'ckptui_marker', None) == 'set': open({str(marker)!r}, 'w').close()"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=False, capture_output=True)
    assert marker.exists(), "BUILD did not patch the module (test bug)"


# -- TorchScript __setstate__ --------------------------------------------------------------------

_SCRIPTED = """
import sys, torch

class M(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.ones(2)

    def forward(self, x):
        return x + self.w

    @torch.jit.export
    def __getstate__(self):
        return (self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]):
        self.training = state[1]
        self.w = state[0] + torch.from_file(MARKER, True, 2)

torch.jit.save(torch.jit.script(M()), sys.argv[1])
"""


def test_torchscript_setstate_that_creates_a_file(tmp_path: Path) -> None:
    """CVE-2025-32434's shape: torch.load hands a TorchScript archive to torch.jit.load, which
    runs each class's `__setstate__`; this one maps (creates) a file with torch.from_file."""
    marker = tmp_path / "PWNED"
    script = tmp_path / "make.py"
    script.write_text(_SCRIPTED.replace("MARKER", repr(str(marker))))
    path = tmp_path / "scripted.pt"
    subprocess.run([sys.executable, str(script), str(path)], check=True, capture_output=True)
    assert not marker.exists()
    ckpt = open_inert(path, marker)
    assert ckpt.format == "torchscript"
    assert_flags(ckpt, "__setstate__")
    assert any("from_file" in m for m in dangers(ckpt))
    assert_live(path, marker, "torch")
    assert_unsafe_cli(path)
