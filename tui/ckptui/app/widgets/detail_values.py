"""Provides `ValuesCard`, the detail panel's values part: min/max/mean/std, NaN/Inf counts,
leading values and a histogram of the selected tensor, read from the file's bytes.

Small tensors are read inline, in the same update as their facts; others in a thread worker
(`tensors.values.tensor_stats`), so moving the cursor never waits for them, and moving on
cancels the read. While a worker reads, the card keeps the height of the last values (blank),
so the next ones, usually as tall, need no layout. Large tensors wait for `v`.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text
from textual import work
from textual.widgets import Sparkline, Static
from textual.worker import get_current_worker

from ckptui.app.widgets.panel_parts import Laid, grid_table, put, show_if
from ckptui.core import units
from ckptui.core.cancel import Cancelled
from ckptui.core.errors import CkptError
from ckptui.core.tree import Checkpoint, KeyPath, TensorInfo
from ckptui.tensors.values import fetched_bytes, tensor_stats

AUTO_STATS_BYTES = 64 << 20
"""Tensors up to this size get their values computed as soon as they are selected."""
INLINE_STATS_BYTES = 64 << 10
"""Tensors up to this size are read on the UI thread, in the same update as their facts: ~0.3 ms,
less than starting a worker, and the panel is painted once instead of twice."""


class ValuesCard:
    """The values part of `DetailPanel` (a mixin: it uses the panel's `entry`, `ckpt`, its
    `#stats`/`#histogram`/`#hist-range` widgets and its `NonFinite` message)."""

    entry: Any
    ckpt: Checkpoint | None

    def _show_stats(self, content: RenderableType, stats: Any = None) -> None:
        """Values text, and below it the histogram of `stats` (a TensorStats), if any."""
        put(self.query_one("#stats", Static), content)
        spark = self.query_one("#histogram", Sparkline)
        rng = self.query_one("#hist-range", Static)
        if stats is not None and stats.histogram and any(stats.histogram):
            spark.data = list(stats.histogram)
            lo, hi = stats.hist_range
            put(rng, Text(f"histogram {units.number(lo)} … {units.number(hi)}"))
            show_if(spark, True)
            show_if(rng, True)
        else:
            show_if(spark, False)
            show_if(rng, False)

    def _reading(self, fetching: int = 0, fraction: float | None = None) -> None:
        """'values: reading…' while a worker reads, keeping the height of the last values (blank
        below it): the next ones, usually as tall, then need no layout. A remote tensor says
        how much it fetches, and how far it got."""
        stats = self.query_one("#stats", Static)
        line = "values: reading…"
        if fetching:
            line = f"values: fetching {units.size(fetching)} from the server…"
        if fraction is not None:
            line += f" {fraction:.0%}"
        put(stats, Text(line + "\n" * max(0, stats.size.height - 1)))
        spark = self.query_one("#histogram", Sparkline)
        if spark.display:
            spark.data = []
            put(self.query_one("#hist-range", Static), Text(""))

    def compute_values(self) -> None:
        """Start computing the selected tensor's values (v)."""
        entry = self.entry
        if entry is None or entry.node.tensor is None or self.ckpt is None:
            return
        info = entry.node.tensor
        fetching = fetched_bytes(self.ckpt, info)
        # A worker's first read imports numpy (~0.1 s), and any network read may stall: both
        # stay off the UI thread.
        if info.nbytes <= INLINE_STATS_BYTES and "numpy" in sys.modules and not fetching:
            try:
                stats = tensor_stats(self.ckpt, info)
            except CkptError as e:
                self._show_values(entry.path, None, e.message)
            except Exception as e:  # noqa: BLE001 - as in a worker, a bug must not end the app
                self._show_values(entry.path, None, f"could not be read ({e!r})")
            else:
                self._show_values(entry.path, stats, None)
            return
        self._reading(fetching)
        self._values(self.ckpt, info, entry.path, fetching)

    @work(thread=True, exclusive=True, group="values", exit_on_error=False)
    def _values(self, ckpt: Checkpoint, info: TensorInfo, path: KeyPath, fetching: int) -> None:
        """Stats off the UI thread; moving on cancels it (between blocks of a remote read)."""
        worker = get_current_worker()
        shown = [0.0]

        def progress(fraction: float) -> None:  # at most ten repaints a second
            now = time.monotonic()
            if now - shown[0] >= 0.1 and not worker.is_cancelled:
                shown[0] = now
                self.app.call_from_thread(self._progress, path, fetching, fraction)

        try:
            stats = tensor_stats(
                ckpt, info, cancelled=lambda: worker.is_cancelled, progress=progress
            )
        except Cancelled:
            return
        except CkptError as e:
            self.app.call_from_thread(self._show_values, path, None, e.message)
            return
        self.app.call_from_thread(self._show_values, path, stats, None)

    def _progress(self, path: KeyPath, fetching: int, fraction: float) -> None:
        if self.entry is not None and self.entry.path == path:
            self._reading(fetching, fraction)

    def _show_values(self, path: KeyPath, stats: Any, error: str | None) -> None:
        if self.entry is None or self.entry.path != path:
            return  # the cursor moved on
        if error is not None:
            self._show_stats(Text(f"values: {error}"))
            return
        t = grid_table()
        if stats.min is not None:
            # one precision (`units.number`) for every number of the card and the histogram
            t.add_row("min / max", f"{_num(stats.min)} / {_num(stats.max)}")
        if stats.mean is not None:
            t.add_row("mean / std", f"{_num(stats.mean)} / {_num(stats.std)}")
        bad = [
            f"{n} {what}"
            for n, what in ((stats.nan, "NaN"), (stats.posinf, "+Inf"), (stats.neginf, "-Inf"))
            if n
        ]
        t.add_row("non-finite", ", ".join(bad) if bad else "none")
        if bad:  # the tree marks the row: seen once, the tensor stays flagged while browsing
            inf = stats.posinf or stats.neginf
            badge = " ".join(w for w, n in (("NaN", stats.nan), ("Inf", inf)) if n)
            self.post_message(self.NonFinite(path, badge))
        t.add_row("zeros", f"{stats.zeros:,} of {stats.count:,}")
        head = ", ".join(_num(v) for v in stats.head)
        t.add_row("first", head + (" …" if stats.count > len(stats.head) else ""))
        if stats.note:
            t.add_row("note", stats.note)
        self._show_stats(Laid(Group(Text("values", style="bold"), t)), stats)


def _num(v: object) -> str:
    """A value of the card: a float with the app's precision (`units.number`), an integer
    (an int tensor's min, a count) whole."""
    return units.number(v) if isinstance(v, float) else str(v)
