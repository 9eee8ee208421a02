"""Provides the module view: a state dict's dotted names, or a whole-module pickle, as modules.

A state dict is flat (`module.layer1.0.conv1.weight`, 100,000 keys for a big model), but a
PyTorch user thinks in modules: `module > layer1 > 0 > conv1 > weight`. `module_rows` groups a
state-dict mapping's names by their dotted segments into `Module` rows, each knowing its
parameter count, bytes and dtype mix, so a 100,000-key dict opens as a few dozen rows. A
placeholder `nn.Module` of a whole-module pickle (`torch.save(model)`) is shown the same way, from
its `_modules`, `_parameters` and `_buffers`, each layer titled from its recorded attributes
(`Conv2d(3, 64, kernel_size=7, stride=2)`, as torch's repr would say it), its nn.Module internals
(hooks, `training`, ...) kept one row away.

Rows are made level by level, when the browser opens them: grouping one level costs one pass
over the names below it, so the toggle stays fast on 100,000 keys. Plain Python over the model:
no Textual, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ckptui.analysis.params import Params, count_params, tally_nodes
from ckptui.analysis.roles import is_module, is_state_dict
from ckptui.core.tree import KeyPath, Node, NodeKind

INTERNALS = "(nn.Module internals)"
"""The name of the row that holds a placeholder module's raw fields."""


@dataclass(eq=False)
class Module:
    """A module row: a group of dotted names, or a placeholder nn.Module."""

    name: str
    """The last segment (`conv1`), or for a placeholder module its attribute name."""
    prefix: str
    """The state-dict prefix of everything below (`layer1.0.conv1`)."""
    path: KeyPath
    """Tree path of the node the row stands on: the mapping holding the names, or the module."""
    params: Params
    node: Node | None = None
    """The placeholder nn.Module, or None for a group of names."""
    title: str = ""
    """What the module is: `Conv2d(3, 64, kernel_size=7, stride=2)`; empty for a group."""
    members: list[tuple[str, Node]] = field(default_factory=list, repr=False)
    """For a group: (the name after the prefix, tensor node) of every entry below."""
    _rows: list[Row] | None = field(default=None, repr=False)

    def rows(self) -> list[Row]:
        """The rows one level below (made once: toggling the view back and forth is free)."""
        if self._rows is None:
            if self.node is not None:
                rows = _module_rows(self.node, self.path, self.prefix)
            else:
                rows = _group(self.members, self.path, self.prefix)
            # The browser's worker warms rows the UI thread may ask for at the same time:
            # whichever finishes first is kept, so a row's children never change under it.
            if self._rows is None:
                self._rows = rows
        return self._rows


def warm(rows: list[Row] | None, levels: int = 1) -> None:
    """Make the rows `levels` below `rows` ahead of time (a worker does it after opening, so
    that opening the first modules of a 100,000-key dict costs nothing on the UI thread)."""
    todo = [r for r in rows or [] if isinstance(r, Module)]
    for _ in range(levels):
        nxt: list[Module] = []
        for r in todo:
            nxt += [c for c in r.rows() if isinstance(c, Module)]
        todo = nxt


@dataclass(eq=False)
class ModuleEntry:
    """A leaf of the module view: one tensor (or value) of the checkpoint, under its name."""

    name: str
    path: KeyPath
    """Its tree path in the checkpoint."""
    node: Node
    internals: bool = False
    """True for the row that shows a placeholder module's raw fields."""


Row = Module | ModuleEntry


def has_modules(node: Node) -> bool:
    """True when the module view changes how `node`'s children show: a state dict with dotted
    names, or a placeholder nn.Module."""
    if is_module(node):
        return True
    if node.kind is not NodeKind.MAPPING or len(node.children) < 2:
        return False
    if not any(isinstance(c.key, str) and "." in c.key for c in node.children[:64]):
        return False
    return is_state_dict(node)


def module_rows(node: Node, path: KeyPath) -> list[Row] | None:
    """The module view's rows directly below `node` (at tree `path`), or None when it has none
    (not a state dict with dotted names, nor a placeholder module)."""
    if is_module(node):
        return _module_rows(node, path, "")
    if not has_modules(node):
        return None
    members = []
    rest: list[Row] = []
    tensor = NodeKind.TENSOR
    for c in node.children:
        if c.kind is tensor and isinstance(c.key, str):
            members.append((c.key, c))
        else:  # plain values, nested mappings, refs: shown as they are, after the modules
            rest.append(ModuleEntry(str(c.key), (*path, c.key), c))
    return _group(members, path, "") + rest


def _group(members: list[tuple[str, Node]], path: KeyPath, prefix: str) -> list[Row]:
    """Rows for `members` grouped by their first remaining segment, in first-appearance order.

    Each level splits off one segment (`partition`), not the whole name: opening the top of a
    100,000-key dict must not pay for its deepest levels."""
    groups: dict[str, list[tuple[str, Node]]] = {}
    leaves: dict[str, Node] = {}
    order: list[tuple[bool, str]] = []
    for name, node in members:
        head, dot, rest = name.partition(".")
        if not dot or not rest:
            if name not in leaves:
                leaves[name] = node
                order.append((True, name))
            continue
        g = groups.get(head)
        if g is None:
            g = groups[head] = []
            order.append((False, head))
        g.append((rest, node))
    rows: list[Row] = []
    for is_leaf, name in order:
        if is_leaf:
            node = leaves[name]
            rows.append(ModuleEntry(name, (*path, node.key), node))
            continue
        g = groups[name]
        sub = f"{prefix}.{name}" if prefix else name
        params = tally_nodes([n for _, n in g])
        rows.append(Module(name, sub, path, params, members=g))
    return rows


def _module_rows(node: Node, path: KeyPath, prefix: str) -> list[Row]:
    """A placeholder module's submodules, then its parameters and buffers, then its internals."""
    rows: list[Row] = []
    fields = {c.key: c for c in node.children}
    subs = fields.get("_modules")
    if subs is not None:
        for c in subs.children:
            child_path = (*path, "_modules", c.key)
            name = str(c.key)
            sub = f"{prefix}.{name}" if prefix else name
            if is_module(c):
                rows.append(Module(name, sub, child_path, count_params(c), c, describe(c)))
            elif c.kind is not NodeKind.VALUE or c.value is not None:  # `downsample = None`
                rows.append(ModuleEntry(name, child_path, c))
    for holder in ("_parameters", "_buffers"):
        tensors = fields.get(holder)
        if tensors is None:
            continue
        for c in tensors.children:
            if c.kind is NodeKind.VALUE and c.value is None:  # `bias=False` leaves a None
                continue
            rows.append(ModuleEntry(str(c.key), (*path, holder, c.key), c))
    rows.append(ModuleEntry(INTERNALS, path, node, internals=True))
    return rows


# -- titles -------------------------------------------------------------------------------------
_SIGNATURES: dict[str, tuple[tuple[str, ...], tuple[tuple[str, object], ...]]] = {
    "Conv": (
        ("in_channels", "out_channels"),
        (("kernel_size", None), ("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1)),
    ),
    "Linear": (("in_features", "out_features"), ()),
    "Bilinear": (("in1_features", "in2_features", "out_features"), ()),
    "BatchNorm": (
        ("num_features",),
        (("eps", 1e-05), ("momentum", 0.1), ("affine", True), ("track_running_stats", True)),
    ),
    "InstanceNorm": (("num_features",), (("eps", 1e-05), ("affine", False))),
    "GroupNorm": (("num_groups", "num_channels"), (("eps", 1e-05), ("affine", True))),
    "LayerNorm": (("normalized_shape",), (("eps", 1e-05), ("elementwise_affine", True))),
    "RMSNorm": (("normalized_shape",), (("eps", None),)),
    "Embedding": (("num_embeddings", "embedding_dim"), (("padding_idx", None),)),
    "MaxPool": (("kernel_size",), (("stride", None), ("padding", 0), ("dilation", 1))),
    "AvgPool": (("kernel_size",), (("stride", None), ("padding", 0))),
    "AdaptiveAvgPool": (("output_size",), ()),
    "AdaptiveMaxPool": (("output_size",), ()),
    "Dropout": ((), (("p", 0.5),)),
    "ReLU": ((), (("inplace", False),)),
    "ReLU6": ((), (("inplace", False),)),
    "SiLU": ((), (("inplace", False),)),
    "GELU": ((), (("approximate", "none"),)),
    "LeakyReLU": ((), (("negative_slope", 0.01), ("inplace", False))),
    "Upsample": ((), (("scale_factor", None), ("mode", "nearest"))),
    "MultiheadAttention": (("embed_dim", "num_heads"), (("dropout", 0.0),)),
}
"""torch.nn reprs: positional attributes, then keyword ones with their defaults (left out)."""


def _signature(cls: str) -> tuple[tuple[str, ...], tuple[tuple[str, object], ...]] | None:
    if cls in _SIGNATURES:
        return _SIGNATURES[cls]
    base = cls.rstrip("123d").removesuffix("Transpose")  # Conv2d, ConvTranspose1d, BatchNorm1d
    return _SIGNATURES.get(base)


def _value(node: Node) -> object:
    """A recorded attribute as Python: plain values, and tuples of them (`(7, 7)`)."""
    if node.kind is NodeKind.VALUE:
        return node.value
    if node.kind is NodeKind.SEQUENCE and all(c.kind is NodeKind.VALUE for c in node.children):
        return tuple(c.value for c in node.children)
    return ...


def _show(v: object) -> str:
    if isinstance(v, tuple) and v and all(x == v[0] for x in v):
        return _show(v[0])  # kernel_size=(7, 7) reads as 7, as the constructor was called
    if isinstance(v, tuple):
        return "(" + ", ".join(_show(x) for x in v) + ")"
    if isinstance(v, float):
        return f"{v:g}"
    return repr(v) if isinstance(v, str) else str(v)


def describe(node: Node) -> str:
    """`Conv2d(3, 64, kernel_size=7, stride=2, bias=False)`: a placeholder module's class with
    the attributes its constructor took, from what the pickle recorded; the class name alone
    for classes whose signature ckptui does not know."""
    cls = node.type.rsplit(".", 1)[-1]
    sig = _signature(cls)
    fields = {c.key: c for c in node.children}
    if sig is None:
        subs = fields.get("_modules")
        if cls in ("Sequential", "ModuleList", "ModuleDict") and subs is not None:
            return f"{cls}({len(subs.children)})"
        return cls
    positional, keywords = sig
    args = []
    for name in positional:
        c = fields.get(name)
        if c is None:
            continue
        v = _value(c)
        if v is not ...:
            args.append(_show(v))
    for name, default in keywords:
        c = fields.get(name)
        if c is None:
            continue
        v = _value(c)
        if v is ... or v == default or (isinstance(v, tuple) and _same(v, default)):
            continue
        args.append(f"{name}={_show(v)}")
    params = fields.get("_parameters")
    if params is not None and cls.startswith(("Conv", "Linear", "Bilinear")):
        bias = params.child("bias")
        if bias is not None and bias.kind is NodeKind.VALUE and bias.value is None:
            args.append("bias=False")
    return f"{cls}({', '.join(args)})"


def _same(v: tuple, default: object) -> bool:
    return bool(v) and all(x == default for x in v)
