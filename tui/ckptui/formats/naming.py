"""Provides `output_stem`: what a file written from a checkpoint is named after.

The export's default output (`ckpt.slim.pth`), the browser's suggested name and the
`weights_only` fix command (`ckpt.weights.pth`) all start from it, so they agree.
"""

from __future__ import annotations

from pathlib import PurePath

from ckptui.formats.source import is_url


def output_stem(source: str) -> str:
    """What a file written from `source` is named after, without a suffix: the source beside
    itself (`/runs/ckpt.pth` -> `/runs/ckpt`), a shard index by its folder, and a URL by the
    remote file's name, in the current folder (the output is always local)."""
    base = source.rstrip("/")
    if is_url(base):
        parts = base.split("://", 1)[1].split("/")
        base = parts[-2] if base.endswith(".index.json") and len(parts) > 1 else parts[-1]
    elif base.endswith(".index.json") and "/" in base:
        base = base.rsplit("/", 1)[0]
    folder, _, name = base.rpartition("/")
    stem = PurePath(name).stem or "checkpoint"
    return f"{folder}/{stem}" if folder else stem
