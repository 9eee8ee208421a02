"""Provides the `ckptui export --json` contract: what was written, for one file or for shards."""

from __future__ import annotations

from typing import Any

from ckptui.export.plan import Plan, Result


def export_json(result: Result, plan: Plan) -> dict[str, Any]:
    """One output file: its name, bytes, tensors, the predicted bytes, whether it was verified,
    the kept paths, the bytes fetched from a server (null: local) and the missing tensors."""
    return {
        "output": result.output,
        "bytes": result.bytes,
        "tensors": result.tensors,
        "predicted_bytes": result.predicted_bytes,
        "verified": result.verified,
        "kept_paths": [list(p) for p in result.kept_paths],
        "bytes_read": result.bytes_read,
        "missing": [list(p) for p, _ in plan.missing],
    }


def shards_json(results: list[Result], index: str, plan: Plan) -> dict[str, Any]:
    """Shards and their index: the index as `output`, totals over the shards, each shard's name."""
    return {
        "output": index,
        "bytes": sum(r.bytes for r in results),
        "tensors": sum(r.tensors for r in results),
        "predicted_bytes": sum(r.predicted_bytes for r in results),
        "verified": all(r.verified for r in results),
        "kept_paths": [list(p) for p in plan.keep],
        "shards": [r.output for r in results],
    }
