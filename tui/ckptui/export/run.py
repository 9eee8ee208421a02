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
import mmap
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ckptui.core.errors import ExportError
from ckptui.core.progress import NamedProgress
from ckptui.core.tree import Checkpoint, TensorInfo
from ckptui.export.atomic import check_target, fsync_dir, temp_beside
from ckptui.export.dcp import chunked_kept, export_dcp_plan
from ckptui.export.plan import Plan, Result
from ckptui.export.quantized import written_differences
from ckptui.export.writers import predicted_size, write
from ckptui.formats import open_checkpoint
from ckptui.tensors.reader import CHUNK, Digests, SourceBytes, digest_key, recorded_digests


def export(
    plan: Plan,
    out: str | os.PathLike[str],
    force: bool = False,
    progress: NamedProgress | None = None,
    verify_progress: NamedProgress | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Result:
    """Write `plan` to `out` via a verified temporary file.

    A DCP checkpoint whose kept tensors were saved in chunks by several ranks is handed to
    `export_dcp`, which stitches them with torch's own DCP reader (and needs torch).

    Raises:
        ExportError: the target is the source, exists without `force`, is a folder, the disk is
            full or verification failed. The temporary file is gone in every case.
    """
    if plan.ckpt.format == "dcp" and chunked_kept(plan):
        return export_dcp_plan(plan, out, force, progress)
    problem = check_target(out, plan.ckpt)  # before Path, which folds a URL's `//`
    target = Path(out)
    if problem is not None and (problem[0] != "exists" or not force):
        raise ExportError(os.fspath(out), problem[1])
    folder = target.parent if str(target.parent) else Path()
    predicted = predicted_size(plan)
    fd, tmp = temp_beside(target, folder)
    try:
        with os.fdopen(fd, "w+b") as f, recorded_digests() as digests:
            fetched = write(plan, f, progress, cancelled)
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        _verify(plan, tmp, verify_progress, digests)
        Path(tmp).replace(target)
    except OSError as e:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        if e.errno == errno.ENOSPC:
            raise ExportError(
                str(target), "no space left on the device; nothing was written"
            ) from None
        raise ExportError(str(target), f"cannot write: {e.strerror or e}") from None
    except BaseException:  # an interrupt or a failed verification: no partial file remains
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise
    fsync_dir(folder)
    return Result(
        str(target),
        size,
        len(plan.items),
        predicted,
        True,
        tuple(plan.keep),
        fetched,
    )


def _verify(
    plan: Plan, written: str, progress: NamedProgress | None, digests: Digests | None = None
) -> None:
    """Reopen the output and compare every tensor with the source's bytes, bit for bit; or, for
    a tensor in `digests` (remote sources), with the digest taken while it was written."""
    out = open_checkpoint(written)
    problem = written_differences(plan, out) if plan.format == "pth" else None
    if problem:  # a quantized model's scales, dtype entries and versions
        raise ExportError(plan.ckpt.path, f"verification failed: {problem}")
    # a one-key path (every name of the written state dict) is its name, without a join
    tensors = {
        p[0] if len(p) == 1 and type(p[0]) is str else ".".join(str(k) for k in p): t
        for p, t in out.tensors()
    }
    total = plan.data_bytes
    digests = digests or {}
    # A remote source is opened again only for a tensor without a digest (none, normally).
    reread = any(digest_key(it) not in digests for it in plan.items)
    source = SourceBytes(plan.ckpt) if reread else contextlib.nullcontext()
    with source as src, open(written, "rb") as f:  # noqa: PTH123
        # The written bytes through a map, not a seek and a read per tensor: 100,000 small
        # tensors made 200,000 system calls here (issue 16). An empty file cannot be mapped.
        size = os.fstat(f.fileno()).st_size
        view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        with contextlib.closing(view) if size else contextlib.nullcontext():
            _compare(plan, out, tensors, digests, src, f, view, progress, total)


def _compare(
    plan: Plan,
    out: Checkpoint,
    tensors: dict[str, TensorInfo],
    digests: Digests,
    src: SourceBytes | None,
    f: BinaryIO,
    view: mmap.mmap | bytes,
    progress: NamedProgress | None,
    total: int,
) -> None:
    """Compare every planned tensor of `out` (the written file, `f`, mapped as `view`) with
    the source's bytes or their digest.

    Raises:
        ExportError: the first tensor not written as planned or not as the source holds it.
    """
    done = 0
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
        want = digests.get(digest_key(it)) if digests else None
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
            if pos + n > len(view) or view[pos : pos + n] != chunk:
                raise ExportError(
                    plan.ckpt.path, f"verification failed: {it.name} differs from the source"
                )
            pos += n
            done += n
            if progress:
                progress(done, total, it.name)
