"""Provides the recorders for numpy's reduce functions: arrays, dtypes and scalars.

numpy values pickled inline (in optimizer state, RNG state, training args) are recorded as
`recorded_types` metadata; scalars of plain numeric dtypes are decoded with `struct`.
"""

from __future__ import annotations

import struct
from typing import Any

from ckptui.unpickler.inert import InertUnpickler, Malformed
from ckptui.unpickler.recorded import NumpyArray, NumpyDtype, NumpyScalar


def numpy_reconstruct(u: InertUnpickler, args: tuple[Any, ...]) -> NumpyArray:
    """`numpy...multiarray._reconstruct(ndarray, (0,), b'b')`; BUILD fills it in."""
    return NumpyArray()


def numpy_frombuffer(u: InertUnpickler, args: tuple[Any, ...]) -> NumpyArray:
    """`numpy...numeric._frombuffer(buf, dtype, shape, order)` (protocol 5 numpy pickles)."""
    if len(args) != 4 or not isinstance(args[1], NumpyDtype):
        raise Malformed("_frombuffer takes (buffer, dtype, shape, order)")
    a = NumpyArray()
    a.pickle_build((1, args[2], args[1], False, b""))
    return a


def numpy_dtype(u: InertUnpickler, args: tuple[Any, ...]) -> NumpyDtype:
    """`numpy.dtype('f8', False, True)`."""
    if not args or not isinstance(args[0], str):
        raise Malformed("numpy.dtype takes a type code")
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
        raise Malformed("numpy scalar takes a dtype")
    dt = args[0]
    raw = args[1] if len(args) > 1 else None
    code = dt.name.lstrip("<>=|")
    fmt = _SCALAR_FORMATS.get(code)
    value: Any = None
    if fmt and isinstance(raw, bytes) and len(raw) == struct.calcsize(fmt):
        order = ">" if dt.byteorder == ">" else "<"
        value = struct.unpack(order + fmt, raw)[0]
    return NumpyScalar(code, value)
