"""Provides `disagreements`: the resume card's cross-checks, where a checkpoint's training state
disagrees with itself.

Above all a scheduler whose `last_epoch` matches none of the stored counters (epoch, iteration,
global step, the optimizer's step, each +-1): the classic sign of a scheduler re-created on
resume without its state. Also a scheduler and an optimizer with different numbers of param
groups or learning rates, and an optimizer whose groups say a scheduler was attached
(`initial_lr`) when no scheduler state is saved.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ckptui.core.keypath import path_text
from ckptui.core.tree import Checkpoint, KeyPath, NodeKind

if TYPE_CHECKING:  # the card's own record type; resume imports this module
    from ckptui.analysis.training.resume import Found


def disagreements(
    ckpt: Checkpoint,
    schedulers: tuple[Found, ...],
    counters: tuple[Found, ...],
    optimizers: list[dict[str, Any]],
    opt_paths: list[KeyPath],
) -> list[str]:
    """Where the resume state disagrees with itself: a scheduler whose `last_epoch` matches no
    counter (nor the optimizer's step, each +-1), a scheduler and optimizer from different
    setups, or an optimizer that had a scheduler attached but no scheduler state saved."""
    out: list[str] = []
    marks = [(c.kind, c.value) for c in counters]
    marks += [(f"{o['kind']} step", o["step"]) for o in optimizers if type(o["step"]) is int]
    for s in schedulers:
        if s.value is None or not marks:
            continue
        if any(abs(s.value - v) <= 1 for _, v in marks):
            continue
        seen = ", ".join(f"{k} {v}" for k, v in marks)
        out.append(
            f"scheduler at `{path_text(s.path)}` has last_epoch {s.value}, which matches none of "
            f"{seen} (nor +-1): it was likely re-created on a resume without loading its state "
            "or setting last_epoch (the classic mistake), so its LR schedule restarted there"
        )
    if len(schedulers) == 1 and len(opt_paths) == 1:
        out += scheduler_vs_optimizer(ckpt, schedulers[0].path, opt_paths[0])
    if not schedulers:
        for p in opt_paths:
            groups = ckpt.find((*p, "param_groups"))
            if groups is not None and any(g.child("initial_lr") for g in groups.children):
                out.append(
                    f"optimizer at `{path_text(p)}` has initial_lr in its param groups "
                    "(a scheduler was attached) but no scheduler state is saved"
                )
    return out


def scheduler_vs_optimizer(ckpt: Checkpoint, spath: KeyPath, opath: KeyPath) -> list[str]:
    """A scheduler and the optimizer it drives must have one LR per param group, the same."""
    sched, groups = ckpt.find(spath), ckpt.find((*opath, "param_groups"))
    if sched is None or groups is None:
        return []
    base = sched.child("base_lrs")
    last = sched.child("_last_lr")
    n = len(groups.children)
    if base is not None and base.kind is NodeKind.SEQUENCE and len(base.children) != n:
        why = (
            f"scheduler at `{path_text(spath)}` has {len(base.children)} base_lrs but "
            f"optimizer at `{path_text(opath)}` has {n} param groups: they come from "
            "different setups"
        )
        return [why]
    if last is None or len(last.children) != n or sched.child("_schedulers") is not None:
        return []
    for i, (lr_node, g) in enumerate(zip(last.children, groups.children, strict=True)):
        lr = g.child("lr")
        a, b = lr_node.value, lr.value if lr is not None else None
        numbers = isinstance(a, float | int) and isinstance(b, float | int)
        if numbers and not math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12):
            why = (
                f"scheduler at `{path_text(spath)}` last set lr {a} but param group {i} of "
                f"`{path_text(opath)}` has lr {b}: saved at different moments?"
            )
            return [why]
    return []
