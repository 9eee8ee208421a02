"""Provides what torch.ao's quantized modules put in `state_dict()`, and how a quantized tensor is
quantized.

`torch.save(quantized_model)` keeps a quantized module's weights where `state_dict()` does not
look: a quantized Linear holds them in a C++ `LinearPackedParamsBase` object (pickled as a
`torch.ScriptObject`), a quantized Conv in its `__getstate__` tuple, and both hold `scale` and
`zero_point` as plain numbers that `_save_to_state_dict` turns into tensors. A placeholder of such
a module has no `_parameters` to name, so this module says, class by class (as torch 2.x's
`torch/ao/nn/quantized` writes them), which entries its `state_dict()` holds, and the `_version`
it records in the state dict's `_metadata`, which `load_state_dict` reads to choose a layout (a
quantized Linear without it looks for `weight` and `bias` keys and fails).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ckptui.core.tree import KeyPath, Node, NodeKind

VERSIONS = {
    "modules.linear.LinearPackedParams": 3,
    "modules.linear.Linear": 3,
    "dynamic.modules.linear.Linear": 4,
    "modules.embedding_ops.EmbeddingPackedParams": 1,
    "modules.embedding_ops.Embedding": 1,
    "modules.embedding_ops.EmbeddingBag": 1,
}
"""`_version` of the quantized classes that set one, by name below `torch.ao.nn.quantized.` (the
same classes lived in `torch.nn.quantized.` before torch 1.13)."""

_PACKAGES = ("torch.ao.nn.quantized.", "torch.nn.quantized.")
_CONV_STATE = 15
"""Items of a quantized conv's `__getstate__` tuple: (..., weight, bias, scale, zero_point,
training) at 10 to 14."""


@dataclass(frozen=True, slots=True)
class QEntry:
    """One entry of a quantized module's `state_dict()` that its placeholder does not name."""

    name: str
    """State-dict name below the module tree's root (`fc._packed_params._packed_params`)."""
    kind: str
    """`tensor` (at `path`), `pair` (the tuple at `path`), `dtype`, `float`, `int` (a tensor
    torch makes from a number: `torch.tensor(self.scale)`), `none`, or `refuse` (an entry that
    is a C++ object, at `path`, of class `value`)."""
    path: KeyPath = ()
    """Where the tensor or tuple lies, relative to the node given to `module_entries`."""
    value: Any = None
    """The dtype's name, or the number, for entries made from a value."""


@dataclass(frozen=True, slots=True)
class QScheme:
    """How a quantized tensor maps integers to reals (`_rebuild_qtensor`'s quantizer params)."""

    scheme: str
    """`per_tensor_affine`, `per_channel_affine` or `per_channel_affine_float_qparams`."""
    scale: float | None = None
    """Per tensor: the scale; per channel: None (the `scale` part is a tensor)."""
    zero_point: int | None = None
    axis: int | None = None
    """Per channel: the dimension the scales run along."""

    @property
    def per_channel(self) -> bool:
        """Scales and zero points are tensors of their own (`scale`, `zero_point` parts)."""
        return self.axis is not None

    def text(self) -> str:
        """`per_tensor_affine · scale 0.0026 · zero_point 0` or `per_channel_affine · axis 0`."""
        if self.per_channel:
            return f"{self.scheme} · axis {self.axis}"
        return f"{self.scheme} · scale {self.scale:.4g} · zero_point {self.zero_point}"


def qscheme_of(node: Node) -> QScheme | None:
    """The quantization of a quantized tensor node (its `qscheme`, `scale`, `zero_point` and
    `axis` parts, as `_rebuild_qtensor` recorded them); None when they are not plain."""
    t = node.tensor
    if t is None or t.layout != "quantized":
        return None
    parts = {c.key: c for c in node.children}
    scheme = parts.get("qscheme")
    if scheme is None or not isinstance(scheme.value, str):
        return None
    name = scheme.value
    scale, zp, axis = parts.get("scale"), parts.get("zero_point"), parts.get("axis")
    if name == "per_tensor_affine":
        if scale is None or zp is None or axis is not None:
            return None
        if type(scale.value) is not float or type(zp.value) is not int:
            return None
        return QScheme(name, scale.value, zp.value)
    if name in ("per_channel_affine", "per_channel_affine_float_qparams"):
        ok = all(p is not None and p.kind is NodeKind.TENSOR for p in (scale, zp))
        if not ok or axis is None or type(axis.value) is not int:
            return None
        return QScheme(name, axis=axis.value)
    return None


def quantized_class(type_name: str) -> str | None:
    """`modules.linear.Linear` for `torch.ao.nn.quantized.modules.linear.Linear`; None for a
    class outside torch's quantized modules."""
    for p in _PACKAGES:
        if type_name.startswith(p):
            return type_name[len(p) :]
    return None


def module_entries(node: Node) -> tuple[list[QEntry], dict[str, int]]:
    """The `state_dict()` entries of the quantized modules in a whole-module pickle's tree at
    `node` that its placeholders do not name, in the order torch writes them, and the
    `_metadata` versions of those modules (module prefix -> version).

    Modules are walked as `state_dict()` walks them: each module's own entries, then its
    `_modules` in order.
    """
    entries: list[QEntry] = []
    versions: dict[str, int] = {}
    stack: list[tuple[Node, KeyPath, str]] = [(node, (), "")]
    seen = 0
    while stack:
        mod, path, prefix = stack.pop()
        seen += 1
        if seen > 1_000_000:  # a crafted tree; real models have thousands of modules
            break
        cls = quantized_class(mod.type)
        if cls is not None:
            version = VERSIONS.get(cls)
            if version is not None:
                versions[prefix.removesuffix(".")] = version
            entries.extend(_own_entries(mod, cls, path, prefix))
        subs = mod.child("_modules")
        if subs is None or subs.kind is not NodeKind.MAPPING:
            continue
        stack.extend(
            (c, (*path, "_modules", c.key), f"{prefix}{c.key}.")
            for c in reversed(subs.children)
            if c.kind is NodeKind.OBJECT
        )
    return entries, versions


def _own_entries(mod: Node, cls: str, path: KeyPath, prefix: str) -> list[QEntry]:
    """What `cls._save_to_state_dict` adds beyond the module's `_parameters` and `_buffers`."""
    out: list[QEntry] = []
    leaf = cls.rsplit(".", 1)[-1]
    if leaf == "LinearPackedParams":
        dtype = mod.child("dtype")
        if dtype is not None and dtype.type == "torch.dtype" and dtype.text:
            out.append(QEntry(f"{prefix}dtype", "dtype", value=dtype.text.removeprefix("torch.")))
        packed = mod.child("_packed_params")
        state = packed.child("__state__") if packed is not None else None
        if state is not None and state.kind is NodeKind.SEQUENCE:
            out.append(
                QEntry(f"{prefix}_packed_params", "pair", (*path, "_packed_params", "__state__"))
            )
        return out
    if cls.startswith("modules.conv."):
        state = mod.child("__state__")
        if state is None or state.kind is not NodeKind.SEQUENCE:
            return out
        items = state.children
        if len(items) != _CONV_STATE:
            return out
        b, scale, zp = items[11:14]
        spath = (*path, "__state__")
        out.append(QEntry(f"{prefix}weight", "tensor", (*spath, 10)))
        if b.kind is NodeKind.TENSOR:
            out.append(QEntry(f"{prefix}bias", "tensor", (*spath, 11)))
        else:
            out.append(QEntry(f"{prefix}bias", "none"))
        out.extend(_scale_zero_point(prefix, scale, zp))
        return out
    if leaf == "PackedParameter" or leaf == "EmbeddingPackedParams":
        # C++ objects whose state dict entry is the object itself (a dynamic LSTM's cell
        # params) or a weight torch unpacks in C++: named, so an export can refuse them
        packed = mod.child("param") or mod.child("_packed_weight")
        if packed is not None:
            entry = "param" if leaf == "PackedParameter" else "_packed_weight"
            out.append(QEntry(f"{prefix}{entry}", "refuse", (*path, packed.key), packed.type))
        return out
    if leaf in ("Linear", "QFunctional"):
        out.extend(_scale_zero_point(prefix, mod.child("scale"), mod.child("zero_point")))
    return out


def _scale_zero_point(prefix: str, scale: Node | None, zp: Node | None) -> list[QEntry]:
    """`torch.tensor(self.scale)` (float32) and `torch.tensor(self.zero_point)` (int64)."""
    out = []
    if scale is not None and isinstance(scale.value, float) and scale.kind is NodeKind.VALUE:
        out.append(QEntry(f"{prefix}scale", "float", value=scale.value))
    if zp is not None and type(zp.value) is int and zp.kind is NodeKind.VALUE:
        out.append(QEntry(f"{prefix}zero_point", "int", value=zp.value))
    return out


def state_dict_versions(node: Node) -> dict[str, int]:
    """The `_metadata` versions a `state_dict()` OrderedDict carried (prefix -> version)."""
    got = dict(node.attrs).get("state_dict_versions")
    return dict(got) if isinstance(got, tuple) else {}
