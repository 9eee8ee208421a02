"""Provides `export`: write a plan's output safely, verify it, and only then name it.

DESIGN.md point 6: the output goes to a temporary file beside the target, is fsynced, reopened
with ckptui's own reader and compared tensor by tensor, bit for bit, with the source's bytes
(after the requested cast), and only then renamed into place. Anything that goes wrong, an
interrupt included, removes the temporary file; the target name never holds a partial file and
the source is only ever opened read-only.

A remote source (a URL) is not re-read for verification, which would transfer every kept byte a
second time: its tensors are hashed as they stream into the output (`recorded_digests`), and the
reopened output is compared with those digests. The source's bytes travel once; what is checked is
that the file on disk holds exactly what was received, under the planned names, shapes and dtypes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path as FsPath

from ckptui.core.tree import Checkpoint, Path
from ckptui.export.plan import ExportError, Plan
from ckptui.export.quantized import written_differences
from ckptui.export.source import CHUNK, Digests, SourceBytes, digest_key, recorded_digests
from ckptui.export.writers import Progress, predicted_size, write
from ckptui.formats import open_checkpoint
from ckptui.formats.source import is_url

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so stale temps are left for the user
    fcntl = None  # type: ignore[assignment]

TEMP_SUFFIX = ".ckptui-tmp"
"""The temp file beside a target is `.NAME.XXXXXXXX.ckptui-tmp` (mkstemp's random part)."""


@dataclass(frozen=True, slots=True)
class Result:
    """What an export wrote."""

    output: str
    bytes: int
    tensors: int
    predicted_bytes: int
    verified: bool
    kept_paths: tuple[Path, ...]
    bytes_read: int | None = None
    """Bytes fetched from the server to write it, for a source at a URL (None: local)."""


def export(
    plan: Plan,
    out: str | os.PathLike[str],
    force: bool = False,
    progress: Progress | None = None,
    verify_progress: Progress | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Result:
    """Write `plan` to `out` via a verified temporary file.

    A DCP checkpoint whose kept tensors were saved in chunks by several ranks is handed to
    `export_dcp`, which stitches them with torch's own DCP reader (and needs torch).

    Raises:
        ExportError: the target is the source, exists without `force`, is a folder, the disk is
            full or verification failed. The temporary file is gone in every case.
    """
    if plan.ckpt.format == "dcp":
        from ckptui.export.dcp import chunked_kept, export_dcp_plan

        if chunked_kept(plan):
            return export_dcp_plan(plan, out, force, progress)
    problem = check_target(out, plan.ckpt)  # before FsPath, which folds a URL's `//`
    target = FsPath(out)
    if problem is not None and (problem[0] != "exists" or not force):
        raise ExportError(os.fspath(out), problem[1])
    folder = target.parent if str(target.parent) else FsPath()
    predicted = predicted_size(plan)
    fd, tmp = temp_beside(target, folder)
    try:
        with os.fdopen(fd, "w+b") as f, recorded_digests() as digests:
            fetched = write(plan, f, progress, cancelled)
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        _verify(plan, tmp, verify_progress, digests)
        FsPath(tmp).replace(target)
    except OSError as e:
        with contextlib.suppress(OSError):
            FsPath(tmp).unlink()
        if e.errno == errno.ENOSPC:
            raise ExportError(
                str(target), "no space left on the device; nothing was written"
            ) from None
        raise ExportError(str(target), f"cannot write: {e.strerror or e}") from None
    except BaseException:  # an interrupt or a failed verification: no partial file remains
        with contextlib.suppress(OSError):
            FsPath(tmp).unlink()
        raise
    _fsync_dir(folder)
    return Result(
        str(target),
        size,
        len(plan.items),
        predicted,
        True,
        tuple(plan.keep),
        fetched,
    )


def temp_beside(target: FsPath, folder: FsPath) -> tuple[int, str]:
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


def remove_stale_temps(target: FsPath, folder: FsPath) -> list[str]:
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
            FsPath(entry.path).unlink()
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
        with FsPath("/proc/self/status").open(encoding="ascii") as f:
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
    target = FsPath(out)
    if target.exists() or target.is_symlink():
        sources = [ckpt.path]
        folder = ckpt.info.get("folder")
        if folder is not None:
            sources += [f"{folder}/{f}" for f in ckpt.info.get("files", {})]
        # a URL is never a local file: FsPath would fold its `//` into a bogus local path
        if any(_same_file(target, FsPath(s)) for s in sources if not is_url(s)):
            return "error", "is the source checkpoint: refusing to overwrite it"
        if target.is_dir():
            return "error", "is a folder"
        return "exists", "already exists (use --force to replace it)"
    folder = target.parent if str(target.parent) else FsPath()
    if not folder.is_dir():
        return "error", f"no folder {folder}"
    return None


def _verify(
    plan: Plan, written: str, progress: Progress | None, digests: Digests | None = None
) -> None:
    """Reopen the output and compare every tensor with the source's bytes, bit for bit; or, for
    a tensor in `digests` (remote sources), with the digest taken while it was written."""
    out = open_checkpoint(written)
    problem = written_differences(plan, out) if plan.format == "pth" else None
    if problem:  # a quantized model's scales, dtype entries and versions
        raise ExportError(plan.ckpt.path, f"verification failed: {problem}")
    tensors = {".".join(str(k) for k in p): t for p, t in out.tensors()}
    total = plan.data_bytes
    done = 0
    digests = digests or {}
    # A remote source is opened again only for a tensor without a digest (none, normally).
    reread = any(digest_key(it) not in digests for it in plan.items)
    source = SourceBytes(plan.ckpt) if reread else contextlib.nullcontext()
    with source as src, open(written, "rb") as f:  # noqa: PTH123
        for it in plan.items:
            if it.jagged is not None:
                continue  # no bytes of its own: its values and offsets are items
            t = tensors.get(it.name)
            if t is None or t.shape != it.tensor.shape or t.dtype != it.dtype:
                raise ExportError(
                    plan.ckpt.path, f"verification failed: {it.name} was not written as planned"
                )
            st = out.storages[t.storage_key or ""]
            assert st.data_offset is not None
            pos = st.data_offset + t.storage_offset * t.itemsize
            want = digests.get(digest_key(it))
            if want is not None:
                h = hashlib.blake2b(digest_size=32)
                f.seek(pos)
                for a in range(0, it.nbytes, CHUNK):
                    block = f.read(min(CHUNK, it.nbytes - a))
                    h.update(block)
                    done += len(block)
                    if progress:
                        progress(done, total, it.name)
                if h.digest() != want:
                    raise ExportError(
                        plan.ckpt.path, f"verification failed: {it.name} differs from the source"
                    )
                continue
            assert src is not None
            for chunk in src.chunks(it):
                n = len(chunk)
                if f.seek(pos) != pos or f.read(n) != bytes(chunk):
                    raise ExportError(
                        plan.ckpt.path, f"verification failed: {it.name} differs from the source"
                    )
                pos += n
                done += n
                if progress:
                    progress(done, total, it.name)


def _same_file(a: FsPath, b: FsPath) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return a.resolve() == b.resolve()


def _fsync_dir(folder: FsPath) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
