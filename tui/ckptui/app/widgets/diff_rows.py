"""Provides the compare screen's row model: `merge` turns a core `Diff` into a tree of `Row`s.

The rows are the compared paths (after the prefix normalisation), with dotted state-dict keys
split into their modules (`layer1` > `0` > `conv1` > `weight`) so that each module row can say
how many entries below it differ, and chains of single-child modules folded into one row
(`model.decoder`). A leaf is one tensor (or, comparing whole trees, one plain value such as
`epoch`) and has a `Kind`; a container counts its leaves by kind. Value results arriving later
(`Row.set_values`) update the leaf and its ancestors. `describe` and `number` give a row's text;
DiffTree and ComparePanel show it. Kept apart from the widget: the screen, the panel and the
tree all read the rows, and none of this needs Textual.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

from ckptui.analysis.diff.compare import Diff
from ckptui.core.tree import Key, KeyPath, TensorInfo
from ckptui.core.units import number as units_number
from ckptui.core.units import shape as show_shape
from ckptui.core.units import size


class Kind(str, enum.Enum):
    """How one entry differs between A and B."""

    EQUAL = "equal"
    ONLY_A = "only_a"
    ONLY_B = "only_b"
    SHAPE = "shape"
    DTYPE = "dtype"
    VALUES = "values"
    UNREAD = "unread"
    """Same shape, but the values could not be compared (say why)."""
    OTHER = "other"
    """A plain value (not a tensor) that differs."""
    PENDING = "pending"
    """Same shape and dtype, values not compared yet: the metadata alone cannot say equal."""


MARK = {
    Kind.EQUAL: "=",
    Kind.ONLY_A: "-",
    Kind.ONLY_B: "+",
    Kind.SHAPE: "≠",
    Kind.DTYPE: "~",
    Kind.VALUES: "Δ",
    Kind.UNREAD: "?",
    Kind.OTHER: "*",
    Kind.PENDING: "?",
}
"""The symbol in front of a row: kinds stay distinct without colour (NO_COLOR)."""

NAME = {
    Kind.EQUAL: "equal",
    Kind.ONLY_A: "only in A",
    Kind.ONLY_B: "only in B",
    Kind.SHAPE: "shape differs",
    Kind.DTYPE: "dtype differs",
    Kind.VALUES: "values differ",
    Kind.UNREAD: "values not compared",
    Kind.OTHER: "value differs",
    Kind.PENDING: "not compared",
}


class Tally(dict[Kind, int]):
    """Leaves by kind: a dict whose missing kinds count 0 (a Counter costs 6 us to make, and a
    100,000-key comparison makes one per row)."""

    def __missing__(self, key: Kind) -> int:
        return 0


@dataclass(eq=False, repr=False)
class Row:
    """One row of the merged tree: a leaf (a tensor or plain value) or a container."""

    key: str
    """The text shown for the row (a key, a module name, or folded names `model.decoder`)."""
    parent: Row | None = None
    children: dict[tuple[str, bool], Row] = field(default_factory=dict)
    """By (key, is a leaf): a leaf and a module may share a name."""
    path: KeyPath | None = None
    """For leaves: the compared path (after prefix normalisation)."""
    kind: Kind = Kind.EQUAL
    a: TensorInfo | str | None = None
    """A's tensor, A's plain value as text, or None when A has no such entry."""
    b: TensorInfo | str | None = None
    max_abs: float | None = None
    """max |a - b| once the values were compared."""
    max_rel: float | None = None
    """max |a - b| / max |a| with it (`diff.values.relative`: max |b| where A is all zeros)."""
    why: str | None = None
    """Why the values could not be compared."""
    tied_a: KeyPath | None = None
    """When A's tensor is the same bytes as an earlier entry of A (tied weights, as
    `save_pretrained` writes `lm_head.weight` beside `wte.weight`): that entry's path. Its bytes
    are counted there, once."""
    tied_b: KeyPath | None = None
    counts: Tally = field(default_factory=lambda: Tally())
    """For containers: leaves below by kind."""
    bytes_a: int = 0
    """Tensor bytes below (or of) the row in A."""
    bytes_b: int = 0
    in_a: int = 0
    """Leaves below (or this leaf) that A has."""
    in_b: int = 0
    by_path: dict[KeyPath, Row] | None = field(default=None, repr=False)
    """On the root, once `find` was called: every leaf by its compared path."""

    def __repr__(self) -> str:
        # Short on purpose: the default would print the whole tree through `parent` (workers
        # repr their arguments, as model.Node's repr explains).
        return f"Row({self.key!r}, {self.kind.value}, {len(self.children)} children)"

    @property
    def leaf(self) -> bool:
        """True for a tensor or plain value."""
        return self.path is not None

    @property
    def changed(self) -> int:
        """Leaves below that differ (for a leaf: 1 if it differs)."""
        if self.leaf:
            return int(self.kind not in (Kind.EQUAL, Kind.PENDING))
        return sum(n for k, n in self.counts.items() if k not in (Kind.EQUAL, Kind.PENDING))

    @property
    def leaves(self) -> int:
        """Leaves below (for a leaf: 1)."""
        return 1 if self.leaf else sum(self.counts.values())

    @property
    def comparable(self) -> bool:
        """A tensor on both sides with the same shape: its values can be compared."""
        a, b = self.a, self.b
        return isinstance(a, TensorInfo) and isinstance(b, TensorInfo) and a.shape == b.shape

    def ancestors(self) -> list[Row]:
        """From the root down to this row's parent."""
        out = []
        r = self.parent
        while r is not None:
            out.append(r)
            r = r.parent
        return out[::-1]

    def set_values(
        self, max_abs: float | None, why: str | None, max_rel: float | None = None
    ) -> bool:
        """Record a value result; returns True when the row's kind changed."""
        self.max_abs, self.why, self.max_rel = max_abs, why, max_rel
        old = self.kind
        new = old  # a dtype mismatch stays one; its max |a-b| is shown with it
        if old in (Kind.EQUAL, Kind.VALUES, Kind.UNREAD, Kind.PENDING):
            new = Kind.UNREAD if why is not None else Kind.VALUES if max_abs else Kind.EQUAL
        if new is old:
            return False
        self.kind = new
        for r in self.ancestors():
            r.counts[old] -= 1
            r.counts[new] += 1
        return True


def _segments(key: Key) -> list[str]:
    text = str(key)
    parts = text.split(".") if isinstance(key, str) else [text]
    return parts if all(parts) else [text]


def _kind(a: TensorInfo | str | None, b: TensorInfo | str | None) -> Kind:
    if b is None:
        return Kind.ONLY_A
    if a is None:
        return Kind.ONLY_B
    if isinstance(a, TensorInfo) and isinstance(b, TensorInfo):
        if a.shape != b.shape:
            return Kind.SHAPE
        return Kind.DTYPE if a.dtype != b.dtype else Kind.PENDING
    return Kind.EQUAL if a == b else Kind.OTHER


def merge(d: Diff, name_a: str = "A", name_b: str = "B") -> Row:
    """The merged tree of a comparison: A's entries in A's order, then those only in B."""
    root = Row(f"{name_a} ⇄ {name_b}")
    entries: dict[KeyPath, None] = dict.fromkeys(
        [*d.tensors_a, *d.plain_a, *d.tensors_b, *d.plain_b]
    )
    for path in entries:
        a = d.tensors_a.get(path) or d.plain_a.get(path)
        b = d.tensors_b.get(path) or d.plain_b.get(path)
        segs = [s for k in path for s in _segments(k)] or ["(root)"]
        here = root
        for s in segs[:-1]:
            nxt = here.children.get((s, False))
            if nxt is None:
                nxt = here.children[(s, False)] = Row(s, here)
            here = nxt
        leaf = Row(segs[-1], here, path=path, kind=_kind(a, b), a=a, b=b)
        here.children.setdefault((segs[-1], True), leaf)
    _tie(root, d)
    _fold(root)
    _count(root)
    for p, m in d.value_diff:
        row = find(root, p)
        if row is not None:
            row.set_values(m, None, d.value_rel.get(p))
    for p, why in d.not_compared:
        row = find(root, p)
        if row is not None:
            row.set_values(None, why)
    return root


def _view(t: TensorInfo) -> tuple | None:
    if t.storage_key is None:
        return None
    return (t.storage_key, t.storage_offset, t.shape, t.stride, t.dtype)


def _tie(root: Row, d: Diff) -> None:
    """Point each leaf whose tensor repeats an earlier entry's view (same storage, offset, shape,
    strides) at that entry, on each side."""
    for side, tensors in (("a", d.tensors_a), ("b", d.tensors_b)):
        first: dict[tuple, KeyPath] = {}
        for path, t in tensors.items():
            view = _view(t)
            if view is None:
                continue
            seen = first.setdefault(view, path)
            if seen != path:
                row = find(root, path)
                if row is not None:
                    setattr(row, f"tied_{side}", seen)


def _fold(root: Row) -> None:
    """Fold chains of single-child containers into one row (`model.decoder`), and a container
    holding a single leaf into that leaf (`layers.0.weight`). Children are folded first."""
    order: list[Row] = []
    stack = [root]
    while stack:
        r = stack.pop()
        if not r.leaf:
            order.append(r)
            stack.extend(r.children.values())
    for row in reversed(order):
        while row is not root and len(row.children) == 1:
            (only,) = row.children.values()
            if only.leaf:
                break
            row.key = f"{row.key}.{only.key}"
            row.children = only.children
            for c in row.children.values():
                c.parent = row
        folded: dict[tuple[str, bool], Row] = {}
        for k, c in row.children.items():
            if not c.leaf and len(c.children) == 1:
                (g,) = c.children.values()
                if g.leaf:
                    g.key, g.parent = f"{c.key}.{g.key}", row
                    folded.setdefault((g.key, True), g)
                    continue
            folded.setdefault(k, c)
        row.children = folded


def _count(root: Row) -> None:
    """Fill every container's counts and bytes from its leaves (children before parents)."""
    order: list[Row] = []
    stack = [root]
    while stack:
        r = stack.pop()
        order.append(r)
        stack.extend(r.children.values())
    for r in reversed(order):
        if r.leaf:
            # a tied entry's bytes are the earlier entry's: counted there, once
            r.bytes_a = r.a.nbytes if isinstance(r.a, TensorInfo) and r.tied_a is None else 0
            r.bytes_b = r.b.nbytes if isinstance(r.b, TensorInfo) and r.tied_b is None else 0
            r.in_a, r.in_b = int(r.a is not None), int(r.b is not None)
            continue
        for c in r.children.values():
            if c.leaf:
                r.counts[c.kind] += 1
            else:
                for k, n in c.counts.items():
                    r.counts[k] += n
            r.bytes_a += c.bytes_a
            r.bytes_b += c.bytes_b
            r.in_a += c.in_a
            r.in_b += c.in_b


def leaves(root: Row) -> list[Row]:
    """Every leaf below `root`, in display order."""
    out: list[Row] = []
    stack = [root]
    while stack:
        r = stack.pop()
        if r.leaf:
            out.append(r)
        else:
            stack.extend(reversed(r.children.values()))
    return out


def find(root: Row, path: KeyPath) -> Row | None:
    """The leaf for a compared path, or None."""
    if root.by_path is None:
        root.by_path = {r.path: r for r in leaves(root) if r.path is not None}
    return root.by_path.get(path)


def number(x: float) -> str:
    """A max |a-b| as short text (`units.number`: the one precision)."""
    return units_number(x)


def difference(row: Row) -> str:
    """`max |a-b| 0.125 (rel 0.002083)`: a compared row's difference, absolute and relative."""
    if row.max_abs is None:
        return ""
    rel = f" (rel {units_number(row.max_rel)})" if row.max_rel is not None and row.max_abs else ""
    return f"max |a-b| {number(row.max_abs)}{rel}"


def _tensor(t: TensorInfo) -> str:
    return f"{show_shape(t.shape)} {t.dtype}"


def describe(row: Row) -> str:
    """The dim text after a row's key."""
    if not row.leaf:
        n, total = row.changed, row.leaves
        entries = f"{total:,} {'entry' if total == 1 else 'entries'}"
        if n and row.counts[Kind.ONLY_A] == total:
            return f"only in A · {entries} · {size(row.bytes_a)}"
        if n and row.counts[Kind.ONLY_B] == total:
            return f"only in B · {entries} · {size(row.bytes_b)}"
        pending = row.counts[Kind.PENDING]
        known = f"{n:,} of {total:,} differ" if n else f"{total - pending:,} equal"
        if not pending:
            return known
        if pending == total:
            return f"{total:,} not compared"
        return f"{known} · {pending:,} not compared"
    a, b, kind = row.a, row.b, row.kind
    if kind in (Kind.ONLY_A, Kind.ONLY_B):
        x = a if kind is Kind.ONLY_A else b
        what = _tensor(x) if isinstance(x, TensorInfo) else str(x)
        tied = row.tied_a if kind is Kind.ONLY_A else row.tied_b
        if tied is not None:
            what += f" · tied to {'.'.join(str(k) for k in tied)}"
        return f"{NAME[kind]} · {what}"
    if isinstance(a, TensorInfo) and isinstance(b, TensorInfo):
        if kind is Kind.SHAPE:
            text = f"{show_shape(a.shape)} → {show_shape(b.shape)}"
            return text + (f" · {a.dtype} → {b.dtype}" if a.dtype != b.dtype else f" {a.dtype}")
        delta = f"{difference(row)} · " if row.max_abs else ""
        if kind is Kind.DTYPE:
            return f"{delta}{a.dtype} → {b.dtype} · {show_shape(a.shape)}"
        if kind is Kind.UNREAD:
            return f"{_tensor(a)} · values not compared"
        if kind is Kind.PENDING:
            return f"{_tensor(a)} · not compared (v)"
        same = " · identical" if row.max_abs == 0 else ""
        return f"{delta}{_tensor(a)}{same}"
    if kind is Kind.OTHER:
        return f"{a} → {b}"
    return str(a)


def file_name(path: str) -> str:
    """The last part of a path, for the root row."""
    return Path(path).name or path
