"""Provides `open_source`: a `Source` on a local path or, for a URL, on range requests.

`Source` is the local file; `remote.reader.RemoteSource` is one over HTTP/S3 and builds on it,
so the choice between them is made here, above both, by the readers that take either (the
file layout, the weights_only replay).
"""

from __future__ import annotations

from ckptui.formats.source import Source, is_url


def open_source(path: str) -> Source:
    """Open `path` for reading: a URL by range requests, anything else as a local file."""
    if is_url(path):
        # deferred: a local path never loads the remote modules (nor, through them, fsspec)
        from ckptui.formats.remote.reader import RemoteSource

        return RemoteSource.open(path)
    return Source.open(path)
