"""Provides the per-node facts the browser shows, computed from the model (no Textual here).

Which tensors share a storage, how many bytes lie below a node and in its largest children (the
one home of that count: `bytes_below`, `SubtreeSizes`), where
findings point, key paths as Python expressions, and searching key paths by substring or regex.
The browser calls these; keeping them here lets them be tested without a UI.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from ckptui.core.keypath import path_text
from ckptui.core.tree import (
    Checkpoint,
    Finding,
    KeyPath,
    Node,
    NodeKind,
    TensorInfo,
    walk,
)
from ckptui.core.units import shape, short_type, size


def _view(t: TensorInfo) -> tuple | None:
    """What makes two tensor nodes the same bytes: tied weights are one view saved twice."""
    if t.storage_key is None:
        return None
    return (t.storage_key, t.storage_offset, t.shape, t.stride, t.dtype)


def _own(n: Node) -> int:
    if n.kind is not NodeKind.TENSOR:  # first: most nodes of a training checkpoint are not
        return 0
    t = n.value
    if t is None or t.layout == "meta":
        return 0
    if t.storage_key is None and n.children:
        return 0  # a sparse/nested/wrapper tensor: its parts below hold the bytes, counted there
    return t.nbytes


def bytes_below(node: Node) -> int:
    """Bytes of the tensors below a node: each view's own size, refs not counted again, and a
    view saved under two names (tied weights) counted once."""
    return _totals(node, None)[0]


def tensor_totals(ckpt: Checkpoint, node: Node) -> tuple[int, int, int]:
    """(`bytes_below(node)`, tensors, missing) in one walk of the subtree.

    `tensors` is how many (path, tensor) pairs `ckpt.tensors()` yields at or below `node`
    (a REF counts when its target is a tensor node: the walk yields exactly those, refs only
    pointing back; a tensor `node` is one pair, not counted with its parts), `missing` how many
    values of a deleted shard lie below. The resume card wants all three of the weights: one
    walk of a 100,000-tensor state dict instead of two (issue 16)."""
    if node.kind is NodeKind.TENSOR:
        return _totals(node, None)[0], 1, 0
    return _totals(node, ckpt.find)


_SHARED = object()
"""`_totals`' mark for a storage key that two tensors view (its views are then in a set)."""


def _totals(node: Node, find: Callable[[KeyPath], Node | None] | None) -> tuple[int, int, int]:
    """Bytes below `node` (see `bytes_below`) and, when `find` is given, the tensor and missing
    counts of `tensor_totals` (whose walk leaves out `node` itself)."""
    total = count = gone = 0
    # By storage key first: a view tuple (key, offset, shape, stride, dtype, as `_view`) is
    # made and hashed only for a storage that two tensors view, not for each of 100,000.
    first: dict[str, object] = {}
    views: set[tuple] = set()
    tensor, ref, value = NodeKind.TENSOR, NodeKind.REF, NodeKind.VALUE
    prod = math.prod
    stack = [node]
    if node.kind is not tensor and len(node.children) >= _BULK:
        bulk = _leaf_totals(node.children)
        if bulk is not None:  # the leaves are counted; the walk below takes the other children
            total, count, first, stack = bulk
    while stack:
        n = stack.pop()
        kind = n.kind
        if kind is tensor:  # `_own` inlined: this runs per node of a 100,000-tensor tree
            count += 1
            t = n.value
            if (
                t is not None
                and t.layout != "meta"
                and (t.storage_key is not None or not n.children)
            ):
                item = t.itemsize
                own = prod(t.shape) * item if item != 1 else t.nbytes  # 1: maybe sub-byte
                if own:
                    key = t.storage_key
                    if key is None:
                        total += own
                    else:
                        seen = first.get(key)
                        if seen is None:
                            first[key] = t
                            total += own
                        else:
                            if seen is not _SHARED:
                                views.add(_view(seen))  # type: ignore[arg-type]
                                first[key] = _SHARED
                            view = _view(t)
                            if view not in views:
                                total += own
                                views.add(view)
        elif find is not None and n is not node:
            if kind is ref and n.value:
                target = find(n.value)
                count += target is not None and target.kind is tensor
            elif kind is value and n.type == "missing":
                gone += 1
        if n.children:
            stack.extend(n.children)
    # the walk's own root is not one of the pairs below it (a tensor root is `tensor_totals`')
    return total, count - (node.kind is tensor), gone


_BULK = 256
"""Children from which `_totals` counts a mapping's childless tensors in bulk (`_leaf_totals`)."""


def _leaf_totals(children: tuple[Node, ...]) -> tuple[int, int, dict[str, object], list] | None:
    """`_totals`' bytes and count of the childless tensors among `children`, with its `first`
    table of their storage keys and the other children, still to walk; None when the bulk rule
    does not hold (a meta tensor, a storage two of them view, one without a storage), which
    the walk then decides. A flat state dict of 100,000 tensors is counted in one loop here,
    a third of the walk's time (issue 16, the resume card of `inspect --json`); one loop, not
    five comprehensions over the children (9 of 28 ms on a 90,000-tensor folder)."""
    tensor = NodeKind.TENSOR
    prod = math.prod
    keys: set[str] = set()  # each storage key once (zero-byte tensors too: sharing one is
    add = keys.add  # left to the walk)
    total = 0
    rest: list[Node] = []
    for c in children:
        t = c.value
        if c.kind is not tensor or c.children or t is None:
            rest.append(c)
            continue
        key = t.storage_key
        if key is None or key in keys or t.layout == "meta":
            return None
        add(key)
        item = t.itemsize
        total += prod(t.shape) * item if item != 1 else t.nbytes  # 1: maybe sub-byte
    first: dict[str, object] = {}
    # The walk needs `first` only if it meets a tensor below the other children (a shard
    # folder's `__metadata__` beside its tensors holds none)
    stack = list(rest)
    while stack:
        n = stack.pop()
        if n.kind is tensor:
            # only a tensor of some bytes claims its storage key, as in the walk
            first = {
                t.storage_key: t
                for c in children
                if c.kind is tensor
                and not c.children
                and (t := c.value) is not None
                and (prod(t.shape) * t.itemsize if t.itemsize != 1 else t.nbytes)
            }
            break
        stack.extend(n.children)
    return total, len(keys), first, rest


def bytes_below_all(root: Node) -> dict[int, int]:
    """`bytes_below` of every node under `root` (by `id`), in one pass.

    Sums bottom-up, then takes back, from every node above two or more names of one tied view,
    the copies counted twice (ties are rare: only they are tracked)."""
    return _below_all(root, _own)


def _own_elements(n: Node) -> int:
    return n.tensor.numel if _own(n) else 0  # type: ignore[union-attr]


def elements_below_all(root: Node) -> dict[int, int]:
    """Tensor elements below every node under `root` (by `id`), each view once as in
    `bytes_below_all`: what the browser sorts by when it sorts by parameters."""
    return _below_all(root, _own_elements)


def _below_all(root: Node, own_of: Callable[[Node], int]) -> dict[int, int]:
    # One walk for the order, one sum per node; the tie correction's view tuples and parent
    # links are made only for storages two nodes view (a view tuple, a list and a parent entry
    # per tensor were 0.29 s of the browser's open on a 100,000-key state dict, issue 16).
    order: list[Node] = []
    stack = [root]
    while stack:
        n = stack.pop()
        order.append(n)
        if n.children:
            stack.extend(n.children)
    below: dict[int, int] = {}
    sized: list[Node] = []  # nodes with bytes of a storage, children before their parents
    first: dict[str, Node] = {}  # storage key -> the first of them viewing it
    shared: set[str] = set()  # storage keys two of them view
    for n in reversed(order):  # children before their parents
        own = own_of(n)
        if own:
            key = n.value.storage_key
            if key is not None:
                sized.append(n)
                if first.setdefault(key, n) is not n:
                    shared.add(key)
        kids = n.children
        below[id(n)] = own + sum([below[id(c)] for c in kids]) if kids else own
    if not shared:
        return below
    names: dict[tuple, list[Node]] = {}
    for n in sized:
        if n.value.storage_key in shared:
            names.setdefault(_view(n.value), []).append(n)  # type: ignore[arg-type]
    parent: dict[int, Node] = {}
    if any(len(nodes) > 1 for nodes in names.values()):
        for n in order:
            for c in n.children:
                parent[id(c)] = n
    for nodes in names.values():
        if len(nodes) < 2:
            continue
        count: dict[int, int] = {}
        for n in nodes:
            a = parent.get(id(n))
            while a is not None:
                count[id(a)] = count.get(id(a), 0) + 1
                a = parent.get(id(a))
        size = own_of(nodes[0])
        for key, m in count.items():
            below[key] -= (m - 1) * size
    return below


class SubtreeSizes:
    """Tensor bytes and elements below every node of one tree, and each node's largest children:
    the one home of "how much lies below this node" for views that ask node by node (the detail
    panel on every highlight, the sort by size or parameters).

    Each total is summed for the whole tree in one pass on first use (`bytes_below_all`,
    `elements_below_all`): walking the subtree per call (`bytes_below`) took ~0.3 s on a
    50,000-tensor state dict each time the cursor rested on it. Get the checkpoint's own with
    `subtree_sizes`, so every view shares one pass."""

    def __init__(self, root: Node) -> None:
        self.root = root
        self._bytes: dict[int, int] | None = None
        self._elements: dict[int, int] | None = None
        self._largest: dict[int, list[tuple[Node, int]]] = {}

    def summed(self, what: str) -> bool:
        """Whether the totals `what` (`"bytes"` or `"elements"`) are summed already, so that asking
        for them costs no pass (the browser sorts in a worker until they are)."""
        return (self._bytes if what == "bytes" else self._elements) is not None

    def bytes(self, node: Node) -> int:
        """Bytes of the tensors at or below `node`, each tied view once (`bytes_below`)."""
        if self._bytes is None:
            self._bytes = bytes_below_all(self.root)
        got = self._bytes.get(id(node))
        return bytes_below(node) if got is None else got  # None: not a node of this tree

    def elements(self, node: Node) -> int:
        """Tensor elements at or below `node`, counted as `bytes` counts bytes."""
        if self._elements is None:
            self._elements = elements_below_all(self.root)
        got = self._elements.get(id(node))
        return elements_below_all(node)[id(node)] if got is None else got

    def largest(self, node: Node, n: int = 5) -> list[tuple[Node, int]]:
        """The `n` children holding the most tensor bytes, largest first (ties keep order)."""
        key = id(node)
        if key not in self._largest:
            sized = [(c, self.bytes(c)) for c in node.children if c.kind is not NodeKind.REF]
            sized = [(c, b) for c, b in sized if b]
            sized.sort(key=lambda cb: -cb[1])
            self._largest[key] = sized[:n]
        return self._largest[key][:n]


def subtree_sizes(ckpt: Checkpoint) -> SubtreeSizes:
    """The `SubtreeSizes` of `ckpt`'s tree, made once per checkpoint and shared by every view."""
    sizes: SubtreeSizes = ckpt.memo("subtree_sizes", lambda: SubtreeSizes(ckpt.root))
    return sizes


@dataclass
class Index:
    """Lookups over a whole checkpoint, built once after opening."""

    tensors_by_storage: dict[str, list[KeyPath]] = field(default_factory=dict)
    findings_by_path: dict[KeyPath, list[Finding]] = field(default_factory=dict)
    tensor_count: int = 0

    @classmethod
    def build(cls, ckpt: Checkpoint) -> Index:
        """Index tensors by storage and findings by path."""
        idx = cls()
        for path, t in ckpt.tensors():
            idx.tensor_count += 1
            if t.storage_key is not None:
                idx.tensors_by_storage.setdefault(t.storage_key, []).append(path)
        for f in ckpt.findings:
            if f.path is not None:
                idx.findings_by_path.setdefault(f.path, []).append(f)
        return idx

    def sharing(self, path: KeyPath, tensor: TensorInfo) -> list[KeyPath]:
        """Other paths whose tensors view the same storage."""
        if tensor.storage_key is None:
            return []
        return [p for p in self.tensors_by_storage.get(tensor.storage_key, []) if p != path]


def compile_query(query: str) -> re.Pattern[str]:
    """A case-insensitive pattern: a regex when it parses and looks like one, else a substring.

    Raises:
        ValueError: for a regex that does not compile (the message says why).
    """
    if any(c in query for c in "^$*+?[](){}|\\"):
        try:
            return re.compile(query, re.IGNORECASE)
        except re.error as e:
            raise ValueError(f"not a valid regex: {e}") from None
    return re.compile(re.escape(query), re.IGNORECASE)


def search(root: Node, query: str, limit: int = 10_000) -> list[KeyPath]:
    """Paths whose dotted text matches `query`, in display order, at most `limit`."""
    pattern = compile_query(query)
    out: list[KeyPath] = []
    for path, _ in walk(root):
        if pattern.search(path_text(path)):
            out.append(path)
            if len(out) >= limit:
                break
    return out


def summary(node: Node) -> str:
    """The dim one-line summary after a key: `OrderedDict · 320 keys · 812.0 MiB`."""
    t = node.tensor
    if node.kind is NodeKind.TENSOR and t is not None:
        kind = short_type(t.type)
        parts = [f"{kind} {shape(t.shape)} {t.dtype}"]
        if t.device != "cpu":
            parts.append(t.device)
        if t.layout not in ("strided", "storage"):
            parts.append(t.layout)
        parts.append(size(t.nbytes))
        return " · ".join(parts)
    if node.kind is NodeKind.VALUE:
        if node.text is not None:
            return f"{node.type} {node.text}"
        text = repr(node.value)
        return f"{node.type} {text if len(text) <= 60 else text[:59] + '…'}"
    if node.kind is NodeKind.REF:
        target = ".".join(str(k) for k in node.target or ()) or "<root>"
        if node.text is not None:  # a small value: shown, as at its first path
            return f"{short_type(node.type)} {node.text} · same object as {target}"
        return f"→ same object as {target}"
    count = len(node.children)
    noun = {NodeKind.MAPPING: "key", NodeKind.SEQUENCE: "item", NodeKind.OBJECT: "field"}
    word = noun.get(node.kind, "child")
    word = word if count == 1 else "children" if word == "child" else f"{word}s"
    parts = [short_type(node.type), f"{count:,} {word}"]  # `1 key`, `2 keys`
    nbytes = bytes_below(node)
    if nbytes:
        parts.append(size(nbytes))
    return " · ".join(parts)
