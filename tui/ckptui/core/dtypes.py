"""Provides the dtype facts every reader needs: names, item sizes, storage classes, safetensors codes.

Item sizes are torch's `element_size()`: packed types (`float4_e2m1fn_x2`, `quint4x2`, `bits4x2`)
count one byte per element because the element is the packed pair.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DType:
    """A torch dtype: canonical name and bytes per element."""

    name: str
    itemsize: int
    floating: bool = False


_CANONICAL = [
    DType("float32", 4, True), DType("float64", 8, True), DType("float16", 2, True),
    DType("bfloat16", 2, True), DType("complex32", 4), DType("complex64", 8),
    DType("complex128", 16), DType("uint8", 1), DType("int8", 1), DType("int16", 2),
    DType("int32", 4), DType("int64", 8), DType("bool", 1), DType("uint16", 2),
    DType("uint32", 4), DType("uint64", 8), DType("quint8", 1), DType("qint8", 1),
    DType("qint32", 4), DType("quint4x2", 1), DType("quint2x4", 1),
    DType("float8_e4m3fn", 1, True), DType("float8_e5m2", 1, True),
    DType("float8_e4m3fnuz", 1, True), DType("float8_e5m2fnuz", 1, True),
    DType("float8_e8m0fnu", 1, True), DType("float4_e2m1fn_x2", 1, True),
    DType("bits1x8", 1), DType("bits2x4", 1), DType("bits4x2", 1), DType("bits8", 1),
    DType("bits16", 2),
    *(DType(f"int{i}", 1) for i in range(1, 8)),
    *(DType(f"uint{i}", 1) for i in range(1, 8)),
]  # fmt: skip

DTYPES: dict[str, DType] = {d.name: d for d in _CANONICAL}
"""Canonical names and torch's aliases (`torch.float`, `torch.half`, ...) -> DType."""
for _alias, _name in {
    "float": "float32", "double": "float64", "half": "float16", "cfloat": "complex64",
    "cdouble": "complex128", "chalf": "complex32", "long": "int64", "int": "int32",
    "short": "int16",
}.items():  # fmt: skip
    DTYPES[_alias] = DTYPES[_name]

STORAGE_DTYPES: dict[str, str] = {
    "torch.FloatStorage": "float32", "torch.DoubleStorage": "float64",
    "torch.HalfStorage": "float16", "torch.BFloat16Storage": "bfloat16",
    "torch.LongStorage": "int64", "torch.IntStorage": "int32", "torch.ShortStorage": "int16",
    "torch.CharStorage": "int8", "torch.ByteStorage": "uint8", "torch.BoolStorage": "bool",
    "torch.ComplexFloatStorage": "complex64", "torch.ComplexDoubleStorage": "complex128",
    "torch.QUInt8Storage": "quint8", "torch.QInt8Storage": "qint8",
    "torch.QInt32Storage": "qint32", "torch.QUInt4x2Storage": "quint4x2",
    "torch.QUInt2x4Storage": "quint2x4",
    "torch.storage.UntypedStorage": "uint8", "torch.UntypedStorage": "uint8",
    "torch.cuda.FloatStorage": "float32", "torch.cuda.HalfStorage": "float16",
    "torch.cuda.DoubleStorage": "float64", "torch.cuda.LongStorage": "int64",
    "torch.cuda.IntStorage": "int32", "torch.cuda.ByteStorage": "uint8",
    "torch.cuda.BFloat16Storage": "bfloat16", "torch.cuda.BoolStorage": "bool",
    "torch.cuda.CharStorage": "int8", "torch.cuda.ShortStorage": "int16",
}  # fmt: skip
"""Storage class named in a persistent id -> the dtype its element count is in."""

SAFETENSORS_DTYPES: dict[str, tuple[str, int, int]] = {
    "BOOL": ("bool", 8, 1), "U8": ("uint8", 8, 1), "I8": ("int8", 8, 1),
    "I16": ("int16", 16, 2), "U16": ("uint16", 16, 2), "F16": ("float16", 16, 2),
    "BF16": ("bfloat16", 16, 2), "I32": ("int32", 32, 4), "U32": ("uint32", 32, 4),
    "F32": ("float32", 32, 4), "F64": ("float64", 64, 8), "I64": ("int64", 64, 8),
    "U64": ("uint64", 64, 8), "C64": ("complex64", 64, 8),
    "F8_E5M2": ("float8_e5m2", 8, 1), "F8_E4M3": ("float8_e4m3fn", 8, 1),
    "E8M0": ("float8_e8m0fnu", 8, 1), "F8_E8M0": ("float8_e8m0fnu", 8, 1),
    "F4": ("float4_e2m1fn_x2", 4, 1), "F6_E2M3": ("float6_e2m3fn", 6, 1),
    "F6_E3M2": ("float6_e3m2fn", 6, 1),
}  # fmt: skip
"""safetensors dtype code -> (torch-style name, bits per element, itemsize shown)."""

SUB_BYTE_NAMES: dict[str, str] = {
    "F4": "float4_e2m1fn", "F6_E2M3": "float6_e2m3fn", "F6_E3M2": "float6_e3m2fn",
}  # fmt: skip
"""safetensors codes of values smaller than a byte, by the name used when no torch dtype can
hold them as stored (F6 always; F4 when its last dimension cannot be paired)."""

SUB_BYTE_BITS: dict[str, int] = {"float4_e2m1fn": 4, "float6_e2m3fn": 6, "float6_e3m2fn": 6}

SAFETENSORS_CODE = {
    dtype: code for code, (dtype, bits, _) in SAFETENSORS_DTYPES.items() if bits >= 8
} | {"float4_e2m1fn_x2": "F4"}  # F4 counts the pair's two values: the writer doubles a dim
"""dtype -> the safetensors code the export writes for it."""
"""Bits per element of those names: their tensors' bytes are elements x bits / 8."""

NUMPY_KINDS = frozenset("fiucbBSUVmMe")


def itemsize_of(name: str) -> int:
    """Bytes per element of a dtype name (1 for unknown names, never 0)."""
    d = DTYPES.get(name)
    return d.itemsize if d else 1


def is_floating(name: str) -> bool:
    """True for floating-point dtypes."""
    d = DTYPES.get(name)
    return bool(d and d.floating)


def contiguous_strides(shape: tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """The row-major strides torch gives a new tensor of `shape`: a zero-size dimension counts
    as 1 (`torch.empty(2, 0, 3).stride()` is `(3, 3, 1)`), as do the dimensions after it."""
    out = [0] * len(shape)
    acc = 1
    for i in range(len(shape) - 1, -1, -1):  # filled from the end: linear in the dims
        out[i] = acc
        acc *= max(shape[i], 1)
    return tuple(out)
