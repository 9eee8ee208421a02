"""Benchmark what judging every global and call costs: `ckptui inspect --json` on pickles with
many globals and calls, against `torch.load(weights_only=False)` of the same file.

Usage: python tests/benchmarks/bench_safety.py [--repeat N] [--src DIR]

Not collected by pytest. Writes (with real torch.save, in a child process) a whole-module pickle
of 2,000 small modules (one NEWOBJ + BUILD per module, a dozen distinct classes) and a plain
`pickle.dump` of a 2,000-tensor state dict (one `_load_from_bytes` call per tensor), then times
each tool in its own child process, interleaved, and prints ours / torch ratios. `--src` runs
ckptui from another source tree (e.g. an export of the base commit) for a before/after ratio in
the same run.
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


def main() -> None:
    """Run the benchmark and print the ratios."""
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--src", help="another ckptui source tree (its tui/ folder) to compare")
    args = p.parse_args()
    here = Path(__file__).resolve().parents[2] / "tui"
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
