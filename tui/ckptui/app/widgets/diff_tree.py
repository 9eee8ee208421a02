"""Provides DiffTree: two checkpoints' merged tree, each row marked with how A and B differ.

`merge(diff)` turns a core `Diff` into a tree of `Row`s: the compared paths (after the prefix
normalisation), with dotted state-dict keys split into their modules (`layer1` > `0` > `conv1` >
`weight`) so that each module row can say how many entries below it differ, and chains of
single-child modules folded into one row (`model.decoder`). A leaf is one tensor (or, comparing
whole trees, one plain value such as `epoch`) and has a `Kind`; a container counts its leaves
by kind. Value results arriving later (`Row.set_values`) update the leaf and its ancestors.

DiffTree reuses CkptTree's keys and navigation (j/k/h/l/g/G/e/E) by subclassing it, and adds
rows lazily on expand like it, in groups of `GROUP` for very wide containers. `only_changes`
hides equal rows; `query` keeps only the leaves whose path matches.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field
from pathlib import Path as FilePath

from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.widgets.tree import TreeNode

from ...diff import Diff
from ...facts import path_text
from ...model import Key, Path, TensorInfo
from ...units import shape as show_shape
from ...units import size
from .ckpt_tree import GROUP, CkptTree

AUTO_OPEN_ROWS = 400
"""Rows a filter may open at once so that what it kept is in view."""
FIRST_OPEN_ROWS = 60
"""Rows opened when the tree is first shown: a small comparison is seen whole at once."""


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


MARK = {
    Kind.EQUAL: "=",
    Kind.ONLY_A: "-",
    Kind.ONLY_B: "+",
    Kind.SHAPE: "≠",
    Kind.DTYPE: "~",
    Kind.VALUES: "Δ",
    Kind.UNREAD: "?",
    Kind.OTHER: "*",
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
    path: Path | None = None
    """For leaves: the compared path (after prefix normalisation)."""
    kind: Kind = Kind.EQUAL
    a: TensorInfo | str | None = None
    """A's tensor, A's plain value as text, or None when A has no such entry."""
    b: TensorInfo | str | None = None
    max_abs: float | None = None
    """max |a - b| once the values were compared."""
    why: str | None = None
    """Why the values could not be compared."""
    counts: Tally = field(default_factory=lambda: Tally())
    """For containers: leaves below by kind."""
    bytes_a: int = 0
    """Tensor bytes below (or of) the row in A."""
    bytes_b: int = 0
    in_a: int = 0
    """Leaves below (or this leaf) that A has."""
    in_b: int = 0
    by_path: dict[Path, Row] | None = field(default=None, repr=False)
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
            return int(self.kind is not Kind.EQUAL)
        return sum(n for k, n in self.counts.items() if k is not Kind.EQUAL)

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

    def set_values(self, max_abs: float | None, why: str | None) -> bool:
        """Record a value result; returns True when the row's kind changed."""
        self.max_abs, self.why = max_abs, why
        old = self.kind
        new = old  # a dtype mismatch stays one; its max |a-b| is shown with it
        if old in (Kind.EQUAL, Kind.VALUES, Kind.UNREAD):
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
        return Kind.DTYPE if a.dtype != b.dtype else Kind.EQUAL
    return Kind.EQUAL if a == b else Kind.OTHER


def merge(d: Diff, name_a: str = "A", name_b: str = "B") -> Row:
    """The merged tree of a comparison: A's entries in A's order, then those only in B."""
    root = Row(f"{name_a} ⇄ {name_b}")
    entries: dict[Path, None] = dict.fromkeys([*d.tensors_a, *d.plain_a, *d.tensors_b, *d.plain_b])
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
    _fold(root)
    _count(root)
    for p, m in d.value_diff:
        row = find(root, p)
        if row is not None:
            row.set_values(m, None)
    for p, why in d.not_compared:
        row = find(root, p)
        if row is not None:
            row.set_values(None, why)
    return root


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
            r.bytes_a = r.a.nbytes if isinstance(r.a, TensorInfo) else 0
            r.bytes_b = r.b.nbytes if isinstance(r.b, TensorInfo) else 0
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


def find(root: Row, path: Path) -> Row | None:
    """The leaf for a compared path, or None."""
    if root.by_path is None:
        root.by_path = {r.path: r for r in leaves(root) if r.path is not None}
    return root.by_path.get(path)


def number(x: float) -> str:
    """A max |a-b| as short text."""
    if math.isnan(x):
        return "nan"
    return "0" if x == 0 else f"{x:.4g}"


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
        return f"{n:,} of {total:,} differ" if n else f"{total:,} equal"
    a, b, kind = row.a, row.b, row.kind
    if kind in (Kind.ONLY_A, Kind.ONLY_B):
        x = a if kind is Kind.ONLY_A else b
        what = _tensor(x) if isinstance(x, TensorInfo) else str(x)
        return f"{NAME[kind]} · {what}"
    if isinstance(a, TensorInfo) and isinstance(b, TensorInfo):
        if kind is Kind.SHAPE:
            text = f"{show_shape(a.shape)} → {show_shape(b.shape)}"
            return text + (f" · {a.dtype} → {b.dtype}" if a.dtype != b.dtype else f" {a.dtype}")
        delta = f"max |a-b| {number(row.max_abs)} · " if row.max_abs else ""
        if kind is Kind.DTYPE:
            return f"{delta}{a.dtype} → {b.dtype} · {show_shape(a.shape)}"
        if kind is Kind.UNREAD:
            return f"{_tensor(a)} · values not compared"
        same = " · identical" if row.max_abs == 0 else ""
        return f"{delta}{_tensor(a)}{same}"
    if kind is Kind.OTHER:
        return f"{a} → {b}"
    return str(a)


@dataclass
class DiffEntry:
    """What a tree row stands for: a merged row, or a group of a wide row's children."""

    row: Row
    group: tuple[int, int] | None = None
    """For a group row: the range [start, end) of the row's shown children."""
    loaded: bool = False


class DiffTree(CkptTree):
    """The merged tree; CkptTree's keys, its own rows."""

    BINDINGS = [Binding("space", "toggle_node", "Toggle", show=False)]

    COMPONENT_CLASSES = CkptTree.COMPONENT_CLASSES | {
        f"diff-tree--{k.value.replace('_', '-')}" for k in Kind
    }

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.merged: Row | None = None
        self.only_changes = False
        self.query: re.Pattern[str] | None = None
        """Leaves whose dotted path matches stay; None keeps all."""
        self._visible: set[int] | None = None
        self._rows: dict[int, TreeNode[DiffEntry]] = {}  # type: ignore[type-var]
        """Loaded tree rows by id(Row), to relabel them as results arrive."""

    # -- building ---------------------------------------------------------------------------
    def show_merged(self, root: Row) -> None:
        """Show a merged tree, root expanded, cursor on the root."""
        self.merged = root
        self._rebuild(root)

    @property
    def filtered_view(self) -> bool:
        """True when some rows are hidden."""
        return self.only_changes or self.query is not None

    def refilter(self) -> None:
        """Apply `only_changes` and `query` again, keeping the cursor's row when still shown."""
        if self.merged is None:
            return
        here = self.cursor_node.data.row if self.cursor_node and self.cursor_node.data else None
        self._rebuild(here)

    def _rebuild(self, keep: Row | None) -> None:
        root = self.merged
        assert root is not None
        self._visible = self._compute_visible(root)
        self.clear()
        self._rows = {id(root): self.root}
        self.root.data = DiffEntry(root)  # type: ignore[assignment]
        self.root.set_label(self._label_of(root))
        self._load(self.root)
        self.root.expand()
        self._open_shown(AUTO_OPEN_ROWS if self.filtered_view else FIRST_OPEN_ROWS)
        target = keep if keep is not None and self.shown(keep) else None
        if target is None or not self.select_row(target):
            self.move_cursor(self.root)

    def _compute_visible(self, root: Row) -> set[int] | None:
        if not self.filtered_view:
            return None
        keep: set[int] = {id(root)}
        for leaf in leaves(root):
            if self.only_changes and leaf.kind is Kind.EQUAL:
                continue
            if self.query is not None and not self.query.search(path_text(leaf.path or ())):
                continue
            keep.add(id(leaf))
            keep.update(id(r) for r in leaf.ancestors())
        return keep

    def shown(self, row: Row) -> bool:
        """True when the filters let `row` be shown."""
        return self._visible is None or id(row) in self._visible

    def _open_shown(self, budget: int) -> None:
        """Open rows breadth first while their children fit in `budget` new rows."""
        queue = list(self.root.children)
        while queue and budget > 0:
            node = queue.pop(0)
            if not node.allow_expand or node.data is None:
                continue
            entry = node.data
            lo, hi = entry.group or (0, len(self._shown_children(entry.row)))
            if min(hi - lo, GROUP) > budget:
                continue
            self._load(node)
            node.expand()
            budget -= len(node.children)
            queue.extend(node.children)

    def _shown_children(self, row: Row) -> list[Row]:
        return [c for c in row.children.values() if self.shown(c)]

    def _load(self, tree_node: TreeNode) -> None:  # type: ignore[override]
        """Create a row's children (once)."""
        entry = tree_node.data
        if entry is None or entry.loaded:
            return
        entry.loaded = True
        kids = self._shown_children(entry.row)
        start, end = entry.group or (0, len(kids))
        if end - start > GROUP:
            style = self._fg("ckpt-tree--group")
            for lo in range(start, end, GROUP):
                hi = min(lo + GROUP, end)
                label = Text(f"[{lo:,} … {hi - 1:,}]  {kids[lo].key} … {kids[hi - 1].key}")
                label.stylize(style)
                tree_node.add(label, DiffEntry(entry.row, (lo, hi)))
            return
        for child in kids[start:end]:
            label = self._label_of(child)
            if child.leaf:
                node = tree_node.add_leaf(label, DiffEntry(child, loaded=True))
            else:
                node = tree_node.add(label, DiffEntry(child))
            self._rows[id(child)] = node

    # -- labels ------------------------------------------------------------------------------
    def _style(self, kind: Kind) -> Style:
        return self._fg(f"diff-tree--{kind.value.replace('_', '-')}")

    def _label_of(self, row: Row) -> Text:
        if row.leaf:
            kind = row.kind
        elif row.changed and row.counts[Kind.ONLY_A] == row.leaves:
            kind = Kind.ONLY_A
        elif row.changed and row.counts[Kind.ONLY_B] == row.leaves:
            kind = Kind.ONLY_B
        else:
            kind = Kind.VALUES if row.changed else Kind.EQUAL
        if row.leaf or kind in (Kind.ONLY_A, Kind.ONLY_B):
            mark = MARK[kind]
        else:
            mark = "•" if row.changed else MARK[Kind.EQUAL]
        key_style = self._style(kind) if kind is not Kind.EQUAL else Style()
        if not row.leaf and kind is Kind.VALUES:
            key_style = self._fg("diff-tree--other")  # a container with changes below
            mark_style = key_style
        else:
            mark_style = self._style(kind)
        return Text.assemble(
            (mark, mark_style),
            " ",
            (row.key, key_style),
            "  ",
            (describe(row), self._fg("ckpt-tree--summary")),
        )

    def relabel(self, rows: list[Row]) -> None:
        """Redraw these rows and their ancestors, where loaded."""
        done: set[int] = set()
        for row in rows:
            for r in [*row.ancestors(), row]:
                if id(r) in done:
                    continue
                done.add(id(r))
                node = self._rows.get(id(r))
                if node is not None:
                    node.set_label(self._label_of(r))

    def notify_style_update(self) -> None:
        super().notify_style_update()
        if self.merged is not None and self._rows:
            for rid, node in self._rows.items():
                if node.data is not None and id(node.data.row) == rid:
                    node.set_label(self._label_of(node.data.row))

    # -- navigation --------------------------------------------------------------------------
    def select_row(self, row: Row) -> bool:
        """Open the way to `row` and put the cursor on it."""
        node = self.root
        for target in [*row.ancestors()[1:], row]:
            self._load(node)
            node.expand()
            nxt = None
            for child in node.children:
                e = child.data
                if e is None:
                    continue
                if e.group is not None:
                    lo, hi = e.group
                    if target in self._shown_children(e.row)[lo:hi]:
                        self._load(child)
                        child.expand()
                        nxt = next((g for g in child.children if g.data.row is target), None)
                        break
                elif e.row is target:
                    nxt = child
                    break
            if nxt is None:
                return False
            node = nxt
        self._move_later(node)
        return True

    def current_row(self) -> Row | None:
        """The cursor's merged row (a group row stands for its parent)."""
        node = self.cursor_node
        return node.data.row if node is not None and node.data is not None else None

    def action_toggle_mark(self) -> None:
        """Marks belong to the browser's export: nothing to mark here."""

    def clear_marks(self) -> None:
        """Nothing is ever marked here."""


def file_name(path: str) -> str:
    """The last part of a path, for the root row."""
    return FilePath(path).name or path
