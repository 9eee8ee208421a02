"""Provides the recorders for torch's own reduce functions: tensors, parameters, sizes, devices.

Each stands in for a `torch._utils._rebuild_*` (or `torch.Size`, `torch.device`, ...) call: it
checks the arguments as torch would and returns a `recorded_types.TensorRec` (or a plain value)
instead of allocating anything.
"""

from __future__ import annotations

from typing import Any

from ckptui.unpickler.inert import Blob, Global, InertUnpickler, Malformed, PDict, PObject
from ckptui.unpickler.recorded import (
    MAX_DIM,
    ScriptObjectRec,
    StorageRef,
    TensorRec,
    TorchDtype,
    int_tuple,
)


def _storage_dtype(storage: Any) -> StorageRef:
    if not isinstance(storage, StorageRef):
        raise Malformed(f"tensor storage is {type(storage).__name__}, not a storage")
    return storage


def _tensor(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    dtype: str | None = None,
    requires_grad: Any = False,
) -> TensorRec:
    st = _storage_dtype(storage)
    # One dimension, the most common view, checked inline (as `int_tuple` does): this runs once
    # per tensor, 100,000 times in a MoE state dict (issue 16).
    if (
        type(size) is tuple
        and len(size) == 1
        and type(size[0]) is int
        and -MAX_DIM < size[0] < MAX_DIM
    ):
        shape = size
    else:
        shape = int_tuple(size, "tensor size")
    if (
        type(stride) is tuple
        and len(stride) == 1
        and type(stride[0]) is int
        and -MAX_DIM < stride[0] < MAX_DIM
    ):
        strides = stride
    else:
        strides = int_tuple(stride, "tensor stride")
    if len(shape) != len(strides):
        raise Malformed("tensor size and stride differ in length")
    if type(offset) is not int or not 0 <= offset < MAX_DIM:
        raise Malformed("tensor storage offset is not a non-negative int")
    return TensorRec(st, offset, shape, strides, dtype or st.dtype, bool(requires_grad))


def rebuild_tensor(u: InertUnpickler, args: tuple[Any, ...]) -> TensorRec:
    """`_rebuild_tensor(storage, offset, size, stride)`."""
    if len(args) != 4:
        raise Malformed("_rebuild_tensor takes 4 arguments")
    return _tensor(*args)


def rebuild_tensor_v2(u: InertUnpickler, args: tuple[Any, ...]) -> TensorRec:
    """`_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`."""
    if len(args) not in (6, 7):
        raise Malformed("_rebuild_tensor_v2 takes 6 or 7 arguments")
    storage, offset, size, stride = args[0], args[1], args[2], args[3]
    # `_tensor`'s checks for the commonest call, a 1-D tensor on a storage, inlined (one call
    # fewer per tensor, issue 16); anything else goes through `_tensor` itself.
    if (
        type(storage) is StorageRef
        and type(size) is tuple
        and len(size) == 1
        and type(stride) is tuple
        and len(stride) == 1
        and type(size[0]) is int
        and type(stride[0]) is int
        and -MAX_DIM < size[0] < MAX_DIM
        and -MAX_DIM < stride[0] < MAX_DIM
        and type(offset) is int
        and 0 <= offset < MAX_DIM
    ):
        return TensorRec(storage, offset, size, stride, storage.dtype, bool(args[4]))
    return _tensor(storage, offset, size, stride, None, args[4])


def rebuild_tensor_v3(u: InertUnpickler, args: tuple[Any, ...]) -> TensorRec:
    """`_rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype[, md])`."""
    if len(args) not in (7, 8) or not isinstance(args[6], TorchDtype):
        raise Malformed("_rebuild_tensor_v3 takes 7 or 8 arguments, the 7th a dtype")
    return _tensor(args[0], args[1], args[2], args[3], args[6].name, args[4])


def rebuild_parameter(u: InertUnpickler, args: tuple[Any, ...]) -> TensorRec:
    """`_rebuild_parameter(data, requires_grad, hooks)` and `..._with_state(..., state)`."""
    if len(args) not in (3, 4) or not isinstance(args[0], TensorRec):
        raise Malformed("_rebuild_parameter needs a tensor")
    t = args[0].copy_as("torch.nn.parameter.Parameter", bool(args[1]))
    if len(args) == 4:
        t.pickle_build(args[3])
    return t


def rebuild_from_type_v2(u: InertUnpickler, args: tuple[Any, ...]) -> Any:
    """`_rebuild_from_type_v2(func, new_type, args, state)`: calls `func(*args)`, sets the type.

    `func` is only honoured when it is itself an allow-listed recorder; otherwise the call stays
    a placeholder (and `func`'s own global carries the verdict).
    """
    if len(args) != 4:
        raise Malformed("_rebuild_from_type_v2 takes 4 arguments")
    func, new_type, fargs, state = args
    inner = u._call(func, fargs, "reduce") if isinstance(fargs, tuple) else None
    if isinstance(inner, TensorRec) and inner.layout == "jagged":
        # NestedTensor's state repeats its constructor's arguments (`_values`, `_offsets`, ...)
        name = new_type.full if isinstance(new_type, Global) else inner.type
        return inner.copy_as(name) if name != inner.type else inner
    if isinstance(inner, TensorRec):
        name = new_type.full if isinstance(new_type, Global) else inner.type
        if name == "torch._tensor.Tensor":
            name = "torch.Tensor"
        if name != inner.type:
            inner = inner.copy_as(name)
        # A subclass with __slots__ pickles `(dict_state | None, slots_state)`: DTensor keeps
        # `_local_tensor` and `_spec` in slots, so both parts are the tensor's state.
        parts = state if isinstance(state, tuple) and len(state) == 2 else (state,)
        for part in parts:
            inner.pickle_build(part)
        if name.endswith(".DTensor"):
            inner.parts[:0] = _dtensor_facts(dict(inner.parts).get("_spec"))
        return inner
    obj = PObject(u._global("torch._tensor", "_rebuild_from_type_v2"), args, "reduce")
    return obj


def _dtensor_facts(spec: Any) -> list[tuple[str, str]]:
    """`placements` and `mesh` of a DTensor's `_spec` (a DTensorSpec placeholder), as text:
    `Shard(0)`, `Replicate()`; `cpu · 2 ranks`. What is not recognised is left out."""
    state = spec.state if isinstance(spec, PObject) else None
    if not isinstance(state, PDict):
        return []
    out: list[tuple[str, str]] = []
    placements = state.get("placements")
    if isinstance(placements, tuple):
        shown = []
        for p in placements:
            kind = p.name.rsplit(".", 1)[-1] if isinstance(p, PObject) else type(p).__name__
            fields = p.state if isinstance(p, PObject) else None
            dim = fields.get("dim") if isinstance(fields, PDict) else None
            op = fields.get("reduce_op") if isinstance(fields, PDict) else None
            arg = dim if isinstance(dim, int) else op if isinstance(op, str) else ""
            shown.append(f"{kind}({arg})")
        out.append(("placements", ", ".join(shown)))
    mesh = state.get("mesh")
    fields = mesh.state if isinstance(mesh, PObject) else None
    if isinstance(fields, PDict):
        device = fields.get("device_type", fields.get("_device_type"))
        ranks = fields.get("_rank_map", fields.get("mesh"))  # torch 2.10+ / before: a tensor
        text = device if isinstance(device, str) else "?"
        if isinstance(ranks, TensorRec):
            n = 1
            for d in ranks.shape:
                n *= d
            text += f" · {n} rank{'s' if n != 1 else ''}"
        out.append(("mesh", text))
    return out


def rebuild_qtensor(u: InertUnpickler, args: tuple[Any, ...]) -> TensorRec:
    """`_rebuild_qtensor(storage, offset, size, stride, quantizer_params, requires_grad, hooks)`."""
    if len(args) != 7:
        raise Malformed("_rebuild_qtensor takes 7 arguments")
    t = _tensor(args[0], args[1], args[2], args[3], requires_grad=args[5])
    t.layout = "quantized"
    q = args[4]
    if isinstance(q, tuple) and q:
        scheme = q[0].full if isinstance(q[0], Global) else str(q[0])
        t.parts.append(("qscheme", scheme.rsplit(".", 1)[-1]))
        names = ("scale", "zero_point", "axis") if "channel" in scheme else ("scale", "zero_point")
        t.parts.extend((n, v) for n, v in zip(names, q[1:], strict=False))
    return t


def script_object(u: InertUnpickler, args: tuple[Any, ...]) -> ScriptObjectRec:
    """`torch.ScriptObject()` (NEWOBJ): a custom-class instance whose BUILD names its class."""
    if args:
        raise Malformed("torch.ScriptObject takes no arguments")
    return ScriptObjectRec()


def get_layout(u: InertUnpickler, args: tuple[Any, ...]) -> str:
    """`torch.serialization._get_layout(name)`."""
    if len(args) != 1 or not isinstance(args[0], str):
        raise Malformed("_get_layout takes a layout name")
    return args[0].removeprefix("torch.")


def rebuild_sparse_tensor(u: InertUnpickler, args: tuple[Any, ...]) -> TensorRec:
    """`_rebuild_sparse_tensor(layout, data)`: COO (indices, values, size[, coalesced]) or CSR."""
    if len(args) != 2 or not isinstance(args[1], tuple):
        raise Malformed("_rebuild_sparse_tensor takes (layout, data)")
    layout = args[0] if isinstance(args[0], str) else "sparse"
    data = args[1]
    if layout == "sparse_coo":
        if len(data) not in (3, 4):
            raise Malformed("sparse COO data is (indices, values, size[, coalesced])")
        parts = [("indices", data[0]), ("values", data[1])]
        size = data[2]
    else:
        if len(data) != 4:
            raise Malformed("compressed sparse data is (idx1, idx2, values, size)")
        parts = [("compressed_indices", data[0]), ("plain_indices", data[1]), ("values", data[2])]
        size = data[3]
    values = parts[-1][1] if layout != "sparse_coo" else data[1]
    dtype = values.dtype if isinstance(values, TensorRec) else "?"
    shape = int_tuple(size, "sparse size")
    t = TensorRec(None, 0, shape, (), dtype, layout=layout)
    t.parts = parts
    return t


def rebuild_meta(u: InertUnpickler, args: tuple[Any, ...]) -> TensorRec:
    """`_rebuild_meta_tensor_no_storage(dtype, size, stride, requires_grad)`."""
    if len(args) != 4 or not isinstance(args[0], TorchDtype):
        raise Malformed("_rebuild_meta_tensor_no_storage takes (dtype, size, stride, grad)")
    shape = int_tuple(args[1], "meta size")
    return TensorRec(
        None,
        0,
        shape,
        int_tuple(args[2], "meta stride"),
        args[0].name,
        bool(args[3]),
        layout="meta",
    )


def rebuild_wrapper_subclass(u: InertUnpickler, args: tuple[Any, ...]) -> TensorRec:
    """`_rebuild_wrapper_subclass(cls, dtype, size, stride, offset, layout, device, grad)`."""
    if len(args) != 8 or not isinstance(args[1], TorchDtype):
        raise Malformed("_rebuild_wrapper_subclass takes 8 arguments")
    cls = args[0].full if isinstance(args[0], Global) else "torch.Tensor"
    t = TensorRec(
        None,
        0,
        int_tuple(args[2], "size"),
        int_tuple(args[3], "stride"),
        args[1].name,
        bool(args[7]),
        cls,
        layout="wrapper",
    )
    device = args[6]
    if isinstance(device, str):
        t.parts.append(("device", device))
    return t


def rebuild_nested(u: InertUnpickler, args: tuple[Any, ...]) -> TensorRec:
    """`_rebuild_nested_tensor(buffer, sizes, strides, storage_offsets)`."""
    if len(args) != 4 or not isinstance(args[0], TensorRec):
        raise Malformed("_rebuild_nested_tensor takes a buffer and three tensors")
    buf = args[0]
    t = TensorRec(None, 0, buf.shape, buf.stride, buf.dtype, layout="nested")
    t.parts = [
        ("buffer", buf),
        ("sizes", args[1]),
        ("strides", args[2]),
        ("storage_offsets", args[3]),
    ]
    return t


def rebuild_njt(u: InertUnpickler, args: tuple[Any, ...]) -> TensorRec:
    """`torch.nested._internal.nested_tensor._rebuild_njt(kwargs)`: a jagged nested tensor,
    `NestedTensor(values=, offsets=, lengths=, _ragged_idx=, _metadata_cache=)`.

    Recorded with the shape of its `values` (the elements it holds, so sizes and parameter
    counts take them once); its logical shape, with the ragged dimension as `j1` as torch
    prints it, is the `logical_shape` part. `min_seqlen`/`max_seqlen` are cached as the first
    dimension of empty tensors, so they are read from those shapes.
    """
    kwargs = args[0] if len(args) == 1 else None
    if not isinstance(kwargs, PDict):
        raise Malformed("_rebuild_njt takes a dict of NestedTensor arguments")
    values, offsets = kwargs.get("values"), kwargs.get("offsets")
    lengths, ragged = kwargs.get("lengths"), kwargs.get("_ragged_idx", 1)
    if not isinstance(values, TensorRec) or not isinstance(offsets, TensorRec):
        raise Malformed("_rebuild_njt needs values and offsets tensors")
    if len(offsets.shape) != 1 or type(ragged) is not int or not 1 <= ragged <= len(values.shape):
        raise Malformed("_rebuild_njt offsets or ragged dimension malformed")
    batch = max(0, offsets.shape[0] - 1)
    inner = list(values.shape)
    # values' dim ragged-1 holds the ragged one, summed over the batch: torch prints it `j1`
    shown = [str(batch), *(str(d) for d in inner[: ragged - 1]), "j1", *map(str, inner[ragged:])]
    t = TensorRec(None, 0, values.shape, values.stride, values.dtype, layout="jagged")
    t.parts = [("logical_shape", "[" + ", ".join(shown) + "]"), ("ragged_dim", ragged)]
    t.parts += [("values", values), ("offsets", offsets)]
    if isinstance(lengths, TensorRec):
        t.parts.append(("lengths", lengths))
    cache = kwargs.get("_metadata_cache")
    if isinstance(cache, PDict):
        for name in ("min_seqlen", "max_seqlen"):
            v = cache.get(name)
            if isinstance(v, TensorRec) and v.shape:
                t.parts.append((name, v.shape[0]))
    return t


def torch_size(u: InertUnpickler, args: tuple[Any, ...]) -> tuple[int, ...]:
    """`torch.Size((2, 3))` is a tuple."""
    if len(args) != 1:
        raise Malformed("torch.Size takes one tuple")
    return int_tuple(args[0], "torch.Size")


def torch_device(u: InertUnpickler, args: tuple[Any, ...]) -> str:
    """`torch.device('cuda', 0)` as its string."""
    if not args or not isinstance(args[0], str):
        raise Malformed("torch.device takes a type string")
    return f"{args[0]}:{args[1]}" if len(args) > 1 and isinstance(args[1], int) else args[0]


def load_from_bytes(u: InertUnpickler, args: tuple[Any, ...]) -> Any:
    """`torch.storage._load_from_bytes(b)` runs torch.load on `b`: read inside `b` instead."""
    if len(args) != 1 or not isinstance(args[0], Blob | bytes):
        raise Malformed("_load_from_bytes takes bytes")
    nested = u.extra.get("load_nested")
    if nested is None:
        raise Malformed("embedded checkpoint where none can be read")
    return nested(u, args[0])


def jit_build_list(u: InertUnpickler, args: tuple[Any, ...]) -> Any:
    """`torch.jit._pickle.build_intlist(data)` and friends: TorchScript's typed lists, which
    return their argument unchanged (`restore_type_tag(value, type_str)` too)."""
    if len(args) not in (1, 2):
        raise Malformed("torch.jit._pickle helpers take (value[, type])")
    return args[0]
