"""Benchmark ckptui at MoE scale (100,000 tensors) against torch.load in the same run.

Usage: python tests/benchmarks/bench_scale.py [--repeat N] [--workdir DIR] [--only NAME,...]
       [--json]

Run on demand, not under pytest; the figures go into issue 16's note. Checkpoints a modern
mixture-of-experts run produces have ~90,000 tensors (and three times that with Adam state), so
every per-tensor constant matters here in a way it does not on a 784-tensor file. This script:

1. writes, with the real producers (torch.save, safetensors.torch.save_file) in a child process,
   and reuses when present (a `.done` marker beside each):
   - `zip100k.pt`: a flat state dict of 100,000 small fp32 tensors (~30 MB), zip format;
   - `legacy100k.pt`: the same dict saved with `_use_new_zipfile_serialization=False`;
   - `shards160/`: 160 safetensors shards holding 90,000 tensors named like DeepSeek-V3's
     experts, plus a `model.safetensors.index.json` weight map;
   - `train30k.pt`: a training checkpoint of 30,000 parameters + Adam state (120,000 tensors);
   - `dcp10k/`: a `torch.distributed.checkpoint.save` (one process) of 10,000 tensors;
2. times each ckptui command and its baseline in their own child processes, interleaved
   (alternating who goes first), taking wall time and the child's own peak RSS via os.wait4;
3. prints the medians and the ratios ours / baseline with the issue's targets:
   inspect --json <= 0.2x torch.load(mmap=True, weights_only=True) (peak RSS <= 0.5x),
   why --json <= 0.5x that torch.load, export <= 0.3x torch.load + torch.save,
   folder inspect --json <= 2x a safe_open-every-shard script (and opening it under 1 s);
   the DCP folder's inspect/why against `dcp.load` into preallocated tensors.

The parent never imports torch, so its own RSS (a child's ru_maxrss floor after fork) stays small.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # a sibling script: its folder is on sys.path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

FLAT_N = 100_000
FLAT_NUMEL = 75  # 100,000 x 75 x 4 B = 30 MB, the file
SHARDS, SHARD_TENSORS = 160, 90_000
TRAIN_PARAMS = 30_000
DCP_ITEMS = 10_000

LOAD = (
    "import sys, torch; torch.load(sys.argv[1], map_location='cpu', mmap=True, weights_only=True)"
)
LOAD_LEGACY = LOAD.replace("mmap=True, ", "")
"""torch.load of a legacy file: `mmap=True` refuses one at once (a RuntimeError, exit 1, which
`measure` accepts as a run), so the legacy baseline is the plain load."""
LOAD_SAVE = (
    "import sys, torch; sd = torch.load(sys.argv[1], map_location='cpu', mmap=True,"
    " weights_only=True); torch.save(sd, sys.argv[2])"
)
SAFE_OPEN = """
import json, sys
from pathlib import Path
from safetensors import safe_open
rows = []
for shard in sorted(Path(sys.argv[1]).glob("*.safetensors")):
    with safe_open(str(shard), "np") as f:
        for k in f.keys():
            s = f.get_slice(k)
            rows.append((k, s.get_shape(), s.get_dtype()))
print(len(rows))
"""
OPEN = "import sys; from ckptui.formats import open_checkpoint; open_checkpoint(sys.argv[1])"
DCP_LOAD = """
import sys, torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
md = FileSystemReader(sys.argv[1]).read_metadata()
sd = {k: torch.empty(v.size, dtype=v.properties.dtype)
      for k, v in md.state_dict_metadata.items() if hasattr(v, "size")}
dcp.load(sd, checkpoint_id=sys.argv[1])
print(len(sd))
"""


# ----------------------------------------------------------------------------- generation
def _gen_flat(path: Path, legacy: bool) -> None:
    import torch

    g = torch.Generator().manual_seed(0)
    sd = {
        f"model.layers.{i // 1000}.mlp.experts.{i % 1000}.weight": torch.randn(
            FLAT_NUMEL, generator=g
        )
        for i in range(FLAT_N)
    }
    kw = {"_use_new_zipfile_serialization": False} if legacy else {}
    torch.save(sd, path, **kw)


def _gen_shards(folder: Path) -> None:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    per = SHARD_TENSORS // SHARDS
    weight_map: dict[str, str] = {}
    total = 0
    n = 0
    for s in range(SHARDS):
        name = f"model-{s + 1:05d}-of-{SHARDS:06d}.safetensors"
        tensors = {}
        for j in range(per):
            layer, expert = divmod(n, 256)
            proj = ("gate_proj", "up_proj", "down_proj")[j % 3]
            key = f"model.layers.{layer}.mlp.experts.{expert}.{proj}.weight"
            if key in weight_map or key in tensors:
                key = f"{key}.{n}"
            tensors[key] = torch.zeros(8, 4, dtype=torch.bfloat16)
            weight_map[key] = name
            total += 64
            n += 1
        save_file(tensors, str(folder / name), metadata={"format": "pt"})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _gen_train(path: Path) -> None:
    import torch

    params = [torch.nn.Parameter(torch.zeros(16)) for _ in range(TRAIN_PARAMS)]
    opt = torch.optim.Adam(params, lr=1e-3)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    for p in params:
        p.grad = None
    model = {f"blocks.{i // 100}.mlp.{i % 100}.weight": p.data for i, p in enumerate(params)}
    ckpt = {
        "model": model,
        "optimizer": opt.state_dict(),
        "epoch": 3,
        "iteration": 12345,
        "args": {"lr": 1e-3, "batch_size": 8},
    }
    torch.save(ckpt, path)


def _gen_dcp(folder: Path) -> None:
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp

    g = torch.Generator().manual_seed(0)
    sd = {
        f"model.layers.{i // 100}.mlp.experts.{i % 100}.weight": torch.randn(16, generator=g)
        for i in range(DCP_ITEMS)
    }
    with warnings.catch_warnings():  # "no process group: saving in a single process"
        warnings.simplefilter("ignore")
        dcp.save(sd, checkpoint_id=str(folder))


GENERATORS = {
    "zip100k": ("zip100k.pt", lambda p: _gen_flat(p, legacy=False)),
    "legacy100k": ("legacy100k.pt", lambda p: _gen_flat(p, legacy=True)),
    "shards160": ("shards160", _gen_shards),
    "train30k": ("train30k.pt", _gen_train),
    "dcp10k": ("dcp10k", _gen_dcp),
}


def ensure(workdir: Path, name: str) -> Path:
    fname, _ = GENERATORS[name]
    path = workdir / fname
    done = workdir / f"{fname}.done"
    if done.exists() and path.exists():
        return path
    if path.is_dir():
        shutil.rmtree(path)
    log(f"writing {path} ...")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--_generate", name, str(path)], check=True)
    done.write_text("ok\n")
    log(f"  done in {time.perf_counter() - t0:.1f} s")
    return path


# ----------------------------------------------------------------------------- timing
SRC = ROOT / "tui"
"""The ckptui source tree the children import (--src: e.g. an older commit's, for before/after)."""


def child_env() -> dict[str, str]:
    """common.child_env of SRC, read at call time (main() rebinds SRC for --src)."""
    return common.child_env(SRC)


# 1 = ran and reported a problem (e.g. findings): still timed
measure = functools.partial(common.measure, ok=(0, 1))


def pair(
    ours: list[str], base: list[str], repeat: int, before: callable | None = None
) -> dict[str, float]:
    """Interleaved runs of ours and base; medians and ratios. `before` runs ahead of each run
    (e.g. to delete an export's output)."""
    env = child_env()
    samples: dict[str, list[tuple[float, int]]] = {"ours": [], "base": []}
    cmds = {"ours": ours, "base": base}
    for cmd in cmds.values():  # one untimed warm-up each: page cache, interpreter, libraries
        if before:
            before()
        measure(cmd, env)
    for i in range(repeat):
        for name in list(cmds)[:: 1 if i % 2 == 0 else -1]:
            if before:
                before()
            samples[name].append(measure(cmds[name], env))
    out: dict[str, float] = {}
    for name, runs in samples.items():
        out[f"{name}_wall"] = statistics.median(w for w, _ in runs)
        out[f"{name}_rss_mib"] = statistics.median(r for _, r in runs) / 1024
    out["wall_ratio"] = out["ours_wall"] / out["base_wall"]
    # the fastest run of each: on a shared machine the least disturbed, so the steadiest ratio
    # (the median stays the headline, as the targets are read)
    out["min_ratio"] = min(w for w, _ in samples["ours"]) / min(w for w, _ in samples["base"])
    out["rss_ratio"] = out["ours_rss_mib"] / out["base_rss_mib"]
    return out


def ck(*args: str) -> list[str]:
    return [sys.executable, "-m", "ckptui", *args]


def py(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


def cases(workdir: Path, only: set[str]) -> list[tuple[str, list[str], list[str], float, object]]:
    """(label, ours, baseline, wall target, before-hook) for each requested file."""
    out: list = []
    scratch = workdir / "scratch"
    scratch.mkdir(exist_ok=True)
    exp_out = scratch / "export.safetensors"
    resave = scratch / "resave.pt"

    def clean() -> None:
        for p in (exp_out, resave):
            p.unlink(missing_ok=True)

    if "zip100k" in only:
        z = str(ensure(workdir, "zip100k"))
        out += [
            ("zip100k inspect --json", ck("inspect", z, "--json"), py(LOAD, z), 0.2, None),
            ("zip100k why --json", ck("why", z, "--json"), py(LOAD, z), 0.5, None),
            (
                "zip100k why --json --no-duplicates",
                ck("why", z, "--json", "--no-duplicates"),
                py(LOAD, z),
                0.5,
                None,
            ),
            (
                "zip100k export (vs load+save)",
                ck("export", z, "-o", str(exp_out), "--force"),
                py(LOAD_SAVE, z, str(resave)),
                0.3,
                clean,
            ),
        ]
    if "legacy100k" in only:
        lg = str(ensure(workdir, "legacy100k"))
        out.append(
            (
                "legacy100k inspect --json",
                ck("inspect", lg, "--json"),
                py(LOAD_LEGACY, lg),
                0.2,
                None,
            )
        )
    if "train30k" in only:
        t = str(ensure(workdir, "train30k"))
        out += [
            ("train30k inspect --json", ck("inspect", t, "--json"), py(LOAD, t), 0.2, None),
            ("train30k why --json", ck("why", t, "--json"), py(LOAD, t), 0.5, None),
        ]
    if "shards160" in only:
        f = str(ensure(workdir, "shards160"))
        out.append(
            (
                "shards160 inspect --json (vs safe_open)",
                ck("inspect", f, "--json"),
                py(SAFE_OPEN, f),
                2.0,
                None,
            )
        )
        # the other figure, opening alone <= 1 s: its wall is read off `ours s`
        out.append(("shards160 open (vs safe_open)", py(OPEN, f), py(SAFE_OPEN, f), 2.0, None))
    if "dcp10k" in only:
        d = str(ensure(workdir, "dcp10k"))
        out += [
            ("dcp10k inspect --json (vs dcp.load)", ck("inspect", d, "--json"), py(DCP_LOAD, d),
             0.5, None),
            ("dcp10k why --json (vs dcp.load)", ck("why", d, "--json"), py(DCP_LOAD, d), 0.5,
             None),
        ]  # fmt: skip
    return out


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_dir = Path(tempfile.gettempdir()) / "ckptui-bench-scale"
    ap.add_argument("--workdir", type=Path, default=default_dir, help="(default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per command (default: 3)")
    ap.add_argument("--only", default=",".join(GENERATORS), help="comma-separated file names")
    ap.add_argument("--json", action="store_true", help="print results as JSON")
    ap.add_argument("--src", type=Path, help="ckptui source tree to time (default: this one)")
    ap.add_argument(
        "--cases", help="only cases whose label contains one of these (comma-separated)"
    )
    ap.add_argument("--_generate", nargs=2, metavar=("NAME", "PATH"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._generate:
        GENERATORS[a._generate[0]][1](Path(a._generate[1]))
        return
    a.workdir.mkdir(parents=True, exist_ok=True)
    if a.src:
        global SRC
        SRC = a.src.resolve()
    only = set(a.only.split(","))
    results: dict[str, dict] = {}
    for label, ours, base, target, before in cases(a.workdir, only):
        if a.cases and not any(c in label for c in a.cases.split(",")):
            continue
        log(f"timing {label} ({a.repeat}x each) ...")
        r = pair(ours, base, a.repeat, before)
        r["target"] = target
        results[label] = r
        log(
            f"  ours {r['ours_wall']:.2f} s / {r['ours_rss_mib']:.0f} MiB,"
            f" base {r['base_wall']:.2f} s / {r['base_rss_mib']:.0f} MiB"
        )
    if a.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"{a.repeat} interleaved runs each, medians (min: fastest ÷ fastest); wall and peak RSS "
        "of each child process"
    )
    print(
        f"{'case':<42} {'ours s':>7} {'base s':>7} {'ratio':>6} {'min':>6} {'target':>6} {'RSS':>6}"
    )
    for label, r in results.items():
        ok = "OK" if r["wall_ratio"] <= r["target"] else "MISS"
        print(
            f"{label:<42} {r['ours_wall']:>7.2f} {r['base_wall']:>7.2f} {r['wall_ratio']:>5.2f}x"
            f" {r['min_ratio']:>5.2f}x {r['target']:>5.1f}x {r['rss_ratio']:>5.2f}x {ok}"
        )


if __name__ == "__main__":
    main()
