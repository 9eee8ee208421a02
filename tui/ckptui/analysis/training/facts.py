"""Provides `training_facts`: the training-state answers for one checkpoint, gathered once.

Which parameter each optimizer entry belongs to (`optim_map`), whether training can resume from
the file (`resume`) and what `torch.load(weights_only=True)` would refuse (`weights_only`). The
browser computes this in a worker after the tree is shown (the optimizer alignment can take up
to a second on huge files) and `inspect --json` writes it as `optimizer_params`, `param_groups`,
`resume` and `weights_only`. Each part is computed on its own: a part that fails on a strange
file says so in `errors` instead of taking the others down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ckptui.analysis.training.optim_map import map_optimizers
from ckptui.analysis.training.resume import resume_card
from ckptui.analysis.training.weights_only import weights_only_report
from ckptui.core.tree import Checkpoint, KeyPath


@dataclass
class TrainingFacts:
    """The three answers, and where each optimizer entry sits in the tree."""

    mappings: list[Any] = field(default_factory=list)
    """`optim_map.OptimizerMapping` per optimizer."""
    resume: Any = None
    """`resume.ResumeCard`, or None when it could not be made."""
    weights_only: Any = None
    """`weights_only.WeightsOnlyReport`, or None when it could not be made."""
    entry_at: dict[KeyPath, Any] = field(default_factory=dict)
    """Tree path of each optimizer entry (`.../state/<key>` and `.../params/<i>`) -> its Entry."""
    errors: list[str] = field(default_factory=list)

    def param_of(self, path: KeyPath) -> Any:
        """The optimizer entry `path` lies in (the entry's row or any tensor below it)."""
        for n in range(len(path), 0, -1):
            entry = self.entry_at.get(path[:n])
            if entry is not None:
                return entry
        return None

    def labels(self) -> dict[KeyPath, str]:
        """Row labels naming each entry's parameter (`conv1.weight`, `? ambiguous`)."""
        out = {}
        for path, e in self.entry_at.items():
            out[path] = e.param if e.param and e.confidence != "ambiguous" else "parameter ?"
        return out


def training_facts(ckpt: Checkpoint) -> TrainingFacts:
    """Compute every part, each guarded on its own."""
    facts = TrainingFacts()
    try:
        facts.mappings = map_optimizers(ckpt)
        for m in facts.mappings:
            at = facts.entry_at
            listed = _params_rows(ckpt, m.optimizer_path)
            for e in m.entries:
                at[(*m.optimizer_path, "state", e.key)] = e
                row = listed.get((e.group, e.key))
                if row is not None:
                    at[row] = e
    except Exception as e:  # a strange file must not take the other answers down  # noqa: BLE001
        facts.errors.append(f"optimizer mapping failed: {e!r}")
    try:
        facts.resume = resume_card(ckpt)
    except Exception as e:  # noqa: BLE001
        facts.errors.append(f"resume card failed: {e!r}")
    try:
        facts.weights_only = weights_only_report(ckpt)
    except ImportError:
        pass
    except Exception as e:  # noqa: BLE001
        facts.errors.append(f"weights_only report failed: {e!r}")
    return facts


def _params_rows(ckpt: Checkpoint, opt: KeyPath) -> dict[tuple[Any, Any], KeyPath]:
    """(group, key) -> the tree path of that key's row in `param_groups[group]["params"]`."""
    groups = ckpt.find((*opt, "param_groups"))
    out: dict[tuple[Any, Any], KeyPath] = {}
    for g in groups.children if groups is not None else ():
        params = g.child("params")
        for i, item in enumerate(params.children if params is not None else ()):
            out.setdefault((g.key, item.value), (*opt, "param_groups", g.key, "params", i))
    return out
