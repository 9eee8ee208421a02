"""Provides what writing an output safely needs: a temp file beside the target (with the mode a
plain file would get, stale temps of killed exports removed first), the checks that refuse a
target (the source itself, a folder, a URL, an existing file without `--force`), and the fsync
that makes the final rename durable. `export.run`, `export.shards` and `export.dcp` all write
through these: temp -> fsync -> verify -> rename, the target never holding a partial file.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

from ckptui.core.errors import ExportError
from ckptui.core.tree import Checkpoint
from ckptui.formats.source import is_url

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so stale temps are left for the user
    fcntl = None  # type: ignore[assignment]


TEMP_SUFFIX = ".ckptui-tmp"
"""The temp file beside a target is `.NAME.XXXXXXXX.ckptui-tmp` (mkstemp's random part)."""


def temp_beside(target: Path, folder: Path) -> tuple[int, str]:
    """A new hidden temp file in `folder` for `target`, with the mode a plainly created file
    would get (mkstemp's 0600 would leave the export unreadable to the user's group, or to a
    container running as another user, once renamed into place).

    Stale temps of killed exports to `target` are removed first. Raises ExportError when the
    folder refuses the file (read-only, EPERM, /proc, /sys): nothing was created."""
    remove_stale_temps(target, folder)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=folder)
    except OSError as e:
        raise ExportError(str(target), f"cannot write there: {e.strerror or e}") from None
    if fcntl is not None:
        # held until the process ends: how a later export tells a live temp from a killed one's
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with contextlib.suppress(OSError):  # a file system without modes: mkstemp's mode stays
        os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp


def remove_stale_temps(target: Path, folder: Path) -> list[str]:
    """Remove the temp files that earlier exports to `target` left when killed (SIGKILL, a
    power cut); returns their paths. A temp is stale when no process holds its lock: the
    kernel drops a dead process's locks, so a concurrent export's temp is never touched."""
    if fcntl is None:
        return []
    name = re.compile(rf"\.{re.escape(target.name)}\.[A-Za-z0-9_]{{8}}{re.escape(TEMP_SUFFIX)}")
    removed = []
    try:
        entries = [e for e in os.scandir(folder) if name.fullmatch(e.name)]
    except OSError:
        return []
    for entry in entries:
        try:
            fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            Path(entry.path).unlink()
            removed.append(entry.path)
        except OSError:
            continue  # a live export holds it, or it cannot be removed: left alone
        finally:
            os.close(fd)
    return removed


def _umask() -> int:
    """The process's umask, read without setting it (os.umask would change it for a moment for
    every thread, the app's included)."""
    try:
        with Path("/proc/self/status").open(encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def check_target(out: str | os.PathLike[str], ckpt: Checkpoint) -> tuple[str, str] | None:
    """Why `out` cannot be written: (`error`, reason), or (`exists`, ...) when only `--force`
    would replace it; None when it is free. Every file of a many-file source counts as the
    source."""
    if is_url(os.fspath(out)):
        return "error", "is a URL: the output is written to a local file (upload it after)"
    target = Path(out)
    if target.exists() or target.is_symlink():
        sources = [ckpt.path]
        folder = ckpt.info.get("folder")
        if folder is not None:
            sources += [f"{folder}/{f}" for f in ckpt.info.get("files", {})]
        # a URL is never a local file: Path would fold its `//` into a bogus local path
        if any(_same_file(target, Path(s)) for s in sources if not is_url(s)):
            return "error", "is the source checkpoint: refusing to overwrite it"
        if target.is_dir():
            return "error", "is a folder"
        return "exists", "already exists (use --force to replace it)"
    folder = target.parent if str(target.parent) else Path()
    if not folder.is_dir():
        return "error", f"no folder {folder}"
    return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return a.resolve() == b.resolve()


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (the new name survives a power cut)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
