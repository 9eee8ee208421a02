"""Provides the records the recorders make: tensor, storage, numpy and dtype metadata.

These are what the inert unpickler leaves in a checkpoint's tree where `torch.load` would have
allocated real objects (`recorders` says which constructor makes which); the readers and
`treebuild` turn them into the model. `int_tuple` is the shape check every recorder shares.
"""

from __future__ import annotations

from typing import Any

from ckptui.core.dtypes import NUMPY_KINDS, itemsize_of
from ckptui.core.tree import Storage, new_storage
from ckptui.unpickler.inert import Malformed, PDict, confined_build

MAX_DIMS = 64
MAX_DIM = 1 << 62


class StorageRef:
    """A storage named by a persistent id; `nbytes` is what the pickle declares."""

    __slots__ = ("dtype", "itemsize", "key", "location", "nbytes")

    def __init__(self, key: str, dtype: str, nbytes: int, location: str, itemsize: int = 0) -> None:
        """`itemsize`: `itemsize_of(dtype)`, when the caller has it (once per storage)."""
        self.key = key
        self.dtype = dtype
        self.itemsize = itemsize or itemsize_of(dtype)
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
        # positional: once per storage, and keywords cost a third of the call
        return new_storage(
            self.key, self.dtype, self.nbytes, self.location, None, record, data_offset,
            record_nbytes,
        )  # fmt: skip


class TensorRec:
    """A tensor's metadata as the pickle describes it."""

    __slots__ = (
        "_parts",
        "dtype",
        "layout",
        "offset",
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
        self._parts: list[tuple[str, Any]] | None = None

    @property
    def parts(self) -> list[tuple[str, Any]]:
        """Component tensors/values: sparse indices and values, quantizer scales, ...

        Made on first use: a plain tensor has none, and an empty list per tensor was 5 MB of
        peak RSS on a 100,000-tensor file (issue 16)."""
        if self._parts is None:
            self._parts = []
        return self._parts

    @parts.setter
    def parts(self, value: list[tuple[str, Any]]) -> None:
        self._parts = value

    @property
    def has_parts(self) -> bool:
        """True when `parts` holds anything (without making the list)."""
        return bool(self._parts)

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
        if self._parts:
            t.parts = list(self._parts)
        return t

    def pickle_build(self, state: Any) -> None:
        """Tensor subclasses may carry a __dict__; keep it as parts."""
        if isinstance(state, PDict):
            self.parts.extend((f"{k}", v) for k, v in state.items)

    __setstate__ = confined_build  # BUILD in the C unpickler (`confined.py`)


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
            raise Malformed("numpy array state is not a 4/5-tuple")
        shape, dtype = state[-4], state[-3]
        self.shape = int_tuple(shape, "numpy shape")
        if isinstance(dtype, NumpyDtype):
            self.dtype = dtype.name
            itemsize = dtype.itemsize
        else:
            raise Malformed("numpy array dtype is not a dtype")
        n = 1
        for d in self.shape:
            n *= d
        self.nbytes = n * itemsize

    __setstate__ = confined_build  # BUILD in the C unpickler (`confined.py`)


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

    __setstate__ = confined_build  # BUILD in the C unpickler (`confined.py`)


class NumpyScalar:
    """A numpy scalar (`np.int64(3)`), decoded when its dtype is a plain number."""

    __slots__ = ("dtype", "value")

    def __init__(self, dtype: str, value: Any) -> None:
        self.dtype = dtype
        self.value = value


class ScriptObjectRec:
    """A `torch.ScriptObject`: an instance of a C++ custom class (`torch.classes.quantized.
    LinearPackedParamsBase`, the packed weights of a quantized Linear), pickled as NEWOBJ of
    `torch.ScriptObject` then BUILD with `(the class's __getstate__ result, its qualified name)`.

    torch.load hands that state to the registered class's own `__setstate__` (code in torch, not
    in the file), so recording it is enough to show and export the tensors it holds.
    """

    __slots__ = ("qualname", "state")

    def __init__(self) -> None:
        self.qualname = ""
        """`__torch__.torch.classes.<namespace>.<Class>`, once BUILD has named it."""
        self.state: Any = None

    @property
    def is_torch_class(self) -> bool:
        """A class registered by torch's own C++ (`__torch__.torch.classes.`)."""
        return self.qualname.startswith("__torch__.torch.classes.")

    def pickle_build(self, state: Any) -> None:
        """`ScriptObject.__setstate__((state, qualified class name))`."""
        if not (isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], str)):
            raise Malformed("torch.ScriptObject state is not (state, class name)")
        self.state, self.qualname = state


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


def int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if isinstance(value, list):
        value = tuple(value)
    if not isinstance(value, tuple) or len(value) > MAX_DIMS:
        raise Malformed(f"{what} is not a tuple of at most {MAX_DIMS} ints")
    for v in value:
        if type(v) is not int or not -MAX_DIM < v < MAX_DIM:
            raise Malformed(f"{what} holds {v!r}, not a sane int")
    return value
