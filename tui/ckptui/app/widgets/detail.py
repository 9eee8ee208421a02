"""Provides DetailPanel: what the selected node is, and for tensors their values on demand.

Facts come from the model and `facts.py`; values (min/max/mean/std, NaN/Inf counts, leading
values, a histogram) come from `values.py` in a thread worker reading the file's mapped bytes, so
moving the cursor never waits for them. Large tensors wait for `v`.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Sparkline, Static
from textual.worker import get_current_worker

from ... import units
from ...errors import CkptError
from ...facts import Index, bytes_below, largest_children, path_expr, path_text
from ...model import Checkpoint, Node, NodeKind, Path, TensorInfo
from .ckpt_tree import Entry

AUTO_STATS_BYTES = 64 << 20
"""Tensors up to this size get their values computed as soon as they are selected."""


def _table() -> Table:
    t = Table.grid(padding=(0, 1))
    t.add_column(style="bold", no_wrap=True)
    t.add_column()
    return t


class DetailPanel(VerticalScroll):
    """The right-hand (or, when narrow, lower) panel."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.ckpt: Checkpoint | None = None
        self.index: Index | None = None
        self.entry: Entry | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="facts")
        yield Static(id="warning")
        yield Static(id="stats")
        yield Sparkline([], id="histogram")
        yield Static(id="hist-range")

    def on_mount(self) -> None:
        for wid in ("#warning", "#histogram", "#hist-range"):
            self.query_one(wid).display = False

    def show(self, entry: Entry | None) -> None:
        """Describe `entry` (a checkpoint node or a group row)."""
        self.entry = entry
        self._clear_values()
        warning = self.query_one("#warning", Static)
        warning.display = False
        if entry is None or self.ckpt is None:
            self.query_one("#facts", Static).update("")
            return
        node = entry.node
        if entry.group is not None:
            lo, hi = entry.group
            self.query_one("#facts", Static).update(
                Text(
                    f"{path_text(entry.path) or '<root>'}: children {lo:,} to {hi - 1:,} "
                    f"of {len(node.children):,}"
                )
            )
            return
        self.query_one("#facts", Static).update(self._facts(node, entry.path))
        message = self._warning(node, entry.path)
        if message:
            warning.update(message)
            warning.display = True
        if node.kind is NodeKind.TENSOR and node.tensor is not None:
            t = node.tensor
            if t.nbytes <= AUTO_STATS_BYTES:
                self.compute_values()
            else:
                self.query_one("#stats", Static).update(
                    Text(f"values: press v to compute ({units.size(t.nbytes)} to read)")
                )

    # -- facts -----------------------------------------------------------------------------
    def _facts(self, node: Node, path: Path) -> Group:
        title = Text(path_expr(path) or "<root>", style="bold")
        t = _table()
        t.add_row("type", node.type)
        if node.kind is NodeKind.TENSOR and node.tensor is not None:
            self._tensor_rows(t, node.tensor, path)
        elif node.kind is NodeKind.REF:
            t.add_row("same object as", path_expr(node.target or ()) or "<root>")
        elif node.kind is NodeKind.VALUE:
            t.add_row("value", node.text if node.text is not None else repr(node.value))
            if node.nbytes:
                t.add_row("inline bytes", units.size(node.nbytes))
            for name, value in node.attrs:
                t.add_row(name, str(value))
        else:
            noun = {NodeKind.MAPPING: "keys", NodeKind.SEQUENCE: "items"}.get(node.kind, "fields")
            t.add_row(noun, f"{len(node.children):,}")
            total = bytes_below(node)
            t.add_row("tensor bytes", units.size(total) if total else "none")
            if node.kind is NodeKind.OBJECT:
                t.add_row(
                    "class",
                    {
                        "safe": "known, harmless",
                        "unknown": "unknown to ckptui (placeholder; never imported)",
                        "danger": "DANGEROUS",
                    }.get(node.safety or "unknown", node.safety or ""),
                )
        for f in self.index.findings_by_path.get(path, []) if self.index else []:
            t.add_row(f.severity.value, f.message)
        parts: list[Any] = [title, t]
        largest = largest_children(node) if node.kind is not NodeKind.TENSOR else []
        if largest:
            # Size first, name last: long keys (transformer.h.0.mlp.c_fc.weight) then wrap
            # instead of squeezing the numbers out of a two-column table.
            total = bytes_below(node)
            big = Table.grid(padding=(0, 1))
            big.add_column(justify="right", no_wrap=True)
            big.add_column(justify="right", no_wrap=True)
            big.add_column(overflow="fold")
            for child, nbytes in largest:
                big.add_row(units.size(nbytes), f"{100 * nbytes / total:.0f} %", str(child.key))
            parts += [Text("largest", style="bold"), big]
        return Group(*parts)

    def _tensor_rows(self, t: Table, info: TensorInfo, path: Path) -> None:
        assert self.ckpt is not None
        t.add_row("shape", units.shape(info.shape))
        t.add_row("dtype", info.dtype)
        device = info.device
        if device not in ("cpu", "meta"):
            device += "  (opens on CPU here: ckptui never needs a GPU)"
        t.add_row("device", device)
        t.add_row("elements", f"{info.numel:,}")
        t.add_row("bytes", units.size(info.nbytes))
        if info.layout != "strided":
            t.add_row("layout", info.layout)
        if info.state_dict_key:
            t.add_row("state_dict key", info.state_dict_key)
        if info.stride:
            contiguity = "contiguous" if info.is_contiguous else "not contiguous"
            t.add_row("stride", f"{units.shape(info.stride)}  {contiguity}")
        st = self.ckpt.storages.get(info.storage_key) if info.storage_key else None
        if st is not None:
            t.add_row(
                "storage",
                f"{st.key}  {units.size(st.nbytes)}  {st.dtype}"
                + (f"  offset {info.storage_offset:,}" if info.storage_offset else ""),
            )
            if st.nbytes > info.nbytes * 2 and st.nbytes > 4096:
                pct = 100 * info.nbytes / st.nbytes
                t.add_row(
                    "view",
                    f"only {pct:.1f} % of its storage: saving it saves all {units.size(st.nbytes)}",
                )
        shared = self.index.sharing(path, info) if self.index else []
        if shared:
            more = f" and {len(shared) - 5} more" if len(shared) > 5 else ""
            t.add_row("shared with", ", ".join(path_text(p) for p in shared[:5]) + more)

    def _warning(self, node: Node, path: Path) -> Text | None:
        if node.safety == "danger":
            return Text(
                f"⚠ torch.load(weights_only=False) would call {node.type} here; ckptui did not."
            )
        t = node.tensor
        if t is not None and t.storage_key and self.ckpt is not None:
            st = self.ckpt.storages.get(t.storage_key)
            if st is not None and st.missing:
                return Text(
                    f"⚠ storage {st.key} is missing from the file: this tensor cannot be loaded."
                )
        return None

    # -- values ----------------------------------------------------------------------------
    def _clear_values(self) -> None:
        self.workers.cancel_group(self, "values")
        self.query_one("#stats", Static).update("")
        self.query_one("#histogram").display = False
        self.query_one("#hist-range").display = False

    def compute_values(self) -> None:
        """Start computing the selected tensor's values (v)."""
        entry = self.entry
        if entry is None or entry.node.tensor is None or self.ckpt is None:
            return
        self.query_one("#stats", Static).update(Text("values: reading…"))
        self._values(self.ckpt, entry.node.tensor, entry.path)

    @work(thread=True, exclusive=True, group="values", exit_on_error=False)
    def _values(self, ckpt: Checkpoint, info: TensorInfo, path: Path) -> None:
        from ...values import Cancelled, tensor_stats

        worker = get_current_worker()
        try:
            stats = tensor_stats(ckpt, info, cancelled=lambda: worker.is_cancelled)
        except Cancelled:
            return
        except CkptError as e:
            self.app.call_from_thread(self._show_values, path, None, e.message)
            return
        self.app.call_from_thread(self._show_values, path, stats, None)

    def _show_values(self, path: Path, stats: Any, error: str | None) -> None:
        if self.entry is None or self.entry.path != path:
            return  # the cursor moved on
        out = self.query_one("#stats", Static)
        if error is not None:
            out.update(Text(f"values: {error}"))
            return
        t = _table()
        if stats.min is not None:
            t.add_row("min / max", f"{stats.min:.6g} / {stats.max:.6g}")
        if stats.mean is not None:
            t.add_row("mean / std", f"{stats.mean:.6g} / {stats.std:.6g}")
        bad = [
            f"{n} {what}"
            for n, what in ((stats.nan, "NaN"), (stats.posinf, "+Inf"), (stats.neginf, "-Inf"))
            if n
        ]
        t.add_row("non-finite", ", ".join(bad) if bad else "none")
        t.add_row("zeros", f"{stats.zeros:,} of {stats.count:,}")
        head = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in stats.head)
        t.add_row("first", head + (" …" if stats.count > len(stats.head) else ""))
        if stats.note:
            t.add_row("note", stats.note)
        out.update(Group(Text("values", style="bold"), t))
        if stats.histogram and any(stats.histogram):
            spark = self.query_one("#histogram", Sparkline)
            spark.data = list(stats.histogram)
            spark.display = True
            lo, hi = stats.hist_range
            rng = self.query_one("#hist-range", Static)
            rng.update(Text(f"histogram {lo:.4g} … {hi:.4g}"))
            rng.display = True
