"""Provides ComparePanel: A's and B's facts side by side for the compare screen's selected row.

A leaf shows both sides' tensor facts (or plain values) and where its value comparison stands; a
container shows its entry and byte counts and its leaves by kind. The screen sets `a`, `b` and
`diff` once both files are open, and `busy` while `v` compares the row's values.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import ProgressBar, Static

from ckptui.analysis.diff.compare import Diff
from ckptui.analysis.params import count
from ckptui.app.widgets.diff_rows import MARK, NAME, Kind, Row, file_name, number
from ckptui.core import units
from ckptui.core.keypath import path_expr, path_text
from ckptui.core.tree import Checkpoint, TensorInfo


def _cell(value: object) -> Text:
    """A cell of text from a file (a key path, a value, a device, a shard name) as `Text`, its
    control characters escaped: rich reads a `str` cell as markup, so a key `[red]` styled the
    row and `[link=...]` made it a link (issue 21)."""
    return Text(units.printable(value))


def _grid(*headers: str) -> Table:
    t = Table(box=None, padding=(0, 1), show_header=bool(headers), pad_edge=False)
    t.add_column(style="bold", no_wrap=True)
    for h in headers:
        t.add_column(h, overflow="fold", header_style="bold")
    return t


class ComparePanel(VerticalScroll):
    """A's and B's facts side by side for the selected row, and its value comparison."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.row: Row | None = None
        self.a: Checkpoint | None = None
        self.b: Checkpoint | None = None
        self.diff: Diff | None = None
        self.busy: Row | None = None
        """The row whose values `v` is comparing."""
        self._elements: dict[tuple[int, int], tuple[int, int]] = {}
        """`_elements` of container rows, by (id(diff), id(row)): a 100,000-leaf root is
        walked once, not on every cursor move onto it."""

    def compose(self) -> ComposeResult:
        yield Static(id="cmp-facts")
        yield Static(id="cmp-values")
        yield ProgressBar(id="cmp-one-progress", show_eta=False)

    def on_mount(self) -> None:
        self.query_one("#cmp-one-progress").display = False

    def show(self, row: Row | None) -> None:
        """Describe `row`."""
        self.row = row
        facts = self.query_one("#cmp-facts", Static)
        values = self.query_one("#cmp-values", Static)
        bar = self.query_one("#cmp-one-progress", ProgressBar)
        bar.display = row is not None and row is self.busy
        if row is None or self.diff is None:
            facts.update("")
            values.update("")
            return
        facts.update(self._leaf(row) if row.leaf else self._container(row))
        values.update(self._values(row))

    def progress(self, done: int, total: int) -> None:
        """Move the `v` progress bar."""
        bar = self.query_one("#cmp-one-progress", ProgressBar)
        bar.update(total=max(total, 1), progress=done)

    def _title(self, row: Row) -> Text:
        if row.parent is None:
            return Text("both files", style="bold")
        if row.leaf:
            return Text(units.printable(path_text(row.path or ())), style="bold")
        names = [r.key for r in [*row.ancestors()[1:], row]]
        return Text(units.printable(".".join(names)), style="bold")

    def _leaf(self, row: Row) -> Group:
        assert self.diff is not None and self.a is not None and self.b is not None
        d = self.diff
        t = _grid("A", "B")
        path = row.path or ()
        origin = (d.origin_a.get(path), d.origin_b.get(path))
        where = [_cell(path_expr(o) or "<root>") if o is not None else "-" for o in origin]
        if row.a is None or row.b is None or origin[0] != origin[1]:
            t.add_row("in file", *where)
        a, b = row.a, row.b
        if isinstance(a, TensorInfo) or isinstance(b, TensorInfo):
            sides = [(a, self.a), (b, self.b)]

            def each(fn: Any) -> list[Text | str]:
                return [_cell(fn(x, c)) if isinstance(x, TensorInfo) else "-" for x, c in sides]

            t.add_row("shape", *each(lambda x, c: units.shape(x.shape)))
            t.add_row("dtype", *each(lambda x, c: x.dtype))
            t.add_row("bytes", *each(lambda x, c: units.size(x.nbytes)))
            t.add_row("device", *each(lambda x, c: x.device))
            t.add_row("file", *each(_file_of))
            if row.tied_a is not None or row.tied_b is not None:
                t.add_row(
                    "tied to",
                    *[
                        _cell(path_text(p)) if p is not None else "-"
                        for p in (row.tied_a, row.tied_b)
                    ],
                )
        else:
            t.add_row("value", *[_cell(x) if x is not None else "-" for x in (a, b)])
        status = Text(f"{MARK[row.kind]} {NAME[row.kind]}", style="bold")
        return Group(self._title(row), status, t)

    def _container(self, row: Row) -> Group:
        t = _grid("A", "B")
        t.add_row("entries", f"{row.in_a:,}", f"{row.in_b:,}")
        t.add_row("tensor bytes", units.size(row.bytes_a), units.size(row.bytes_b))
        key = (id(self.diff), id(row))
        if key not in self._elements:
            self._elements[key] = _elements(row)
        t.add_row("parameters", *(count(n) for n in self._elements[key]))
        kinds = _grid()
        for kind in Kind:
            n = row.counts[kind]
            if n:
                kinds.add_row(f"{MARK[kind]} {n:,}", NAME[kind])
        pending = row.counts[Kind.PENDING]
        if row.changed:
            entries = units.plural(row.leaves, "entry", "entries")
            verdict = f"{row.changed:,} of {entries} {'differs' if row.changed == 1 else 'differ'}"
        elif pending:  # never "equal" for values nobody read
            verdict = f"no difference yet: {pending:,} of {row.leaves:,} not compared (v, a)"
        else:
            verdict = (
                "the entry is equal" if row.leaves == 1 else f"all {row.leaves:,} entries equal"
            )
        return Group(self._title(row), Text(verdict, style="bold"), t, Text(""), kinds)

    def _values(self, row: Row) -> Text:
        if not row.leaf:
            return Text("")
        if not row.comparable:
            if isinstance(row.a, TensorInfo) and isinstance(row.b, TensorInfo):
                return Text("values: shapes differ, nothing to compare", style="italic")
            return Text("")
        assert isinstance(row.a, TensorInfo) and isinstance(row.b, TensorInfo)
        cast = " (both cast to float64)" if row.a.dtype != row.b.dtype else ""
        if row is self.busy:
            return Text("comparing values… (esc cancels)")
        if row.why is not None:
            return Text(units.printable(f"values not compared: {row.why}"))
        if row.max_abs is not None:
            if row.max_abs == 0:
                return Text(f"values identical: max |a-b| = 0{cast}")
            # max |a-b| / max |a| (max |b| where A is all zeros: `diff.values.relative`)
            rel = "" if row.max_rel is None else f" · relative {number(row.max_rel)}"
            return Text.assemble(("max |a-b| ", "bold"), number(row.max_abs), rel, cast)
        n = units.size(row.a.nbytes + row.b.nbytes)
        return Text(f"values: press v to compare ({n} to read) · a compares all")


def _file_of(t: TensorInfo, ckpt: Checkpoint) -> str:
    st = ckpt.storages.get(t.storage_key) if t.storage_key else None
    if st is not None and st.file:
        return st.file
    return file_name(ckpt.path)


def _elements(row: Row) -> tuple[int, int]:
    """Tensor elements below `row` in A and in B, a tied entry counted once (at the entry it
    is tied to), as `model.parameters()` counts them."""
    a = b = 0
    stack = [row]
    while stack:
        r = stack.pop()
        if not r.leaf:
            stack.extend(r.children.values())
            continue
        if isinstance(r.a, TensorInfo) and r.tied_a is None:
            a += r.a.numel
        if isinstance(r.b, TensorInfo) and r.tied_b is None:
            b += r.b.numel
    return a, b
