"""Provides the training-state fields of `inspect --json`: `optimizer_params`, `param_groups`,
`resume`, `weights_only` (and `training_errors` when a part failed), from `training_facts`.

JSON shapes of `optimizer_params` and `param_groups` are described in `analysis/training/optim_map`;
`resume` in `analysis/training/resume`. Non-finite floats become strings: JSON has none.
"""

from __future__ import annotations

from typing import Any

from ckptui.analysis.training.facts import TrainingFacts
from ckptui.analysis.training.optim_map import OptimizerEntry, OptimizerMapping
from ckptui.core.units import json_number


def optimizer_params_json(mappings: list[OptimizerMapping]) -> list[dict[str, Any]]:
    """The `optimizer_params` list: every entry of every optimizer, flat."""
    fields = OptimizerEntry.__slots__  # index, key, group, param, confidence, why
    return [
        {"optimizer_path": list(m.optimizer_path), **{f: getattr(e, f) for f in fields}}
        for m in mappings
        for e in m.entries
    ]


def param_groups_json(mappings: list[OptimizerMapping]) -> list[dict[str, Any]]:
    """The `param_groups` list: one item per optimizer."""
    return [m.to_json() for m in mappings]


def training_json(facts: TrainingFacts) -> dict[str, Any]:
    """The `inspect --json` fields, with non-finite floats as strings (JSON has none)."""
    out: dict[str, Any] = {
        "optimizer_params": optimizer_params_json(facts.mappings),
        "param_groups": param_groups_json(facts.mappings),
        "resume": facts.resume.to_json() if facts.resume is not None else None,
        "weights_only": facts.weights_only.to_json() if facts.weights_only is not None else None,
    }
    if facts.errors:
        out["training_errors"] = list(facts.errors)
    return _finite(out)


def _finite(v: Any) -> Any:
    if isinstance(v, float):
        return json_number(v)
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v
