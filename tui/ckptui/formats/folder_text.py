"""Provides `text_files`: the small text files of a checkpoint folder (`config.json`,
`generation_config.json`, `tokenizer_config.json`, a README, DeepSpeed's `latest`), read as
nodes a browser can show beside the weights.

A Hugging Face folder's `config.json` says what the weights are (the architecture, the hidden
size, the vocabulary), which a user otherwise opens another terminal for. Each file under
`TEXT_CAP` bytes becomes one node: JSON as the nested mapping of its values, other text as its
lines. A larger one (`tokenizer.json`, several MiB) is listed with its size, not read.

The files are data from whoever made the folder: damaged JSON is one finding and a node saying
so, never an error; nesting is bounded by the unpickler's own depth (`treebuild.MAX_DEPTH`),
and a JSON nested past Python's stack (200,000 `[`) is refused the way a torch.package config
is (`RecursionError` caught); at most `MAX_TEXT_FILES` files and `MAX_TEXT_BYTES` in all are
read, so a folder of a million notes costs what a few do.

The nodes are kept in `Checkpoint.info["text_files"]`, outside the checkpoint's tree: they are
not part of any `torch.load`, so the size breakdown, the export and `diff` never see them as
keys (their bytes stay the folder's `other_files`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Any

from ckptui.core.errors import CkptError
from ckptui.core.tree import Checkpoint, Finding, Node, NodeKind, Severity
from ckptui.core.units import size
from ckptui.unpickler.treebuild import MAX_DEPTH

TEXT_CAP = 256 << 10
"""Bytes a text file may have to be read and shown (a config is a few KiB)."""
MAX_TEXT_FILES = 64
"""Text files read per folder; more are listed with their size."""
MAX_TEXT_BYTES = 4 << 20
"""Bytes read from text files per folder, all together."""
MAX_LINES = 2000
"""Lines of a plain text file shown; the rest is said in one row."""
MAX_ITEMS = 10_000
"""Entries of one JSON container shown (a vocabulary in a config); the rest in one row."""
TEXT_SUFFIXES = (".json", ".txt", ".md", ".yaml", ".yml")
"""Files shown as text by their name's end (case ignored)."""
TEXT_NAMES = ("latest",)
"""Files shown as text by their whole name: DeepSpeed's `latest` names the tag folder."""


def is_text_file(rel: str) -> bool:
    """A file of a folder shown as text (`config.json`, `README.md`, `latest`)."""
    name = PurePosixPath(rel).name
    return name.lower().endswith(TEXT_SUFFIXES) or name in TEXT_NAMES


def text_files(
    sizes: dict[str, int], read: Callable[[str, int], bytes]
) -> tuple[Node | None, list[Finding]]:
    """The folder's text files as one mapping node (file path -> its node), and a finding per
    file that could not be read or parsed.

    Args:
        sizes: every file below the folder, path relative to it -> bytes.
        read: reads one file's bytes by its relative path (CkptError past the limit given).

    Returns:
        (None, []) when the folder has no text file.
    """
    children: list[Node] = []
    findings: list[Finding] = []
    budget = MAX_TEXT_BYTES
    for rel, n in sizes.items():
        if not is_text_file(rel):
            continue
        if n > TEXT_CAP or n > budget or len(children) >= MAX_TEXT_FILES:
            why = f"over {size(TEXT_CAP)}" if n > TEXT_CAP else "past the folder's text budget"
            children.append(_value(rel, "file", f"{size(n)} · not read ({why})"))
            continue
        budget -= n
        try:
            raw = read(rel, TEXT_CAP)
        except CkptError as e:
            findings.append(_finding(rel, f"cannot be read ({e.message})"))
            children.append(_value(rel, "file", f"{size(n)} · cannot be read"))
            continue
        node, problem = _parse(rel, raw)
        if problem is not None:
            findings.append(_finding(rel, problem))
        children.append(node)
    if not children:
        return None, findings
    return Node.make(NodeKind.MAPPING, "text files", None, tuple(children)), findings


def _parse(rel: str, raw: bytes) -> tuple[Node, str | None]:
    """A file's node, and what is wrong with it (None when nothing is)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return _value(rel, "file", f"{size(len(raw))} · not UTF-8 text"), "is not UTF-8 text"
    if not rel.lower().endswith(".json"):
        return _lines(rel, text), None
    try:
        value = json.loads(text)
    except RecursionError:  # `[[[[...` nested past Python's stack, as in torch_archives
        why = "nests too deep to be a config"
        return _value(rel, "JSON", f"not shown: {why}"), why
    except ValueError as e:
        why = f"is not valid JSON ({e})"
        return _value(rel, "JSON", f"not valid JSON: {e}"), why
    return _json_node(value, rel, 0), None


def _json_node(value: Any, key: Any, depth: int) -> Node:
    """A parsed JSON value as a node; containers below MAX_DEPTH levels are not shown."""
    kind = "JSON" if depth == 0 else None
    if isinstance(value, dict | list) and depth >= MAX_DEPTH:
        return _value(key, kind or "json", f"nesting deeper than {MAX_DEPTH} levels not shown")
    if isinstance(value, dict):
        items = list(value.items())
        children = [_json_node(v, str(k), depth + 1) for k, v in items[:MAX_ITEMS]]
        if len(items) > MAX_ITEMS:
            children.append(_value("…", "more", f"{len(items) - MAX_ITEMS:,} more keys"))
        return Node.make(NodeKind.MAPPING, kind or "object", key, tuple(children))
    if isinstance(value, list):
        children = [_json_node(v, i, depth + 1) for i, v in enumerate(value[:MAX_ITEMS])]
        if len(value) > MAX_ITEMS:
            children.append(_value(MAX_ITEMS, "more", f"{len(value) - MAX_ITEMS:,} more items"))
        return Node.make(NodeKind.SEQUENCE, kind or "array", key, tuple(children))
    if isinstance(value, float) and not math.isfinite(value):  # json reads NaN and Infinity
        return Node.make(NodeKind.VALUE, "float", key, text=repr(value))
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        # tokenizer_config's `model_max_length: 1e30` is written as a 31-digit int
        digits = str(value) if value.bit_length() <= 256 else f"int of {value.bit_length()} bits"
        return Node.make(NodeKind.VALUE, "int", key, text=digits)
    if kind is not None:  # a file holding one number or string
        return Node.make(NodeKind.VALUE, kind, key, text=json.dumps(value)[:200])
    return Node.make(NodeKind.VALUE, type(value).__name__, key, value=value)


def _lines(rel: str, text: str) -> Node:
    """A text file as its lines (`latest`: one line naming the tag folder)."""
    lines = text.splitlines()
    children = [
        Node.make(NodeKind.VALUE, "line", i + 1, text=line)
        for i, line in enumerate(lines[:MAX_LINES])
    ]
    if len(lines) > MAX_LINES:
        children.append(_value("…", "more", f"{len(lines) - MAX_LINES:,} more lines"))
    return Node.make(NodeKind.SEQUENCE, "text", rel, tuple(children))


def _value(key: Any, kind: str, text: str) -> Node:
    return Node.make(NodeKind.VALUE, kind, key, text=text)


def _finding(rel: str, problem: str) -> Finding:
    return Finding("damaged_text_file", Severity.WARNING, f"{rel} {problem}", None)


def with_text_files(
    ckpt: Checkpoint, sizes: dict[str, int], read: Callable[[str, int], bytes]
) -> Checkpoint:
    """`ckpt` with its folder's text files in `info["text_files"]` and their findings added
    (`ckpt` itself when the folder has none)."""
    node, found = text_files(sizes, read)
    if node is None and not found:
        return ckpt
    info = {**ckpt.info, "text_files": node} if node is not None else ckpt.info
    return dataclasses.replace(ckpt, info=info, findings=(*ckpt.findings, *found))
