"""Provides ckptui's own stand-ins for the data constructors a checkpoint's pickle calls.

Where `torch.load` would call `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`
and allocate a tensor, ckptui calls a recorder that validates the arguments and keeps only the
metadata. Recorders exist only for pure data constructors (DESIGN.md point 1); anything else stays
a placeholder. Each recorder raises `_Malformed` on arguments torch itself would reject.
"""

from __future__ import annotations

import struct
from typing import Any

from .dtypes import DTYPES, NUMPY_KINDS, itemsize_of
from .model import Storage
from .unpickle import Blob, Global, InertUnpickler, PDict, PObject, PSet, Recorder, _Malformed

MAX_DIMS = 64
MAX_DIM = 1 << 62


class StorageRef:
    """A storage named by a persistent id; `nbytes` is what the pickle declares."""

    __slots__ = ("dtype", "itemsize", "key", "location", "nbytes")

    def __init__(self, key: str, dtype: str, nbytes: int, location: str) -> None:
        self.key = key
        self.dtype = dtype
        self.itemsize = itemsize_of(dtype)
        self.nbytes = nbytes
        self.location = location

    def entry(
        self,
        record: str | None = None,
        data_offset: int | None = None,
        record_nbytes: int | None = None,
    ) -> Storage:
        """The storage-table entry for this storage, located where the reader found its bytes
        (no `data_offset`: the bytes are missing)."""
        return Storage(
            self.key,
            self.dtype,
            self.nbytes,
            self.location,
            record=record,
            data_offset=data_offset,
            record_nbytes=record_nbytes,
        )


class TensorRec:
    """A tensor's metadata as the pickle describes it."""

    __slots__ = (
        "dtype",
        "layout",
        "offset",
        "parts",
        "requires_grad",
        "shape",
        "storage",
        "stride",
        "type",
    )

    def __init__(
        self,
        storage: StorageRef | None,
        offset: int,
        shape: tuple[int, ...],
        stride: tuple[int, ...],
        dtype: str,
        requires_grad: bool = False,
        type_name: str = "torch.Tensor",
        layout: str = "strided",
    ) -> None:
        self.storage = storage
        self.offset = offset
        self.shape = shape
        self.stride = stride
        self.dtype = dtype
        self.requires_grad = requires_grad
        self.type = type_name
        self.layout = layout
        self.parts: list[tuple[str, Any]] = []
        """Component tensors/values: sparse indices and values, quantizer scales, ..."""

    def copy_as(self, type_name: str, requires_grad: bool | None = None) -> TensorRec:
        """Return a copy with another Python type (Parameter, a subclass)."""
        t = TensorRec(
            self.storage,
            self.offset,
            self.shape,
            self.stride,
            self.dtype,
            self.requires_grad if requires_grad is None else requires_grad,
            type_name,
            self.layout,
        )
        t.parts = list(self.parts)
        return t

    def pickle_build(self, state: Any) -> None:
        """Tensor subclasses may carry a __dict__; keep it as parts."""
        if isinstance(state, PDict):
            self.parts.extend((f"{k}", v) for k, v in state.items)


class NumpyArray:
    """A numpy array pickled inline; its bytes are part of the pickle."""

    __slots__ = ("dtype", "nbytes", "shape")

    def __init__(self) -> None:
        self.shape: tuple[int, ...] = ()
        self.dtype = "?"
        self.nbytes = 0

    def pickle_build(self, state: Any) -> None:
        """Apply ndarray.__setstate__'s (version, shape, dtype, is_fortran, rawdata)."""
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Malformed("numpy array state is not a 4/5-tuple")
        shape, dtype = state[-4], state[-3]
        self.shape = _int_tuple(shape, "numpy shape")
        if isinstance(dtype, NumpyDtype):
            self.dtype = dtype.name
            itemsize = dtype.itemsize
        else:
            raise _Malformed("numpy array dtype is not a dtype")
        n = 1
        for d in self.shape:
            n *= d
        self.nbytes = n * itemsize


class NumpyDtype:
    """`numpy.dtype(...)` as metadata."""

    __slots__ = ("byteorder", "itemsize", "name")

    def __init__(self, code: str) -> None:
        self.name = code
        self.itemsize = _numpy_itemsize(code)
        self.byteorder = "="

    def pickle_build(self, state: Any) -> None:
        """dtype.__setstate__: (version, byteorder, subdescr, names, fields, elsize, ...)."""
        if isinstance(state, tuple) and len(state) >= 6:
            if isinstance(state[1], str):
                self.byteorder = state[1]
            if isinstance(state[5], int) and state[5] > 0:
                self.itemsize = state[5]


class NumpyScalar:
    """A numpy scalar (`np.int64(3)`), decoded when its dtype is a plain number."""

    __slots__ = ("dtype", "value")

    def __init__(self, dtype: str, value: Any) -> None:
        self.dtype = dtype
        self.value = value


class TorchDtype:
    """A `torch.<dtype>` global used as a value."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


def _numpy_itemsize(code: str) -> int:
    code = code.lstrip("<>=|")
    kind = code[:1]
    digits = code[1:]
    if kind in NUMPY_KINDS and digits.isdigit():
        n = int(digits)
        return n * 4 if kind == "U" else n
    return {"O": 8, "?": 1, "b": 1, "B": 1}.get(kind, 1)


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if isinstance(value, list):
        value = tuple(value)
    if not isinstance(value, tuple) or len(value) > MAX_DIMS:
        raise _Malformed(f"{what} is not a tuple of at most {MAX_DIMS} ints")
    for v in value:
        if type(v) is not int or not -MAX_DIM < v < MAX_DIM:
            raise _Malformed(f"{what} holds {v!r}, not a sane int")
    return value


def _storage_dtype(storage: Any) -> StorageRef:
    if not isinstance(storage, StorageRef):
        raise _Malformed(f"tensor storage is {type(storage).__name__}, not a storage")
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
    shape = _int_tuple(size, "tensor size")
    strides = _int_tuple(stride, "tensor stride")
    if len(shape) != len(strides):
        raise _Malformed("tensor size and stride differ in length")
    if type(offset) is not int or not 0 <= offset < MAX_DIM:
        raise _Malformed("tensor storage offset is not a non-negative int")
    return TensorRec(st, offset, shape, strides, dtype or st.dtype, bool(requires_grad))


def rebuild_tensor(u: InertUnpickler, args: tuple[Any, ...]) -> TensorRec:
    """`_rebuild_tensor(storage, offset, size, stride)`."""
    if len(args) != 4:
        raise _Malformed("_rebuild_tensor takes 4 arguments")
    return _tensor(*args)


def rebuild_tensor_v2(u: InertUnpickler, args: tuple[Any, ...]) -> TensorRec:
    """`_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`."""
    if len(args) not in (6, 7):
        raise _Malformed("_rebuild_tensor_v2 takes 6 or 7 arguments")
    return _tensor(args[0], args[1], args[2], args[3], requires_grad=args[4])


def rebuild_tensor_v3(u: InertUnpickler, args: tuple[Any, ...]) -> TensorRec:
    """`_rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype[, md])`."""
    if len(args) not in (7, 8) or not isinstance(args[6], TorchDtype):
        raise _Malformed("_rebuild_tensor_v3 takes 7 or 8 arguments, the 7th a dtype")
    return _tensor(args[0], args[1], args[2], args[3], args[6].name, args[4])


def rebuild_parameter(u: InertUnpickler, args: tuple[Any, ...]) -> TensorRec:
    """`_rebuild_parameter(data, requires_grad, hooks)` and `..._with_state(..., state)`."""
    if len(args) not in (3, 4) or not isinstance(args[0], TensorRec):
        raise _Malformed("_rebuild_parameter needs a tensor")
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
        raise _Malformed("_rebuild_from_type_v2 takes 4 arguments")
    func, new_type, fargs, state = args
    inner = u._call(func, fargs, "reduce") if isinstance(fargs, tuple) else None
    if isinstance(inner, TensorRec):
        name = new_type.full if isinstance(new_type, Global) else inner.type
        if name == "torch._tensor.Tensor":
            name = "torch.Tensor"
        if name != inner.type:
            inner = inner.copy_as(name)
        inner.pickle_build(state)
        return inner
    obj = PObject(u._global("torch._tensor", "_rebuild_from_type_v2"), args, "reduce")
    return obj


def rebuild_qtensor(u: InertUnpickler, args: tuple[Any, ...]) -> TensorRec:
    """`_rebuild_qtensor(storage, offset, size, stride, quantizer_params, requires_grad, hooks)`."""
    if len(args) != 7:
        raise _Malformed("_rebuild_qtensor takes 7 arguments")
    t = _tensor(args[0], args[1], args[2], args[3], requires_grad=args[5])
    t.layout = "quantized"
    q = args[4]
    if isinstance(q, tuple) and q:
        scheme = q[0].full if isinstance(q[0], Global) else str(q[0])
        t.parts.append(("qscheme", scheme.rsplit(".", 1)[-1]))
        names = ("scale", "zero_point", "axis") if "channel" in scheme else ("scale", "zero_point")
        t.parts.extend((n, v) for n, v in zip(names, q[1:], strict=False))
    return t


def get_layout(u: InertUnpickler, args: tuple[Any, ...]) -> str:
    """`torch.serialization._get_layout(name)`."""
    if len(args) != 1 or not isinstance(args[0], str):
        raise _Malformed("_get_layout takes a layout name")
    return args[0].removeprefix("torch.")


def rebuild_sparse_tensor(u: InertUnpickler, args: tuple[Any, ...]) -> TensorRec:
    """`_rebuild_sparse_tensor(layout, data)`: COO (indices, values, size[, coalesced]) or CSR."""
    if len(args) != 2 or not isinstance(args[1], tuple):
        raise _Malformed("_rebuild_sparse_tensor takes (layout, data)")
    layout = args[0] if isinstance(args[0], str) else "sparse"
    data = args[1]
    if layout == "sparse_coo":
        if len(data) not in (3, 4):
            raise _Malformed("sparse COO data is (indices, values, size[, coalesced])")
        parts = [("indices", data[0]), ("values", data[1])]
        size = data[2]
    else:
        if len(data) != 4:
            raise _Malformed("compressed sparse data is (idx1, idx2, values, size)")
        parts = [("compressed_indices", data[0]), ("plain_indices", data[1]), ("values", data[2])]
        size = data[3]
    values = parts[-1][1] if layout != "sparse_coo" else data[1]
    dtype = values.dtype if isinstance(values, TensorRec) else "?"
    shape = _int_tuple(size, "sparse size")
    t = TensorRec(None, 0, shape, (), dtype, layout=layout)
    t.parts = parts
    return t


def rebuild_meta(u: InertUnpickler, args: tuple[Any, ...]) -> TensorRec:
    """`_rebuild_meta_tensor_no_storage(dtype, size, stride, requires_grad)`."""
    if len(args) != 4 or not isinstance(args[0], TorchDtype):
        raise _Malformed("_rebuild_meta_tensor_no_storage takes (dtype, size, stride, grad)")
    shape = _int_tuple(args[1], "meta size")
    return TensorRec(
        None,
        0,
        shape,
        _int_tuple(args[2], "meta stride"),
        args[0].name,
        bool(args[3]),
        layout="meta",
    )


def rebuild_wrapper_subclass(u: InertUnpickler, args: tuple[Any, ...]) -> TensorRec:
    """`_rebuild_wrapper_subclass(cls, dtype, size, stride, offset, layout, device, grad)`."""
    if len(args) != 8 or not isinstance(args[1], TorchDtype):
        raise _Malformed("_rebuild_wrapper_subclass takes 8 arguments")
    cls = args[0].full if isinstance(args[0], Global) else "torch.Tensor"
    t = TensorRec(
        None,
        0,
        _int_tuple(args[2], "size"),
        _int_tuple(args[3], "stride"),
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
        raise _Malformed("_rebuild_nested_tensor takes a buffer and three tensors")
    buf = args[0]
    t = TensorRec(None, 0, buf.shape, buf.stride, buf.dtype, layout="nested")
    t.parts = [
        ("buffer", buf),
        ("sizes", args[1]),
        ("strides", args[2]),
        ("storage_offsets", args[3]),
    ]
    return t


def torch_size(u: InertUnpickler, args: tuple[Any, ...]) -> tuple[int, ...]:
    """`torch.Size((2, 3))` is a tuple."""
    if len(args) != 1:
        raise _Malformed("torch.Size takes one tuple")
    return _int_tuple(args[0], "torch.Size")


def torch_device(u: InertUnpickler, args: tuple[Any, ...]) -> str:
    """`torch.device('cuda', 0)` as its string."""
    if not args or not isinstance(args[0], str):
        raise _Malformed("torch.device takes a type string")
    return f"{args[0]}:{args[1]}" if len(args) > 1 and isinstance(args[1], int) else args[0]


def ordered_dict(u: InertUnpickler, args: tuple[Any, ...]) -> PDict:
    """`collections.OrderedDict()` or `OrderedDict([(k, v), ...])`."""
    d = PDict("collections.OrderedDict")
    if args:
        _fill_pairs(d, args[0])
    return d


def _fill_pairs(d: PDict, src: Any) -> None:
    if isinstance(src, PDict):
        for k, v in src.items:
            d.set(k, v)
    elif isinstance(src, list | tuple):
        for pair in src:
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise _Malformed("dict items must be pairs")
            d.set(pair[0], pair[1])
    else:
        raise _Malformed(f"cannot make a dict from {type(src).__name__}")


def _dict_like(type_name: str) -> Recorder:
    def make(u: InertUnpickler, args: tuple[Any, ...]) -> PDict:
        d = PDict(type_name)
        if type_name == "collections.defaultdict":
            if args:
                d.attrs["default_factory"] = args[0]
        elif args:
            _fill_pairs(d, args[0])
        return d

    return make


def _set_like(type_name: str) -> Recorder:
    def make(u: InertUnpickler, args: tuple[Any, ...]) -> PSet:
        items = args[0] if args else []
        if isinstance(items, PSet):
            items = items.items
        if not isinstance(items, list | tuple):
            raise _Malformed(f"{type_name} takes a sequence")
        return PSet(type_name, list(items))

    return make


def _plain(kind: type) -> Recorder:
    def make(u: InertUnpickler, args: tuple[Any, ...]) -> Any:
        for a in args:
            if not isinstance(a, int | float | str | bytes | bool) or isinstance(a, Blob):
                return PObject(u._global("builtins", kind.__name__), args, "reduce")
        if kind is bytes and args and not isinstance(args[0], str | bytes):
            # bytes(n) would allocate n bytes: a number the file merely claims
            return PObject(u._global("builtins", "bytes"), args, "reduce")
        try:
            return kind(*args)
        except (TypeError, ValueError, OverflowError, LookupError) as e:
            raise _Malformed(f"builtins.{kind.__name__}: {e}") from None

    return make


def codecs_encode(u: InertUnpickler, args: tuple[Any, ...]) -> Any:
    """`_codecs.encode(text, 'latin1')`: how protocol-2 numpy pickles carry raw bytes."""
    if not args or len(args) > 2:
        raise _Malformed("_codecs.encode takes (obj[, encoding])")
    text = args[0]
    if isinstance(text, Blob):
        # A long latin-1 string (protocol-2 storages over 1 MB): its UTF-8 bytes on disk are not
        # the payload, so decode it now; it is one storage's worth, read once.
        raw = bytes(u.buf[text.offset : text.offset + text.length])
        text = raw.decode("utf-8", "surrogatepass")
    if not isinstance(text, str):
        raise _Malformed("_codecs.encode of a non-string")
    enc = args[1] if len(args) == 2 and isinstance(args[1], str) else "utf-8"
    if enc.lower().replace("-", "") not in ("latin1", "utf8", "iso88591", "ascii"):
        raise _Malformed(f"_codecs.encode with encoding {enc!r}")
    try:
        return text.encode(enc)
    except (UnicodeEncodeError, LookupError) as e:
        raise _Malformed(f"_codecs.encode failed: {e}") from None


def numpy_reconstruct(u: InertUnpickler, args: tuple[Any, ...]) -> NumpyArray:
    """`numpy...multiarray._reconstruct(ndarray, (0,), b'b')`; BUILD fills it in."""
    return NumpyArray()


def numpy_frombuffer(u: InertUnpickler, args: tuple[Any, ...]) -> NumpyArray:
    """`numpy...numeric._frombuffer(buf, dtype, shape, order)` (protocol 5 numpy pickles)."""
    if len(args) != 4 or not isinstance(args[1], NumpyDtype):
        raise _Malformed("_frombuffer takes (buffer, dtype, shape, order)")
    a = NumpyArray()
    a.pickle_build((1, args[2], args[1], False, b""))
    return a


def numpy_dtype(u: InertUnpickler, args: tuple[Any, ...]) -> NumpyDtype:
    """`numpy.dtype('f8', False, True)`."""
    if not args or not isinstance(args[0], str):
        raise _Malformed("numpy.dtype takes a type code")
    return NumpyDtype(args[0])


_SCALAR_FORMATS = {
    "f8": "d",
    "f4": "f",
    "f2": "e",
    "i8": "q",
    "i4": "i",
    "i2": "h",
    "i1": "b",
    "u8": "Q",
    "u4": "I",
    "u2": "H",
    "u1": "B",
    "b1": "?",
}


def numpy_scalar(u: InertUnpickler, args: tuple[Any, ...]) -> NumpyScalar:
    """`numpy...multiarray.scalar(dtype, bytes)`: decoded for plain numeric dtypes."""
    if not args or not isinstance(args[0], NumpyDtype):
        raise _Malformed("numpy scalar takes a dtype")
    dt = args[0]
    raw = args[1] if len(args) > 1 else None
    code = dt.name.lstrip("<>=|")
    fmt = _SCALAR_FORMATS.get(code)
    value: Any = None
    if fmt and isinstance(raw, bytes) and len(raw) == struct.calcsize(fmt):
        order = ">" if dt.byteorder == ">" else "<"
        value = struct.unpack(order + fmt, raw)[0]
    return NumpyScalar(code, value)


def load_from_bytes(u: InertUnpickler, args: tuple[Any, ...]) -> Any:
    """`torch.storage._load_from_bytes(b)` runs torch.load on `b`: read inside `b` instead."""
    if len(args) != 1 or not isinstance(args[0], Blob | bytes):
        raise _Malformed("_load_from_bytes takes bytes")
    nested = u.extra.get("load_nested")
    if nested is None:
        raise _Malformed("embedded checkpoint where none can be read")
    return nested(u, args[0])


def build_recorders() -> dict[str, Recorder]:
    """The allow-list: full global name -> recorder."""
    r: dict[str, Recorder] = {
        "torch._utils._rebuild_tensor": rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": rebuild_tensor_v2,
        "torch._utils._rebuild_tensor_v3": rebuild_tensor_v3,
        "torch._utils._rebuild_parameter": rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": rebuild_parameter,
        "torch._tensor._rebuild_from_type_v2": rebuild_from_type_v2,
        "torch._utils._rebuild_qtensor": rebuild_qtensor,
        "torch._utils._rebuild_sparse_tensor": rebuild_sparse_tensor,
        "torch._utils._rebuild_meta_tensor_no_storage": rebuild_meta,
        "torch._utils._rebuild_wrapper_subclass": rebuild_wrapper_subclass,
        "torch._utils._rebuild_nested_tensor": rebuild_nested,
        "torch.serialization._get_layout": get_layout,
        "torch.Size": torch_size,
        "torch.device": torch_device,
        "torch.storage._load_from_bytes": load_from_bytes,
        "collections.OrderedDict": ordered_dict,
        "collections.defaultdict": _dict_like("collections.defaultdict"),
        "collections.Counter": _dict_like("collections.Counter"),
        "builtins.dict": _dict_like("dict"),
        "builtins.set": _set_like("builtins.set"),
        "builtins.frozenset": _set_like("builtins.frozenset"),
        "builtins.complex": _plain(complex),
        "builtins.int": _plain(int),
        "builtins.float": _plain(float),
        "builtins.bytes": _plain(bytes),
        "builtins.bytearray": _plain(bytes),
        "_codecs.encode": codecs_encode,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        r[f"{mod}._reconstruct"] = numpy_reconstruct
        r[f"{mod}.scalar"] = numpy_scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        r[f"{mod}._frombuffer"] = numpy_frombuffer
    r["numpy.dtype"] = numpy_dtype
    return r


RECORDERS = build_recorders()


CONSTANTS: dict[str, Any] = {f"torch.{alias}": TorchDtype(d.name) for alias, d in DTYPES.items()}
"""Globals that stand for values: `torch.float32` as used in `_rebuild_tensor_v3`."""


__all__ = [
    "CONSTANTS",
    "RECORDERS",
    "NumpyArray",
    "NumpyDtype",
    "NumpyScalar",
    "PSet",
    "StorageRef",
    "TensorRec",
    "TorchDtype",
]
