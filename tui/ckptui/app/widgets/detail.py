"""Provides DetailPanel: what the selected node is, and for tensors their values on demand.

Facts come from the model and `facts.py`; values (min/max/mean/std, NaN/Inf counts, leading
values, a histogram) come from `values.py` in a thread worker reading the file's mapped bytes, so
moving the cursor never waits for them. Large tensors wait for `v`.

An update must stay cheap because it runs while the cursor moves. A part whose height changes
asks for a layout, which reflows the whole screen and repaints the tree's scroll bars (~15 ms
at 100x30); so a part whose height stays the same only repaints, a table is laid out once per
width (`Laid`), and the values keep their place (blank) while the next ones are read. Bytes
below a node are summed once for the whole checkpoint (`index.subtree_sizes`), not walked per
highlight.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.message import Message
from textual.widgets import Sparkline, Static

from ckptui.analysis.index import Index, SubtreeSizes, subtree_sizes
from ckptui.analysis.params import count
from ckptui.analysis.roles import optimizers_of
from ckptui.app.widgets.ckpt_tree import Entry
from ckptui.app.widgets.detail_values import AUTO_STATS_BYTES, ValuesCard
from ckptui.app.widgets.panel_parts import Laid, grid_table, plain, put, show_if
from ckptui.core import units
from ckptui.core.keypath import path_expr, path_text
from ckptui.core.tree import Checkpoint, KeyPath, Node, NodeKind, TensorInfo
from ckptui.report.json.training import param_group_json
from ckptui.report.text.training import (
    optimizer_card,
    parameter_line,
    resume_card,
    weights_only_verdict,
)


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


class DetailPanel(ValuesCard, VerticalScroll):
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
            put(facts, "")
            self._show_warning(None)
            self._show_stats("")
            return
        node = entry.node
        if entry.module is not None:
            put(facts, Laid(self._module_facts(entry.module)))
            self._show_warning(None)
            self._show_stats("")
            return
        if entry.group is not None:
            lo, hi = entry.group
            put(
                facts,
                plain(
                    f"{path_text(entry.path) or '<root>'}: children {lo:,} to {hi - 1:,} "
                    f"of {len(node.children):,}"
                ),
            )
            self._show_warning(None)
            self._show_stats("")
            return
        put(facts, Laid(self._facts(node, entry.path)))
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
            put(warning, message)
        show_if(warning, message is not None)

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
        t = grid_table()
        t.add_row("type", plain(node.type))
        text_file = self._text_file(path)
        if text_file is not None:  # `formats.folder_text`: beside the checkpoint, not in it
            t.add_row("file", f"{text_file} of the folder, not in the checkpoint: never exported")
        if node.kind is NodeKind.TENSOR and node.tensor is not None:
            self._tensor_rows(t, node.tensor, path)
        elif node.kind is NodeKind.REF:
            t.add_row("same object as", plain(path_expr(node.target or ()) or "<root>"))
        elif node.kind is NodeKind.VALUE:
            t.add_row("value", plain(node.text if node.text is not None else repr(node.value)))
            if node.nbytes:
                t.add_row("inline bytes", units.size(node.nbytes))
            for name, value in node.attrs:
                t.add_row(plain(name), plain(value))
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
            t.add_row(f.severity.value, plain(f.message))
        parts: list[Any] = [title, t]
        card = self._optimizer_card(node, path)
        if card is not None:
            parts.append(card)
        if self.params is not None and (not path or path == self.params[0]):
            model = grid_table()
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
                big.add_row(units.size(nbytes), units.percent(nbytes, total), plain(child.key))
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
        t = grid_table()
        if module.title:
            t.add_row("module", plain(module.title))
        if module.node is not None:
            t.add_row("class", plain(f"{module.node.type}  (placeholder; never imported)"))
        _param_rows(t, module.params)
        return Group(title, t)

    def _tensor_rows(self, t: Table, info: TensorInfo, path: KeyPath) -> None:
        assert self.ckpt is not None
        t.add_row("shape", units.shape(info.shape))
        t.add_row("dtype", plain(info.dtype))  # strings from the file: never markup
        device = info.device
        if device not in ("cpu", "meta"):
            device += "  (opens on CPU here: ckptui never needs a GPU)"
        t.add_row("device", plain(device))  # a location `[/x]` raised MarkupError
        t.add_row("elements", f"{info.numel:,}")
        t.add_row("bytes", units.size(info.nbytes))
        if info.layout != "strided":
            t.add_row("layout", plain(info.layout))
        if info.state_dict_key:
            t.add_row("state_dict key", plain(info.state_dict_key))
        if info.stride:
            contiguity = "contiguous" if info.is_contiguous else "not contiguous"
            t.add_row("stride", f"{units.shape(info.stride)}  {contiguity}")
        st = self.ckpt.storages.get(info.storage_key) if info.storage_key else None
        if st is not None:
            key = st.key
            if st.file is not None:  # a checkpoint of many files: name the one holding it
                t.add_row("file", plain(st.file))
                key = key.removeprefix(f"{st.file}:")
            t.add_row(
                "storage",
                plain(
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
            t.add_row("shared with", plain(", ".join(path_text(p) for p in shared[:5]) + more))

    def _warning(self, node: Node, path: KeyPath) -> Text | None:
        if node.safety == "danger":
            return plain(
                f"⚠ torch.load(weights_only=False) would call {node.type} here; ckptui did not."
            )
        t = node.tensor
        if t is not None and t.storage_key and self.ckpt is not None:
            st = self.ckpt.storages.get(t.storage_key)
            if st is not None and st.missing:
                return plain(
                    f"⚠ storage {st.key} is missing from the file: this tensor cannot be loaded."
                )
        return None
