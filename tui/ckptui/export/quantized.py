"""Provides `gather`: what an export of quantized weights must write besides plain tensors.

A torch.ao quantized model's `state_dict()` is not a flat name -> tensor mapping: a quantized
Linear saves `_packed_params` as a `(weight, bias)` tuple and its weight dtype as a `torch.qint8`
value, quantized tensors carry their scheme (per-tensor scale and zero point, or per-channel
tensors of them), and `load_state_dict` needs the `_metadata` versions to read it. From a
whole-module pickle the same entries are rebuilt from where the modules keep them
(`analysis.quantized.module_entries`). `make_plan` turns what is gathered here into its items;
the `.pth` writer writes each as torch.save would, with only what `torch.load(weights_only=True)`
allows (`_rebuild_qtensor`, the qscheme globals, dtypes, an OrderedDict's `_metadata`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from ckptui.analysis.quantized import QScheme, module_entries, qscheme_of, state_dict_versions
from ckptui.analysis.roles import is_module
from ckptui.core.tree import Checkpoint, KeyPath, Node, NodeKind, TensorInfo

Kept = list[tuple[str, KeyPath, TensorInfo]]
"""(output name before prefix stripping, tree path, tensor), as `plan.kept_tensors` gives them."""

_LSTM_REASON = (
    "a {cls} object (a dynamic quantized LSTM's packed weights): torch.load(weights_only=True) "
    "refuses torch.ScriptObject, even in torch's own state dict of such a model"
)
_PACKED_REASON = (
    "a {cls} object (weights packed by torch's C++, which state_dict() unpacks): ckptui does "
    "not unpack it; torch.save(model.state_dict()) gives a file that exports"
)


def _refusal(cls: str) -> str:
    return (_LSTM_REASON if ".rnn." in cls else _PACKED_REASON).format(cls=cls)


@dataclass
class Gathered:
    """The quantized side of an export's kept entries."""

    kept: Kept
    """The kept tensors: the plain ones, then the whole-module entries rebuilt here; tensors
    inside a C++ object (which cannot be exported) are left out and listed in `skipped`."""
    skipped: list[tuple[KeyPath, str]] = field(default_factory=list)
    schemes: dict[KeyPath, QScheme] = field(default_factory=dict)
    """Path of each kept quantized tensor -> its scheme."""
    unknown: dict[KeyPath, str] = field(default_factory=dict)
    """Quantized tensors whose quantizer is not a plain one -> why they are not exported."""
    slots: dict[KeyPath, int] = field(default_factory=dict)
    """Path of each tensor that is an element of a tuple entry -> its index."""
    tuples: dict[str, int] = field(default_factory=dict)
    """Tuple entry name -> length."""
    values: list[tuple[str, str | None]] = field(default_factory=list)
    """(name, torch dtype name or None) of the entries that are not tensors."""
    synthetic: list[tuple[str, str, bytes]] = field(default_factory=list)
    """(name, dtype, bytes) of the 0-d tensors made from numbers."""
    versions: dict[str, int] = field(default_factory=dict)
    module_kept: Kept = field(default_factory=list)
    """The tensors rebuilt from whole-module entries, appended to `kept` at the end."""

    @property
    def any(self) -> bool:
        """The export holds quantized entries, so the extra structure must be written."""
        return bool(self.schemes or self.unknown or self.tuples or self.synthetic)


def gather(ckpt: Checkpoint, keep: list[KeyPath], kept: Kept) -> Gathered:
    """Find the quantized entries under `keep` (see the module docstring)."""
    out = Gathered([])
    inside: list[tuple[KeyPath, str]] = []
    modules: list[KeyPath] = []
    """Kept whole modules holding quantized ones: their entries are rebuilt here."""
    # A state dict's tuples, dtypes and C++ objects matter only beside quantized tensors (a
    # `_packed_params` pair always holds one); a plain one is not walked again.
    quantized = any(t.layout == "quantized" for _, _, t in kept)
    for base in keep:
        node = ckpt.find(base)
        if node is None or node.kind is NodeKind.TENSOR:
            continue
        prefix = _name(base[-1:]) + "." if len(keep) > 1 and base else ""
        if is_module(node):
            if _from_module(ckpt, node, base, prefix, out):
                modules.append(base)
        elif quantized:
            _from_state_dict(node, base, prefix, out, inside)
    if not quantized and not modules:  # a plain export: one pass over the kept tensors
        return Gathered(kept)
    for name, path, t in kept:
        if any(path[: len(p)] == p for p, _ in inside):
            continue
        if not t.state_dict_key and any(path[: len(b)] == b for b in modules):
            continue  # a module's tensor that state_dict() does not save under this path
        out.kept.append((name, path, t))
    out.kept += out.module_kept
    for _, path, t in out.kept:
        if t.layout != "quantized":
            continue
        node = ckpt.find(path)
        scheme = qscheme_of(node) if node is not None else None
        if scheme is None:
            out.unknown[path] = (
                "a quantized tensor whose quantizer is not per-tensor or per-channel"
            )
        else:
            out.schemes[path] = scheme
    if not (out.any or out.skipped or modules):  # nothing quantized: the plain export
        return Gathered(kept)
    return out


def _from_state_dict(
    node: Node, base: KeyPath, prefix: str, out: Gathered, inside: list[tuple[KeyPath, str]]
) -> None:
    """A `state_dict()` as saved: its `_packed_params` tuples, dtype values and C++ objects."""
    for c in node.children:
        path = (*base, c.key)
        name = f"{prefix}{c.key}"
        if c.kind is NodeKind.SEQUENCE and str(c.key).endswith("_packed_params"):
            if c.children and all(_pair_item(x) for x in c.children):
                out.tuples[name] = len(c.children)
                for i, x in enumerate(c.children):
                    if x.kind is NodeKind.TENSOR:
                        out.slots[(*path, i)] = i
        elif c.kind is NodeKind.VALUE and c.type == "torch.dtype" and c.text:
            out.values.append((name, c.text.removeprefix("torch.")))
        elif c.kind is NodeKind.VALUE and c.type == "NoneType":
            out.values.append((name, None))  # a quantized conv without bias saves `bias: None`
        elif c.kind is NodeKind.OBJECT and c.type.startswith("torch.classes."):
            inside.append((path, c.type))
            out.skipped.append((path, _refusal(c.type)))
    out.versions.update(
        {_join(prefix.removesuffix("."), k): v for k, v in state_dict_versions(node).items()}
    )


def _from_module(ckpt: Checkpoint, node: Node, base: KeyPath, prefix: str, out: Gathered) -> bool:
    """A whole-module pickle: the entries its quantized modules' `state_dict()` would add.
    Returns whether it holds quantized modules."""
    entries, versions = module_entries(node)
    if not entries and not versions:
        return False
    kept = out.module_kept
    for e in entries:
        name = f"{prefix}{e.name}"
        path = (*base, *e.path)
        target = ckpt.find(path) if e.kind in ("tensor", "pair") else None
        if e.kind == "tensor" and target is not None and target.tensor is not None:
            kept.append((name, path, target.tensor))
        elif e.kind == "pair" and target is not None:
            if not target.children or not all(_pair_item(x) for x in target.children):
                out.skipped.append((path, "packed Linear params that are not (weight, bias)"))
                continue
            out.tuples[name] = len(target.children)
            for i, x in enumerate(target.children):
                if x.tensor is not None:
                    kept.append((f"{name}.{i}", (*path, i), x.tensor))
                    out.slots[(*path, i)] = i
        elif e.kind == "dtype":
            out.values.append((name, e.value))
        elif e.kind == "none":
            out.values.append((name, None))
        elif e.kind in ("float", "int"):
            try:  # torch.tensor(number): float32 or int64, as torch's default dtypes are
                raw = struct.pack("<f" if e.kind == "float" else "<q", e.value)
            except (OverflowError, struct.error):
                out.skipped.append((path, f"{e.value!r} does not fit a {e.kind} tensor"))
                continue
            out.synthetic.append((name, "float32" if e.kind == "float" else "int64", raw))
        elif e.kind == "refuse":
            out.skipped.append((path, _refusal(e.value)))
    out.versions.update({_join(prefix.removesuffix("."), k): v for k, v in versions.items()})
    return True


def _pair_item(node: Node) -> bool:
    return node.kind is NodeKind.TENSOR or (node.kind is NodeKind.VALUE and node.value is None)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix and key else prefix or key


def _name(rel: KeyPath) -> str:
    return ".".join(str(k) for k in rel)


def written_differences(plan: Any, out: Checkpoint) -> str | None:
    """What the reopened output `out` of `plan` (an `export.plan.Plan`) holds other than planned
    beyond the tensors' bytes, which the verifier compares: each quantized tensor's scheme and
    per-tensor scale and zero point, each jagged tensor's ragged dimension, the dtype and None
    entries, and the `_metadata` versions. None when all agree."""
    root = out.root
    for it in plan.items:
        q = it.qscheme
        if q is None:
            continue
        node = root.child(it.name) if it.slot is None else None
        if it.slot is not None:
            entry = root.child(it.name.rpartition(".")[0])
            node = entry.child(it.slot) if entry is not None else None
        if node is None or qscheme_of(node) != q:
            return f"{it.name} was not written with its quantization ({q.text()})"
    for it in plan.items:
        if it.jagged is None:
            continue
        node = root.child(it.name)
        ragged = node.child("ragged_dim") if node is not None else None
        if node is None or node.tensor is None or node.tensor.layout != "jagged":
            return f"{it.name} was not written as a jagged tensor"
        if ragged is None or ragged.value != it.jagged:
            return f"{it.name} was not written with its ragged dimension {it.jagged}"
    for name, value in plan.values:
        node = root.child(name)
        want = f"torch.{value}" if value is not None else None
        got = node.text if node is not None and value is not None else None
        if node is None or got != want or (value is None and node.value is not None):
            return f"{name} was not written as planned"
    if plan.versions and state_dict_versions(root) != plan.versions:
        return "the state dict's _metadata versions were not written as planned"
    return None
