"""Provides the training-state fields of `inspect --json`: `optimizer_params`, `param_groups`,
`resume`, `weights_only` (and `training_errors` when a part failed), from `training_facts`.

This is the one home of those JSON contracts; the analyses return plain dataclasses. Non-finite
floats become strings: JSON has none.

`optimizer_params` (`optimizer_params_json`):
    [{"optimizer_path": [...], "index": int, "key": int|str, "group": int|null,
      "param": str|null, "confidence": "exact"|"by-shape"|"ambiguous", "why": str|null}]
  `index` is the entry's position across all groups' `params` (equal to `key` in modern files);
  `key` is the entry's key in `state`/`params` as in the file (tree path: optimizer_path +
  ["state", key]); entries in `state` but in no group come last with `group` null.

`param_groups` (`param_groups_json`, one `param_group_json` per optimizer):
    [{"optimizer_path": [...], "kind": str, "step": int|float|null,
      "weights_path": [...]|null, "params_from": "module"|"names"|"convention"|"none",
      "notes": [str],
      "lines": [{"groups": [int, ...], "hyper": {name: value}, "params": [str|null, ...]}]}]
  Each line is one set of hyper-parameters (everything but `params`); `groups` lists the
  param-group indexes sharing it (len > 1 when groups differ only in their parameters) and
  `params` the names they hold, in order (null where not named).

`resume` (`resume_json`):
    {"resumable": bool, "reason": str,
     "weights": {"path": [...], "kind": "state_dict"|"module"|"tensor", "tensors": int,
                 "bytes": int} | null,
     "optimizers": [{"path": [...], "kind": str, "step": int|float|null, "param_groups": int}],
     "schedulers": [{"path": [...], "kind": str, "last_epoch": int|null}],
     "counters": [{"name": str, "path": [...], "value": int}],
     "scaler": {"path": [...], "scale": float|null, "empty": bool} | null,
     "rng": [{"kind": "python"|"numpy"|"torch"|"cuda", "path": [...]}],
     "versions": [{"name": str, "path": [...], "value": str}],
     "warnings": [str]}

`weights_only` (`weights_only_json`):
    {"loads": bool, "refused_globals": [{"global", "benign", "kind", "why", "where"}],
     "also_needed": [same], "blockers": [str], "fix": str|null, "fix_if_trusted": str|null,
     "export_command": str|null, "notes": [str], "allow_list": str}
"""

from __future__ import annotations

from typing import Any

from ckptui.analysis.training.facts import TrainingFacts
from ckptui.analysis.training.optim_map import OptimizerMapping
from ckptui.analysis.training.resume import ResumeCard
from ckptui.analysis.training.weights_only import RefusedGlobal, WeightsOnlyReport
from ckptui.core.units import json_number


def optimizer_params_json(mappings: list[OptimizerMapping]) -> list[dict[str, Any]]:
    """The `optimizer_params` list: every entry of every optimizer, flat."""
    out = []
    for m in mappings:
        # one list per optimizer, shared by its entries (30,000 in a training checkpoint)
        path = _finite(list(m.optimizer_path))
        out += [
            {
                "optimizer_path": path,
                "index": e.index,
                "key": e.key,
                "group": e.group,
                "param": e.param,
                "confidence": e.confidence,
                "why": e.why,
            }  # `OptimizerEntry`'s fields in order
            for e in m.entries
        ]
    return out


def param_group_json(m: OptimizerMapping) -> dict[str, Any]:
    """The `param_groups` item for one optimizer."""
    return {
        "optimizer_path": list(m.optimizer_path),
        "kind": m.kind,
        "step": m.step,
        "weights_path": None if m.weights_path is None else list(m.weights_path),
        "params_from": m.params_from,
        "notes": list(m.notes),
        "lines": [
            {"groups": list(g.groups), "hyper": g.hyper, "params": list(g.params)} for g in m.groups
        ],
    }


def param_groups_json(mappings: list[OptimizerMapping]) -> list[dict[str, Any]]:
    """The `param_groups` list: one item per optimizer."""
    return [param_group_json(m) for m in mappings]


def resume_json(card: ResumeCard) -> dict[str, Any]:
    """The `resume` object."""
    scaler = card.scaler
    return {
        "resumable": card.resumable,
        "reason": card.reason,
        "weights": card.weights,
        "optimizers": list(card.optimizers),
        "schedulers": [
            {"path": list(s.path), "kind": s.kind, "last_epoch": s.value} for s in card.schedulers
        ],
        "counters": [
            {"name": c.kind, "path": list(c.path), "value": c.value} for c in card.counters
        ],
        "scaler": None
        if scaler is None
        else {"path": list(scaler.path), "scale": scaler.value, "empty": scaler.kind == "empty"},
        "rng": [{"kind": r.kind, "path": list(r.path)} for r in card.rng],
        "versions": [
            {"name": v.kind, "path": list(v.path), "value": v.value} for v in card.versions
        ],
        "warnings": list(card.warnings),
    }


def refused_global_json(g: RefusedGlobal) -> dict[str, Any]:
    """One refused (or also needed) global: `global`, `benign`, plus details."""
    return {
        "global": g.name,
        "benign": g.benign,
        "kind": g.kind,
        "why": g.why,
        "where": list(g.where) if g.where is not None else None,
    }


def weights_only_json(report: WeightsOnlyReport) -> dict[str, Any]:
    """The `weights_only` object."""
    return {
        "loads": report.loads,
        "refused_globals": [refused_global_json(g) for g in report.refused_globals],
        "also_needed": [refused_global_json(g) for g in report.also_needed],
        "blockers": list(report.blockers),
        "fix": report.fix,
        "fix_if_trusted": report.fix_if_trusted,
        "export_command": report.export_command,
        "notes": list(report.notes),
        "allow_list": report.allow_list,
    }


def training_json(facts: TrainingFacts) -> dict[str, Any]:
    """The `inspect --json` fields, with non-finite floats as strings (JSON has none)."""
    out: dict[str, Any] = {
        "param_groups": param_groups_json(facts.mappings),
        "resume": resume_json(facts.resume) if facts.resume is not None else None,
        "weights_only": weights_only_json(facts.weights_only)
        if facts.weights_only is not None
        else None,
    }
    if facts.errors:
        out["training_errors"] = list(facts.errors)
    # `optimizer_params` holds no float but in its paths (made finite there): not walked again
    return {"optimizer_params": optimizer_params_json(facts.mappings), **_finite(out)}


def _finite(v: Any) -> Any:
    if isinstance(v, float):
        return json_number(v)
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v
