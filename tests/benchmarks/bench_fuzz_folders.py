"""Fuzz folders at scale: thousands of mutated checkpoint folders through the real command line.

Usage: python tests/benchmarks/bench_fuzz_folders.py [--mutants N] [--seed S] [--sample K]
       [--workdir DIR] [--json]

Run on demand, not under pytest (issue 20's "must show"). This script:

1. writes the four seed folders of `tests/core/test_fuzz_folders.py` (DCP, sharded
   safetensors, sharded `.bin`, DeepSpeed-style) and a DCP folder of DTensors sharded over two
   gloo ranks (chunked tensors, exported through torch's DCP reader) in child processes;
2. runs that file's worker once per kind, --mutants / 5 mutants each, every worker a child
   process under RLIMIT_AS = 2 GiB: each mutant goes through `cli.main` in-process
   (`inspect --json`, `why --json`, every eighth `export`), with a 10 s alarm per command and
   a record of every file opened; the worker reports its peak RSS (ru_maxrss);
3. rebuilds every K-th mutant (--sample, default 50) and runs it as a user would,
   `python -m ckptui inspect DIR` and `python -m ckptui why DIR` (the rich renderings) in a
   subprocess under the same cap and a 10 s timeout, checking the exit code (0/1/2), that no
   traceback is printed and that an exit 2 is one line (peak RSS by `/usr/bin/time`);
4. prints, per kind and in total: mutants, outcomes, tracebacks, exit codes other than 0/1/2,
   hangs past 10 s, files read outside the folder, exit 2 messages that are not one line naming
   a file of the folder, the slowest command and the peak RSS; exits 1 if any count is not 0.

Every failing mutant folder is kept under the work directory (its path is printed).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.core.test_fuzz_folders import (
    ADDRESS_SPACE_LIMIT,
    KINDS,
    TIME_LIMIT_S,
    make_mutant,
)

WORKER = ROOT / "tests" / "core" / "test_fuzz_folders.py"
TIME = "/usr/bin/time"
CLASSES = ("traceback", "exit code", "hang", "read outside", "message")
BENCH_KINDS = (*KINDS, "dcp-sharded")


def _cap() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))


def _env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = f"{ROOT / 'tui'}:{ROOT}:" + env.get("PYTHONPATH", "")
    return env


def write_seeds(seeds: Path) -> None:
    """The test's four seeds, plus `dcp-sharded`: DTensors sharded over two gloo ranks
    (`test_dcp._sharded_worker`), whose chunked tensors export through torch's DCP reader."""
    code = (
        "import sys; from pathlib import Path; "
        "from tests.core.test_fuzz_folders import write_seeds; write_seeds(Path(sys.argv[1]))"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(seeds)],
        check=True,
        env=_env(),
        capture_output=True,
    )
    sharded = (
        "import sys, torch.multiprocessing as mp; "
        "from tests.core.test_dcp import _sharded_worker, free_port; "
        "mp.spawn(_sharded_worker, args=(free_port(), sys.argv[1]), nprocs=2)"
    )
    subprocess.run(
        [sys.executable, "-c", sharded, str(seeds / "dcp-sharded")],
        check=True,
        env=_env(),
        capture_output=True,
        timeout=300,
    )


def run_worker(seeds: Path, kind: str, n: int, seed: int, out: Path) -> dict:
    r = subprocess.run(
        [sys.executable, str(WORKER), "--worker", str(seeds), kind, str(n), str(seed), str(out)],
        capture_output=True,
        text=True,
        env=_env(),
        preexec_fn=_cap,
        check=False,
        timeout=n * 3 * TIME_LIMIT_S + 120,
    )
    if r.returncode != 0:
        current = (out / "current.json").read_text() if (out / "current.json").exists() else ""
        return {
            "kind": kind, "mutants": 0, "outcomes": {}, "slowest_s": 0, "peak_rss_mb": 0,
            "failures": [{"problem": f"[traceback] worker died (exit {r.returncode}) on "
                          f"{current}: {r.stderr[-500:]}", "index": -1, "mutation": ""}],
        }  # fmt: skip
    return json.loads((out / "report.json").read_text())


def run_sampled(seeds: Path, kind: str, n: int, seed: int, every: int, work: Path) -> dict:
    """Every `every`-th mutant of `kind`, rebuilt and run as `python -m ckptui` would be."""
    others = [p.read_bytes() for p in sorted(seeds.rglob("*")) if p.is_file()]
    counts = dict.fromkeys(CLASSES, 0)
    failures = []
    runs = 0
    slowest = 0.0
    peak = 0
    for i in range(0, n, every):
        rng = random.Random(f"{seed}:{kind}:{i}")
        desc = make_mutant(seeds, kind, work, rng, others)
        folder = work / kind
        for command in ("inspect", "why"):
            runs += 1
            started = time.monotonic()
            rss = work / "rss.txt"
            try:
                # /usr/bin/time reports the command's own peak RSS (RUSAGE_CHILDREN would be
                # the largest child so far, the seed writer with torch included)
                r = subprocess.run(
                    [TIME, "-f", "%M", "-o", str(rss), sys.executable, "-m", "ckptui", command,
                     str(folder)],
                    capture_output=True,
                    text=True,
                    env=_env(),
                    preexec_fn=_cap,
                    timeout=TIME_LIMIT_S,
                    check=False,
                )  # fmt: skip
                peak = max(peak, int(rss.read_text().split()[-1]) // 1024)
            except subprocess.TimeoutExpired:
                problem = ("hang", f"{command}: no answer within {TIME_LIMIT_S} s")
            else:
                problem = None
                if "Traceback" in r.stderr:
                    problem = ("traceback", f"{command}: {r.stderr[-400:]!r}")
                elif r.returncode not in (0, 1, 2):
                    problem = ("exit code", f"{command}: exit {r.returncode}")
                elif r.returncode == 2 and (
                    r.stderr.count("\n") != 1 or not r.stderr.startswith("ckptui: ")
                ):
                    problem = ("message", f"{command}: {r.stderr[-300:]!r}")
            slowest = max(slowest, time.monotonic() - started)
            if problem is not None:
                counts[problem[0]] += 1
                failures.append({"index": i, "mutation": desc, "problem": problem[1]})
                break
    return {
        "runs": runs,
        "counts": counts,
        "failures": failures,
        "slowest_s": round(slowest, 2),
        "peak_rss_mb": peak,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutants", type=int, default=5000, help="in total, split over the kinds")
    ap.add_argument("--seed", type=int, default=20)
    ap.add_argument("--sample", type=int, default=50, help="every K-th mutant also by subprocess")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ckptui-fuzz-folders-"))
    seeds = work / "seeds"
    if not seeds.exists():
        seeds.mkdir(parents=True)
        write_seeds(seeds)
    per_kind = -(-args.mutants // len(BENCH_KINDS))
    started = time.monotonic()
    rows = []
    for kind in BENCH_KINDS:
        t0 = time.monotonic()
        report = run_worker(seeds, kind, per_kind, args.seed, work / f"out-{kind}")
        counts = dict.fromkeys(CLASSES, 0)
        for f in report["failures"]:
            cls = f["problem"][1:].split("]", 1)[0]
            counts[cls if cls in counts else "traceback"] += 1
        sampled = run_sampled(seeds, kind, per_kind, args.seed, args.sample, work / "sampled")
        rows.append(
            {
                "kind": kind,
                "mutants": report["mutants"],
                "outcomes": report["outcomes"],
                "in_process": counts,
                "slowest_s": max(report["slowest_s"], sampled["slowest_s"]),
                "peak_rss_mb": report["peak_rss_mb"],
                "seconds": round(time.monotonic() - t0, 1),
                "failures": report["failures"][:10],
                "subprocess": sampled,
            }
        )
    total = {
        "mutants": sum(r["mutants"] for r in rows),
        **{
            c: sum(r["in_process"][c] + r["subprocess"]["counts"][c] for r in rows) for c in CLASSES
        },
        "subprocess_runs": sum(r["subprocess"]["runs"] for r in rows),
        "slowest_s": max(r["slowest_s"] for r in rows),
        "peak_rss_mb": max(max(r["peak_rss_mb"], r["subprocess"]["peak_rss_mb"]) for r in rows),
        "cap_mb": ADDRESS_SPACE_LIMIT >> 20,
        "seconds": round(time.monotonic() - started, 1),
        "workdir": str(work),
    }
    if args.json:
        print(json.dumps({"kinds": rows, "total": total}, indent=1))
    else:
        head = f"{'kind':<16}{'mutants':>8}{'opened':>8}{'exit 2':>8}" + "".join(
            f"{c:>14}" for c in CLASSES
        )
        print(head + f"{'slowest':>9}{'peak RSS':>10}")
        for r in rows:
            cells = "".join(
                f"{r['in_process'][c] + r['subprocess']['counts'][c]:>14}" for c in CLASSES
            )
            print(
                f"{r['kind']:<16}{r['mutants']:>8}{r['outcomes'].get('opened', 0):>8}"
                f"{r['outcomes'].get('exit 2', 0):>8}{cells}{r['slowest_s']:>8.2f}s"
                f"{r['peak_rss_mb']:>7} MB"
            )
            for f in r["failures"] + r["subprocess"]["failures"]:
                print(f"    index {f['index']}: {f['mutation'][:80]} -> {f['problem'][:200]}")
        print(
            f"total: {total['mutants']:,} mutants in process (+ {total['subprocess_runs']} "
            f"subprocess runs of a sample), "
            + ", ".join(f"{total[c]} {c}" for c in CLASSES)
            + f"; slowest command {total['slowest_s']:.2f} s (limit {TIME_LIMIT_S} s); "
            f"peak RSS {total['peak_rss_mb']} MB (cap {total['cap_mb']} MB address space); "
            f"{total['seconds']} s; kept in {work}"
        )
    return 1 if any(total[c] for c in CLASSES) else 0


if __name__ == "__main__":
    sys.exit(main())
