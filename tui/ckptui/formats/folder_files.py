"""Provides `Files`, where a folder's files live, and `LOCAL`, the local file system.

The folder readers (`folder`, `sharded`) reach files only through a `Files` object (list, read a
small file, tell a missing one, refuse a symlink leading out), so a folder at a URL
(`remote.folder.RemoteFiles`) is opened by the same code, and a local path never imports
anything remote.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any, Protocol

from ckptui.core.errors import CkptError, CorruptFile, NotReadable
from ckptui.core.tree import Checkpoint
from ckptui.formats.listing import folder_files
from ckptui.formats.source import leads_outside


class Files(Protocol):
    """Where a folder's files live: the local file system (`LOCAL`) or a URL."""

    def is_dir(self, path: str) -> bool:
        """`path` is a folder."""
        ...

    def split(self, path: str) -> tuple[str, str]:
        """(folder, name) of a file."""
        ...

    def join(self, folder: str, rel: str) -> str:
        """The path of `rel` inside `folder`, as `open_file` takes it."""
        ...

    def names(self, folder: str) -> list[str]:
        """The folder's top-level entries (files and subfolders), sorted."""
        ...

    def sizes(self, folder: str) -> dict[str, int]:
        """(path relative to the folder) -> size of every file below it, sorted."""
        ...

    def read(self, path: str, limit: int) -> bytes:
        """A small file's bytes (an index); CorruptFile past `limit` bytes."""
        ...

    def missing(self, path: str, error: CkptError) -> bool:
        """Whether opening `path` failed with `error` because the file is not there."""
        ...

    def outside(self, folder: str, rel: str) -> str | None:
        """Why `rel` (an index, or a shard name already checked by `shard_name_problem`) is
        not a file inside `folder` (a symlink leading out, a subfolder), or None; reads no
        file."""
        ...

    def refused(self, folder: str) -> dict[str, str]:
        """Files below `folder` that are left unread, relative name -> why (symlinks out)."""
        ...

    def absolute(self, folder: str) -> str:
        """`info["folder"]`: what `Checkpoint.file_of` joins a storage's file to."""
        ...

    def dcp(self, folder: str) -> Checkpoint | None:
        """The folder opened as a DCP checkpoint, or None when it is not one."""
        ...

    def open_each(self, paths: list[str], open_file: Any) -> dict[str, Checkpoint | CkptError]:
        """`open_file` of every path: its checkpoint, or the CkptError it raised."""
        ...


class LocalFiles:
    """`Files` on the local file system."""

    def is_dir(self, path: str) -> bool:
        """`path` is a folder."""
        return Path(path).is_dir()

    def split(self, path: str) -> tuple[str, str]:
        """(folder, name) of a file."""
        return str(Path(path).parent), Path(path).name

    def join(self, folder: str, rel: str) -> str:
        """The path of `rel` inside `folder`."""
        return str(Path(folder) / rel)

    def names(self, folder: str) -> list[str]:
        """The folder's top-level entries, sorted."""
        try:
            return sorted(p.name for p in Path(folder).iterdir())
        except OSError as e:
            raise NotReadable(folder, e.strerror or str(e)) from None

    def sizes(self, folder: str) -> dict[str, int]:
        """Every regular file below `folder` (`listing.folder_files`)."""
        return dict(folder_files(folder))

    def read(self, path: str, limit: int) -> bytes:
        """A small file's bytes."""
        try:
            st = Path(path).stat()
            if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read forever
                raise NotReadable(path, "is not a regular file")
            if st.st_size > limit:
                raise CorruptFile(path, "index file is implausibly large")
            return Path(path).read_bytes()
        except OSError as e:
            raise NotReadable(path, e.strerror or str(e)) from None

    def missing(self, path: str, error: CkptError) -> bool:
        """The file is not there (whatever the error said)."""
        return not Path(path).exists()

    def outside(self, folder: str, rel: str) -> str | None:
        """A symlink leading out of the folder, or a folder where a shard file should be."""
        path = Path(folder) / rel
        why = leads_outside(folder, str(path))
        if why is None and path.is_dir():
            why = "a folder, not a file"
        return why

    def refused(self, folder: str) -> dict[str, str]:
        """Symlinks below `folder` leading out of it (`listing.folder_files`)."""
        out: dict[str, str] = {}
        folder_files(folder, out)
        return out

    def absolute(self, folder: str) -> str:
        """The folder's absolute path."""
        return str(Path(folder).absolute())

    def dcp(self, folder: str) -> Checkpoint | None:
        """`formats.dcp`'s reading of the folder, when it is one."""
        # deferred: the DCP reader and its confined unpickler are ~a tenth of the start-up
        # imports, and only a folder with `.metadata` and `*.distcp` files gets here
        from ckptui.formats.dcp.listing import looks_like_dcp
        from ckptui.formats.dcp.reader import read_dcp

        return read_dcp(folder) if looks_like_dcp(folder) else None

    def open_each(self, paths: list[str], open_file: Any) -> dict[str, Checkpoint | CkptError]:
        """One after another: local metadata reads take microseconds, threads would not help."""
        out: dict[str, Checkpoint | CkptError] = {}
        for path in paths:
            try:
                out[path] = open_file(path)
            except CkptError as e:  # noqa: PERF203 - one try per file
                out[path] = e
        return out


LOCAL = LocalFiles()
