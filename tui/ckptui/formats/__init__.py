"""Provides `open_checkpoint`: detect a file's format by its first bytes and read its metadata.

Detection follows `torch.load`: a file starting with a zip local header is a zip (TorchScript when
it has `constants.pkl`); anything else is read as pickles, where a first pickle holding the legacy
magic number makes a legacy checkpoint and any other first pickle is a plain pickle file (which
`torch.load` would run before failing). A pickle with a zip appended is therefore a pickle.
safetensors, which torch.load does not read, is recognised by its header first.

A URL (`https://`, `s3://`, any fsspec URL) is opened by range requests (`remote`): torch
zip (directory and pickle), safetensors (header), legacy and plain pickles (the pickles, read
through a block cache, never the storages). A shard index or a folder at a URL is opened by
`remote_folder`: the index plus each shard as one remote file. A local path takes the same code
path as before and never imports fsspec.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ckptui.core.errors import (
    CkptError,
    CorruptFile,
    NotACheckpoint,
    NotFound,
    NotReadable,
)
from ckptui.core.tree import Checkpoint
from ckptui.formats.folder import check_folder, open_folder
from ckptui.formats.safetensors import looks_like_safetensors, read_safetensors
from ckptui.formats.sharded import is_index_file
from ckptui.formats.source import MAGIC_NUMBER, Source, assemble, attach_partial, is_url

# The pickle readers (zip, legacy, legacy tar, embedded checkpoints) are imported when a file
# needs them (`_read`): a folder of 160 safetensors shards never does, and their modules (with
# tarfile and zipfile) were a third of its start-up imports (issue 16).


def _read_nested(src: Source, u: Any, blob: Any) -> Any:
    """`nested.read_nested`, imported when a pickle first embeds a checkpoint (a DCP item's
    pickle may too, so this is set here for every reader, not only `_read`'s)."""
    from ckptui.formats.nested import read_nested  # its import replaces this stand-in

    return read_nested(src, u, blob)


Source.read_nested = staticmethod(_read_nested)

__all__ = ["check_openable", "open_checkpoint"]


def check_openable(path: str | os.PathLike[str]) -> str:
    """Fail fast, with the one-line reason, for a path that is neither a regular file nor a
    folder.

    The browser calls this before taking over the terminal, so a mistyped path never flashes a
    full-screen app.

    Returns:
        The path as a string.

    Raises:
        NotFound, NotReadable: naming the path.
    """
    path = os.fspath(path)
    if is_url(path):
        return path  # checked by opening it, in the worker: no network before the app starts
    try:
        st = Path(path).stat()
    except FileNotFoundError:
        raise NotFound(path, "no such file or directory") from None
    except PermissionError:
        raise NotReadable(path, "permission denied") from None
    except OSError as e:
        raise NotReadable(path, e.strerror or str(e)) from None
    if stat.S_ISDIR(st.st_mode):
        if not os.access(path, os.R_OK | os.X_OK):
            raise NotReadable(path, "permission denied")
        check_folder(path)
        return path
    if not stat.S_ISREG(st.st_mode):
        raise NotReadable(path, "is not a regular file")
    return path


def open_checkpoint(
    path: str | os.PathLike[str],
    *,
    storage_file: str | None = None,
    on_file: Callable[[], None] | None = None,
) -> Checkpoint:
    """Open a checkpoint as metadata, never executing its pickle or reading tensor data.

    Args:
        path: the file to open; or a folder (sharded Hugging Face model, DCP checkpoint, a
            folder of checkpoint files) or a shard index (`*.index.json`), opened as one tree.
        storage_file: for a file of a folder (`formats.folder`), its name there: a safetensors
            reader keys its storages as the folder does (`read_safetensors`); others ignore it.
        on_file: called after each file of a local folder is read (the browser's progress
            while 160 shards open); a single file or a URL never calls it.

    Returns:
        The checkpoint's tree, storage table and findings.

    Raises:
        CkptError: with a one-line message naming the file, for anything that is not a readable
            checkpoint.
    """
    if is_url(path):
        # deferred: a local path never loads the remote modules (nor fsspec)
        from ckptui.formats.remote.folder import open_url

        return open_url(os.fspath(path), _open_remote)
    path = check_openable(path)
    if Path(path).is_dir() or is_index_file(path):
        return open_folder(path, open_checkpoint if on_file is None else _counted(on_file))
    try:
        src = Source.open(path)
    except PermissionError:
        raise NotReadable(path, "permission denied") from None
    except OSError as e:
        if e.errno == errno.EISDIR:
            raise NotReadable(path, "is a directory, not a checkpoint file") from None
        raise NotReadable(path, e.strerror or str(e)) from None
    return _read_closing(src, storage_file=storage_file)


def _counted(on_file: Callable[[], None]) -> Callable[..., Checkpoint]:
    """`open_checkpoint` for the files of a folder, calling `on_file` after each."""

    def open_file(path: str, **kwargs: object) -> Checkpoint:
        ckpt = open_checkpoint(path, **kwargs)  # type: ignore[arg-type]
        on_file()
        return ckpt

    return open_file


def _open_remote(url: str) -> Checkpoint:
    """Open a checkpoint at a URL, fetching only its metadata; `info["bytes_read"]` says how many
    bytes that took."""
    # deferred: a local path never loads the remote modules (nor fsspec)
    from ckptui.formats.remote.reader import RemoteSource, translate

    src = RemoteSource.open(url)
    ckpt = _read_closing(src, translate)
    return replace(ckpt, info={**ckpt.info, "bytes_read": src.bytes_read})


def _read_closing(
    src: Source,
    translate: Callable[[str, BaseException], CkptError] | None = None,
    storage_file: str | None = None,
) -> Checkpoint:
    """`_read(src)`, closing it after; a pickle too deep or too large is one CorruptFile line,
    and so, through `translate`, is a URL's network error raised mid-read."""
    try:
        return _read(src, storage_file)
    except CorruptFile as e:
        attach_partial(src, e)
        raise
    except CkptError:
        raise
    except (RecursionError, MemoryError) as e:
        raise CorruptFile(
            src.path, f"too deeply nested or too large to read ({type(e).__name__})"
        ) from None
    except Exception as e:
        if translate is None:
            raise
        raise translate(src.path, e) from None
    finally:
        src.close()


def _read(src: Source, storage_file: str | None = None) -> Checkpoint:
    if src.size == 0:
        raise NotACheckpoint(src.path, "empty file")
    head = src.read_at(0, 16)
    if looks_like_safetensors(head) and not head.startswith(b"PK\x03\x04"):  # zip goes first
        return read_safetensors(src, storage_file)
    return _read_pickled(src, head)


def _read_pickled(src: Source, head: bytes) -> Checkpoint:
    """`_read` of anything but safetensors: zip, legacy tar, legacy and plain pickles."""
    # deferred: a safetensors file or folder never needs these readers (see the imports above)
    from ckptui.formats.legacy import may_pass_ne_check, read_legacy
    from ckptui.formats.legacy_tar import open_tar, read_legacy_tar
    from ckptui.formats.torchzip import read_zip

    if head.startswith(b"PK\x03\x04"):
        src.kind = "torch-zip"
        src.prefetch_zip()
        return read_zip(src)
    if src.fd is not None:  # torch.load tries a tar first (a local file at offset 0 only)
        tar = open_tar(src)
        if tar is not None:
            src.kind = "torch-legacy-tar"
            return read_legacy_tar(src, tar)
    if head[:1] == b"\x80" or _maybe_text_pickle(head):
        try:
            first, end = src.unpickler(src.buf, "", None).load(0, src.size)
        except CorruptFile:
            if head[:1] != b"\x80":
                raise _not_a_checkpoint(src, head) from None
            raise
        if first == MAGIC_NUMBER:
            src.kind = "torch-legacy"
            return read_legacy(src, end)
        if may_pass_ne_check(first):
            return _read_past_odd_magic(src, first, end)
        return assemble(src, "pickle", first, {"pickle_bytes": end})
    raise _not_a_checkpoint(src, head)


def _read_past_odd_magic(src: Source, first: object, end: int) -> Checkpoint:
    """The first pickle is no magic number but an object whose `!=` the file chooses
    (`unittest.mock.ANY`): torch.load goes on reading as the legacy format, so ckptui does too,
    and judges every pickle torch would reach. With nothing after it (a plain pickle of an
    object), torch.load just fails at the next read."""
    from ckptui.formats.legacy import read_legacy  # deferred, as in `_read_pickled`

    plain = assemble(src, "pickle", first, {"pickle_bytes": end})
    if src.read_at(end, 1) == b"":
        return plain
    src.warn(
        "odd_magic",
        "the first pickle is not the legacy magic number but an object that may compare equal "
        "to it: torch.load reads on, and so does ckptui",
    )
    try:
        return read_legacy(src, end)
    except CorruptFile as e:
        # torch.load fails there too; what it ran on the way is in the findings
        src.warn("corrupt", f"after the first pickle the file is damaged ({e.message})")
        src.storages.clear()
        return assemble(src, "pickle", first, {"pickle_bytes": end})


def _maybe_text_pickle(head: bytes) -> bool:
    """Protocol 0/1 pickles start with one of these opcodes."""
    return head[:1] in (
        b"(",
        b"}",
        b"]",
        b")",
        b"c",
        b"I",
        b"L",
        b"S",
        b"V",
        b"N",
        b"K",
        b"J",
        b"X",
        b"F",
        b"G",
        b"U",
        b"T",
        b"q",
        b"\x88",
        b"\x89",
        b"\x95",
    )


def _not_a_checkpoint(src: Source, head: bytes) -> NotACheckpoint:
    sample = src.read_at(0, 4096)
    if head.startswith(b"\x1f\x8b"):
        return NotACheckpoint(src.path, "gzip-compressed file: decompress it first")
    if len(sample) > 262 and sample[257:262] == b"ustar":
        return NotACheckpoint(
            src.path,
            "a tar archive that tarfile cannot open (so torch.load does not read it as one)",
        )
    try:
        text = sample.decode("utf-8")
        if all(c.isprintable() or c in "\n\r\t" for c in text[:4000]):
            return NotACheckpoint(src.path, "a text file, not a checkpoint")
    except UnicodeDecodeError:
        pass
    return NotACheckpoint(
        src.path, f"not a checkpoint format ckptui knows (starts with {head[:8].hex(' ')})"
    )
