"""Provides what a DCP folder is made of: `looks_like_dcp` (is this folder one?) and `list_files`
(its files and sizes, with symlinks that lead out of it set aside by name, never opened).

Kept apart from the reader because the folder dispatcher asks the first question of every
folder it meets, and the answer must cost one listdir and one 2-byte read.
"""

from __future__ import annotations

import os
from pathlib import Path

from ckptui.core.errors import NotReadable
from ckptui.formats.dcp.metadata import METADATA
from ckptui.formats.source import leads_outside

SUFFIX = ".distcp"
"""The data files' suffix (`__0_0.distcp`, one per rank and writer thread)."""


def looks_like_dcp(folder: str) -> bool:
    """A `.metadata` pickle beside at least one `*.distcp` file (one listdir, one 2-byte read)."""
    try:
        names = [p.name for p in Path(folder).iterdir()]
        if METADATA not in names or not any(n.endswith(SUFFIX) for n in names):
            return False
        meta = Path(folder) / METADATA
        if leads_outside(folder, str(meta)) is not None or not meta.is_file():
            return True  # not read here (a FIFO would block): `read_dcp` refuses it by name
        with (Path(folder) / METADATA).open("rb") as f:
            return f.read(2)[:1] == b"\x80"
    except OSError:
        return False


def list_files(folder: str, outside: dict[str, str]) -> dict[str, int]:
    """The folder's files and sizes; a symlink leading out of the folder is left out and put in
    `outside` with the reason instead (its items are reported, never read)."""
    out: dict[str, int] = {}
    try:
        with os.scandir(folder) as it:
            for e in it:
                if e.is_symlink():
                    why = leads_outside(folder, e.path)
                    if why is not None:
                        outside[e.name] = why
                        continue
                if e.is_file():
                    out[e.name] = e.stat().st_size
    except OSError as e:
        raise NotReadable(folder, e.strerror or str(e)) from None
    return dict(sorted(out.items()))
