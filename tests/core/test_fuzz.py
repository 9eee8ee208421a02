"""Seeded mutation fuzzing of every reader: a damaged file opens or fails with one clean error.

Real small checkpoints of each format are written once (torch zip, legacy, TorchScript,
safetensors, plain pickles) and mutated a fixed number of times per format: flipped bytes,
truncation, chunks spliced from another file, duplicated and deleted ranges, length fields
(pickle opcode arguments, zip directory fields, the safetensors header length) overwritten with
huge values. Every outcome must be a `Checkpoint` (whose JSON view also builds) or a `CkptError`
with a one-line message; any other exception, a hang (5 s per open) or a memory spike
(256 MB per open) fails the test with the seed, the mutation and the saved file.

The loop runs in a child process under RLIMIT_AS, so a runaway allocation or a crash fails one
test instead of taking pytest down. Reproduce a failure with
`python tests/core/test_fuzz.py --replay <saved file>` (prints the traceback), or regenerate one
mutant with `python tests/core/test_fuzz.py --worker SEEDDIR FORMAT N SEED OUTDIR --only I`.
`CKPTUI_FUZZ_SEED` and `CKPTUI_FUZZ_N` change the base seed and the budget.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import random
import re
import signal
import struct
import sys
import time
import traceback
import tracemalloc
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script (the worker): make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptui.core.errors import CkptError
from ckptui.core.tree import Checkpoint
from ckptui.formats import open_checkpoint
from ckptui.report.json.inspect import checkpoint_json
from tests.tools.child import run_in_child

BASE_SEED = int(os.environ.get("CKPTUI_FUZZ_SEED", "1729"))
N_MUTANTS = int(os.environ.get("CKPTUI_FUZZ_N", "600"))
TIME_LIMIT_S = 5
PEAK_LIMIT = 256 << 20
ADDRESS_SPACE_LIMIT = 2 << 30

SEED_FILES = {
    "torch-zip": "zip.pt",
    "torch-legacy": "legacy.pt",
    "torchscript": "script.pt",
    "safetensors": "weights.safetensors",
    "pickle-nested": "state_dict.pkl",
    "pickle-misc": "misc_p2.pkl",
}


# -- seed checkpoints (parent process, with torch) ---------------------------------------------


def write_seeds(d: Path) -> None:
    """Small real checkpoints of every format ckptui reads."""
    import collections
    import datetime

    import numpy as np
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    base = torch.arange(12, dtype=torch.float32)
    obj = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": 3,
        "args": {"lr": 0.1, "name": "run", "layers": [4, 3, 2]},
        "half": torch.ones(2, 2, dtype=torch.float16),
        "view": base[2:8].view(2, 3),
        "base": base,
        "flags": torch.tensor([True, False]),
    }
    torch.save(obj, d / SEED_FILES["torch-zip"])
    torch.save(obj, d / SEED_FILES["torch-legacy"], _use_new_zipfile_serialization=False)

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3, 2)
            self.register_buffer("scale", torch.tensor([2.0]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) * self.scale

    with warnings.catch_warnings():  # torch.jit is deprecated, TorchScript files are not
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(Tiny()), str(d / SEED_FILES["torchscript"]))
    save_file(
        {
            "a": torch.randn(16, 8),
            "b": torch.zeros(32, dtype=torch.int64),
            "c": torch.ones(3, dtype=torch.bfloat16),
        },
        str(d / SEED_FILES["safetensors"]),
        metadata={"format": "pt", "note": "seed"},
    )
    with (d / SEED_FILES["pickle-nested"]).open("wb") as f:
        pickle.dump({"w": torch.randn(3, 2), "b": torch.zeros(2)}, f, protocol=4)
    misc = {
        "arr": np.arange(6, dtype=np.float32).reshape(2, 3),
        "scalar": np.float64(2.5),
        "count": collections.Counter("abcab"),
        "dd": collections.defaultdict(list, {"k": [1]}),
        "od": collections.OrderedDict(x=1),
        "when": datetime.datetime(2024, 1, 2, 3, 4, 5),
        "set": {1, 2},
        "big": 2**70,
        "bytes": bytes(range(100)),
        "text": "héllo",
        "nested": [[1, 2], (3, 4), {"a": None}],
    }
    with (d / SEED_FILES["pickle-misc"]).open("wb") as f:
        pickle.dump(misc, f, protocol=2)


# -- where the length fields are -------------------------------------------------------------

# opcode name -> width of its length/index argument (right after the opcode byte)
_PICKLE_FIELDS = {
    "BINUNICODE": 4, "BINBYTES": 4, "BINSTRING": 4, "LONG4": 4, "LONG_BINPUT": 4,
    "LONG_BINGET": 4, "BININT": 4, "BINUNICODE8": 8, "BINBYTES8": 8, "BYTEARRAY8": 8,
    "FRAME": 8, "SHORT_BINUNICODE": 1, "SHORT_BINBYTES": 1, "SHORT_BINSTRING": 1,
    "BINPUT": 1, "BINGET": 1, "LONG1": 1, "PROTO": 1, "BININT1": 1, "BININT2": 2,
}  # fmt: skip


def pickle_fields(data: bytes, start: int, depth: int = 0) -> tuple[list[tuple[int, int]], int]:
    """Length fields of the pickle at `start` (and of checkpoints embedded in its bytes)."""
    fields: list[tuple[int, int]] = []
    f = io.BytesIO(data)
    f.seek(start)
    end = start
    try:
        for op, arg, pos in pickletools.genops(f):
            width = _PICKLE_FIELDS.get(op.name)
            if width:
                fields.append((pos + 1, width))
            if (
                op.name in ("BINBYTES", "BINBYTES8", "SHORT_BINBYTES")
                and isinstance(arg, bytes)
                and depth < 2
                and len(arg) > 64
            ):
                inner = pos + 1 + width
                fields += all_fields(data[inner : inner + len(arg)], depth + 1, offset=inner)
            end = pos + 1
    except (ValueError, EOFError):
        pass
    return fields, end


def zip_fields(data: bytes) -> list[tuple[int, int]]:
    """EOCD, central directory and local header size/offset/method/flag fields."""
    fields: list[tuple[int, int]] = []
    eocd = data.rfind(b"PK\x05\x06")
    if eocd < 0:
        return fields
    fields += [(eocd + 8, 2), (eocd + 10, 2), (eocd + 12, 4), (eocd + 16, 4), (eocd + 20, 2)]
    p = struct.unpack_from("<I", data, eocd + 16)[0]
    while p >= 0 and data[p : p + 4] == b"PK\x01\x02":
        fields += [
            (p + 8, 2),
            (p + 10, 2),
            (p + 20, 4),
            (p + 24, 4),
            (p + 28, 2),
            (p + 30, 2),
            (p + 32, 2),
            (p + 42, 4),
        ]
        local = struct.unpack_from("<I", data, p + 42)[0]
        if data[local : local + 4] == b"PK\x03\x04":
            fields += [
                (local + 6, 2),
                (local + 8, 2),
                (local + 18, 4),
                (local + 22, 4),
                (local + 26, 2),
                (local + 28, 2),
            ]
        n, m, k = struct.unpack_from("<HHH", data, p + 28)
        p += 46 + n + m + k
    return fields


def all_fields(data: bytes, depth: int = 0, offset: int = 0) -> list[tuple[int, int]]:
    """Every (offset, width) worth overwriting with a huge value in this file."""
    fields: list[tuple[int, int]] = []
    if data[:4] == b"PK\x03\x04":
        fields += zip_fields(data)
        try:
            zf = zipfile.ZipFile(io.BytesIO(data))
            for zi in zf.infolist():
                if zi.filename.endswith(".pkl") and zi.compress_type == zipfile.ZIP_STORED:
                    n, m = struct.unpack_from("<HH", data, zi.header_offset + 26)
                    at = zi.header_offset + 30 + n + m
                    fields += pickle_fields(data, at, depth)[0]
        except (zipfile.BadZipFile, struct.error, ValueError):
            pass
    elif len(data) > 8 and data[8:9] == b"{":
        fields.append((0, 8))
    else:
        pos = 0
        for _ in range(5):  # legacy: 5 pickles in a row; plain: one
            f, end = pickle_fields(data, pos, depth)
            fields += f
            if end <= pos:
                break
            pos = end
    return [(offset + a, w) for a, w in fields]


# -- mutations ---------------------------------------------------------------------------------


def _interesting(width: int, size: int, rng: random.Random) -> int:
    top = (1 << (8 * width)) - 1
    return (
        rng.choice(
            [
                0,
                1,
                top,
                top >> 1,
                (top >> 1) + 1,
                size,
                size + 1,
                size * 2,
                rng.randrange(top + 1),
                top - 1,
            ]
        )
        & top
    )


def mutate(
    data: bytes, rng: random.Random, others: list[bytes], fields: list[tuple[int, int]]
) -> tuple[bytes, str]:
    """Apply 1-3 random mutations; returns the mutant and a description of what was done."""
    buf = bytearray(data)
    done: list[str] = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        n = len(buf)
        op = rng.choice(
            (
                "flip",
                "flip",
                "truncate",
                "splice",
                "dup",
                "delete",
                "field",
                "field",
                "field",
                "value",
            )
        )
        if n == 0:
            op = "splice"
        if op == "flip":
            k = rng.randint(1, 8)
            pos = [rng.randrange(n) for _ in range(k)]
            for p in pos:
                buf[p] = (
                    rng.randrange(256) if rng.random() < 0.5 else buf[p] ^ (1 << rng.randrange(8))
                )
            done.append(f"flip@{pos}")
        elif op == "truncate":
            cut = rng.randrange(n)
            del buf[cut:]
            done.append(f"truncate@{cut}")
        elif op == "splice":
            other = rng.choice(others)
            a = rng.randrange(max(1, len(other)))
            chunk = other[a : a + rng.randint(1, 512)]
            at = rng.randrange(n + 1)
            if rng.random() < 0.5:
                buf[at:at] = chunk
                done.append(f"insert@{at}:{len(chunk)}B")
            else:
                buf[at : at + len(chunk)] = chunk
                done.append(f"overwrite@{at}:{len(chunk)}B")
        elif op == "dup":
            a = rng.randrange(n)
            b = min(n, a + rng.randint(1, 1024))
            at = rng.randrange(n + 1)
            buf[at:at] = buf[a:b]
            done.append(f"dup[{a}:{b}]@{at}")
        elif op == "delete":
            a = rng.randrange(n)
            b = min(n, a + rng.randint(1, 256))
            del buf[a:b]
            done.append(f"delete[{a}:{b}]")
        elif op == "field" and fields:
            at, width = rng.choice(fields)
            if at + width <= n:
                v = _interesting(width, n, rng)
                buf[at : at + width] = v.to_bytes(width, "little")
                done.append(f"field@{at}/{width}={v:#x}")
        else:
            width = rng.choice((1, 2, 4, 8))
            at = rng.randrange(max(1, n - width + 1))
            v = _interesting(width, n, rng)
            buf[at : at + width] = v.to_bytes(width, "little")[: max(0, n - at)]
            done.append(f"value@{at}/{width}={v:#x}")
    return bytes(buf), "; ".join(done) or "none"


_WEIRD_JSON = [
    "9" * 5000,
    "-1",
    "1e400",
    "18446744073709551616",
    "0",
    "[]",
    "{}",
    "null",
    '"x"',
    "[" * 50 + "]" * 50,
    "[1, 2]",
    "true",
    "-0",
    "1.5",
    # plausible values, so that some mutants still open
    '"F32"',
    '"F16"',
    '"I64"',
    '"BF16"',
    '"U8"',
    '"F8_E4M3"',
    "[128]",
    "[4, 32]",
    "[0, 512]",
    "[512, 768]",
    "[768, 774]",
    "[]",
]


def mutate_safetensors_header(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Replace one JSON value token of the header; the length field is kept consistent."""
    (n,) = struct.unpack_from("<Q", data, 0)
    header = data[8 : 8 + n].decode("utf-8")
    tokens = [m.span() for m in re.finditer(r'-?\d+|"[^"]*"|\[[^\[\]]*\]', header)]
    a, b = rng.choice(tokens)
    new = rng.choice(_WEIRD_JSON)
    text = header[:a] + new + header[b:]
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :], f"json[{a}:{b}]={new[:20]!r}"


# -- the worker (child process, no torch) -----------------------------------------------------


class FuzzTimeout(BaseException):
    """Raised by SIGALRM; a BaseException so no reader's except clause swallows it."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise FuzzTimeout


def check_one(path: Path, outcomes: dict[str, int] | None = None) -> str | None:
    """Open `path`; None if the outcome is acceptable, else what went wrong.

    `outcomes` counts what happened ("opened" or the error class) when given.
    """
    tally = outcomes if outcomes is not None else {}
    signal.signal(signal.SIGALRM, _on_alarm)
    tracemalloc.reset_peak()
    signal.alarm(TIME_LIMIT_S)
    try:
        try:
            ckpt = open_checkpoint(path)
            if not isinstance(ckpt, Checkpoint):
                return f"returned {type(ckpt).__name__}, not a Checkpoint"
            list(ckpt.tensors())
            json.dumps(checkpoint_json(ckpt))
            tally["opened"] = tally.get("opened", 0) + 1
        except CkptError as e:
            tally[type(e).__name__] = tally.get(type(e).__name__, 0) + 1
            if "\n" in e.message or "\r" in e.message:
                return f"{type(e).__name__} message is not one line: {e.message!r}"
            if not e.message:
                return f"{type(e).__name__} with an empty message"
            if e.path != str(path):
                return f"{type(e).__name__} names {e.path!r}, not the file opened"
        finally:
            signal.alarm(0)
    except FuzzTimeout:
        return f"no answer within {TIME_LIMIT_S} s"
    except Exception as e:  # noqa: BLE001  # anything else escaping is the bug we look for
        tb = traceback.extract_tb(e.__traceback__)[-1]
        return (
            f"{type(e).__name__}: {str(e)[:300]!r} "
            f"(at {Path(tb.filename).name}:{tb.lineno} in {tb.name})"
        )
    peak = tracemalloc.get_traced_memory()[1]
    if peak > PEAK_LIMIT:
        return f"peak traced memory {peak >> 20} MB"
    return None


def run_worker(
    seed_dir: Path, fmt: str, n: int, seed: int, out: Path, only: int | None = None
) -> dict[str, Any]:
    """Open `n` mutants of the `fmt` seed; failing mutants are saved into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    data = (seed_dir / SEED_FILES[fmt]).read_bytes()
    others = [(seed_dir / f).read_bytes() for f in SEED_FILES.values()]
    fields = all_fields(data)
    target = out / f"mutant-{fmt}.bin"
    failures: list[dict[str, Any]] = []
    outcomes: dict[str, int] = {}
    tracemalloc.start()
    indices = range(n) if only is None else [only]
    for i in indices:
        rng = random.Random(f"{seed}:{fmt}:{i}")
        if fmt == "safetensors" and rng.random() < 0.3:
            mutant, desc = mutate_safetensors_header(data, rng)
        else:
            mutant, desc = mutate(data, rng, others, fields)
        target.write_bytes(mutant)
        # written before the open, so a crash of this process still names the culprit
        (out / "current.json").write_text(
            json.dumps({"format": fmt, "seed": seed, "index": i, "mutation": desc})
        )
        problem = check_one(target, outcomes)
        if problem is not None:
            saved = out / f"fail-{fmt}-{seed}-{i}.bin"
            saved.write_bytes(mutant)
            failures.append(
                {
                    "format": fmt,
                    "seed": seed,
                    "index": i,
                    "mutation": desc,
                    "problem": problem,
                    "file": str(saved),
                }
            )
    tracemalloc.stop()
    report = {
        "format": fmt,
        "mutants": len(indices),
        "fields": len(fields),
        "outcomes": outcomes,
        "failures": failures,
    }
    (out / "report.json").write_text(json.dumps(report))
    return report


# -- tests ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    d = tmp_path_factory.mktemp("fuzz-seeds")
    write_seeds(d)
    return d


@pytest.mark.parametrize("fmt", list(SEED_FILES))
def test_seed_files_open(seed_dir: Path, fmt: str) -> None:
    """The unmutated seeds are valid checkpoints (else the fuzzing proves little)."""
    if fmt == "pickle-misc":
        ckpt = open_checkpoint(seed_dir / SEED_FILES[fmt])
        assert ckpt.format == "pickle"
        return
    ckpt = open_checkpoint(seed_dir / SEED_FILES[fmt])
    assert list(ckpt.tensors()), fmt
    assert all(f.severity.value != "danger" for f in ckpt.findings)


@pytest.mark.parametrize("fmt", list(SEED_FILES))
def test_mutants_open_or_fail_cleanly(seed_dir: Path, tmp_path: Path, fmt: str) -> None:
    out = tmp_path / "out"
    started = time.monotonic()
    r = run_in_child(
        Path(__file__),
        ["--worker", str(seed_dir), fmt, str(N_MUTANTS), str(BASE_SEED), str(out)],
        timeout=N_MUTANTS * TIME_LIMIT_S + 60,
        address_space=ADDRESS_SPACE_LIMIT,
    )
    if r.returncode != 0:
        current = out / "current.json"
        last = current.read_text() if current.exists() else "(before the first mutant)"
        saved = out / f"crash-{fmt}.bin"
        if (out / f"mutant-{fmt}.bin").exists():
            (out / f"mutant-{fmt}.bin").replace(saved)
        pytest.fail(
            f"fuzz worker died (exit {r.returncode}) on {last}; file kept at {saved}\n"
            f"stderr tail: {r.stderr[-1500:]}"
        )
    report = json.loads((out / "report.json").read_text())
    assert report["mutants"] == N_MUTANTS
    print(f"{fmt}: {report['outcomes']} ({report['fields']} length fields)")
    lines = [
        f"  seed={f['seed']} index={f['index']} mutation=[{f['mutation']}]\n"
        f"    -> {f['problem']}\n    file: {f['file']}"
        for f in report["failures"]
    ]
    assert not lines, (
        f"{len(lines)} of {N_MUTANTS} {fmt} mutants broke the contract "
        f"(replay: python {Path(__file__).name} --replay FILE):\n" + "\n".join(lines[:25])
    )
    assert time.monotonic() - started < N_MUTANTS * TIME_LIMIT_S + 60
    # the mutations must not all die at the first byte: some mutants still open
    assert report["outcomes"].get("opened", 0) >= N_MUTANTS // 50, report["outcomes"]


def test_field_finder_finds_fields(seed_dir: Path) -> None:
    """The structured mutations need length fields to aim at, in every format."""
    for fmt, name in SEED_FILES.items():
        assert all_fields((seed_dir / name).read_bytes()), fmt


def test_mutation_is_reproducible(seed_dir: Path) -> None:
    data = (seed_dir / SEED_FILES["torch-zip"]).read_bytes()
    others = [data]
    fields = all_fields(data)
    a = mutate(data, random.Random("x:1"), others, fields)
    b = mutate(data, random.Random("x:1"), others, fields)
    assert a == b


# -- targeted sweeps: every field of every record, deterministically ---------------------------


def _problem(path: Path) -> str | None:
    tracemalloc.start()
    try:
        problem = check_one(path)
    finally:
        tracemalloc.stop()
    return None if problem is None else f"{path.name}: {problem}"


def _cd_entries(data: bytes) -> list[tuple[int, str]]:
    eocd = data.rfind(b"PK\x05\x06")
    p = struct.unpack_from("<I", data, eocd + 16)[0]
    out = []
    while data[p : p + 4] == b"PK\x01\x02":
        n, m, k = struct.unpack_from("<HHH", data, p + 28)
        out.append((p, data[p + 46 : p + 46 + n].decode()))
        p += 46 + n + m + k
    return out


_CD_EDITS: dict[str, Callable[[bytearray, int], None]] = {
    "encrypted": lambda b, p: b.__setitem__(p + 8, b[p + 8] | 1),
    "deflate": lambda b, p: b.__setitem__(slice(p + 10, p + 12), struct.pack("<H", 8)),
    "bzip2": lambda b, p: b.__setitem__(slice(p + 10, p + 12), struct.pack("<H", 12)),
    "lzma": lambda b, p: b.__setitem__(slice(p + 10, p + 12), struct.pack("<H", 14)),
    "method99": lambda b, p: b.__setitem__(slice(p + 10, p + 12), struct.pack("<H", 99)),
    "size_huge": lambda b, p: b.__setitem__(slice(p + 24, p + 28), b"\xff\xff\xff\xff"),
    "csize_huge": lambda b, p: b.__setitem__(slice(p + 20, p + 24), b"\xff\xff\xff\xff"),
    "offset_huge": lambda b, p: b.__setitem__(slice(p + 42, p + 46), b"\xff\xff\xff\x7f"),
    "zip64_marker": lambda b, p: b.__setitem__(slice(p + 20, p + 28), b"\xff" * 8),
}


@pytest.mark.parametrize("fmt", ["torch-zip", "torchscript"])
@pytest.mark.parametrize("edit", list(_CD_EDITS))
def test_zip_directory_field_sweep(seed_dir: Path, tmp_path: Path, fmt: str, edit: str) -> None:
    """Each central-directory edit applied to each record in turn."""
    data = (seed_dir / SEED_FILES[fmt]).read_bytes()
    problems = []
    for p, name in _cd_entries(data):
        buf = bytearray(data)
        _CD_EDITS[edit](buf, p)
        path = tmp_path / f"{edit}-{name.replace('/', '_')}.pt"
        path.write_bytes(bytes(buf))
        problems.append(_problem(path))
    problems = [p for p in problems if p]
    assert not problems, "\n".join(problems)


_ST_HEADERS = {
    "dtype_list": '{"a":{"dtype":[1],"shape":[1],"data_offsets":[0,4]}}',
    "dtype_dict": '{"a":{"dtype":{},"shape":[1],"data_offsets":[0,4]}}',
    "shape_5000_digits": '{"a":{"dtype":"F32","shape":[' + "9" * 5000 + '],"data_offsets":[0,4]}}',
    "offset_5000_digits": '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,' + "9" * 5000 + "]}}",
    "shape_float": '{"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}',
    "shape_negative": '{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}',
    "offsets_reversed": '{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}',
    "offsets_three": '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}',
    "metadata_list": '{"__metadata__":["x"],"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
    "metadata_nested": '{"__metadata__":{"k":{"x":1}}}',
    "entry_null": '{"a":null}',
    "top_list": "[1,2,3]",
    "deep": "[" * 100_000 + "]" * 100_000,
    "nan": '{"a":{"dtype":"F32","shape":[NaN],"data_offsets":[0,4]}}',
    "infinity_offsets": '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,Infinity]}}',
    "duplicate_keys": '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
    '"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
    "huge_shape_product": '{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],'
    '"data_offsets":[0,4]}}',
    "bad_utf8": None,
}


@pytest.mark.parametrize("case", list(_ST_HEADERS))
def test_safetensors_header_sweep(tmp_path: Path, case: str) -> None:
    text = _ST_HEADERS[case]
    raw = b'{"a":"\xff\xfe"}' if text is None else text.encode()
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 4)
    problem = _problem(path)
    assert problem is None, problem


def _legacy_spans(data: bytes) -> list[tuple[int, int]]:
    spans = []
    pos = 0
    for _ in range(5):
        end = pickle_fields(data, pos)[1]
        spans.append((pos, end))
        pos = end
    return spans


def test_error_messages_quote_names_from_the_file(seed_dir: Path, tmp_path: Path) -> None:
    """Names taken from the file (archive folder, storage keys, class names) may hold newlines;
    an error quoting them must still be one line."""
    cases: dict[str, bytes] = {}
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as z:
        z.writestr("evil\nfolder/version", "3\n")
    cases["zip_folder_newline"] = b.getvalue()

    pk = (
        b"\x80\x02(X\x07\x00\x00\x00storage\x8c\x05torch\x8c\x0dFloat\nStorage\x93"
        b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x01tQ."
    )
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as z:
        z.writestr("arch/data.pkl", pk)
        z.writestr("arch/data/0", b"\0" * 4)
    cases["storage_class_newline"] = b.getvalue()

    legacy = (seed_dir / SEED_FILES["torch-legacy"]).read_bytes()
    ks, ke = _legacy_spans(legacy)[4]
    keys = b"\x80\x02]q\x00X\x03\x00\x00\x00a\nbq\x01a."
    cases["legacy_storage_key_newline"] = legacy[:ks] + keys + legacy[ke:]

    pk = b"\x80\x02c__builtin__\nbytes\nX\x01\x00\x00\x00aX\x05\x00\x00\x00a\nb c\x86R."
    cases["bytes_unknown_encoding_newline"] = pk

    problems = []
    for name, data in cases.items():
        path = tmp_path / f"{name}.pt"
        path.write_bytes(data)
        problems.append(_problem(path))
    problems = [p for p in problems if p]
    assert not problems, "\n".join(problems)


# -- a property test over opcode soup ---------------------------------------------------------

_TOKENS = [
    b"(",
    b")",
    b"]",
    b"}",
    b"N",
    b"\x88",
    b"\x89",
    b"K\x05",
    b"K\x00",
    b"J\xff\xff\xff\xff",
    b"M\x00\x01",
    b"\x8a\x01\x05",
    b"G?\xf0\x00\x00\x00\x00\x00\x00",
    b"t",
    b"\x85",
    b"\x86",
    b"\x87",
    b"l",
    b"d",
    b"e",
    b"a",
    b"s",
    b"u",
    b"R",
    b"b",
    b"\x81",
    b"\x92",
    b"o",
    b"0",
    b"1",
    b"2",
    b"q\x00",
    b"h\x00",
    b"q\x01",
    b"h\x01",
    b"r\x02\x00\x00\x00",
    b"j\x02\x00\x00\x00",
    b"\x94",
    b"\x93",
    b"\x8f",
    b"\x90",
    b"\x91",
    b"Q",
    b"C\x04abcd",
    b"\x8c\x03cpu",
    b"\x8c\x07storage",
    b"\x8c\x010",
    b"\x8c\x06latin1",
    b"\x8c\x05torch",
    b"\x8c\x0cFloatStorage",
    b"\x8c\x02F4",
    b"X\x01\x00\x00\x00\xc3",
    b"Vabc\n",
    b"S'x'\n",
    b"I12\n",
    b"I01\n",
    b"F1.5\n",
    b"ctorch._utils\n_rebuild_tensor_v2\n",
    b"ctorch._utils\n_rebuild_parameter\n",
    b"ctorch._tensor\n_rebuild_from_type_v2\n",
    b"ctorch._utils\n_rebuild_qtensor\n",
    b"ctorch._utils\n_rebuild_sparse_tensor\n",
    b"ctorch.serialization\n_get_layout\n",
    b"ctorch._utils\n_rebuild_meta_tensor_no_storage\n",
    b"ctorch._utils\n_rebuild_tensor_v3\n",
    b"ctorch._utils\n_rebuild_wrapper_subclass\n",
    b"ctorch._utils\n_rebuild_nested_tensor\n",
    b"ctorch\nSize\n",
    b"ctorch\ndevice\n",
    b"ctorch\nfloat32\n",
    b"ctorch\nFloatStorage\n",
    b"ctorch.storage\n_load_from_bytes\n",
    b"ccollections\nOrderedDict\n",
    b"ccollections\nCounter\n",
    b"ccollections\ndefaultdict\n",
    b"c__builtin__\nset\n",
    b"c__builtin__\nfrozenset\n",
    b"c__builtin__\nbytes\n",
    b"c__builtin__\nint\n",
    b"c__builtin__\ncomplex\n",
    b"c_codecs\nencode\n",
    b"cnumpy.core.multiarray\n_reconstruct\n",
    b"cnumpy.core.multiarray\nscalar\n",
    b"cnumpy\ndtype\n",
    b"cnumpy\nndarray\n",
    b"cnumpy.core.numeric\n_frombuffer\n",
    b"cos\nsystem\n",
    b"cmymod\nNet\n",
]


def _zip_with(data_pkl: bytes) -> bytes:
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/data/0", b"\0" * 16)
        z.writestr("archive/version", "3\n")
    return b.getvalue()


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    tokens=st.lists(st.sampled_from(_TOKENS), max_size=60),
    in_zip=st.booleans(),
    proto=st.sampled_from([b"\x80\x02", b"\x80\x04", b""]),
)
def test_opcode_soup_opens_or_fails_cleanly(
    tokens: list[bytes], in_zip: bool, proto: bytes
) -> None:
    import tempfile

    pk = proto + b"".join(tokens) + b"."
    data = _zip_with(pk) if in_zip else pk
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "soup.pt"
        path.write_bytes(data)
        tracemalloc.start()
        try:
            problem = check_one(path)
        finally:
            tracemalloc.stop()
    assert problem is None, f"{problem}\npickle: {pk!r}"


# -- command line: worker and replay --------------------------------------------------------------


def _main(argv: list[str]) -> int:
    if argv[:1] == ["--worker"]:
        seed_dir, fmt, n, seed, out = argv[1:6]
        only = int(argv[7]) if argv[6:7] == ["--only"] else None
        run_worker(Path(seed_dir), fmt, int(n), int(seed), Path(out), only)
        return 0
    if argv[:1] == ["--replay"]:
        path = Path(argv[1])
        try:
            ckpt = open_checkpoint(path)
            json.dumps(checkpoint_json(ckpt))
            print(f"opened: {ckpt.format}, {len(ckpt.findings)} findings")
        except CkptError as e:
            print(f"{type(e).__name__}: {e.message!r}")
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
