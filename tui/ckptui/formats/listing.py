"""Provides `folder_files`: every regular file below a folder, with its size, nothing outside it.

One walk for the folder readers (`formats.folder`: what a folder holds and which links lead out)
and the size breakdown of a folder (`analysis.sizes.folder`). `MAX_FILES` bounds both: a folder of
checkpoint files holds hundreds, not hundreds of thousands, and each file costs a stat and an open.
"""

from __future__ import annotations

import os

from ckptui.core.errors import NotReadable
from ckptui.formats.source import leads_outside

MAX_FILES = 10_000


def folder_files(folder: str, refused: dict[str, str] | None = None) -> list[tuple[str, int]]:
    """(relative name, size) of every regular file below `folder`, sorted, hidden ones too
    (a folder's files, then each subfolder's in name order, as `os.walk` lists them).

    A symlink counts as the file it leads to when that lies inside the folder (or in a Hugging
    Face cache's blobs, see `leads_outside`); one leading elsewhere is left out, and named in
    `refused` (relative name -> why) when given: nothing outside the folder is read.
    Symlinked subfolders are not walked, so a link loop cannot recurse. The walk keeps its own
    stack: `os.walk` recurses once per level and a folder nested 1,000 deep (a hostile archive
    makes one in a blink) raised RecursionError.

    Raises:
        NotReadable: when the folder cannot be listed or holds more than MAX_FILES files or
            MAX_FILES subfolders.
    """
    out: list[tuple[str, int]] = []
    stack = [""]
    folders = 0
    try:
        while stack:
            below = stack.pop()
            with os.scandir(f"{folder}{os.sep}{below}" if below else folder) as it:
                entries = sorted(it, key=lambda e: e.name)
            subfolders = []
            for e in entries:
                rel = f"{below}{os.sep}{e.name}" if below else e.name
                if e.is_dir(follow_symlinks=False):
                    subfolders.append(rel)
                    continue
                if e.is_symlink():
                    why = leads_outside(folder, e.path)
                    if why is not None:
                        if refused is not None:
                            refused[rel] = why
                        continue
                if not e.is_file() or e.is_dir():
                    continue
                out.append((rel, e.stat().st_size))
                if len(out) > MAX_FILES:
                    raise NotReadable(folder, f"holds more than {MAX_FILES:,} files")
            folders += len(subfolders)
            if folders > MAX_FILES:
                raise NotReadable(folder, f"holds more than {MAX_FILES:,} folders")
            stack.extend(reversed(subfolders))
    except OSError as e:
        raise NotReadable(folder, e.strerror or str(e)) from None
    return out
