"""Provides key paths as text: `["model"]["conv1.weight"]` (Python indexing, unambiguous with
dotted keys) and `model.conv1.weight` (for searching and display)."""

from __future__ import annotations

from ckptui.core.tree import KeyPath


def path_expr(path: KeyPath) -> str:
    """`["model"]["conv1.weight"]`: the path as Python indexing, unambiguous with dotted keys."""
    return "".join(f"[{k!r}]" if isinstance(k, str) else f"[{k}]" for k in path)


def path_text(path: KeyPath) -> str:
    """`model.conv1.weight`-style text for searching and display."""
    return ".".join(str(k) for k in path)


def show_path(path: KeyPath) -> str:
    """`model.layer1.0.weight`, or `(root)`: a path in a table cell or a list."""
    return path_text(path) or "(root)"


def describe_path(path: KeyPath) -> str:
    """`model.layer1.0.weight`, or `the root`: a path inside a sentence."""
    return path_text(path) or "the root"
