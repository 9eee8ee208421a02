"""Hostile inputs (issue 21): each is hand-built, and each ends in one line on stderr with exit 2
(or a correct result) in bounded time and memory, never a traceback or an unbounded inflate.

The CLI runs in a subprocess under an address-space limit where memory is the point, so a
regression that inflates a bomb dies there instead of swapping the machine.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import torch

import ckptui.export.atomic as atomic_mod
from ckptui.cli.main import main
from ckptui.formats import open_checkpoint
from ckptui.formats.torchzip import MAX_INFLATED_PICKLE_BYTES
from ckptui.unpickler.recorded import MAX_DIMS
from tests.conftest import child_env

_MEM_LIMIT = 1 << 30  # far above what ckptui needs to refuse, far below an inflated bomb


def run_cli(
    *args: str, limit: int | None = _MEM_LIMIT, timeout: float = 60
) -> subprocess.CompletedProcess:
    """`ckptui ARGS` in a fresh interpreter, under an address-space cap when `limit` is set."""

    def cap() -> None:
        import resource

        if limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", "ckptui", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        preexec_fn=cap,
    )


def assert_one_line_error(p: subprocess.CompletedProcess, *needles: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr[-2000:]
    assert "Traceback" not in p.stderr
    for n in needles:
        assert n in lines[0], lines[0]


# --- decompression bomb ---------------------------------------------------------------------


def _rezip(src: Path, dst: Path, pkl_stream) -> None:
    """Copy torch's zip `src` to `dst`, with data.pkl DEFLATE-compressed from `pkl_stream()`
    chunks (torch writes records stored; only a hand-made file compresses one)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if info.filename.endswith("/data.pkl"):
                zi = zipfile.ZipInfo(info.filename)
                zi.compress_type = zipfile.ZIP_DEFLATED
                with zout.open(zi, "w", force_zip64=True) as f:
                    for chunk in pkl_stream():
                        f.write(chunk)
            else:
                zout.writestr(info, zin.read(info))


def _zeros(total: int):
    def gen():
        block = bytes(1 << 22)
        left = total
        while left > 0:
            yield block[: min(left, len(block))]
            left -= len(block)

    return gen


def _real_pth(tmp_path: Path) -> Path:
    p = tmp_path / "real.pth"
    torch.save({"w": torch.zeros(3)}, p)
    return p


def test_compressed_data_pkl_bomb_is_refused_without_inflating(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.pth"
    # ~1.5 GB of zeros deflates to ~1.5 MB; inflated whole it would not fit under _MEM_LIMIT
    _rezip(_real_pth(tmp_path), bomb, _zeros(MAX_INFLATED_PICKLE_BYTES * 6))
    assert bomb.stat().st_size < 4 << 20
    p = run_cli("inspect", str(bomb))
    assert_one_line_error(p, "data.pkl", "compressed", "inflates at most")


def test_lying_inflated_size_is_capped_by_the_stream(tmp_path: Path) -> None:
    """The central directory claims 100 bytes; the stream holds 600 MB: at most the claim (plus
    one chunk) is inflated, and the CRC mismatch is one line."""
    bomb = tmp_path / "liar.pth"
    _rezip(_real_pth(tmp_path), bomb, _zeros(600 << 20))
    data = bytearray(bomb.read_bytes())
    cd = data.rfind(b"PK\x01\x02", 0, data.find(b"PK\x05\x06"))
    name_at = None
    at = 0
    while (at := data.find(b"PK\x01\x02", at)) >= 0:  # the data.pkl central record
        n = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46 : at + 46 + n].endswith(b"/data.pkl"):
            name_at = at
            break
        at += 4
    assert name_at is not None and cd >= 0
    extra_len = struct.unpack_from("<H", data, name_at + 30)[0]
    n = struct.unpack_from("<H", data, name_at + 28)[0]
    extra = name_at + 46 + n
    # zip64 extra field holds the real sizes (force_zip64): the first is the uncompressed size
    end = extra + extra_len
    while extra < end:
        tag, size = struct.unpack_from("<HH", data, extra)
        if tag == 1:
            struct.pack_into("<Q", data, extra + 4, 100)
            break
        extra += 4 + size
    else:
        struct.pack_into("<I", data, name_at + 24, 100)
    bomb.write_bytes(bytes(data))
    p = run_cli("inspect", str(bomb))
    assert p.returncode == 2, p.stderr[-2000:]
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


def test_small_compressed_data_pkl_still_reads(tmp_path: Path) -> None:
    """A benign compressed data.pkl under the cap is read, not refused."""
    src = _real_pth(tmp_path)
    with zipfile.ZipFile(src) as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    out = tmp_path / "deflated.pth"
    _rezip(src, out, lambda: iter([pkl]))
    p = run_cli("inspect", str(out))
    assert p.returncode == 0, p.stderr[-2000:]
    assert "w" in p.stdout


# --- slow inputs: safetensors shapes --------------------------------------------------------


def _safetensors(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_million_dim_safetensors_shape_is_one_line_fast(tmp_path: Path) -> None:
    """A shape of 1,000,000 ones was quadratic (stride.insert(0, ...)); now refused by count."""
    f = _safetensors(
        tmp_path / "dims.safetensors",
        {"w": {"dtype": "F32", "shape": [1] * 1_000_000, "data_offsets": [0, 4]}},
        bytes(4),
    )
    t0 = time.monotonic()
    p = run_cli("inspect", str(f), timeout=30)
    assert_one_line_error(p, "'w'", "1,000,000 dims", f"at most {MAX_DIMS}")
    assert len(p.stderr) < 300
    assert time.monotonic() - t0 < 30


def test_max_dims_safetensors_shape_reads_with_torch_strides(tmp_path: Path) -> None:
    """MAX_DIMS dims is what torch holds: read, with the strides torch gives that shape."""
    shape = [1] * (MAX_DIMS - 2) + [2, 3]
    f = _safetensors(
        tmp_path / "deep.safetensors",
        {"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 24]}},
        bytes(24),
    )
    ((_, t),) = list(open_checkpoint(str(f)).tensors())
    assert t.shape == tuple(shape)
    assert t.stride == torch.zeros(shape).stride()


# --- export target errors -------------------------------------------------------------------


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".ckptui-tmp"))


def test_export_into_proc_is_one_line(tmp_path: Path, capsys) -> None:
    src = tmp_path / "two.pth"
    torch.save({"a": torch.zeros(1000), "b": torch.zeros(1000)}, src)
    shards = ["--format", "safetensors", "--max-shard-size", "4KB"]  # shards.py's temp path
    for target, extra in (
        ("/proc/self/out.pth", []),
        ("/proc/version", ["--force"]),
        ("/proc/self/m.safetensors", shards),
    ):
        assert main(["export", str(src), "-o", target, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "/proc/" in err[0] and "cannot write" in err[0], err


def test_export_into_an_unwritable_folder_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    """EPERM/EACCES creating the temp file (a read-only folder; root ignores chmod, so the
    refusal is the kernel's answer to mkstemp, made here the way the kernel makes it)."""
    src = _real_pth(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()

    def refuse(*_a, **_k):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(atomic_mod.tempfile, "mkstemp", refuse)
    assert main(["export", str(src), "-o", str(ro / "out.pth")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Permission denied" in err[0] and "out.pth" in err[0], err
    assert list(ro.iterdir()) == []


def test_export_into_a_read_only_folder_for_real(tmp_path: Path, capsys) -> None:
    if os.geteuid() == 0:
        return  # root writes through mode bits; the monkeypatched test above covers it
    src = _real_pth(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["export", str(src), "-o", str(ro / "out.pth")]) == 2
    finally:
        ro.chmod(0o755)
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert list(ro.iterdir()) == []


def test_stale_temp_of_a_killed_export_is_cleaned_a_live_one_kept(tmp_path: Path) -> None:
    src = _real_pth(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    stale = out / ".model.pth.ab12cd_9.ckptui-tmp"  # what SIGKILL leaves: no one holds it
    stale.write_bytes(b"partial")
    other = out / ".other.pth.ab12cd_9.ckptui-tmp"  # another target's: not ours to judge
    other.write_bytes(b"x")
    live = out / ".model.pth.zz99yy_8.ckptui-tmp"  # a concurrent export's: locked
    live.write_bytes(b"busy")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
                "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)"
            ),
            str(live),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["export", str(src), "-o", str(out / "model.pth")]) == 0
    finally:
        holder.kill()
        holder.wait()
    assert _temps(out) == sorted([other.name, live.name])
    assert (out / "model.pth").exists()


def test_sigquit_during_an_export_leaves_no_temp_file(tmp_path: Path) -> None:
    """The write is held (a stalled disk or server) so the signal lands mid-export."""
    src = _real_pth(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    script = (
        "import sys, time\n"
        "import ckptui.export.run as r\n"
        "def held(*a, **k):\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
        "r.write = held\n"
        "from ckptui.cli.main import main\n"
        "raise SystemExit(main(sys.argv[1:]))\n"
    )
    env = child_env()
    argv = [sys.executable, "-c", script, "export", str(src), "-o", str(out / "m.pth")]
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "writing"
        assert len(_temps(out)) == 1  # the temp exists while the write is held
        proc.send_signal(signal.SIGQUIT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "interrupted" in err, err
    assert list(out.iterdir()) == []


# --- one object referenced many times ----------------------------------------------------------


def shared_dict_pickle(n: int) -> bytes:
    """`{"shared": d, "refs": [d] * n}` by hand: `d` is memoised once (BINPUT 1) and each list
    item is a 2-byte BINGET of it, so n references cost 2n bytes of file."""

    def text(s: str) -> bytes:
        b = s.encode()
        return b"X" + struct.pack("<I", len(b)) + b  # BINUNICODE

    return b"".join(
        [
            b"\x80\x02}q\x00(",  # PROTO 2, the root dict (memo 0), MARK
            text("shared"),
            b"}q\x01(" + text("lr") + b"G" + struct.pack(">d", 0.1),  # d (memo 1) = {lr: 0.1,
            text("name") + text("shared") + b"u",  # name: "shared"}, SETITEMS
            text("refs") + b"]q\x02(",  # the list (memo 2), MARK
            b"h\x01" * n,  # BINGET 1, n times
            b"eu.",  # APPENDS, SETITEMS, STOP
        ]
    )


def test_a_dict_referenced_100k_times_is_written_as_references(tmp_path: Path) -> None:
    """Each later occurrence is `{"key", "kind": "ref", "type", "target"}` naming the first
    path, never a copy of the dict; `inspect`, `why` and `--json` all finish under the 1 GB
    cap (tests/benchmarks/bench_safety.py --refs measures time and memory at 10^6)."""
    n = 100_000
    path = tmp_path / "refs.pkl"
    path.write_bytes(shared_dict_pickle(n))
    p = run_cli("inspect", "--json", str(path), timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    doc = json.loads(p.stdout)
    shared, refs = doc["tree"]["children"]
    assert shared == {
        "key": "shared",
        "kind": "mapping",
        "type": "dict",
        "children": [
            {"key": "lr", "kind": "value", "type": "float", "value": 0.1},
            {"key": "name", "kind": "value", "type": "str", "value": "shared"},
        ],
    }
    assert refs["key"] == "refs" and len(refs["children"]) == n
    assert refs["children"] == [
        {"key": i, "kind": "ref", "type": "dict", "target": ["shared"]} for i in range(n)
    ]
    assert '{"key": 99999, "kind": "ref", "type": "dict", "target": ["shared"]}]}' in p.stdout
    assert len(p.stdout) < 70 * n  # one short entry per reference
    text = run_cli("inspect", str(path), timeout=300)
    assert text.returncode == 0, text.stderr[-2000:]
    assert "[0]  → same object as shared" in text.stdout
    assert len(text.stdout.splitlines()) < 100  # 50 children shown, then a count of the rest
    why = run_cli("why", "--json", str(path), timeout=300)
    assert why.returncode == 0, why.stderr[-2000:]
    assert json.loads(why.stdout)["file_bytes"] == path.stat().st_size
