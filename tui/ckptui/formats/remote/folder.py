"""Provides `open_url`: a checkpoint at a URL, which may be one file, a shard index or a folder.

- A shard index (`.../model.safetensors.index.json`, any `*.index.json`) opens as the sharded
  model: the index plus each shard's metadata, each shard read as one remote file is.
- A folder (`s3://bucket/m/`, or `s3://bucket/m` when no such object exists) is listed through
  fsspec and opened by `folder.open_folder`, as a local folder is. HTTP has no reliable listing,
  so an `http(s)://.../` folder is looked up by its index name (`model.safetensors.index.json`,
  then `pytorch_model.bin.index.json`).
- Anything else is one file (`formats._open_remote`).

`RemoteFiles` is `folder_files.Files` over fsspec, so the sharded and many-file logic is the local
one. Opening reads the index and each shard's header (or zip directory and pickle), never tensor
data; `info["bytes_read"]` is the sum over all of them.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ckptui.core.errors import (
    CkptError,
    CorruptFile,
    NotACheckpoint,
    NotFound,
    NotReadable,
    Unsupported,
)
from ckptui.core.tree import Checkpoint
from ckptui.formats.folder import open_folder
from ckptui.formats.listing import MAX_FILES
from ckptui.formats.remote.fs import bounded, is_http
from ckptui.formats.remote.reader import RemoteSource, filesystem, translate
from ckptui.formats.sharded import INDEX_NAMES, MAX_INDEX, is_index_file, open_sharded

OpenOne = Callable[[str], Checkpoint]
OPEN_THREADS = 8
"""Shards opened at once over the network."""


def open_url(url: str, open_one: OpenOne) -> Checkpoint:
    """Open the checkpoint at `url`, fetching metadata only.

    Args:
        url: a file, a `*.index.json`, or a folder (ending in `/`, or any listable prefix).
        open_one: opens one file at a URL (`formats._open_remote`); its `info["bytes_read"]`
            is added up.

    Raises:
        CkptError: one line naming the URL.
    """
    files = RemoteFiles()

    def counted(u: str) -> Checkpoint:
        ckpt = open_one(u)
        files.count(int(ckpt.info.get("bytes_read") or 0))
        return ckpt

    if is_index_file(url) and not url.endswith("/"):
        ckpt = open_folder(url, counted, files)
    elif url.endswith("/"):
        ckpt = _open_dir(url, url.rstrip("/"), counted, files)
    else:
        try:
            return open_one(url)
        except (NotFound, NotACheckpoint):  # s3fs opens a prefix as an empty file
            if is_http(url) or not files.is_listable_dir(url):
                raise
        ckpt = _open_dir(url, url, counted, files)
    return dataclasses.replace(ckpt, info={**ckpt.info, "bytes_read": files.bytes_read})


def _open_dir(shown: str, folder: str, open_one: OpenOne, files: RemoteFiles) -> Checkpoint:
    if not is_http(folder):
        files.dirs.add(folder)
        return open_folder(folder, open_one, files)
    for name in INDEX_NAMES:  # HTTP cannot list: the two names save_pretrained writes
        try:
            files.read(f"{folder}/{name}", MAX_INDEX)
        except NotFound:
            continue
        return open_sharded(folder, name, shown, open_one, files)
    raise NotFound(
        shown,
        f"no {' or '.join(INDEX_NAMES)} here, and a folder cannot be listed over HTTP: "
        "pass the index file's URL",
    )


class RemoteFiles:
    """`folder_files.Files` for URLs: listing through fsspec, small files by range requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes_read = 0
        """Bytes fetched for index files (shards count in their own `info["bytes_read"]`)."""
        self.dirs: set[str] = set()
        """URLs known to be folders."""
        self._read: dict[str, bytes] = {}
        self._listed: dict[str, dict[str, int]] = {}

    def count(self, n: int) -> None:
        """Add `n` fetched bytes (shards are opened on several threads)."""
        with self._lock:
            self.bytes_read += n

    def open_each(self, paths: list[str], open_file: OpenOne) -> dict[str, Checkpoint | CkptError]:
        """Up to `OPEN_THREADS` files opened at once: each open is a few round trips that
        mostly wait on the network (100 shards on S3 took 100 times those trips in a row)."""

        def one(path: str) -> Checkpoint | CkptError:
            try:
                return open_file(path)
            except CkptError as e:
                return e

        if len(paths) < 2:
            return {p: one(p) for p in paths}
        with ThreadPoolExecutor(OPEN_THREADS, thread_name_prefix="ckptui-open") as pool:
            return dict(zip(paths, pool.map(one, paths), strict=True))

    def is_dir(self, path: str) -> bool:
        """A folder `open_url` has already recognised (no request)."""
        return path in self.dirs

    def is_listable_dir(self, url: str) -> bool:
        """Whether `url` is a folder (prefix) on a back-end that lists (S3, GCS, ...)."""
        try:
            fs, fpath = filesystem(url)
            return bool(bounded(fs, "isdir", fpath))  # a trickling server: not forever
        except Exception:  # noqa: BLE001 - not listable: the caller re-raises its NotFound
            return False

    def split(self, path: str) -> tuple[str, str]:
        """(folder URL, name)."""
        folder, _, name = path.rpartition("/")
        return folder, name

    def join(self, folder: str, rel: str) -> str:
        """`rel`'s URL: what `Checkpoint.file_of` builds from `info["folder"]` too."""
        return f"{folder}/{rel}"

    def names(self, folder: str) -> list[str]:
        """Top-level entries (a subfolder by its name), from one recursive listing."""
        return sorted({rel.split("/", 1)[0] for rel in self.sizes(folder)})

    def sizes(self, folder: str) -> dict[str, int]:
        """Every file below `folder` (one `fs.find`), relative name -> size."""
        got = self._listed.get(folder)
        if got is not None:
            return got
        if is_http(folder):
            raise Unsupported(folder, "a folder cannot be listed over HTTP: pass the index's URL")
        try:
            fs, fpath = filesystem(folder)
            # one deadline for the whole listing (a few pages for a model's folder)
            found = bounded(fs, "find", fpath.rstrip("/"), detail=True)
        except Exception as e:  # noqa: BLE001 - any back-end's error becomes one CkptError line
            raise translate(folder, e) from None
        base = fpath.rstrip("/") + "/"
        out: dict[str, int] = {}
        for key, entry in sorted(found.items()):
            if entry.get("type") != "file" or not key.startswith(base):
                continue
            out[key[len(base) :]] = int(entry.get("size") or 0)
            if len(out) > MAX_FILES:
                raise NotReadable(folder, f"holds more than {MAX_FILES:,} files")
        self._listed[folder] = out
        return out

    def read(self, path: str, limit: int) -> bytes:
        """A small file in full (one range request after the open learns its size), kept so
        that probing for an index and then reading it costs one transfer."""
        got = self._read.get(path)
        if got is not None:
            return got
        src = RemoteSource.open(path)
        try:
            if src.size > limit:
                raise CorruptFile(path, "index file is implausibly large")
            data = src.read_at(0, src.size) if src.size else b""
        finally:
            src.close()
        self.count(src.bytes_read)
        self._read[path] = data
        return data

    def missing(self, path: str, error: CkptError) -> bool:
        """A 404 (or no such key): the server said so, no second request."""
        return isinstance(error, NotFound)

    def outside(self, folder: str, rel: str) -> str | None:
        """Object stores have no symlinks, but a name is joined into a URL: `%` (`%2e%2e/`
        is `../` once decoded, and URL libraries resolve it), `?` and `#` would change which
        object is fetched, so names holding them are refused (real shard names never do)."""
        if any(c in rel for c in "%?#"):
            return "holds URL syntax (%, ? or #) that would change which file is fetched"
        return None

    def refused(self, folder: str) -> dict[str, str]:
        """Nothing: a listing holds no links."""
        return {}

    def absolute(self, folder: str) -> str:
        """The folder's URL, as given."""
        return folder

    def dcp(self, folder: str) -> Checkpoint | None:
        """Not yet: DCP's reader wants local files."""
        raise Unsupported(
            folder, "DCP checkpoints at a URL are not supported yet: download the folder first"
        )
