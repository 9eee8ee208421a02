"""Benchmark what judging every global and call costs: `ckptui inspect --json` on pickles with
many globals and calls, against `torch.load(weights_only=False)` of the same file; and with
`--refs N`, what one dict referenced N times costs every surface.

Usage: python tests/benchmarks/bench_safety.py [--repeat N] [--src DIR] [--refs N]

Not collected by pytest. Writes (with real torch.save, in a child process) a whole-module pickle
of 2,000 small modules (one NEWOBJ + BUILD per module, a dozen distinct classes) and a plain
`pickle.dump` of a 2,000-tensor state dict (one `_load_from_bytes` call per tensor), then times
each tool in its own child process, interleaved, and prints ours / torch ratios. `--src` runs
ckptui from another source tree (e.g. an export of the base commit) for a before/after ratio in
the same run.

`--refs N` (issue 21) writes `{"shared": d, "refs": [d] * N}` by hand (one BINPUT, then N 2-byte
BINGETs: 2 MB of file for N = 10^6) and runs, each in its own child process, `inspect --json`,
`inspect`, `why --json`, `why`, and the browser (App.run_test 100x30: open, the background
analyses, expand `refs`, open its first group, select a reference, then `w`), printing seconds and peak RSS of each (from
`wait4`), and their ratio to the `--src` tree when given. The same file through
`pickle.load` is the floor.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MAKE = """
import pickle, sys, torch
blocks = [torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.GELU(),
          torch.nn.Dropout(0.1)) for _ in range(500)]
torch.save(torch.nn.Sequential(*blocks), sys.argv[1])
with open(sys.argv[2], "wb") as f:
    pickle.dump({f"w{i}": torch.ones(4) for i in range(2000)}, f, protocol=2)
"""
TORCH = (
    "import sys, torch\ntry:\n    torch.load(sys.argv[1], map_location='cpu', weights_only=False)\n"
    "except RuntimeError:\n    pass  # a plain pickle: unpickled whole, then 'Invalid magic number'"
)


def _time(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return time.perf_counter() - t


MAKE_REFS = """
import struct, sys
def text(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b
n = int(sys.argv[2])
with open(sys.argv[1], "wb") as f:
    f.write(b"\\x80\\x02}q\\x00(" + text("shared") + b"}q\\x01(" + text("lr"))
    f.write(b"G" + struct.pack(">d", 0.1) + text("name") + text("shared") + b"u")
    f.write(text("refs") + b"]q\\x02(" + b"h\\x01" * n + b"eu.")
"""
BROWSE = """
import asyncio, sys, time
from ckptui.app.app import CkptApp

async def main(path):
    app = CkptApp(path)
    marks = {}
    t0 = time.perf_counter()
    async with app.run_test(size=(100, 30)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        marks["open"] = time.perf_counter() - t0
        t = time.perf_counter()
        while len(app.workers):  # the analyses started once the tree shows (training facts)
            await app.workers.wait_for_complete()
            await pilot.pause()
        marks["background analyses"] = time.perf_counter() - t
        for keys, what in ((["j", "j", "l"], "expand refs"), (["j", "l", "j"], "select a ref")):
            t = time.perf_counter()
            for k in keys:
                await pilot.press(k)
            await app.workers.wait_for_complete()
            await pilot.pause()
            marks[what] = time.perf_counter() - t
        t = time.perf_counter()
        await pilot.press("w")
        await app.workers.wait_for_complete()
        await pilot.pause()
        marks["why screen"] = time.perf_counter() - t
        assert type(app.screen).__name__ == "WhyScreen", app.screen
    print(" · ".join(f"{k} {v:.2f} s" for k, v in marks.items()))

asyncio.run(main(sys.argv[1]))
"""
PICKLE_LOAD = "import pickle, sys\nwith open(sys.argv[1], 'rb') as f:\n    pickle.load(f)"


def _measured(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int, str]:
    """(wall seconds, CPU seconds, peak RSS in bytes, last stdout line) of one child process,
    reaped with `wait4` so that its own CPU time and peak RSS come with it (CPU time is the
    figure to compare on a loaded machine, where wall time mostly measures the others)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode not in (0, 1):
            raise SystemExit(f"{cmd}: exit {proc.returncode}: {err.read().decode()[-2000:]}")
        lines = out.read().decode(errors="replace").strip().splitlines()
    cpu = usage.ru_utime + usage.ru_stime
    return wall, cpu, usage.ru_maxrss * 1024, lines[-1][:200] if lines else ""  # KiB on Linux


def bench_refs(n: int, trees: dict[str, str], repeat: int) -> None:
    """Every surface on one dict referenced n times: seconds and peak RSS, per tree."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "refs.pkl"
        subprocess.run([sys.executable, "-c", MAKE_REFS, str(path), str(n)], check=True)
        print(f"{path.name}: one dict referenced {n:,} times, {path.stat().st_size:,} bytes")
        wall, cpu, rss, _ = _measured(
            [sys.executable, "-c", PICKLE_LOAD, str(path)], dict(os.environ)
        )
        print(f"  pickle.load (floor): {wall:.2f} s, CPU {cpu:.2f} s, {rss / 2**20:.0f} MiB")
        surfaces = {
            "inspect --json": ["-m", "ckptui", "inspect", "--json", str(path)],
            "inspect": ["-m", "ckptui", "inspect", str(path)],
            "why --json": ["-m", "ckptui", "why", "--json", str(path)],
            "why": ["-m", "ckptui", "why", str(path)],
            "browser": ["-c", BROWSE, str(path)],
        }
        for what, argv in surfaces.items():
            got: dict[str, list[tuple[float, float, int]]] = {k: [] for k in trees}
            notes = ""
            for _ in range(repeat):
                for name, tree in trees.items():
                    env = {**os.environ, "PYTHONPATH": tree}
                    wall, cpu, rss, last = _measured([sys.executable, *argv], env)
                    got[name].append((wall, cpu, rss))
                    if what == "browser" and name == "ckptui":
                        notes = f" ({last})"
            med = {
                k: (
                    statistics.median(x[0] for x in v),
                    statistics.median(x[1] for x in v),
                    max(x[2] for x in v),
                )
                for k, v in got.items()
            }
            line = ", ".join(
                f"{k} {w:.2f} s (CPU {c:.2f} s) {r / 2**20:.0f} MiB" for k, (w, c, r) in med.items()
            )
            if "base" in med:
                (w1, c1, r1), (w0, c0, r0) = med["ckptui"], med["base"]
                line += f"; ckptui/base wall {w1 / w0:.2f}, CPU {c1 / c0:.2f}, RSS {r1 / r0:.2f}"
            print(f"  {what}: {line}{notes}")


def main() -> None:
    """Run the benchmark and print the ratios."""
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--src", help="another ckptui source tree (its tui/ folder) to compare")
    p.add_argument("--refs", type=int, default=0, metavar="N", help="only the N-references file")
    args = p.parse_args()
    here = Path(__file__).resolve().parents[2] / "tui"
    if args.refs:
        trees = {"ckptui": str(here), **({"base": args.src} if args.src else {})}
        bench_refs(args.refs, trees, args.repeat)
        return
    with tempfile.TemporaryDirectory() as d:
        module, plain = Path(d) / "module.pt", Path(d) / "plain.pkl"
        subprocess.run([sys.executable, "-c", MAKE, str(module), str(plain)], check=True)
        trees = {"ckptui": str(here)}
        if args.src:
            trees["base"] = args.src
        for path in (module, plain):
            times: dict[str, list[float]] = {k: [] for k in (*trees, "torch")}
            for _ in range(args.repeat):
                for name, tree in trees.items():
                    env = {**os.environ, "PYTHONPATH": tree}
                    cmd = [sys.executable, "-m", "ckptui", "inspect", str(path), "--json"]
                    times[name].append(_time(cmd, env))
                times["torch"].append(
                    _time([sys.executable, "-c", TORCH, str(path)], dict(os.environ))
                )
            med = {k: statistics.median(v) for k, v in times.items()}
            line = ", ".join(f"{k} {v:.3f} s" for k, v in med.items())
            ratios = ", ".join(f"{k}/torch {med[k] / med['torch']:.2f}" for k in trees)
            extra = f", ckptui/base {med['ckptui'] / med['base']:.2f}" if "base" in med else ""
            print(f"{path.name}: {line}; {ratios}{extra}")


if __name__ == "__main__":
    main()
