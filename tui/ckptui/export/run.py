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
import struct
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ckptui.core.bulk import gc_paused
from ckptui.core.errors import CorruptFile, ExportError
from ckptui.core.progress import NamedProgress
from ckptui.export.atomic import check_target, fsync_dir, temp_beside
from ckptui.export.dcp import chunked_kept, export_dcp_plan
from ckptui.export.plan import Plan, Result
from ckptui.export.quantized import written_differences
from ckptui.export.writers import predicted_size, pth_pickle, safetensors_header, write
from ckptui.formats import open_checkpoint
from ckptui.formats.safetensors import MAX_HEADER, header_rows, parse_header
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
    # a safetensors header or a .pth's pickle is made once, for the size and the file
    # (100,000 entries: 0.4 s and 0.2 s)
    header = safetensors_header(plan) if plan.format == "safetensors" else pth_pickle(plan)
    predicted = predicted_size(plan, header)
    fd, tmp = temp_beside(target, folder)
    try:
        with os.fdopen(fd, "w+b") as f, recorded_digests() as digests:
            fetched = write(plan, f, progress, cancelled, header)
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
    """Read the output back and compare every tensor with the source's bytes, bit for bit; or,
    for a tensor in `digests` (remote sources), with the digest taken while it was written."""
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
        # gc paused: a row per tensor, no cycles (`core.bulk`)
        with contextlib.closing(view) if size else contextlib.nullcontext(), gc_paused():
            if plan.format == "safetensors":
                where = _safetensors_rows(written, view)
            else:
                where = _pth_rows(plan, written)
            _compare(plan, where, digests, src, f, view, progress, total)


Where = dict[str, tuple[tuple[int, ...], str, int | None]]
"""Output name -> (shape, dtype, offset of its first byte in the file or None) as read back."""


def _pth_rows(plan: Plan, written: str) -> Where:
    """The written `.pth` reopened by ckptui's reader (the pickle and the zip, every check a
    user's open makes), its tensors by name; a quantized model's extras compared too."""
    out = open_checkpoint(written)
    problem = written_differences(plan, out)
    if problem:  # a quantized model's scales, dtype entries and versions
        raise ExportError(plan.ckpt.path, f"verification failed: {problem}")
    where: Where = {}
    storages = out.storages
    for p, t in out.tensors():
        # a one-key path (every name of the written state dict) is its name, without a join
        name = p[0] if len(p) == 1 and type(p[0]) is str else ".".join(str(k) for k in p)
        st = storages.get(t.storage_key or "")
        pos = None
        if st is not None and st.data_offset is not None:
            pos = st.data_offset + t.storage_offset * t.itemsize
        where[name] = (t.shape, t.dtype, pos)
    return where


def _safetensors_rows(written: str, view: mmap.mmap | bytes) -> Where:
    """The written `.safetensors`'s header read back from the disk and checked by the reader's
    rules (`formats.safetensors.header_rows`: every entry's dtype, shape and offsets, holes,
    overlaps, the data's end against the file's size), its tensors by name.

    Why this catches what reopening it with `open_checkpoint` caught: that reopen is
    `read_safetensors`, which is this same parse and these same checks, and then builds a
    node, a tensor and a storage object per tensor (100,000 of them: most of an export's
    verification, issue 16) that the comparison only read the shape, dtype and offset of. The
    bytes compared are the file's, through the same map, at the offsets the header gives.
    """
    size = len(view)
    if size < 8:
        raise CorruptFile(written, "safetensors header length is missing")
    (n,) = struct.unpack_from("<Q", view, 0)
    if n > MAX_HEADER or n > size - 8:
        raise CorruptFile(
            written, f"safetensors header length {n:,} is larger than the file allows"
        )
    header = parse_header(written, bytes(view[8 : 8 + n]))
    return header_rows(written, header, size - 8 - n, 8 + n)


def _compare(
    plan: Plan,
    where: Where,
    digests: Digests,
    src: SourceBytes | None,
    f: BinaryIO,
    view: mmap.mmap | bytes,
    progress: NamedProgress | None,
    total: int,
) -> None:
    """Compare every planned tensor as read back (`where`, in the written file `f`, mapped as
    `view`) with the source's bytes or their digest.

    Raises:
        ExportError: the first tensor not written as planned or not as the source holds it.
    """
    done = 0
    for it in plan.items:
        if it.jagged is not None:
            continue  # no bytes of its own: its values and offsets are items
        row = where.get(it.name)
        if row is None or row[0] != it.tensor.shape or row[1] != it.dtype or row[2] is None:
            raise ExportError(
                plan.ckpt.path, f"verification failed: {it.name} was not written as planned"
            )
        pos = row[2]
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
