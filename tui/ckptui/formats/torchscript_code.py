"""Provides `scan_code`: what a TorchScript archive's code runs when torch.load opens it.

`torch.load` hands a TorchScript archive (a zip with `constants.pkl`) to `torch.jit.load`, which
compiles the archive's `code/*.py` and, for every object whose class defines `__setstate__`,
runs that method while loading (the shape of CVE-2025-32434, where weights_only did not help).
`forward` and other methods run only when the user calls them; `__setstate__` runs on open. So
each `__setstate__` in the code is read (never compiled): one that calls a TorchScript builtin
that touches files (`torch.from_file`, `save`, `load`, `open`, custom classes) is a danger; one
that calls anything else is an info finding (quantized modules repack their weights this way).
The code records are DEFLATE-compressed; at most `MAX_CODE_BYTES` are inflated.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ckptui.core.errors import CkptError
from ckptui.core.tree import Severity
from ckptui.formats.zipdir import ZIP_ERRORS

if TYPE_CHECKING:
    from ckptui.formats.torchzip import ZipCheckpoint

MAX_CODE_BYTES = 64 << 20
"""Inflated code bytes read per archive; real archives hold well under a megabyte."""

_CLASS = re.compile(r"^(\s*)class\s+(\w+)\s*\(", re.MULTILINE)
_SETSTATE = re.compile(r"^(\s*)def\s+__setstate__\s*\(", re.MULTILINE)
_CALL = re.compile(r"((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*)\s*\(")
_SIDE_EFFECTS = re.compile(
    r"(?:^|\.)(?:from_file|save|load|open|system|exec|eval|load_library|_load_for_mobile)$"
    r"|(?:^|\.)classes\."
)
"""Builtins and custom classes that reach the file system or native code of the file's choice."""
_PLAIN = frozenset(
    {"int", "float", "bool", "str", "len", "isinstance", "getattr", "print", "return", "if",
     "elif", "while", "for", "in", "not", "and", "or", "assert", "raise", "with", "uninitialized"}
)  # fmt: skip


def scan_code(z: ZipCheckpoint) -> None:
    """Add a finding to `z.src` for each `__setstate__` in the archive's code."""
    budget = MAX_CODE_BYTES
    prefix = f"{z.archive}/code/"
    for zi in z.infos:
        if not zi.filename.startswith(prefix) or not zi.filename.endswith(".py"):
            continue
        if zi.file_size > budget or zi.file_size > zi.compress_size * 1100 + 1024:
            z.src.warn("torchscript_code", f"{zi.filename} is too large to scan; not read")
            continue
        budget -= zi.file_size
        try:
            text = z.read_member(zi, zi.file_size).decode("utf-8", "replace")
        except (CkptError, *ZIP_ERRORS):
            z.src.warn("torchscript_code", f"{zi.filename} cannot be decompressed; not scanned")
            continue
        module = zi.filename[len(prefix) : -3].replace("/", ".")
        for cls, calls in _setstates(text):
            _report(z, f"{module}.{cls}", zi.filename, calls)


def _setstates(text: str) -> list[tuple[str, list[str]]]:
    """(class name, calls in its `__setstate__` body) for each `__setstate__` in `text`."""
    out = []
    lines = text.splitlines()
    starts = {text.count("\n", 0, m.start()): len(m.group(1)) for m in _SETSTATE.finditer(text)}
    classes = [
        (text.count("\n", 0, m.start()), len(m.group(1)), m.group(2)) for m in _CLASS.finditer(text)
    ]
    for line, indent in starts.items():
        cls = next(
            (name for at, ci, name in reversed(classes) if at < line and ci < indent), "<module>"
        )
        body = []
        for raw in lines[line + 1 :]:
            stripped = raw.strip()
            if stripped and len(raw) - len(raw.lstrip()) <= indent:
                break
            body.append(stripped)
        calls = [c for c in _CALL.findall("\n".join(body)) if c not in _PLAIN]
        out.append((cls, calls))
    return out


def _report(z: ZipCheckpoint, qualname: str, record: str, calls: list[str]) -> None:
    risky = sorted({c for c in calls if _SIDE_EFFECTS.search(c)})
    if risky:
        z.src.warn(
            "dangerous_call",
            f"{qualname}.__setstate__ (TorchScript code in {record}) calls {', '.join(risky)}: "
            "torch.load hands the archive to torch.jit.load, which runs it; ckptui did not",
            severity=Severity.DANGER,
        )
    elif calls:
        shown = ", ".join(sorted(set(calls))[:5])
        z.src.warn(
            "torchscript_setstate",
            f"{qualname}.__setstate__ (TorchScript code in {record}) runs when the archive is "
            f"loaded; it calls {shown}, none of which touches files",
            severity=Severity.INFO,
        )
