"""Timing helpers shared by the benchmark scripts: a child's environment and its measurement.

Each benchmark times ckptui and its baseline in their own child processes, so a child's wall time
and peak RSS (os.wait4's ru_maxrss) are its own. `bench_open.py` and `bench_scale.py` used to
define these two helpers each; this is their one home. The scripts run as `python
tests/benchmarks/bench_x.py`, which puts this folder on sys.path, so they `import common`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "tui"
"""This checkout's ckptui source tree, what the children import unless told another (--src)."""


def child_env(src: Path = SRC) -> dict[str, str]:
    """This process's environment with `src` first on PYTHONPATH, so `-m ckptui` imports that
    tree even when the package is not installed (or another tree is, for before/after runs)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), env.get("PYTHONPATH")) if p)
    # Bytecode cached as an installed package has it (pip compiles at install; torch's is):
    # with PYTHONDONTWRITEBYTECODE set, every ckptui child compiled its ~150 modules again,
    # 0.3-0.5 s that the baseline never paid. The untimed warm-up run writes the cache.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "ckptui-bench-pycache")
    return env


def measure(cmd: list[str], env: dict[str, str], ok: Collection[int] = (0,)) -> tuple[float, int]:
    """Run cmd; return (wall seconds, peak RSS KiB) of that child alone, via os.wait4.

    Args:
        cmd: the child's argv.
        env: its environment (see child_env).
        ok: exit codes that count as a run; any other ends the benchmark with the child's
            stderr tail (bench_scale passes (0, 1): 1 = ran and reported a problem, still timed).

    Returns:
        (wall seconds, the child's ru_maxrss in KiB).
    """
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        code = os.waitstatus_to_exitcode(status)
        if code not in ok:
            err.seek(0)
            tail = err.read().decode(errors="replace")[-2000:]
            sys.exit(f"command failed ({code}): {cmd}\n{tail}")
    return wall, usage.ru_maxrss
