"""Provides DetailPanel: what the selected node is, and for tensors their values on demand.

Facts come from the model and `facts.py`; values (min/max/mean/std, NaN/Inf counts, leading
values, a histogram) come from `values.py` in a thread worker reading the file's mapped bytes, so
moving the cursor never waits for them. Large tensors wait for `v`.

An update must stay cheap because it runs while the cursor moves. A part whose height changes
asks for a layout, which reflows the whole screen and repaints the tree's scroll bars (~15 ms
at 100x30); so a part whose height stays the same only repaints, a table is laid out once per
width (`_Laid`), and the values keep their place (blank) while the next ones are read. Bytes
below a node are summed once for the whole checkpoint (`index.subtree_sizes`), not walked per
highlight.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.segment import Segment
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.message import Message
from textual.visual import visualize
from textual.widgets import Sparkline, Static
from textual.worker import get_current_worker

from ckptui.analysis.index import Index, SubtreeSizes, subtree_sizes
from ckptui.analysis.params import count
from ckptui.analysis.roles import optimizers_of
from ckptui.app.widgets.ckpt_tree import Entry
from ckptui.core import units
from ckptui.core.cancel import Cancelled
from ckptui.core.errors import CkptError
from ckptui.core.keypath import path_expr, path_text
from ckptui.core.tree import Checkpoint, KeyPath, Node, NodeKind, TensorInfo
from ckptui.report.json.training import param_group_json
from ckptui.report.text.training import (
    optimizer_card,
    parameter_line,
    resume_card,
    weights_only_verdict,
)
from ckptui.tensors.values import fetched_bytes, tensor_stats

AUTO_STATS_BYTES = 64 << 20
"""Tensors up to this size get their values computed as soon as they are selected."""
INLINE_STATS_BYTES = 64 << 10
"""Tensors up to this size are read on the UI thread, in the same update as their facts: ~0.3 ms,
less than starting a worker, and the panel is painted once instead of twice."""


def _plain(text: object) -> Text:
    """File text (keys, class names, values, messages quoting them) as a Text: control
    characters shown as escapes (`units.printable`), and never read as markup, which a str
    given to `Table.add_row` would be."""
    return Text(units.printable(text))


def _table() -> Table:
    t = Table.grid(padding=(0, 1))
    t.add_column(style="bold", no_wrap=True)
    t.add_column()
    return t


class _Laid:
    """A renderable laid out once per width. Textual renders a Static's content twice per
    change (once to measure its height, once to paint), and a Rich table is the costly part."""

    def __init__(self, renderable: RenderableType) -> None:
        self.renderable = renderable
        self._key: tuple[Any, ...] | None = None
        self._lines: list[list[Segment]] = []

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        key = (options.max_width, options.justify, options.overflow, options.no_wrap)
        if key != self._key:
            # No height: Textual measures with none and paints with the widget's, and a height
            # would crop or pad the lines to it.
            whole = options.update(height=None)
            self._lines = console.render_lines(self.renderable, whole, pad=False)
            self._key = key
        new_line = Segment.line()
        for line in self._lines:
            yield from line
            yield new_line

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self.renderable)


def _param_rows(t: Table, p: Any) -> None:
    """Rows for a `params.Params`: the count, weights vs buffers, bytes and the dtype mix."""
    # parameters as `sum(p.numel() for p in model.parameters())` counts them: buffers apart
    for name, n in (("parameters", p.weights), ("buffers", p.buffers)):
        if n or name == "parameters":
            exact = f"{n:,}"
            t.add_row(name, exact if count(n) == exact else f"{count(n)}  ({exact})")
    t.add_row("tensors", f"{p.tensors:,}")
    t.add_row("bytes", units.size(p.nbytes))
    if p.dtypes:
        t.add_row("dtypes", p.dtype_mix())


def _put(static: Static, content: RenderableType) -> None:
    """Replace a Static's content, asking for a layout only if its height changes."""
    width, height = static.size
    same = (
        static.display
        and width > 0
        and visualize(static, content).get_height(static.styles, width) == height
    )
    static.update(content, layout=not same)


def _show(widget: Any, on: bool) -> None:
    if widget.display != on:
        widget.display = on


class DetailPanel(VerticalScroll):
    """The right-hand (or, when narrow, lower) panel."""

    class NonFinite(Message):
        """The values of the tensor at `path` hold NaN or Inf (`badge`: `NaN`, `NaN Inf`)."""

        def __init__(self, path: KeyPath, badge: str) -> None:
            super().__init__()
            self.path = path
            self.badge = badge

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.ckpt: Checkpoint | None = None
        self.index: Index | None = None
        self.entry: Entry | None = None
        self.training: Any = None
        """`training.TrainingFacts`, once the screen's worker has found them."""
        self.params: tuple[KeyPath, Any] | None = None
        """(path, `params.Params`) of the model's weights, for the root card and that row."""

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
        if entry is not self.entry and self.scroll_y:
            self.scroll_home(animate=False)  # a new row's card starts at its top
        self.entry = entry
        self.workers.cancel_group(self, "values")
        facts = self.query_one("#facts", Static)
        if entry is None or self.ckpt is None:
            _put(facts, "")
            self._show_warning(None)
            self._show_stats("")
            return
        node = entry.node
        if entry.module is not None:
            _put(facts, _Laid(self._module_facts(entry.module)))
            self._show_warning(None)
            self._show_stats("")
            return
        if entry.group is not None:
            lo, hi = entry.group
            _put(
                facts,
                _plain(
                    f"{path_text(entry.path) or '<root>'}: children {lo:,} to {hi - 1:,} "
                    f"of {len(node.children):,}"
                ),
            )
            self._show_warning(None)
            self._show_stats("")
            return
        _put(facts, _Laid(self._facts(node, entry.path)))
        self._show_warning(self._warning(node, entry.path))
        if node.kind is NodeKind.TENSOR and node.tensor is not None:
            t = node.tensor
            if t.nbytes <= AUTO_STATS_BYTES:
                self.compute_values()
            else:
                self._show_stats(
                    Text(f"values: press v to compute ({units.size(t.nbytes)} to read)")
                )
        else:
            self._show_stats("")

    def _show_warning(self, message: Text | None) -> None:
        warning = self.query_one("#warning", Static)
        if message is not None:
            _put(warning, message)
        _show(warning, message is not None)

    # -- facts -----------------------------------------------------------------------------
    @property
    def _bytes(self) -> SubtreeSizes:
        assert self.ckpt is not None
        return subtree_sizes(self.ckpt)

    def _text_file(self, path: KeyPath) -> str | None:
        """`a text file (1.1 KiB)` when `path` lies in one of the folder's text files (the
        tree's rows after the checkpoint's own, `formats.folder_text`), else None."""
        files = self.ckpt.info.get("text_files") if self.ckpt is not None and path else None
        if not isinstance(files, Node) or files.child(path[0]) is None:
            return None
        assert self.ckpt is not None
        if self.ckpt.root.child(path[0]) is not None:
            return None  # a key of the checkpoint itself
        n = self.ckpt.info.get("other_files", {}).get(path[0])
        return "a text file" + (f" ({units.size(n)})" if n is not None else "")

    def _facts(self, node: Node, path: KeyPath) -> Group:
        title = Text(units.printable(path_expr(path) or "<root>"), style="bold")
        t = _table()
        t.add_row("type", _plain(node.type))
        text_file = self._text_file(path)
        if text_file is not None:  # `formats.folder_text`: beside the checkpoint, not in it
            t.add_row("file", f"{text_file} of the folder, not in the checkpoint: never exported")
        if node.kind is NodeKind.TENSOR and node.tensor is not None:
            self._tensor_rows(t, node.tensor, path)
        elif node.kind is NodeKind.REF:
            t.add_row("same object as", _plain(path_expr(node.target or ()) or "<root>"))
        elif node.kind is NodeKind.VALUE:
            t.add_row("value", _plain(node.text if node.text is not None else repr(node.value)))
            if node.nbytes:
                t.add_row("inline bytes", units.size(node.nbytes))
            for name, value in node.attrs:
                t.add_row(_plain(name), _plain(value))
        else:
            noun = {NodeKind.MAPPING: "keys", NodeKind.SEQUENCE: "items"}.get(node.kind, "fields")
            t.add_row(noun, f"{len(node.children):,}")
            total = self._bytes.bytes(node) if text_file is None else 0
            if text_file is None:
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
        entry = self.training.param_of(path) if self.training is not None and path else None
        if entry is not None:
            t.add_row(*parameter_line(entry))
        for f in self.index.findings_by_path.get(path, []) if self.index else []:
            t.add_row(f.severity.value, _plain(f.message))
        parts: list[Any] = [title, t]
        card = self._optimizer_card(node, path)
        if card is not None:
            parts.append(card)
        if self.params is not None and (not path or path == self.params[0]):
            model = _table()
            _param_rows(model, self.params[1])
            where = path_text(self.params[0])
            parts += [
                Text(""),
                Text(
                    units.printable(
                        "model weights" + (f" · {where}" if where and not path else "")
                    ),
                    style="bold",
                ),
                model,
            ]
        if not path and self.training is not None:
            if self.training.resume is not None:
                parts.append(resume_card(self.training.resume))
            if self.training.weights_only is not None:
                parts.append(weights_only_verdict(self.training.weights_only))
        largest = self._bytes.largest(node) if node.kind is not NodeKind.TENSOR else []
        if largest:
            # Size first, name last: long keys (transformer.h.0.mlp.c_fc.weight) then wrap
            # instead of squeezing the numbers out of a two-column table.
            total = self._bytes.bytes(node)
            big = Table.grid(padding=(0, 1))
            big.add_column(justify="right", no_wrap=True)
            big.add_column(justify="right", no_wrap=True)
            big.add_column(overflow="fold")
            for child, nbytes in largest:
                big.add_row(units.size(nbytes), units.percent(nbytes, total), _plain(child.key))
            parts += [Text(""), Text("largest", style="bold"), big]
        return Group(*parts)

    def _optimizer_card(self, node: Node, path: KeyPath) -> RenderableType | None:
        """The optimizer card, when `path` is an optimizer state dict the roles found."""
        if self.training is None or self.ckpt is None:
            return None
        mapping = next((m for m in self.training.mappings if m.optimizer_path == path), None)
        if mapping is None:
            return None
        named = sum(1 for e in mapping.entries if e.param and e.confidence != "ambiguous")
        state = node.child("state")
        info = next((o for o in optimizers_of(self.ckpt) if o.path == path), None)
        return optimizer_card(
            param_group_json(mapping),
            named,
            self._bytes.bytes(state) if state is not None else 0,
            info.state_keys if info is not None else (),
        )

    def _module_facts(self, module: Any) -> Group:
        """A module row: what it is, its parameters (weights, buffers), bytes and dtypes."""
        title = Text(units.printable(module.prefix), style="bold")
        t = _table()
        if module.title:
            t.add_row("module", _plain(module.title))
        if module.node is not None:
            t.add_row("class", _plain(f"{module.node.type}  (placeholder; never imported)"))
        _param_rows(t, module.params)
        return Group(title, t)

    def _tensor_rows(self, t: Table, info: TensorInfo, path: KeyPath) -> None:
        assert self.ckpt is not None
        t.add_row("shape", units.shape(info.shape))
        t.add_row("dtype", _plain(info.dtype))  # strings from the file: never markup
        device = info.device
        if device not in ("cpu", "meta"):
            device += "  (opens on CPU here: ckptui never needs a GPU)"
        t.add_row("device", _plain(device))  # a location `[/x]` raised MarkupError
        t.add_row("elements", f"{info.numel:,}")
        t.add_row("bytes", units.size(info.nbytes))
        if info.layout != "strided":
            t.add_row("layout", _plain(info.layout))
        if info.state_dict_key:
            t.add_row("state_dict key", _plain(info.state_dict_key))
        if info.stride:
            contiguity = "contiguous" if info.is_contiguous else "not contiguous"
            t.add_row("stride", f"{units.shape(info.stride)}  {contiguity}")
        st = self.ckpt.storages.get(info.storage_key) if info.storage_key else None
        if st is not None:
            key = st.key
            if st.file is not None:  # a checkpoint of many files: name the one holding it
                t.add_row("file", _plain(st.file))
                key = key.removeprefix(f"{st.file}:")
            t.add_row(
                "storage",
                _plain(
                    f"{key}  {units.size(st.nbytes)}  {st.dtype}"
                    + (f"  offset {info.storage_offset:,}" if info.storage_offset else "")
                ),
            )
            if st.nbytes > info.nbytes * 2 and st.nbytes > 4096:
                pct = units.percent(info.nbytes, st.nbytes)
                t.add_row(
                    "view",
                    f"only {pct} of its storage: saving it saves all {units.size(st.nbytes)}",
                )
        shared = self.index.sharing(path, info) if self.index else []
        if shared:
            more = f" and {len(shared) - 5} more" if len(shared) > 5 else ""
            t.add_row("shared with", _plain(", ".join(path_text(p) for p in shared[:5]) + more))

    def _warning(self, node: Node, path: KeyPath) -> Text | None:
        if node.safety == "danger":
            return _plain(
                f"⚠ torch.load(weights_only=False) would call {node.type} here; ckptui did not."
            )
        t = node.tensor
        if t is not None and t.storage_key and self.ckpt is not None:
            st = self.ckpt.storages.get(t.storage_key)
            if st is not None and st.missing:
                return _plain(
                    f"⚠ storage {st.key} is missing from the file: this tensor cannot be loaded."
                )
        return None

    # -- values ----------------------------------------------------------------------------
    def _show_stats(self, content: RenderableType, stats: Any = None) -> None:
        """Values text, and below it the histogram of `stats` (a TensorStats), if any."""
        _put(self.query_one("#stats", Static), content)
        spark = self.query_one("#histogram", Sparkline)
        rng = self.query_one("#hist-range", Static)
        if stats is not None and stats.histogram and any(stats.histogram):
            spark.data = list(stats.histogram)
            lo, hi = stats.hist_range
            _put(rng, Text(f"histogram {units.number(lo)} … {units.number(hi)}"))
            _show(spark, True)
            _show(rng, True)
        else:
            _show(spark, False)
            _show(rng, False)

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
        _put(stats, Text(line + "\n" * max(0, stats.size.height - 1)))
        spark = self.query_one("#histogram", Sparkline)
        if spark.display:
            spark.data = []
            _put(self.query_one("#hist-range", Static), Text(""))

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
        t = _table()
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
        self._show_stats(_Laid(Group(Text("values", style="bold"), t)), stats)


def _num(v: object) -> str:
    """A value of the card: a float with the app's precision (`units.number`), an integer
    (an int tensor's min, a count) whole."""
    return units.number(v) if isinstance(v, float) else str(v)
