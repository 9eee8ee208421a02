"""Provides a checkpoint read as a state dict: which tensors a subtree holds under which names,
the wrapper prefix every name shares (`module.`, `_orig_mod.`), and why a tensor cannot be read
or written as a dense tensor of its own.

The export plan (which tensors to write) and the compare (which tensors to pair) both start here,
so they name and skip the same tensors.
"""

from __future__ import annotations

from dataclasses import replace

from ckptui.core.dtypes import DTYPES
from ckptui.core.tree import Checkpoint, KeyPath, Node, NodeKind, TensorInfo, ref_tensor, walk

KNOWN_PREFIXES = ("module.", "_orig_mod.")
"""Prefixes wrappers add to every name: DataParallel/DDP's `module.`, torch.compile's `_orig_mod.`."""


def tensors_of(node: Node, base: KeyPath) -> list[tuple[KeyPath, TensorInfo]]:
    """The tensors at and below `node` (which sits at `base`) as a state dict holds them: a
    sparse/nested/quantized/wrapper tensor once (not its parts), a tensor saved twice under both
    names, and of a whole-module pickle only what `state_dict()` would save."""
    if node.kind is NodeKind.TENSOR:
        return [(base, node.value)]
    out = []
    tensor_at: dict[KeyPath, TensorInfo] = {}
    inside: KeyPath | None = None
    for rel, n in walk(node):
        path = (*base, *rel) if base else rel
        if inside is not None and path[: len(inside)] == inside:
            continue  # a part of a sparse/nested/quantized/wrapper tensor: not a tensor of its own
        inside = None
        if n.kind is NodeKind.TENSOR:
            t = n.value
            if t.layout not in ("strided", "storage") and n.children:
                inside = path
                t = dense_of(n) or t
            tensor_at[path] = t
            out.append((path, t))
        elif n.kind is NodeKind.REF and n.value in tensor_at:  # the same tensor saved twice
            out.append((path, ref_tensor(n, tensor_at[n.value])))
    # A whole-module pickle names its weights as state_dict() would; tensors it would not
    # save (non-persistent buffers, grads) have no such name.
    if any(t.state_dict_key for _, t in out):
        out = [(p, t) for p, t in out if t.state_dict_key]
    return out


def dense_of(node: Node) -> TensorInfo | None:
    """The plain tensor a tensor subclass stands for, when the file holds all of it: a DTensor
    whose `_local_tensor` has the global shape (one rank, or replicated)."""
    local = node.child("_local_tensor")
    t = node.value
    if local is None or local.kind is not NodeKind.TENSOR or local.value.layout != "strided":
        return None
    if local.value.shape != t.shape:
        return None
    return replace(
        local.value,
        type="torch.Tensor",
        requires_grad=t.requires_grad,
        state_dict_key=t.state_dict_key,
    )


def common_prefix(names: list[str]) -> str:
    """`module.` / `_orig_mod.` (possibly nested) when every name starts with it."""
    prefix = ""
    while True:
        for p in KNOWN_PREFIXES:
            if names and all(n.startswith(prefix + p) and len(n) > len(prefix + p) for n in names):
                prefix += p
                break
        else:
            return prefix


def unexportable(ckpt: Checkpoint, t: TensorInfo, fmt: str, quantized: bool = False) -> str | None:
    """Why `t` cannot be written as a tensor of its own (None when it can): the reason both
    export and value comparison give. `quantized`: a torch.ao tensor the export writes as
    torch does (`_rebuild_qtensor`)."""
    if t.type.endswith(".DTensor") and t.layout != "strided":
        return (
            "a DTensor of which this file holds one rank's shard only (see its _local_tensor "
            "and placements); the whole tensor needs every rank's file"
        )
    if t.layout == "jagged" and fmt == "pth":
        return None  # written over its values and offsets, each checked as a part (`_parts`)
    if t.layout != "strided" and not (quantized and t.layout == "quantized"):
        return (
            f"a {t.layout} tensor: only dense tensors are exported (its parts are not "
            "written as tensors of their own, which load_state_dict would not take)"
        )
    st = ckpt.storages.get(t.storage_key or "")
    if st is None or st.missing:
        return "its storage is missing from the file"
    if st.data_offset is None:
        return "its bytes are not stored as a plain run in the file"
    plain_q = quantized and t.dtype in ("qint8", "quint8", "qint32")
    if t.dtype not in DTYPES or (
        t.dtype.startswith(("quint", "qint", "bits", "complex32")) and not plain_q
    ):
        return f"{t.dtype} tensors are not exported"
    if ckpt.info.get("byteorder") == "big":
        return "big-endian storages are not exported"
    # This runs once per exported tensor: a 1-d view's span inline (what `span_elements`
    # computes), and min() rather than any() over a generator.
    shape, stride = t.shape, t.stride
    if len(shape) == 1 and len(stride) == 1:
        elements = t.storage_offset + (shape[0] - 1) * stride[0] + 1 if shape[0] else 0
    else:
        elements = t.span_elements()
    span = elements * t.itemsize
    if (stride and min(stride) < 0) or span > min(st.nbytes, st.record_nbytes or 0):
        return "the view runs past its storage"
    return None
