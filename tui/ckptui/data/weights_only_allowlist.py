"""Provides what torch's weights-only unpickler accepts, as data, so ckptui can answer "would
`torch.load(path, weights_only=True)` load this?" without importing torch.

Taken from torch 2.13 (`torch/_weights_only_unpickler.py`: `_get_allowed_globals`, the modules
that call `add_safe_globals` when imported, `_blocklisted_modules`, the opcodes its `load` loop
handles) and `torch/_utils.py` (the Python 2 name tables it applies to GLOBAL). A test compares
every table here with the installed torch, so a torch upgrade that changes them fails loudly.

It also holds ckptui's judgement of the globals torch refuses: which ones are benign data
(allowing them builds values, runs no code of the file's choosing).
"""

from __future__ import annotations

TORCH_VERSION = "2.13"
"""The torch release these tables were taken from."""

_STORAGE_KINDS = (
    "BFloat16", "Bool", "Byte", "Char", "ComplexDouble", "ComplexFloat", "Double", "Float",
    "Half", "Int", "Long", "Short",
)  # fmt: skip
_QUANTIZED_STORAGES = ("QInt32", "QInt8", "QUInt2x4", "QUInt4x2", "QUInt8")
_TENSOR_KINDS = ("BFloat16", "Bool", "Byte", "Char", "Double", "Float", "Half", "Int", "Long",
                 "Short")  # fmt: skip
_SPARSE_KINDS = ("BFloat16", "Byte", "Char", "Double", "Float", "Half", "Int", "Long", "Short")
_DTYPES = (
    "bfloat16", "bits16", "bits1x8", "bits2x4", "bits4x2", "bits8", "bool", "complex128",
    "complex32", "complex64", "float16", "float32", "float4_e2m1fn_x2", "float64",
    "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float8_e8m0fnu",
    "int16", "int32", "int64", "int8", "qint32", "qint8", "quint2x4", "quint4x2", "quint8",
    "uint16", "uint32", "uint64", "uint8",
    *(f"int{n}" for n in range(1, 8)), *(f"uint{n}" for n in range(1, 8)),
)  # fmt: skip

TENSOR_REBUILDS = frozenset(
    f"torch._utils.{f}"
    for f in (
        "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_qtensor",
        "_rebuild_sparse_tensor", "_rebuild_meta_tensor_no_storage", "_rebuild_nested_tensor",
        "_rebuild_wrapper_subclass", "_rebuild_device_tensor_from_numpy",
        "_rebuild_device_tensor_from_cpu_tensor",
    )
)  # fmt: skip
PARAMETER_REBUILDS = frozenset(
    {"torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state"}
)

ALLOWED: frozenset[str] = frozenset(
    {
        "collections.OrderedDict", "collections.Counter", "torch.nn.parameter.Parameter",
        "torch.serialization._get_layout", "torch.Size", "torch.Tensor", "torch.device",
        "_codecs.encode", "builtins.bytearray", "builtins.set", "builtins.complex",
        "torch._tensor._rebuild_from_type_v2",
        "torch.storage.TypedStorage", "torch.storage.UntypedStorage",
        "torch.per_tensor_affine", "torch.per_tensor_symmetric", "torch.per_channel_affine",
        "torch.per_channel_symmetric", "torch.per_channel_affine_float_qparams",
        *TENSOR_REBUILDS, *PARAMETER_REBUILDS,
        *(f"torch.{d}" for d in _DTYPES),
        *(f"torch.{k}Storage" for k in (*_STORAGE_KINDS, *_QUANTIZED_STORAGES)),
        *(f"torch.cuda.{k}Storage" for k in _STORAGE_KINDS),
        *(f"torch.{k}Tensor" for k in _TENSOR_KINDS),
        *(f"torch.cuda.{k}Tensor" for k in _TENSOR_KINDS),
        *(f"torch.sparse.{k}Tensor" for k in _SPARSE_KINDS),
        *(f"torch.cuda.sparse.{k}Tensor" for k in _SPARSE_KINDS),
    }
)  # fmt: skip
"""`torch._weights_only_unpickler._get_allowed_globals()`: accepted by every torch.load."""

ALLOWED_AFTER_IMPORT_TORCH: frozenset[str] = frozenset(
    {
        "torch.nested._internal.nested_tensor.NestedTensor",
        "torch.nested._internal.nested_tensor._rebuild_njt",
        "torch.distributed._mesh_layout._FlatLayout",
        "torch.distributed._mesh_layout._MeshLayout",
    }
)
"""Registered with `add_safe_globals` by modules that `import torch` itself imports."""

NEEDS_IMPORT: dict[str, str] = {
    **{
        name: "torch.distributed.tensor"
        for name in (
            "torch.distributed.device_mesh.DeviceMesh",
            "torch.distributed.tensor.DTensor",
            "torch.distributed.tensor._dtensor_spec.DTensorSpec",
            "torch.distributed.tensor._dtensor_spec.ShardOrderEntry",
            "torch.distributed.tensor._dtensor_spec.TensorMeta",
            "torch.distributed.tensor.placement_types.Partial",
            "torch.distributed.tensor.placement_types.Replicate",
            "torch.distributed.tensor.placement_types.Shard",
            "torch.distributed.tensor.placement_types._StridedShard",
        )
    },
    "torch._dynamo.decorators._DimRange": "torch._dynamo",
    "torch.distributed._serialization._Entry": "torch.distributed._serialization",
}
"""Torch's own classes that torch.load accepts once the module named here has been imported
(it registers them); refused before."""

BLOCKED_MODULES = frozenset({"sys", "os", "posix", "nt"})
"""`_blocklisted_modules`: refused even when allow-listed."""

SUPPORTED_OPCODES = frozenset(b"c\x81Rbaesu(t\x85\x86\x87N\x89\x88)]}\x8fJKMGXUQhjqr\x8a\x80.")
"""The opcodes the weights-only `Unpickler.load` handles; any other fails the load
("Unsupported operand"). torch.save writes protocol 2, which needs no others."""

IMPORT_MAPPING: dict[str, str] = {
    "__builtin__": "builtins", "copy_reg": "copyreg", "Queue": "queue", "repr": "reprlib",
    "_abcoll": "collections.abc", "UserDict": "collections", "UserList": "collections",
    "UserString": "collections", "whichdb": "dbm", "StringIO": "io", "cStringIO": "io",
}  # fmt: skip
"""`torch._utils.IMPORT_MAPPING`: Python 2 module names, as the weights-only GLOBAL maps them."""

NAME_MAPPING: dict[tuple[str, str], tuple[str, str]] = {
    ("__builtin__", "xrange"): ("builtins", "range"),
    ("__builtin__", "reduce"): ("functools", "reduce"),
    ("__builtin__", "intern"): ("sys", "intern"),
    ("__builtin__", "unichr"): ("builtins", "chr"),
    ("__builtin__", "unicode"): ("builtins", "str"),
    ("__builtin__", "long"): ("builtins", "int"),
    ("itertools", "izip"): ("builtins", "zip"),
    ("itertools", "imap"): ("builtins", "map"),
    ("itertools", "ifilter"): ("builtins", "filter"),
    ("itertools", "ifilterfalse"): ("itertools", "filterfalse"),
    ("itertools", "izip_longest"): ("itertools", "zip_longest"),
    ("UserDict", "IterableUserDict"): ("collections", "UserDict"),
    ("UserList", "UserList"): ("collections", "UserList"),
    ("UserString", "UserString"): ("collections", "UserString"),
    ("__builtin__", "basestring"): ("builtins", "str"),
    ("exceptions", "StandardError"): ("builtins", "Exception"),
    ("UserDict", "UserDict"): ("collections", "UserDict"),
}
"""`torch._utils.NAME_MAPPING` (a subset of pickle's own `_compat_pickle` table)."""

# -- ckptui's judgement of refused globals ------------------------------------------------------
_NUMPY = "a numpy array, scalar or dtype: rebuilt from bytes, runs no code of the file's"
_NUMPY_RNG = "numpy random-generator state: rebuilds a generator from numbers"
BENIGN: dict[str, str] = {
    "argparse.Namespace": "a plain bag of attributes (training arguments)",
    "numpy.ndarray": _NUMPY,
    "numpy.dtype": _NUMPY,
    **{f"numpy.{c}.multiarray.{f}": _NUMPY for c in ("core", "_core")
       for f in ("_reconstruct", "scalar")},
    **{f"numpy.{c}.numeric._frombuffer": _NUMPY for c in ("core", "_core")},
    **{f"numpy.random._pickle.{f}": _NUMPY_RNG for f in
       ("__generator_ctor", "__bit_generator_ctor", "__randomstate_ctor")},
    "numpy.random.bit_generator.__pyx_unpickle_SeedSequence": _NUMPY_RNG,
    **{f"datetime.{c}": "a date, time or duration" for c in
       ("datetime", "date", "time", "timedelta", "timezone")},
    "decimal.Decimal": "a decimal number",
    "fractions.Fraction": "a fraction",
    "uuid.UUID": "a UUID",
    **{f"pathlib{m}.{c}": "a file-system path (a value; nothing is opened)"
       for m in ("", "._local") for c in
       ("Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath")},
    "collections.defaultdict": "a dict with a default factory (itself judged separately)",
    "collections.deque": "a double-ended queue of values",
    **{f"builtins.{b}": "a built-in value or data type" for b in
       ("frozenset", "bytes", "range", "slice", "Ellipsis", "NotImplemented", "list", "dict",
        "tuple", "str", "int", "float", "bool", "object")},
    "functools.partial": "binds arguments to a function without calling it "
    "(the function is judged separately)",
    "copyreg._reconstructor": "rebuilds an instance of a class named separately "
    "(Python 2 and protocol 0/1 pickles)",
    "re._compile": "a compiled regular expression",
}  # fmt: skip
"""Refused by torch, harmless to allow: name -> why."""

BENIGN_PREFIXES: tuple[tuple[str, str], ...] = (
    ("numpy.dtypes.", _NUMPY),
    ("numpy.random.", _NUMPY_RNG),  # classes only (the caller checks): PCG64, MT19937, ...
)

STABLE_NAMES = frozenset(
    {"argparse.Namespace", "numpy.ndarray", "numpy.dtype", "decimal.Decimal", "uuid.UUID",
     "fractions.Fraction", "collections.defaultdict", "collections.deque"}
    | {f"datetime.{c}" for c in ("datetime", "date", "time", "timedelta", "timezone")}
)  # fmt: skip
"""Names whose object's `__module__.__qualname__` is that same name on every Python and numpy
version, so `safe_globals([obj])` matches the file; for others (numpy 1 wrote `numpy.core...`,
numpy 2 defines `numpy._core...`; Python 3.13 moved pathlib's classes) the fix line uses the
`(obj, "name.in.file")` form. `builtins.*` are stable too."""

NUMPY_DTYPE_CLASSES: dict[str, str] = {
    "f2": "Float16DType", "f4": "Float32DType", "f8": "Float64DType", "f16": "LongDoubleDType",
    "i1": "Int8DType", "i2": "Int16DType", "i4": "Int32DType", "i8": "Int64DType",
    "u1": "UInt8DType", "u2": "UInt16DType", "u4": "UInt32DType", "u8": "UInt64DType",
    "b1": "BoolDType", "c8": "Complex64DType", "c16": "Complex128DType",
    "c32": "CLongDoubleDType", "U": "StrDType", "S": "BytesDType", "V": "VoidDType",
    "O": "ObjectDType", "M8": "DateTime64DType", "m8": "TimeDelta64DType",
}  # fmt: skip
"""The class (numpy >= 1.25, `numpy.dtypes`) of `numpy.dtype(code)`, by the code numpy pickles
(`U`, `S`, `V`, `O` followed by a size). torch's BUILD on a dtype needs that class allow-listed,
although the pickle never names it."""

LOWERCASE_CLASSES = frozenset(
    {"collections.defaultdict", "collections.deque", "datetime.datetime", "datetime.date",
     "datetime.time", "datetime.timedelta", "datetime.timezone"}
    | {f"builtins.{b}" for b in ("frozenset", "bytes", "range", "slice", "list", "dict", "tuple",
                                 "str", "int", "float", "bool", "object", "set", "complex",
                                 "bytearray")}
)  # fmt: skip
"""Classes whose names are not CapWords: calling one makes an instance of it, and
`safe_globals([obj])` keys it by that same name (unlike `builtins.Ellipsis`, a value)."""
