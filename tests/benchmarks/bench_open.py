"""Benchmark `ckptui inspect --json` against `torch.load(mmap=True)` on training checkpoints.

Usage: python tests/benchmarks/bench_open.py [--skip-big] [--workdir DIR] [--repeat N] [--json]

Benchmarks run on demand, not under pytest. The project rule is that speed is measured by a
script comparing against torch.load in the same run and reported as ratios, so the numbers
do not depend on the machine. This script:

1. writes (with real torch.save; reused when an existing file has the expected size) a ~600 MB
   training checkpoint {'model', 'optimizer' (Adam), 'scheduler', 'epoch', 'iteration', 'args'}
   with ~800 tensors, and unless --skip-big a ~6 GB one with the SAME tensor count;
2. reads each file once so both tools see a warm page cache (dropping caches needs root);
3. times each tool in its own child process, interleaved, --repeat times, taking wall time and
   the child's own peak RSS from os.wait4 (ru_maxrss, KiB on Linux);
4. prints ours / torch ratios (targets: wall <= 0.25x, RSS <= 0.3x) and our big / small time
   ratio, which should be ~1: inspecting must scale with tensor count, not bytes.

The parent never imports torch: after fork+exec a child's ru_maxrss starts at the parent's
high-water RSS, so the checkpoints are generated in a separate process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import child_env, measure  # a sibling script: its folder is on sys.path

LAYERS = 16  # 12 params per block + final LayerNorm + head = 196 params -> 784 tensors with Adam
SIZES = {"small": 512, "big": 1624}  # hidden width; 1624**2 / 512**2 ~= 10x the bytes
BIG_MIN_FREE = 15 * 2**30
BASE_CODE = (
    "import sys, torch; torch.load(sys.argv[1], map_location='cpu', mmap=True, weights_only=True)"
)
WALL_TARGET, RSS_TARGET = 0.25, 0.30
ROOT = Path(__file__).resolve().parents[2]


def param_count(dim: int) -> int:
    """Parameters of the model built by generate(), computed without torch."""
    per_block = 12 * dim * dim + 13 * dim  # 2 LayerNorms, qkv, proj, fc1, fc2 (with biases)
    return LAYERS * per_block + dim * dim + 3 * dim  # + final LayerNorm + head


def tensor_count() -> int:
    return 4 * (12 * LAYERS + 4)  # each param + Adam's step, exp_avg, exp_avg_sq


def expected_bytes(dim: int) -> int:
    """fp32 tensor payload: params + exp_avg + exp_avg_sq, plus one 4-byte step per param."""
    return 3 * 4 * param_count(dim) + 4 * (12 * LAYERS + 4)


def generate(path: Path, dim: int) -> None:
    """Child-process mode: build the model on meta, materialise with zeros, one Adam step, save."""
    import torch
    from torch import nn

    def block() -> nn.ModuleDict:
        return nn.ModuleDict(
            {
                "ln1": nn.LayerNorm(dim),
                "qkv": nn.Linear(dim, 3 * dim),
                "proj": nn.Linear(dim, dim),
                "ln2": nn.LayerNorm(dim),
                "fc1": nn.Linear(dim, 4 * dim),
                "fc2": nn.Linear(4 * dim, dim),
            }
        )

    with torch.device("meta"):
        blocks = nn.ModuleList([block() for _ in range(LAYERS)])
        model = nn.ModuleDict({"blocks": blocks, "ln_f": nn.LayerNorm(dim)})
        model["head"] = nn.Linear(dim, dim)
    model.to_empty(device="cpu")
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=3e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=1000)
    with torch.no_grad():
        for p in params:
            p.zero_()
            p.grad = torch.zeros_like(p)
    opt.step()
    sched.step()
    for p in params:
        p.grad = None
    args = {"lr": 3e-4, "batch_size": 32, "dim": dim, "amp": False, "data": "/data/train"}
    ckpt = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "epoch": 7,
        "iteration": 99999,
        "args": args,
    }
    tmp = path.with_name(path.name + ".partial")
    torch.save(ckpt, tmp)
    tmp.replace(path)


def ensure_checkpoint(workdir: Path, name: str, dim: int, min_free: int) -> Path | None:
    path = workdir / f"bench_{name}_d{dim}_l{LAYERS}.pt"
    want = expected_bytes(dim)
    if path.exists() and want <= path.stat().st_size <= want + 16 * 2**20:
        log(f"reusing {path} ({path.stat().st_size / 1e6:.0f} MB)")
        return path
    free = shutil.disk_usage(workdir).free
    if free < min_free:
        log(f"SKIP {name}: {free / 2**30:.1f} GiB free in {workdir}, need {min_free / 2**30:.0f}")
        return None
    log(f"writing {path} (~{want / 1e6:.0f} MB, {tensor_count()} tensors) ...")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--_generate", str(path), str(dim)], check=True)
    log(f"  done in {time.perf_counter() - t0:.1f} s")
    return path


def warm(path: Path) -> None:
    buf = bytearray(2**18)  # small reused buffer: the parent's peak RSS is the children's floor
    with path.open("rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def interleaved(
    cmds: dict[str, list[str]], env: dict[str, str], repeat: int
) -> dict[str, list[tuple[float, int]]]:
    """(wall, peak RSS KiB) samples per command: one untimed warm-up each, then `repeat`
    rounds, alternating which command goes first."""
    for cmd in cmds.values():
        measure(cmd, env)
    runs: dict[str, list[tuple[float, int]]] = {k: [] for k in cmds}
    for i in range(repeat):
        for name in list(cmds)[:: 1 if i % 2 == 0 else -1]:
            runs[name].append(measure(cmds[name], env))
    return runs


def bench_file(path: Path, ours_code: str | None, repeat: int, warm_up: bool) -> dict[str, dict]:
    env = child_env()
    ours = ["-m", "ckptui"] if ours_code is None else ["-c", ours_code]
    cmds = {
        "ckptui": [sys.executable, *ours, "inspect", str(path), "--json"],
        "torch.load": [sys.executable, "-c", BASE_CODE, str(path)],
    }
    if warm_up:  # file into page cache; one untimed run each warms interpreter and library files
        warm(path)
        for cmd in cmds.values():
            measure(cmd, env)
    runs: dict[str, list[tuple[float, int]]] = {k: [] for k in cmds}
    for i in range(repeat):
        for tool in list(cmds)[:: 1 if i % 2 == 0 else -1]:  # interleave, alternating who is first
            runs[tool].append(measure(cmds[tool], env))
    out: dict[str, dict] = {}
    for tool, samples in runs.items():
        walls = [w for w, _ in samples]
        out[tool] = {
            "wall_min": min(walls),
            "wall_median": statistics.median(walls),
            "wall_max": max(walls),
            "rss_median_kib": statistics.median(r for _, r in samples),
            "walls": walls,
        }
    return out


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-big", action="store_true", help="only the ~600 MB checkpoint")
    default_dir = Path(tempfile.gettempdir()) / "ckptui-bench"
    ap.add_argument("--workdir", type=Path, default=default_dir, help="(default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per tool (default: 5)")
    ap.add_argument("--no-warm", action="store_true", help="skip pre-reading the files")
    ap.add_argument("--json", action="store_true", help="print results as JSON")
    # Hidden: python -c code run instead of `-m ckptui` (gets: inspect PATH --json in sys.argv).
    ap.add_argument("--ours-cmd", help=argparse.SUPPRESS)
    ap.add_argument("--_generate", nargs=2, metavar=("PATH", "DIM"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._generate:
        generate(Path(a._generate[0]), int(a._generate[1]))
        return
    a.workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {"warm_cache": not a.no_warm, "repeat": a.repeat, "files": {}, "ratios": {}}
    floor = statistics.median(
        measure([sys.executable, "-c", "pass"], os.environ.copy())[1] for _ in range(3)
    )
    results["python_floor_rss_kib"] = floor
    for name, dim in SIZES.items():
        if name == "big" and a.skip_big:
            continue
        path = ensure_checkpoint(a.workdir, name, dim, BIG_MIN_FREE if name == "big" else 2**30)
        if path is None:
            continue
        log(f"timing {name} ({a.repeat}x each, warm cache: {not a.no_warm}) ...")
        res = bench_file(path, a.ours_cmd, a.repeat, not a.no_warm)
        res.update(path=str(path), bytes=path.stat().st_size, tensors=tensor_count())
        results["files"][name] = res
        o, b = res["ckptui"], res["torch.load"]
        results["ratios"][name] = {
            "wall": o["wall_median"] / b["wall_median"],
            "rss": o["rss_median_kib"] / b["rss_median_kib"],
        }
    parent = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results["parent_peak_rss_kib"] = parent  # a child's ru_maxrss can never read below this
    files = results["files"]
    if "small" in files and "big" in files:
        results["ratios"]["scaling_big_over_small"] = {
            t: files["big"][t]["wall_median"] / files["small"][t]["wall_median"]
            for t in ("ckptui", "torch.load")
        }
    if a.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"cache: {'warm (each file read once before timing)' if not a.no_warm else 'as found'}"
        f"; {a.repeat} interleaved runs per tool; {tensor_count()} tensors per file;"
        f" RSS floors: bare python {floor / 1024:.1f} MiB, this script {parent / 1024:.1f} MiB"
    )
    print(f"{'file':<6} {'size':>8}  {'tool':<10} {'wall min/med/max (s)':>22} {'RSS med':>10}")
    for name, res in files.items():
        for tool in ("ckptui", "torch.load"):
            r = res[tool]
            walls = f"{r['wall_min']:.3f}/{r['wall_median']:.3f}/{r['wall_max']:.3f}"
            print(
                f"{name:<6} {res['bytes'] / 1e9:>6.2f}GB  {tool:<10} {walls:>22}"
                f" {r['rss_median_kib'] / 1024:>7.1f}MiB"
            )
    for name in files:
        r = results["ratios"][name]
        print(
            f"{name}: ckptui/torch.load wall {r['wall']:.2f}x (target <= {WALL_TARGET}x)"
            f" {'OK' if r['wall'] <= WALL_TARGET else 'MISS'}; RSS {r['rss']:.2f}x"
            f" (target <= {RSS_TARGET}x) {'OK' if r['rss'] <= RSS_TARGET else 'MISS'}"
        )
    if "scaling_big_over_small" in results["ratios"]:
        s = results["ratios"]["scaling_big_over_small"]
        print(
            f"scaling big/small wall: ckptui {s['ckptui']:.2f}x (target ~1),"
            f" torch.load {s['torch.load']:.2f}x (reference)"
        )


if __name__ == "__main__":
    main()
