"""Seeded mutation fuzzing of folders: a damaged folder opens, or fails with one clean line.

`test_fuzz.py` does this for single files; checkpoints of many files have readers of their own
(the shard index and its `weight_map`, DCP's `.metadata` and `.distcp` items, the many-file
walk), and names from an index reach the file system. Four small real folders are written once:
a DCP checkpoint (`torch.distributed.checkpoint.save`), a sharded safetensors model
(transformers' `save_pretrained(max_shard_size=...)`), sharded `pytorch_model-*.bin` files with
their index (torch.save; transformers 5 writes safetensors only) and a DeepSpeed-style
`global_step*/` folder (torch.save files laid out as DeepSpeed's; deepspeed is not installed).

Each mutant is a copy of one seed with one change, chosen by a seeded RNG:
- bytes of one file: `test_fuzz.mutate` (flips, truncation, splices from the other seeds'
  files, duplicated and deleted ranges, length fields overwritten), its fields found per
  file: every `.distcp` item's zip directory and data.pkl pickle, `.metadata`'s pickle
  integers (which hold `storage_data`'s offsets and lengths), each shard's own fields;
- the index JSON: a `weight_map` name replaced by a hostile one (NUL, `..`, absolute, a URL,
  the index itself, the folder, a lone surrogate, ...), a tensor name made odd, the structure
  or `metadata.total_size` replaced, or one JSON value token replaced;
- the folder: a file deleted, emptied, replaced by a folder, a FIFO or a symlink out of the
  folder, two files' contents swapped.

Every mutant is run through the real command line in-process (`cli.main`: `inspect --json` and
`why --json`, every eighth also `export`), and must return 0, 1 or 2; a 2 must print exactly
one line `ckptui: <path inside the folder>: ...`; an exception escaping `main` (a traceback),
an answer later than TIME_LIMIT_S, or opening a file outside the mutant folder fails it. The
loop runs in a child process under RLIMIT_AS (2 GiB), so a runaway allocation fails a test
instead of taking pytest down. `tests/benchmarks/bench_fuzz_folders.py` runs the same worker
at a larger budget. Replay one mutant with
`python tests/core/test_fuzz_folders.py --worker SEEDDIR KIND 1 SEED OUTDIR --only I`.
`CKPTUI_FUZZ_SEED` and `CKPTUI_FOLDER_FUZZ_N` change the base seed and the budget.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import os
import random
import re
import resource
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script (the worker): make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pytest

from ckptui.cli.main import main as cli_main
from tests.core.test_fuzz import FuzzTimeout, all_fields, mutate
from tests.tools.child import run_in_child

BASE_SEED = int(os.environ.get("CKPTUI_FUZZ_SEED", "1729"))
N_MUTANTS = int(os.environ.get("CKPTUI_FOLDER_FUZZ_N", "200"))
TIME_LIMIT_S = 10
ADDRESS_SPACE_LIMIT = 2 << 30
EXPORT_EVERY = 8

KINDS = ("dcp", "hf-safetensors", "hf-bin", "deepspeed")
INDEX = {"hf-safetensors": "model.safetensors.index.json", "hf-bin": "pytorch_model.bin.index.json"}


# -- seed folders (parent process, with torch) ------------------------------------------------


def write_seeds(d: Path) -> None:
    """One small real folder per kind, under `d/<kind>`."""
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 2))
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(2, 4)).sum().backward()
    opt.step()
    with warnings.catch_warnings():  # "assuming the intent is to save in a single process"
        warnings.simplefilter("ignore")
        dcp.save(
            {"model": net.state_dict(), "optim": opt.state_dict(), "step": 3, "extra": [1, "a"]},
            checkpoint_id=str(d / "dcp"),
            no_dist=True,
        )
    config = GPT2Config(
        n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=16, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    gpt2 = GPT2LMHeadModel(config)
    gpt2.save_pretrained(d / "hf-safetensors", max_shard_size="8KB")
    sd = gpt2.state_dict()
    keys = [k for k in sd if k != "lm_head.weight"]  # tied to wte, as save_pretrained drops it
    b = d / "hf-bin"
    b.mkdir()
    weight_map: dict[str, str] = {}
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2 :])):
        name = f"pytorch_model-0000{i + 1}-of-00002.bin"
        torch.save({k: sd[k].clone() for k in part}, b / name)
        weight_map |= dict.fromkeys(part, name)
    total = sum(sd[k].numel() * 4 for k in keys)
    (b / INDEX["hf-bin"]).write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    shutil.copy(d / "hf-safetensors" / "config.json", b / "config.json")
    ds = d / "deepspeed"
    step = ds / "global_step10"
    step.mkdir(parents=True)
    flat = torch.randn(100)
    module = {"fc.weight": flat[:80].view(10, 8), "fc.bias": flat[80:90]}
    torch.save(
        {"module": module, "ds_version": "0.19.0", "global_steps": 10, "param_shapes": None},
        step / "mp_rank_00_model_states.pt",
    )
    torch.save(
        {"optimizer_state_dict": {"fp32_flat_groups": [flat.clone()]}, "ds_version": "0.19.0"},
        step / "zero_pp_rank_0_mp_rank_00_optim_states.pt",
    )
    (ds / "latest").write_text("global_step10")
    (ds / "zero_to_fp32.py").write_text("# converts ZeRO shards\n")


# -- where the fields are -------------------------------------------------------------------


def distcp_fields(data: bytes) -> list[tuple[int, int]]:
    """Fields of every item of a `.distcp` file: items are whole torch.save zips laid end to
    end, each ending at its end-of-directory record."""
    fields: list[tuple[int, int]] = []
    start = 0
    for m in re.finditer(rb"PK\x05\x06", data):
        end = m.start() + 22
        if end > len(data):
            break
        fields += all_fields(data[start:end], offset=start)
        start = end
    return fields


def file_fields(name: str, data: bytes) -> list[tuple[int, int]]:
    if name.endswith(".distcp"):
        return distcp_fields(data)
    if name.endswith(".json") or not data:
        return []
    return all_fields(data)


# -- mutations --------------------------------------------------------------------------------

HOSTILE_NAMES = [
    "a\0b.safetensors",
    "../outside/secret.bin",
    "sub/../../outside/secret.bin",
    "{outside}",
    "file://{outside}",
    "https://127.0.0.1:9/x.safetensors",
    "..\\outside\\secret.bin",
    "C:\\secret.bin",
    "//outside/secret.bin",
    "",
    ".",
    "./",
    "..",
    "{index}",
    "{index}/",
    "./{index}",
    "sub/{index}",
    "\ud800.bin",
    "x" * 300,
    ("d/" * 600) + "x",
    "config.json",
    "missing-shard.safetensors",
    "{other}",
    "{other}/",
    "./{other}",
    "a\nb.bin",
    "link-out",
    "link-in",
    "loop",
    "sub",
    "é.safetensors",
]
ODD_KEYS = ["", "a\nb", "x" * 5000, "\ud800", "__metadata__", "a.b.c" * 100, "0"]
ODD_JSON = [
    "null", "[]", "{}", "0", "-1", "1e400", "9" * 400, '"x"', "true", "[1, 2]",
    '{"a": 1}', "[" * 30 + "]" * 30, '{"weight_map": {}}',
]  # fmt: skip


def mutate_index(data: bytes, rng: random.Random, subs: dict[str, str]) -> tuple[bytes, str]:
    """A structured change of a shard index: names, keys, structure, sizes or one token."""
    try:
        index = json.loads(data)
        weight_map = index["weight_map"]
    except (ValueError, KeyError, TypeError):
        return data, "index unparsable: unchanged"
    op = rng.choice(("name", "name", "name", "key", "shape", "total", "token"))
    if op == "name" and weight_map:
        key = rng.choice(sorted(weight_map))
        new = rng.choice(HOSTILE_NAMES).format(**subs)
        if rng.random() < 0.3:  # every tensor of that shard
            old = weight_map[key]
            weight_map.update({k: new for k, v in weight_map.items() if v == old})
        else:
            weight_map[key] = new
        return json.dumps(index).encode(), f"weight_map[{key!r}] = {new[:60]!r}"
    if op == "key" and weight_map:
        key = rng.choice(sorted(weight_map))
        new = rng.choice(ODD_KEYS)
        weight_map[new] = weight_map.pop(key)
        return json.dumps(index).encode(), f"key {key!r} -> {new[:40]!r}"
    if op == "shape":
        where = rng.choice(("weight_map", "metadata", "root", "value"))
        value = json.loads(rng.choice(ODD_JSON).replace("1e400", "1"))
        if where == "root":
            index = value
        elif where == "value" and weight_map:
            weight_map[rng.choice(sorted(weight_map))] = value
        else:
            index[where] = value
        return json.dumps(index).encode(), f"{where} = {json.dumps(value)[:40]}"
    if op == "total":
        total = rng.choice([-1, 0, 2**70, 1.5, "12", None, [], True, 10**400])
        index.setdefault("metadata", {})
        if isinstance(index["metadata"], dict):
            index["metadata"]["total_size"] = total
        return json.dumps(index).encode(), f"total_size = {str(total)[:30]}"
    text = data.decode("utf-8", "replace")
    tokens = [m.span() for m in re.finditer(r'-?\d+|"[^"]*"|\[[^\[\]]*\]|\{|\}', text)]
    a, b = rng.choice(tokens)
    new = rng.choice(ODD_JSON)
    return (text[:a] + new + text[b:]).encode(), f"json[{a}:{b}] = {new[:20]!r}"


def files_of(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def make_mutant(
    seed_dir: Path, kind: str, work: Path, rng: random.Random, others: list[bytes]
) -> str:
    """Copy the `kind` seed to `work/<kind>` and change it once; returns what was done."""
    src = seed_dir / kind
    folder = work / kind
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(src, folder, symlinks=True)
    outside = work / "outside" / "secret.bin"
    names = files_of(folder)
    index = INDEX.get(kind)
    subs = {
        "outside": str(outside),
        "index": index or ".metadata",
        "other": rng.choice(names),
    }
    roll = rng.random()
    if index is not None and roll < 0.3:
        path = folder / index
        data, desc = mutate_index(path.read_bytes(), rng, subs)
        path.write_bytes(data)
        return f"index: {desc}"
    if roll < 0.42:
        return "folder: " + mutate_folder(folder, names, rng, outside)
    name = rng.choice(names)
    path = folder / name
    data = path.read_bytes()
    mutant, desc = mutate(data, rng, others, file_fields(name, data))
    path.write_bytes(mutant)
    return f"{name}: {desc}"


def mutate_folder(folder: Path, names: list[str], rng: random.Random, outside: Path) -> str:
    name = rng.choice(names)
    path = folder / name
    op = rng.choice(("delete", "empty", "dir", "link-out", "link-in", "swap", "fifo"))
    if op == "delete":
        path.unlink()
    elif op == "fifo":  # opening a FIFO for reading blocks until a writer comes: never
        path.unlink()
        os.mkfifo(path)
    elif op == "empty":
        path.write_bytes(b"")
    elif op == "dir":
        path.unlink()
        path.mkdir()
        (path / "inner.pt").write_bytes(b"\x80\x02}q\x00.")
    elif op == "link-out":
        path.unlink()
        path.symlink_to(outside)
    elif op == "link-in":
        other = rng.choice(names)
        path.unlink()
        path.symlink_to(folder / other)
        return f"{name} -> symlink to {other}"
    else:
        other = rng.choice(names)
        a, b = path.read_bytes(), (folder / other).read_bytes()
        path.write_bytes(b)
        (folder / other).write_bytes(a)
        return f"swap {name} with {other}"
    return f"{op} {name}"


# -- the check: the real command line, in-process ----------------------------------------------


def _on_alarm(signum: int, frame: Any) -> None:
    raise FuzzTimeout


class Opened:
    """Records every path opened through os.open / open() while `active`."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.active = False
        real_os_open, real_open = os.open, builtins.open

        def os_open(path: Any, *a: Any, **k: Any) -> Any:
            if self.active:
                self.paths.append(os.fspath(path))
            return real_os_open(path, *a, **k)

        def open_(file: Any, *a: Any, **k: Any) -> Any:
            if self.active and isinstance(file, str | os.PathLike):
                self.paths.append(os.fspath(file))
            return real_open(file, *a, **k)

        os.open = os_open  # type: ignore[assignment]
        builtins.open = open_
        io.open = open_


def run_cli(argv: list[str], opened: Opened) -> tuple[int | None, str, str, str | None]:
    """(exit code, stdout, stderr, what escaped or None), with a TIME_LIMIT_S alarm."""
    out, err = io.StringIO(), io.StringIO()
    escaped = None
    code: int | None = None
    signal.signal(signal.SIGALRM, _on_alarm)
    opened.paths.clear()
    opened.active = True
    signal.alarm(TIME_LIMIT_S)
    try:
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli_main(argv)
        finally:
            signal.alarm(0)
            opened.active = False
    except FuzzTimeout:
        escaped = f"no answer within {TIME_LIMIT_S} s"
    except SystemExit as e:  # argparse
        code = e.code if isinstance(e.code, int) else 2
    except BaseException as e:  # noqa: BLE001  # anything escaping main is a traceback
        tb = traceback.extract_tb(e.__traceback__)[-1]
        escaped = (
            f"{type(e).__name__}: {str(e)[:300]!r} "
            f"(at {Path(tb.filename).name}:{tb.lineno} in {tb.name})"
        )
    return code, out.getvalue(), err.getvalue(), escaped


def check_mutant(
    folder: Path, out_dir: Path, opened: Opened, export: bool
) -> tuple[str, str | None]:
    """Run the commands on one mutant folder (an export writes into `out_dir`): (outcome,
    problem or None); a problem starts with its class in brackets (`[traceback]`, `[hang]`,
    `[exit code]`, `[read outside]`, `[message]`)."""
    real = os.path.realpath(folder)
    out_dir.mkdir(exist_ok=True)
    written = os.path.realpath(out_dir) + os.sep
    commands = [["inspect", str(folder), "--json"], ["why", str(folder), "--json"]]
    if export:
        target = out_dir / "export.safetensors"
        commands.append(["export", str(folder), "-o", str(target), "--force", "--json"])
    outcome = ""
    for argv in commands:
        code, stdout, stderr, escaped = run_cli(argv, opened)
        what = argv[0]
        if escaped is not None:
            kind = "hang" if escaped.startswith("no answer") else "traceback"
            return "problem", f"[{kind}] {what}: {escaped}"
        if code not in (0, 1, 2):
            return "problem", f"[exit code] {what}: exit {code}"
        for p in opened.paths:
            rp = os.path.realpath(p)
            inside = (rp + os.sep).startswith((real + os.sep, written))
            if not inside and not rp.startswith(("/dev/", "/proc/", sys.prefix, sys.base_prefix)):
                return "problem", f"[read outside] {what}: opened {p!r} outside the folder"
        if code == 2:
            lines = stderr.splitlines()
            if len(lines) != 1 or not lines[0].startswith("ckptui: "):
                return "problem", f"[message] {what}: exit 2 without one line: {stderr[-300:]!r}"
            if str(folder) not in lines[0] and str(out_dir) not in lines[0]:
                why = f"the error names no file of the folder: {lines[0]!r}"
                return "problem", f"[message] {what}: {why}"
        if what == "inspect":
            if code == 0:
                json.loads(stdout)
            outcome = "opened" if code == 0 else f"exit {code}"
            if code == 2:
                return outcome, None  # the others would say the same
    return outcome, None


def run_worker(
    seed_dir: Path, kind: str, n: int, seed: int, out: Path, only: int | None = None
) -> dict[str, Any]:
    """Run `n` mutants of the `kind` seed; each failing mutant folder is kept in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    (work / "outside").mkdir(parents=True, exist_ok=True)
    (work / "outside" / "secret.bin").write_bytes(b"\x80\x02}q\x00.")  # a valid pickle
    others = [p.read_bytes() for p in sorted(seed_dir.rglob("*")) if p.is_file()]
    opened = Opened()
    outcomes: dict[str, int] = {}
    failures: list[dict[str, Any]] = []
    slowest = 0.0
    indices = range(n) if only is None else [only]
    for i in indices:
        rng = random.Random(f"{seed}:{kind}:{i}")
        desc = make_mutant(seed_dir, kind, work, rng, others)
        (out / "current.json").write_text(json.dumps({"kind": kind, "index": i, "mutation": desc}))
        started = time.monotonic()
        outcome, problem = check_mutant(work / kind, out / "export", opened, i % EXPORT_EVERY == 0)
        slowest = max(slowest, time.monotonic() - started)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if problem is not None:
            kept = out / f"fail-{kind}-{seed}-{i}"
            if not kept.exists():
                with contextlib.suppress(shutil.Error):  # a FIFO is not copied: named instead
                    shutil.copytree(work / kind, kept, symlinks=True)
            failures.append(
                {"kind": kind, "seed": seed, "index": i, "mutation": desc, "problem": problem,
                 "folder": str(kept)}
            )  # fmt: skip
    report = {
        "kind": kind,
        "mutants": len(indices),
        "outcomes": outcomes,
        "failures": failures,
        "slowest_s": round(slowest, 3),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }
    (out / "report.json").write_text(json.dumps(report))
    return report


# -- tests ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("folder-seeds")
    write_seeds(d)
    return d


@pytest.mark.parametrize("kind", KINDS)
def test_seed_folders_open(seed_dir: Path, kind: str) -> None:
    """The unmutated seeds open cleanly (else the fuzzing proves little)."""
    from ckptui.formats import open_checkpoint

    ckpt = open_checkpoint(seed_dir / kind)
    expected = {"dcp": "dcp", "hf-safetensors": "hf-sharded", "hf-bin": "hf-sharded"}
    assert ckpt.format == expected.get(kind, "folder")
    assert list(ckpt.tensors()) and not ckpt.findings, ckpt.findings


@pytest.mark.parametrize("kind", KINDS)
def test_folder_mutants_open_or_fail_in_one_line(seed_dir: Path, tmp_path: Path, kind: str) -> None:
    out = tmp_path / "out"
    r = run_in_child(
        Path(__file__),
        ["--worker", str(seed_dir), kind, str(N_MUTANTS), str(BASE_SEED), str(out)],
        timeout=N_MUTANTS * 3 * TIME_LIMIT_S + 60,
        address_space=ADDRESS_SPACE_LIMIT,
    )
    if r.returncode != 0:
        current = out / "current.json"
        last = current.read_text() if current.exists() else "(before the first mutant)"
        pytest.fail(f"fuzz worker died (exit {r.returncode}) on {last}\n{r.stderr[-1500:]}")
    report = json.loads((out / "report.json").read_text())
    assert report["mutants"] == N_MUTANTS
    print(f"{kind}: {report['outcomes']}, slowest {report['slowest_s']} s")
    lines = [
        f"  index={f['index']} mutation=[{f['mutation']}]\n    -> {f['problem']}\n"
        f"    folder: {f['folder']}"
        for f in report["failures"]
    ]
    assert not lines, (
        f"{len(lines)} of {N_MUTANTS} {kind} mutants broke the contract (replay one with "
        f"--worker {seed_dir} {kind} 1 {BASE_SEED} OUT --only I):\n" + "\n".join(lines[:20])
    )
    # the mutations must not all be fatal: some mutants still open
    assert report["outcomes"].get("opened", 0) >= N_MUTANTS // 10, report["outcomes"]


def test_mutants_are_reproducible(seed_dir: Path, tmp_path: Path) -> None:
    others = [b"x" * 64]
    done = []
    for run in ("a", "b"):
        desc = make_mutant(seed_dir, "hf-bin", tmp_path / run, random.Random("7:hf-bin:3"), others)
        folder = tmp_path / run / "hf-bin"
        done.append((desc, {n: (folder / n).read_bytes() for n in files_of(folder)}))
    assert done[0] == done[1]


def test_distcp_fields_cover_every_item(seed_dir: Path) -> None:
    """The structured mutations reach every item of a `.distcp` file, not just the last."""
    (data_file,) = (seed_dir / "dcp").glob("*.distcp")
    data = data_file.read_bytes()
    fields = distcp_fields(data)
    items = data.count(b"PK\x05\x06")
    assert items > 5
    ends = [m.start() for m in re.finditer(rb"PK\x05\x06", data)]
    assert all(any(e - 1100 < f < e + 22 for f, _ in fields) for e in ends)


# -- command line: the worker ---------------------------------------------------------------------


def _main(argv: list[str]) -> int:
    if argv[:1] == ["--worker"]:
        seed_dir, kind, n, seed, out = argv[1:6]
        only = int(argv[7]) if argv[6:7] == ["--only"] else None
        report = run_worker(Path(seed_dir), kind, int(n), int(seed), Path(out), only)
        if only is not None:
            print(json.dumps(report, indent=1))
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
