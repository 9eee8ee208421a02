"""Provides the one error hierarchy; every message names the file and what is wrong.

The CLI prints `ckptui: <path>: <message>` and exits 2 for any `CkptError`; anything else escaping
the core is a bug. Path and message pass through `units.printable` here, once, so a name from the
file that holds a newline or a terminal escape cannot break the line or drive the terminal.
"""

from __future__ import annotations

from ckptui.core.units import printable


class CkptError(Exception):
    """Base of every error ckptui reports to the user."""

    def __init__(self, path: str, message: str) -> None:
        # Names inside a hostile file (keys, class and shard names) may hold newlines and
        # terminal escapes; the CLI promises one line, and the terminal must not obey them.
        path, message = printable(path), printable(message)
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class NotFound(CkptError):
    """The path does not exist."""


class NotReadable(CkptError):
    """The path exists but cannot be read (permissions, a directory that is not a checkpoint)."""


class NotACheckpoint(CkptError):
    """The file is readable but is no checkpoint format ckptui knows."""


class CorruptFile(CkptError):
    """The file looks like a known format but is damaged or inconsistent."""

    partial_root: object = None
    """What the unpickler had read when it failed (set by the unpickler)."""
    partial: object = None
    """The checkpoint as read up to the damage, with its findings, when torch.load would
    already have run something dangerous before failing (so the danger is reported, not
    only the damage); None otherwise."""


class Unsupported(CkptError):
    """A known format or feature that ckptui does not read yet."""


class ExportError(CkptError):
    """The export cannot be planned or written as asked (or its source changed under it)."""


class TimedOut(NotReadable):
    """A server took longer than the request's total deadline (it trickles its answer)."""


class Redirected(NotReadable):
    """A URL's server redirected to another server, which ckptui refuses to follow."""
