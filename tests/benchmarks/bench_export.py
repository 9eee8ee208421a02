"""Benchmark `ckptui export` against the usual script and against `cp` of the kept bytes.

Usage: python tests/benchmarks/bench_export.py [--repeat N] [--workdir DIR]

Run on demand, not under pytest; figures go into issue notes. On the ~600 MB training
checkpoint that bench_open.py writes (built with its code if missing), each command runs in its
own child, interleaved, --repeat times; wall time and the child's peak RSS (os.wait4):

- `ckptui export P -o w.pth` and `-o w.safetensors` (weights only, verified before renaming);
- the script people write: `ck = torch.load(p, map_location='cpu'); torch.save(ck['model'], out)`;
- `cp` of a file as large as the kept weights: the floor of any export.

Targets (issue 6): ckptui <= 0.3x the script's wall time and <= 0.2x its peak RSS.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

SCRIPT = (
    "import sys, torch; ck = torch.load(sys.argv[1], map_location='cpu'); "
    "torch.save(ck['model'], sys.argv[2])"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ckptui-bench")
    a = ap.parse_args()
    import bench_open  # a sibling script: its folder is on sys.path

    a.workdir.mkdir(parents=True, exist_ok=True)
    src = bench_open.ensure_checkpoint(a.workdir, "small", bench_open.SIZES["small"], 2 << 30)
    assert src is not None
    out = a.workdir / "export-out"
    out.mkdir(exist_ok=True)
    script_out = out / "script.pth"
    # the kept size, for the cp floor: what the script writes
    env = bench_open.child_env()
    bench_open.measure([sys.executable, "-c", SCRIPT, str(src), str(script_out)], env)
    floor_src = out / "floor.bin"
    with floor_src.open("wb") as f:
        f.truncate(script_out.stat().st_size)
        f.seek(0)
        block = os.urandom(1 << 20)
        for _ in range(script_out.stat().st_size >> 20):
            f.write(block)
    cmds = {
        "ckptui export -> .pth": [
            sys.executable, "-m", "ckptui", "export", str(src), "-o", str(out / "w.pth"),
            "--force", "--json",
        ],
        "ckptui export -> .safetensors": [
            sys.executable, "-m", "ckptui", "export", str(src), "-o",
            str(out / "w.safetensors"), "--force", "--json",
        ],
        "script: torch.load + torch.save": [
            sys.executable, "-c", SCRIPT, str(src), str(script_out),
        ],
        "cp of the kept size": ["cp", str(floor_src), str(out / "floor-copy.bin")],
    }  # fmt: skip
    bench_open.warm(src)
    runs = bench_open.interleaved(cmds, env, a.repeat)
    print(
        f"{src.name} ({src.stat().st_size / 1e6:.0f} MB) -> weights "
        f"{script_out.stat().st_size / 1e6:.0f} MB, {a.repeat} runs, warm page cache"
    )
    print(f"{'command':34} {'wall min':>9} {'median':>8} {'max':>8} {'RSS MiB':>8}")
    for name, samples in runs.items():
        walls = [w for w, _ in samples]
        rss = statistics.median(r for _, r in samples) / 1024
        print(
            f"{name:34} {min(walls):9.3f} {statistics.median(walls):8.3f} {max(walls):8.3f} "
            f"{rss:8.1f}"
        )
    base = runs["script: torch.load + torch.save"]
    floor = statistics.median(w for w, _ in runs["cp of the kept size"])
    for name in ("ckptui export -> .pth", "ckptui export -> .safetensors"):
        wall = statistics.median(w for w, _ in runs[name])
        ratio = wall / statistics.median(w for w, _ in base)
        rss = statistics.median(r for _, r in runs[name]) / statistics.median(r for _, r in base)
        print(
            f"{name}: wall {ratio:.2f}x the script (target <= 0.3), peak RSS {rss:.2f}x "
            f"(target <= 0.2), {wall / floor:.1f}x cp"
        )


if __name__ == "__main__":
    main()
