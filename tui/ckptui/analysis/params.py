"""Provides parameter counts: how many weights and buffers a subtree holds, and in which dtypes.

A PyTorch user sizes a model by its parameter count (`11.7 M params`), not its bytes, so the
browser shows one wherever it shows a model: the header, the root card, state-dict and module rows,
and the compare panel. Counted from metadata alone (each tensor's shape), with a view saved under
two names (tied weights: `lm_head.weight` and `wte.weight`) counted once, as `index.bytes_below`
counts its bytes once.

Weights and buffers are told apart by where a whole-module pickle keeps them (`_parameters`,
`_buffers`), else by the buffer names PyTorch's own modules register (`running_mean`, ...): a
state dict does not record which is which.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ckptui.core.tree import KeyPath, Node, NodeKind, TensorInfo

BUFFER_NAMES = frozenset(
    {
        "running_mean",
        "running_var",
        "num_batches_tracked",
        "position_ids",
        "token_type_ids",
        "inv_freq",
        "masked_bias",
        "freqs_cis",
        "relative_position_index",
        "anchors",
    }
)
"""Last name segments of the buffers registered by torch.nn and common model code."""


@dataclass(frozen=True, slots=True)
class Params:
    """Elements of the tensors below a node, split into weights and buffers."""

    weights: int = 0
    """Elements of parameters (trainable weights)."""
    buffers: int = 0
    """Elements of buffers (BatchNorm statistics, position ids, ...)."""
    nbytes: int = 0
    """Bytes of those tensors, each view once."""
    tensors: int = 0
    """Distinct tensors counted."""
    dtypes: tuple[tuple[str, int], ...] = ()
    """(dtype, elements), most elements first."""

    @property
    def total(self) -> int:
        """Weights and buffers together."""
        return self.weights + self.buffers

    def text(self) -> str:
        """`11.7 M params` (weights only when there are weights, else buffers)."""
        return f"{count(self.weights or self.total)} params"

    def dtype_mix(self, least: float = 0.0) -> str:
        """`float32` or `float16 98 % · float32 2 %`, leaving out dtypes holding less than
        `least` of the elements (a BatchNorm's int64 counter in a float32 model)."""
        total = sum(n for _, n in self.dtypes) or 1
        shown = [(d, n) for d, n in self.dtypes if n / total >= least] or list(self.dtypes[:1])
        if len(shown) <= 1:
            return shown[0][0] if shown else ""
        return " · ".join(f"{d} {_pct(n, total)}" for d, n in shown[:3])


def _pct(n: int, total: int) -> str:
    p = 100 * n / total
    return f"{p:.0f} %" if p >= 1 else "<1 %"


def count(n: int) -> str:
    """`9,408`, `25.6 k`, `11.7 M`, `1.54 B`: three significant digits from 10,000 on."""
    if n < 10_000:
        return f"{n:,}"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            x = n / scale
            digits = 2 if x < 10 else 1 if x < 100 else 0
            return f"{x:.{digits}f} {unit}"
    return f"{n:,}"  # pragma: no cover - the loop always returns


def is_buffer(name: str, info: TensorInfo) -> bool:
    """By name (the last segment, or the last two: `attn.bias`), for state-dict entries."""
    if info.type.endswith("Parameter"):
        return False
    head, _, last = name.rpartition(".")
    if last in BUFFER_NAMES:
        return True
    if last in _QUANT_NAMES and info.numel <= 1:
        return True
    return last == "bias" and head.rpartition(".")[2] == "attn"  # GPT-2's causal mask


_QUANT_NAMES = frozenset({"scale", "zero_point"})
"""A quantized module's output quantization (`fc.scale`, `quant.zero_point`): one number each,
which torch.ao keeps as a buffer or turns into a 0-d tensor in `state_dict()`, never a weight."""


def _view(t: TensorInfo) -> tuple | None:
    if t.storage_key is None:
        return None
    return (t.storage_key, t.storage_offset, t.shape, t.stride, t.dtype)


def tally(items: Iterable[tuple[str, TensorInfo, bool | None]]) -> Params:
    """Count (name, tensor, is a buffer or None to guess from the name) entries.

    A view seen twice counts once; meta tensors count their elements but no bytes."""
    weights = buffers = nbytes = tensors = 0
    dtypes: dict[str, int] = {}
    keys: set[str] = set()
    seen: set[tuple] = set()
    for name, t, buffer in items:
        key = t.storage_key
        if key is not None:
            if key in keys:  # a storage seen before: the whole view decides (ties are rare)
                view = _view(t)
                if view in seen:
                    continue
                seen.add(view)  # type: ignore[arg-type]
            else:
                keys.add(key)
                seen.add(_view(t))  # type: ignore[arg-type]
        n = t.numel
        tensors += 1
        if buffer is None:
            buffer = is_buffer(name, t)
        if buffer:
            buffers += n
        else:
            weights += n
        if t.layout != "meta":
            nbytes += t.nbytes
        dtypes[t.dtype] = dtypes.get(t.dtype, 0) + n
    mix = tuple(sorted(dtypes.items(), key=lambda dn: -dn[1]))
    return Params(weights, buffers, nbytes, tensors, mix)


_SECOND_LOOK = _QUANT_NAMES | {"bias"}
"""Last names `tally_nodes` hands to `is_buffer`, which looks further than the name."""


def tally_nodes(nodes: Iterable[Node]) -> Params:
    """`tally` of state-dict entries (tensor nodes keyed by their names), in one tight loop: the
    module view counts every group of a 100,000-key dict as it opens."""
    weights = buffers = nbytes = tensors = 0
    dtypes: dict[str, int] = {}
    first: dict[str, TensorInfo] = {}
    seen: set[tuple] = set()
    names = BUFFER_NAMES
    for node in nodes:
        t: TensorInfo = node.value
        key = t.storage_key
        if key is not None:
            other = first.setdefault(key, t)
            if other is not t:  # a storage seen before: the whole view decides (ties are rare)
                if not seen:
                    seen.update(_view(x) for x in first.values())  # type: ignore[misc]
                view = _view(t)
                if view in seen:
                    continue
                seen.add(view)  # type: ignore[arg-type]
        n = 1
        for d in t.shape:
            n *= d
        tensors += 1
        name = node.key
        last = name.rpartition(".")[2] if isinstance(name, str) else ""
        buffer = last in names and not t.type.endswith("Parameter")
        if buffer or (last in _SECOND_LOOK and is_buffer(name, t)):  # type: ignore[arg-type]
            buffers += n
        else:
            weights += n
        if t.layout != "meta":
            item = t.itemsize
            nbytes += n * item if item != 1 else t.nbytes  # 1: maybe sub-byte (F4, F6)
        dtypes[t.dtype] = dtypes.get(t.dtype, 0) + n
    mix = tuple(sorted(dtypes.items(), key=lambda dn: -dn[1]))
    return Params(weights, buffers, nbytes, tensors, mix)


def tensors_below(node: Node) -> Iterable[tuple[str, TensorInfo, bool | None]]:
    """(state-dict-style name, tensor, is a buffer) for each tensor below `node`.

    Below a placeholder nn.Module, `_parameters` and `_buffers` say which is which, and the
    names skip the module internals (`layer1.0.conv1.weight`)."""
    stack: list[tuple[Node, str, bool | None]] = [(node, "", None)]
    while stack:
        n, name, buffer = stack.pop()
        if n.kind is NodeKind.TENSOR and n.tensor is not None:
            yield name, n.tensor, buffer
            continue
        if n.kind is NodeKind.REF or not n.children:
            continue
        for c in reversed(n.children):
            key = str(c.key)
            sub = buffer
            if n.kind is NodeKind.OBJECT:
                if key == "_parameters":
                    sub = False
                elif key == "_buffers":
                    sub = True
            if key in ("_parameters", "_buffers", "_modules") and n.kind is NodeKind.OBJECT:
                stack.append((c, name, sub))
            else:
                stack.append((c, f"{name}.{key}" if name else key, sub))


def count_params(node: Node) -> Params:
    """The parameters below `node` (itself, for a tensor)."""
    kids = node.children
    if node.kind is NodeKind.MAPPING and len(kids) >= _FLAT:
        tensor = NodeKind.TENSOR
        if all(c.kind is tensor and c.value is not None and type(c.key) is str for c in kids):
            # A state dict of named tensors: `tensors_below` would name each `key` and
            # `tally` count it as `tally_nodes` does, 3x slower (0.3 s of the browser's
            # open at 100,000 keys, issue 16)
            return tally_nodes(kids)
    return tally(tensors_below(node))


_FLAT = 256
"""Children from which `count_params` asks whether a mapping is a flat state dict."""


def params_at(root: Node, path: KeyPath | None) -> Params | None:
    """`count_params` of the node at `path` (the model's weights), or None without one."""
    if path is None:
        return None
    node: Node | None = root
    for key in path:
        node = node.child(key) if node is not None else None
    if node is None:
        return None
    p = count_params(node)
    return p if p.tensors else None
