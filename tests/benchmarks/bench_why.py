"""Benchmark the size breakdown: `w` in the app, `ckptui why`, against a torch.load script.

Usage: python tests/benchmarks/bench_why.py [--repeat N] [--workdir DIR]
       python tests/benchmarks/bench_why.py --stages FILE [--repeat N]

Run on demand, not under pytest; figures go into issue notes. On the ~600 MB training
checkpoint that bench_open.py writes (784 tensors, Adam state; built with its code if missing):

1. In the app (run_test, 100x30): from posting `w` until the first frame showing the breakdown
   (target <= 0.5 s), and until the duplicate search has finished (it reads tensor data).
2. In process: `read_layout` + `breakdown` (metadata only), and `find_duplicates`.
3. As commands, each in its own child, interleaved, wall time and peak RSS (os.wait4):
   `ckptui why --json --no-duplicates`, `ckptui why --json`, and the baseline a user would write
   without ckptui: `torch.load(mmap=True)` then summing `nbytes` per top-level key. The ratios
   ours / baseline are printed.

`--stages FILE` instead splits `ckptui why --json` and the default `ckptui export` of FILE (e.g.
the `zip100k.pt` that bench_scale.py writes) into CPU seconds per stage, in this process, with
no profiler (cProfile triples the cost of the per-tensor calls, issue 16): the best of
`--repeat` runs of each stage, on a loaded machine steadier than wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tui"))

BASELINE = """
import sys, torch
ck = torch.load(sys.argv[1], map_location="cpu", mmap=True, weights_only=True)
def total(o):
    if isinstance(o, torch.Tensor):
        return o.untyped_storage().nbytes()
    if isinstance(o, dict):
        return sum(total(v) for v in o.values())
    if isinstance(o, (list, tuple)):
        return sum(total(v) for v in o)
    return 0
print({k: total(v) for k, v in ck.items()})
"""


async def app_times(path: Path, bench_ui: ModuleType) -> tuple[float, float]:
    """(seconds from `w` to the breakdown's frame, seconds until duplicates are done)."""
    from ckptui.app.app import CkptApp
    from ckptui.app.screens.browse import BrowseScreen
    from ckptui.app.screens.why import BarTree, WhyScreen
    from ckptui.app.widgets.ckpt_tree import CkptTree

    app = CkptApp(str(path))
    frames = bench_ui.Frames(app)

    def opened() -> bool:
        s = app.screen
        return isinstance(s, BrowseScreen) and s.query_one(CkptTree).ckpt is not None

    def shown() -> bool:
        s = app.screen
        return isinstance(s, WhyScreen) and bool(s.query_one(BarTree).root.children)

    def compared() -> bool:
        s = app.screen
        return isinstance(s, WhyScreen) and s.cache.duplicates_done

    async with app.run_test(size=bench_ui.SIZE):
        await bench_ui.within(frames.watch(opened), "open")
        await asyncio.sleep(0.2)
        first = frames.watch(shown)
        done = frames.watch(compared)
        t0 = time.perf_counter()
        bench_ui.post_key(app, "w")
        t_shown = await bench_ui.within(first, "breakdown") - t0
        t_done = await bench_ui.within(done, "duplicates") - t0
    return t_shown, t_done


def core_times(path: Path) -> tuple[float, float, int]:
    from ckptui.analysis.sizes.breakdown import breakdown
    from ckptui.analysis.sizes.duplicates import find_duplicates
    from ckptui.formats import open_checkpoint
    from ckptui.formats.layout import read_layout

    ckpt = open_checkpoint(path)
    t0 = time.perf_counter()
    b = breakdown(ckpt, read_layout(ckpt))
    t1 = time.perf_counter()
    found = find_duplicates(ckpt, b)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, len(found)


def stage_times(path: Path, repeat: int) -> None:
    """Print the best CPU seconds of each stage of `why --json` and of the default export."""
    import gc
    import json

    from ckptui.analysis.sizes import breakdown as bd
    from ckptui.analysis.sizes.duplicates import duplicates_of, find_duplicates
    from ckptui.analysis.sizes.folder import breakdown_of
    from ckptui.core.bulk import gc_paused
    from ckptui.export import make_plan, run, writers
    from ckptui.export.size import exported_size
    from ckptui.formats import open_checkpoint
    from ckptui.formats.layout import read_layout
    from ckptui.report.why import breakdown_json

    best: dict[str, float] = {}

    def timed(label: str, fn, *args):
        t = time.process_time()
        out = fn(*args)
        spent = time.process_time() - t
        best[label] = min(best.get(label, spent), spent)
        return out

    out = Path(tempfile.gettempdir()) / f"bench-why-{path.stem}.pth"
    for _ in range(repeat):
        ckpt = timed("open", open_checkpoint, str(path))
        with gc_paused():  # as breakdown_of runs its parts
            regions = timed("  read_layout", read_layout, ckpt)
            timed("  breakdown, estimated size", bd.breakdown, ckpt, regions)
            plan = timed("  make_plan", make_plan, ckpt)
            timed("  predicted size", writers.predicted_size, plan)
        files: list = []
        b = timed(
            "why: breakdown_of (all)",
            breakdown_of,
            ckpt,
            lambda name, c, fb, files=files: files.append((name, c, fb)),
            exported_size,
        )
        found = timed(
            "why: duplicates", duplicates_of, ckpt, b, files, lambda c, fb: find_duplicates(c, fb)
        )
        b.add_findings(found)
        timed("why: JSON", lambda b=b: json.dumps(breakdown_json(b)))
        plan = timed("export: make_plan", make_plan, ckpt)
        timed("export: write + verify", run.export, plan, str(out), True)
        gc.collect()
    out.unlink(missing_ok=True)
    print(f"{path.name}: best of {repeat} runs, CPU seconds (process_time)")
    for label, spent in best.items():
        print(f"{label:34} {spent:8.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    default_dir = Path(tempfile.gettempdir()) / "ckptui-bench"
    ap.add_argument("--workdir", type=Path, default=default_dir)
    ap.add_argument("--stages", type=Path, metavar="FILE", help="CPU seconds per stage of FILE")
    a = ap.parse_args()
    if a.stages is not None:
        stage_times(a.stages, a.repeat)
        return
    import bench_open  # a sibling script: its folder is on sys.path
    import bench_ui

    a.workdir.mkdir(parents=True, exist_ok=True)
    path = bench_open.ensure_checkpoint(a.workdir, "small", bench_open.SIZES["small"], 2 << 30)
    assert path is not None
    bench_open.warm(path)

    rows: list[tuple[str, str, list[float], str]] = []
    shown, done = [], []
    for _ in range(a.repeat):
        s, d = asyncio.run(app_times(path, bench_ui))
        shown.append(s)
        done.append(d)
    rows.append(("app: w -> breakdown frame", "s", shown, "<= 0.5"))
    rows.append(("app: w -> duplicates done", "s", done, ""))
    core = [core_times(path) for _ in range(a.repeat)]
    rows.append(("core: read_layout + breakdown", "ms", [1000 * c[0] for c in core], ""))
    rows.append(("core: find_duplicates", "ms", [1000 * c[1] for c in core], ""))

    env = bench_open.child_env()
    cmds = {
        "why --json --no-duplicates": [
            sys.executable,
            "-m",
            "ckptui",
            "why",
            str(path),
            "--json",
            "--no-duplicates",
        ],
        "why --json": [sys.executable, "-m", "ckptui", "why", str(path), "--json"],
        "torch.load(mmap) + sum nbytes": [sys.executable, "-c", BASELINE, str(path)],
    }
    runs = bench_open.interleaved(cmds, env, a.repeat)
    for name, samples in runs.items():
        rows.append((f"cmd: {name} wall", "s", [w for w, _ in samples], ""))
        rows.append((f"cmd: {name} peak RSS", "MiB", [r / 1024 for _, r in samples], ""))

    print(
        f"{path.name} ({path.stat().st_size / 1e6:.0f} MB), {a.repeat} runs, {core[0][2]} "
        "duplicate group(s) found"
    )
    print(f"{'measurement':44} {'unit':>4} {'min':>9} {'median':>9} {'max':>9}  target")
    for name, unit, xs, target in rows:
        print(
            f"{name:44} {unit:>4} {min(xs):9.3f} {statistics.median(xs):9.3f} {max(xs):9.3f}  "
            f"{target}"
        )
    base = runs["torch.load(mmap) + sum nbytes"]
    for name in ("why --json --no-duplicates", "why --json"):
        wall = statistics.median(w for w, _ in runs[name]) / statistics.median(w for w, _ in base)
        rss = statistics.median(r for _, r in runs[name]) / statistics.median(r for _, r in base)
        print(f"ratio {name} / baseline: wall {wall:.2f}x, peak RSS {rss:.2f}x")


if __name__ == "__main__":
    main()
