"""Provides OpenProgress: what the browser's header says while a checkpoint opens.

Opening 100,000 tensors takes seconds (issue 16). The window shows at once with a loading
indicator; the header says what is happening meanwhile: the file and its size, the stage
(reading, indexing, finding the weights), the files of a folder read so far, and the seconds
gone, e.g. `ckptui · opening run/ · 160 files read · reading … 3 s`. The worker thread only
sets plain attributes (a str and an int: single stores under the GIL) and the UI thread reads
them twice a second, so reporting costs the open one call per file of a folder, no more.
"""

from __future__ import annotations

import stat
import time
from pathlib import Path

from ckptui.core import units
from ckptui.core.tree import Checkpoint
from ckptui.formats import open_checkpoint
from ckptui.formats.source import is_url


class OpenProgress:
    """The state of one open, written by the worker and shown by the screen (`text`)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.stage = "reading"
        """What the worker is doing: set by it, read by the UI thread."""
        self.files = 0
        """Files of a folder opened so far (0 for a single file)."""
        self.started = time.monotonic()
        self.size: int | None = None
        """The file's size in bytes; None for a folder or a URL (not known before opening)."""
        if not is_url(path):
            try:
                st = Path(path).stat()
            except OSError:  # the open says why, in its one line
                st = None
            if st is not None and stat.S_ISREG(st.st_mode):
                self.size = st.st_size

    def open(self) -> Checkpoint:
        """`open_checkpoint(path)`, counting the files of a local folder as they are read."""
        return open_checkpoint(self.path, on_file=self._file_read)

    def _file_read(self) -> None:
        self.files += 1

    def text(self) -> str:
        """The header line while opening (plain text: it quotes the path)."""
        parts = [f"ckptui · opening {self.path}"]
        if self.size is not None:
            parts.append(units.size(self.size))
        if self.files:
            parts.append(f"{units.plural(self.files, 'file')} read")
        seconds = time.monotonic() - self.started
        parts.append(f"{self.stage} …" + (f" {seconds:.0f} s" if seconds >= 1 else ""))
        return " · ".join(parts)
