"""Provides ckptui's own stand-ins for the data constructors a checkpoint's pickle calls.

Where `torch.load` would call `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`
and allocate a tensor, ckptui calls a recorder that validates the arguments and keeps only the
metadata. Recorders exist only for pure data constructors (DESIGN.md point 1); anything else stays
a placeholder. Each recorder raises `Malformed` on arguments torch itself would reject.

The recorders live by family in `recorders_torch`, `recorders_builtins` and `recorders_numpy`,
the records they make in `recorded_types`; this module is the allow-list that names them.
"""

from __future__ import annotations

from typing import Any

from ckptui.core.dtypes import DTYPES
from ckptui.unpickler.inert import Recorder
from ckptui.unpickler.recorded import TorchDtype
from ckptui.unpickler.recorders.builtin import (
    codecs_encode,
    dict_like,
    ordered_dict,
    plain_type,
    set_like,
)
from ckptui.unpickler.recorders.numpy_types import (
    numpy_dtype,
    numpy_frombuffer,
    numpy_reconstruct,
    numpy_scalar,
)
from ckptui.unpickler.recorders.torch_types import (
    get_layout,
    jit_build_list,
    load_from_bytes,
    rebuild_from_type_v2,
    rebuild_meta,
    rebuild_nested,
    rebuild_njt,
    rebuild_parameter,
    rebuild_qtensor,
    rebuild_sparse_tensor,
    rebuild_tensor,
    rebuild_tensor_v2,
    rebuild_tensor_v3,
    rebuild_wrapper_subclass,
    script_object,
    torch_device,
    torch_size,
)


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
        "torch.nested._internal.nested_tensor._rebuild_njt": rebuild_njt,
        "torch.serialization._get_layout": get_layout,
        "torch.Size": torch_size,
        "torch.device": torch_device,
        "torch.storage._load_from_bytes": load_from_bytes,
        "torch.ScriptObject": script_object,
        "collections.OrderedDict": ordered_dict,
        "collections.defaultdict": dict_like("collections.defaultdict"),
        "collections.Counter": dict_like("collections.Counter"),
        "builtins.dict": dict_like("dict"),
        "builtins.set": set_like("builtins.set"),
        "builtins.frozenset": set_like("builtins.frozenset"),
        "builtins.complex": plain_type(complex),
        "builtins.int": plain_type(int),
        "builtins.float": plain_type(float),
        "builtins.bytes": plain_type(bytes),
        "builtins.bytearray": plain_type(bytes),
        "_codecs.encode": codecs_encode,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        r[f"{mod}._reconstruct"] = numpy_reconstruct
        r[f"{mod}.scalar"] = numpy_scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        r[f"{mod}._frombuffer"] = numpy_frombuffer
    r["numpy.dtype"] = numpy_dtype
    for f in ("build_intlist", "build_tensorlist", "build_doublelist", "build_boollist",
              "build_tensor_from_id", "restore_type_tag"):  # fmt: skip
        r[f"torch.jit._pickle.{f}"] = jit_build_list
    return r


RECORDERS = build_recorders()


CONSTANTS: dict[str, Any] = {f"torch.{alias}": TorchDtype(d.name) for alias, d in DTYPES.items()}
"""Globals that stand for values: `torch.float32` as used in `_rebuild_tensor_v3`."""


__all__ = ["CONSTANTS", "RECORDERS", "build_recorders"]
