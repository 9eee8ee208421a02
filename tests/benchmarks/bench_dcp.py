"""Benchmark opening a DCP folder of 10,000 tensors in 8 files against torch's own DCP reading.

Usage: python tests/benchmarks/bench_dcp.py [--workdir DIR] [--repeat N] [--tensors N] [--json]

Run on demand, not under pytest. This script:

1. writes (with real `torch.distributed.checkpoint.save`, `no_dist=True`, through
   `FileSystemWriter(thread_count=8)`: 8 `.distcp` files; reused when the folder exists with the
   same tensor count) a model state dict of --tensors tensors (default 10,000: 1,250 blocks of
   weight/bias pairs of small Linear and LayerNorm layers, ~45 MB);
2. reads every file once so all tools see a warm page cache;
3. times, each in a fresh child process, interleaved, --repeat times (bench_open's `measure`,
   `child_env` and `interleaved`): `read_dcp(folder)` (what `ckptui PATH` pays to show the
   tree), torch's `FileSystemReader(folder).read_metadata()` (unpickling `.metadata` only) and a
   full DCP load of every tensor (`_load_state_dict` with `_EmptyStateDictLoadPlanner`,
   `no_dist=True`, as `format_utils.dcp_to_torch_save` does);
4. prints min/median/max wall time and median peak RSS of each, the ratios to torch, and
   whether opening stays under the 1 s target.

The parent never imports torch (a child's ru_maxrss starts at the parent's high-water mark).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET_S = 1.0
FILES = 8

OURS = (
    "import sys; from ckptui.formats.dcp.reader import read_dcp; c = read_dcp(sys.argv[1]); "
    "n = sum(1 for _ in c.tensors()); assert n == int(sys.argv[2]) and not c.findings, n"
)
TORCH_METADATA = (
    "import sys; from torch.distributed.checkpoint import FileSystemReader; "
    "md = FileSystemReader(sys.argv[1]).read_metadata(); "
    "assert len(md.state_dict_metadata) == int(sys.argv[2])"
)
TORCH_LOAD = (
    "import sys, warnings; warnings.simplefilter('ignore'); "
    "from torch.distributed.checkpoint import FileSystemReader; "
    "from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner; "
    "from torch.distributed.checkpoint.state_dict_loader import _load_state_dict; "
    "sd = {}; _load_state_dict(sd, storage_reader=FileSystemReader(sys.argv[1]), "
    "planner=_EmptyStateDictLoadPlanner(), no_dist=True); "
    "assert len(sd['model']) == int(sys.argv[2])"
)


def generate(folder: Path, tensors: int) -> None:
    """In a child process: save `tensors` tensors as a DCP folder of FILES files."""
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter

    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    # a weight and a bias each: Linear 32x32 and LayerNorm(32)
    layers = [
        torch.nn.Linear(32, 32) if i % 2 == 0 else torch.nn.LayerNorm(32)
        for i in range(tensors // 2)
    ]
    model = torch.nn.Sequential(*layers)
    sd = {"model": model.state_dict()}
    assert len(sd["model"]) == tensors
    writer = FileSystemWriter(folder, thread_count=FILES, sync_files=False)
    dcp.save(sd, storage_writer=writer, no_dist=True)
    (folder / "bench-ok").write_text(str(tensors))


def ensure_folder(workdir: Path, tensors: int, log: object) -> Path:
    folder = workdir / f"dcp-{tensors}"
    ok = folder / "bench-ok"
    if ok.exists() and ok.read_text() == str(tensors):
        return folder
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    print(f"writing {tensors:,} tensors to {folder} ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, __file__, "--_generate", str(folder), str(tensors)], check=True)
    print(f"  done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ckptui-bench")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--tensors", type=int, default=10_000)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--_generate", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._generate:
        generate(Path(a._generate[0]), int(a._generate[1]))
        return
    import bench_open  # a sibling script: its folder is on sys.path

    folder = ensure_folder(a.workdir, a.tensors, None)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    distcp = [p for p in files if p.suffix == ".distcp"]
    for p in files:
        bench_open.warm(p)
    n = str(a.tensors)
    cmds = {
        "ckptui read_dcp": [sys.executable, "-c", OURS, str(folder), n],
        "torch read_metadata": [sys.executable, "-c", TORCH_METADATA, str(folder), n],
        "torch full DCP load": [sys.executable, "-c", TORCH_LOAD, str(folder), n],
    }
    runs = bench_open.interleaved(cmds, bench_open.child_env(), a.repeat)
    out: dict[str, dict] = {}
    for name, samples in runs.items():
        walls = [w for w, _ in samples]
        out[name] = {
            "wall_min": min(walls),
            "wall_median": statistics.median(walls),
            "wall_max": max(walls),
            "rss_median_mib": statistics.median(r for _, r in samples) / 1024,
        }
    ours = out["ckptui read_dcp"]
    result = {
        "folder": str(folder),
        "tensors": a.tensors,
        "distcp_files": len(distcp),
        "folder_bytes": sum(p.stat().st_size for p in files),
        "metadata_bytes": (folder / ".metadata").stat().st_size,
        "repeat": a.repeat,
        "tools": out,
        "ratio_to_read_metadata": ours["wall_median"] / out["torch read_metadata"]["wall_median"],
        "ratio_to_full_load": ours["wall_median"] / out["torch full DCP load"]["wall_median"],
        "under_target": ours["wall_max"] < TARGET_S,
    }
    if a.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{a.tensors:,} tensors in {len(distcp)} .distcp files, "
        f"{result['folder_bytes'] / 2**20:.1f} MiB (.metadata {result['metadata_bytes'] / 2**20:.1f}"
        f" MiB); {a.repeat} interleaved runs each, fresh child processes, warm page cache"
    )
    print(f"{'':24} {'min':>7} {'median':>7} {'max':>7}   peak RSS")
    for name, r in out.items():
        print(
            f"{name:24} {r['wall_min']:6.3f}s {r['wall_median']:6.3f}s {r['wall_max']:6.3f}s"
            f"   {r['rss_median_mib']:6.0f} MiB"
        )
    print(
        f"ckptui / torch read_metadata: {result['ratio_to_read_metadata']:.2f}x; "
        f"ckptui / full load: {result['ratio_to_full_load']:.2f}x; "
        f"target: open < {TARGET_S:.0f} s -> {'met' if result['under_target'] else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
