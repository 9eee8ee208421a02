"""CPU seconds per stage of `ckptui inspect --json` on one file, in this process, no profiler.

Usage: python tests/benchmarks/bench_stages.py FILE [--repeat N] [--no-fuse]

cProfile triples the cost of the small per-tensor calls it counts, so it misleads on where a
100,000-tensor open spends its time (issue 16); this wraps the stage functions instead and sums
their CPU time (`time.process_time`, steadier than wall time on a loaded machine). Nested stages
are included in their parents (the unpickle holds `persistent_load`; `assemble` holds the tree).
Run on demand, e.g. on the `zip100k.pt` that `bench_scale.py` writes. `--no-fuse` reads
torch.save's tensors without `unpickler.fast_pattern`, to compare the two in one session.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import io
import time
from typing import Any

import ckptui.report.json.inspect as inspect_json
from ckptui.analysis.training import facts
from ckptui.formats import legacy, open_checkpoint, source, torchzip
from ckptui.unpickler import confined, rewrite, treebuild

STAGES: list[tuple[Any, str, str]] = [
    (torchzip.ZipCheckpoint, "__init__", "zip central directory"),
    (confined.ConfinedUnpickler, "load", "unpickle (with persistent_load)"),
    (treebuild.TreeBuilder, "build", "tree build"),
    (source, "_tensor_findings", "tensor findings"),
    (torchzip, "assemble", "assemble (tree, findings)"),
    # a legacy file (`legacy100k.pt`): its pickles and storage counts, then the same assemble
    (legacy, "read_legacy_at", "legacy pickles and storages"),
    (legacy, "assemble", "assemble (tree, findings)"),
    (inspect_json, "training_facts", "training facts"),
    (facts, "map_optimizers", "  optimizer map"),
    (facts, "resume_card", "  resume card"),
    (facts, "weights_only_report", "  weights_only verdict"),
    # the JSON's own parts (generators: timed while each piece is made, `_wrap` below)
    (inspect_json, "_node", "  JSON tree"),
    (inspect_json, "_array", "  JSON tensor and storage rows"),
]


def _wrap(owner: Any, name: str, label: str, spent: dict[str, float]) -> None:
    real = getattr(owner, name)
    if inspect.isgeneratorfunction(real):
        _wrap_generator(owner, name, label, spent)
        return

    @functools.wraps(real)
    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.process_time()
        try:
            return real(*args, **kwargs)
        finally:
            spent[label] = spent.get(label, 0.0) + time.process_time() - t

    setattr(owner, name, timed)


def _wrap_generator(owner: Any, name: str, label: str, spent: dict[str, float]) -> None:
    """`_wrap` for a generator function: the time spent making each of its pieces (what a
    consumer does with a piece between two is not counted)."""
    real = getattr(owner, name)

    @functools.wraps(real)
    def timed(*args: Any, **kwargs: Any) -> Any:
        pieces = real(*args, **kwargs)
        while True:
            t = time.process_time()
            try:
                piece = next(pieces)
            except StopIteration:
                return
            finally:
                spent[label] = spent.get(label, 0.0) + time.process_time() - t
            yield piece

    setattr(owner, name, timed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path")
    ap.add_argument("--repeat", type=int, default=1, help="runs; the minimum of each is shown")
    ap.add_argument("--no-fuse", action="store_true", help="do not fuse torch.save's tensors")
    a = ap.parse_args()
    rewrite.FUSE = not a.no_fuse
    best: dict[str, float] = {}
    for _ in range(a.repeat):
        spent: dict[str, float] = {}
        for owner, name, label in STAGES:
            _wrap(owner, name, label, spent)
        t0 = time.process_time()
        ckpt = open_checkpoint(a.path)
        t1 = time.process_time()
        io.BytesIO().writelines(inspect_json.iter_json(ckpt))
        t2 = time.process_time()
        spent.update({"open (all)": t1 - t0, "JSON (all)": t2 - t1, "total": t2 - t0})
        for owner, name, _ in STAGES:  # unwrap for the next run
            setattr(owner, name, getattr(owner, name).__wrapped__)
        for k, v in spent.items():
            best[k] = min(best.get(k, v), v)
    for k, v in best.items():
        print(f"{k:34s} {v:6.2f} s")


if __name__ == "__main__":
    main()
