"""Benchmark opening a large state dict and planning its export, this tree against another.

Usage: python tests/benchmarks/bench_plan.py --src OTHER/tui [--keys N] [--repeat N]

Run on demand, not under pytest. Issue 19 taught the plan quantized models (`export/quantized.py`
walks every kept entry) and the tree builder `_metadata` versions: a plain state dict must not pay
for it. On a `torch.save`d dict of N small tensors with a real `_metadata` (an `nn.Sequential` of
N/2 Linear layers' state dict), each child process times `open_checkpoint`, `make_plan` and the
predicted size, in-process, best of --repeat in CPU seconds (a shared machine makes wall time
noisy), for this tree and for `--src` (a checkout of the
code before, `git archive <commit> tui | tar -x -C DIR`), interleaved; the ratio is this tree's
time over the other's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_CHILD = """
import json, sys, time
from ckptui.formats import open_checkpoint
from ckptui.export import make_plan
times = {"open": [], "plan": []}
clock = time.process_time  # CPU time: the machine may be shared, wall time is noisy
for _ in range(int(sys.argv[2])):
    t0 = clock(); c = open_checkpoint(sys.argv[1]); t1 = clock()
    p = make_plan(c); p.predicted_bytes; t2 = clock()
    times["open"].append(t1 - t0); times["plan"].append(t2 - t1)
print(json.dumps({k: min(v) for k, v in times.items()}))
"""


def _make(path: Path, keys: int) -> None:
    import torch

    layers = [torch.nn.Linear(2, 2) for _ in range(keys // 2)]
    torch.save(torch.nn.Sequential(*layers).state_dict(), path)


def _run(tree: Path, path: Path, repeat: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(repeat)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, required=True, help="the other tree's tui folder")
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    path = Path(tempfile.gettempdir()) / f"ckptui-bench-plan-{a.keys}.pth"
    if not path.exists():
        _make(path, a.keys)
    ours = theirs = None
    for _ in range(2):  # interleaved, so load changes hit both
        o, t = _run(ROOT / "tui", path, a.repeat), _run(a.src, path, a.repeat)
        ours = o if ours is None else {k: min(ours[k], o[k]) for k in o}
        theirs = t if theirs is None else {k: min(theirs[k], t[k]) for k in t}
    assert ours is not None and theirs is not None
    for k in ours:
        print(
            f"{k:5} this {ours[k]:.3f} s · other {theirs[k]:.3f} s CPU · {ours[k] / theirs[k]:.2f}x"
        )


if __name__ == "__main__":
    main()
