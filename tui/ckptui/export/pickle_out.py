"""Provides `state_dict_pickle`: the `data.pkl` of a `torch.save`d dict of tensors, without torch.

Written opcode by opcode (protocol 2, as torch.save uses): the standard pickler would need the
real `torch._utils._rebuild_tensor_v2` to name it, which means importing torch. The output uses
only what `torch.load(weights_only=True)` allows: `_rebuild_tensor_v2` (or `_rebuild_tensor_v3`
with a dtype for newer dtypes), storage classes in persistent ids, `collections.OrderedDict`
for the empty backward-hooks argument, and torch dtypes; for a quantized model's state dict also
`_rebuild_qtensor` with its qscheme global, and `_metadata` set by BUILD on the OrderedDict.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from ckptui.core.dtypes import DTYPES, STORAGE_DTYPES, contiguous_strides

_CLASSIC = {
    dtype: name.split(".", 1)[1]
    for name, dtype in STORAGE_DTYPES.items()
    if name.count(".") == 1 and name != "torch.UntypedStorage"
}
"""dtype -> storage class name in module `torch` (`float32` -> `FloatStorage`)."""


@functools.cache
def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(s: str) -> bytes:
    raw = s.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if 0 <= n < 65536:
        return b"M" + struct.pack("<H", n)
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _tuple(items: list[bytes]) -> bytes:
    if not items:
        return b")"
    return b"(" + b"".join(items) + b"t"


class _Memo:
    """Pickle's memo, as torch's pickler uses it: a repeated global or string is written once
    and then fetched (BINGET), which keeps a 50,000-tensor `data.pkl` as small as torch's."""

    def __init__(self) -> None:
        self.slots: dict[bytes, int] = {}

    def __call__(self, blob: bytes) -> bytes:
        i = self.slots.get(blob)
        if i is not None:
            return b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i)
        i = self.slots[blob] = len(self.slots)
        return blob + (b"q" + bytes([i]) if i < 256 else b"r" + struct.pack("<I", i))


@dataclass(frozen=True, slots=True)
class TensorOut:
    """One tensor as the output pickle names it: contiguous at offset 0 of storage `key`."""

    dtype: str
    key: str
    elements: int
    """The storage's element count."""
    shape: tuple[int, ...]
    qscheme: str | None = None
    """For a quantized tensor: `per_tensor_affine`, `per_channel_affine`, ..."""
    scale: float = 0.0
    zero_point: int = 0
    axis: int = 0
    channel: tuple[TensorOut, TensorOut] | None = None
    """Per channel: the (scales, zero points) tensors."""


@dataclass(frozen=True, slots=True)
class DtypeOut:
    """A `torch.<dtype>` value (a quantized Linear's `_packed_params.dtype`)."""

    name: str


@dataclass(frozen=True, slots=True)
class NjtOut:
    """A nested jagged tensor: `_rebuild_from_type_v2(_rebuild_njt, NestedTensor,
    ({values, offsets, lengths, _ragged_idx, _metadata_cache},), {})`, as torch.save writes it
    and `torch.load(weights_only=True)` allows it."""

    values: TensorOut
    offsets: TensorOut
    lengths: TensorOut | None
    ragged: int


Value = TensorOut | DtypeOut | NjtOut | tuple["TensorOut | None", ...] | None
"""What a state-dict entry can be: a tensor, a dtype, a tuple of tensors (`_packed_params`,
whose bias may be None) or None."""


def state_dict_pickle(
    entries: list[tuple[str, str, str, int, tuple[int, ...]]] | list[tuple[str, Value]],
    versions: dict[str, int] | None = None,
) -> bytes:
    """Pickle `{name: tensor}` for entries (name, dtype, storage key, storage elements, shape),
    or (name, `Value`) pairs for the richer entries of a quantized model's state dict.

    Every tensor is contiguous at offset 0 of its storage; entries naming one storage key
    share it (torch.load caches storages by key), as tied weights do. With `versions` (module
    prefix -> version) the dict is an OrderedDict carrying them as `_metadata`, as
    `state_dict()` returns it.
    """
    memo = _Memo()
    od = _global("collections", "OrderedDict")
    out = [b"\x80\x02" + (memo(od) + b")R" if versions else b"}") + b"("]  # PROTO 2, a dict
    warm: dict[tuple[str, int, tuple[int, ...]], tuple[bytes, bytes]] = {}
    for entry in entries:
        if len(entry) == 5:  # a plain tensor: no record made, as 100,000 of them are common
            name, dtype, key, elements, shape = entry  # type: ignore[misc]
            # the rebuild call around the storage key, made once per (dtype, elements,
            # shape) when the memo is warm (see `plain_pickle_size`)
            sig = (dtype, elements, shape)
            parts = warm.get(sig)
            if parts is None:
                before = len(memo.slots)
                parts = _tensor_parts(memo, dtype, elements, shape)
                if len(memo.slots) == before:
                    warm[sig] = parts
            out.append(_str(name) + parts[0] + _str(key) + parts[1])
        else:
            name, value = entry  # type: ignore[misc]
            out.append(_str(name) + _value(memo, value))
    out.append(b"u")  # SETITEMS
    if versions:
        # BUILD with {'_metadata': OrderedDict(prefix -> {'version': n})}: weights_only allows
        # BUILD on an OrderedDict, which is how torch's own state dicts carry it
        meta = [_str(k) + b"}" + _str("version") + _int(v) + b"s" for k, v in versions.items()]
        out.append(b"}" + _str("_metadata") + memo(od) + b")R(" + b"".join(meta) + b"usb")
    out.append(b".")  # STOP
    return b"".join(out)


def plain_pickle_size(entries: Iterable[tuple[str, str, str, int, tuple[int, ...]]]) -> int:
    """The exact length of `state_dict_pickle(entries)` for plain entries (name, dtype, storage
    key, storage elements, shape), without building it: `exported_size` asks for it on every
    `why`, and the pickle of 100,000 tensors took 1.3 s to build only to be measured.

    A tensor's rebuild call is the same bytes for every tensor of one (dtype, elements, shape)
    but for its storage key (`_tensor_parts`), once the memo holds every global and string it
    names (later memo entries never renumber earlier ones, so a fetch stays the same length).
    So each such signature's parts are made for real until they add nothing to the memo, and
    from then on their length is reused, plus the key's: `state_dict_pickle` joins the same
    parts with the same memo, so the size is the pickle's by construction.
    """
    memo = _Memo()
    size = 4 + 2  # PROTO 2 + EMPTY_DICT + MARK ... SETITEMS + STOP
    warm: dict[tuple[str, int, tuple[int, ...]], int] = {}
    for name, dtype, key, elements, shape in entries:
        # X + 4-byte length + the UTF-8 name (surrogatepass, as `_str` encodes it)
        size += 5 + (len(name) if name.isascii() else len(name.encode("utf-8", "surrogatepass")))
        key_len = 5 + (len(key) if key.isascii() else len(key.encode("utf-8", "surrogatepass")))
        sig = (dtype, elements, shape)
        known = warm.get(sig)
        if known is None:
            before = len(memo.slots)
            head, tail = _tensor_parts(memo, dtype, elements, shape)
            known = len(head) + len(tail)
            if len(memo.slots) == before:  # a warm memo: the same bytes for every such tensor
                warm[sig] = known
        size += known + key_len
    return size


def _value(memo: _Memo, value: Value) -> bytes:
    if value is None:
        return b"N"
    if isinstance(value, DtypeOut):
        return memo(_global("torch", value.name))
    if isinstance(value, tuple):
        return _tuple([_value(memo, v) for v in value])
    if isinstance(value, NjtOut):
        return _njt(memo, value)
    return _tensor(memo, value)


def _njt(memo: _Memo, nt: NjtOut) -> bytes:
    module = "torch.nested._internal.nested_tensor"
    kwargs = [
        _str("values") + _tensor(memo, nt.values),
        _str("offsets") + _tensor(memo, nt.offsets),
        _str("lengths") + (_tensor(memo, nt.lengths) if nt.lengths is not None else b"N"),
        _str("_ragged_idx") + _int(nt.ragged),
        _str("_metadata_cache") + b"}",  # min/max seqlen: torch computes them again on use
    ]
    args = [
        memo(_global(module, "_rebuild_njt")),
        memo(_global(module, "NestedTensor")),
        b"}(" + b"".join(kwargs) + b"u\x85",  # (kwargs,)
        b"}",  # no state of its own beyond its constructor's arguments
    ]
    return memo(_global("torch._tensor", "_rebuild_from_type_v2")) + _tuple(args) + b"R"


def _tensor(memo: _Memo, t: TensorOut) -> bytes:
    return _tensor_of(memo, t.dtype, t.key, t.elements, t.shape, t if t.qscheme else None)


def _tensor_of(
    memo: _Memo,
    dtype: str,
    key: str,
    elements: int,
    shape: tuple[int, ...],
    t: TensorOut | None = None,
) -> bytes:
    """The rebuild call of a contiguous tensor; `t` gives a quantized one's scheme."""
    head, tail = _tensor_parts(memo, dtype, elements, shape, t)
    return head + _str(key) + tail


def _tensor_parts(
    memo: _Memo,
    dtype: str,
    elements: int,
    shape: tuple[int, ...],
    t: TensorOut | None = None,
) -> tuple[bytes, bytes]:
    """The rebuild call of a contiguous tensor before and after its storage key (the one
    part no other tensor shares): `head + _str(key) + tail`."""
    stride = contiguous_strides(shape)
    classic = dtype in _CLASSIC
    # Newer dtypes (float8, float4, uint16...) are counted in bytes of an untyped storage,
    # named as torch.save names it: weights_only refuses the `torch.UntypedStorage` alias.
    storage_cls = memo(
        _global("torch", _CLASSIC[dtype]) if classic else _global("torch.storage", "UntypedStorage")
    )
    count = elements if classic else elements * _itemsize(dtype)
    # the persistent id ('storage', class, key, 'cpu', count), around the key
    pid_head = b"(" + memo(_str("storage")) + storage_cls
    pid_tail = memo(_str("cpu")) + _int(count) + b"t"
    # a new, empty OrderedDict per tensor (its backward hooks): only the class is shared
    hooks = memo(_global("collections", "OrderedDict")) + b")R"
    args = [
        b"Q",  # BINPERSID, closing the first argument: the storage
        _int(0),
        _tuple([_int(d) for d in shape]),
        _tuple([_int(s) for s in stride]),
    ]
    if t is not None and t.qscheme is not None:
        # _rebuild_qtensor(storage, offset, size, stride, quantizer_params, grad, hooks)
        scheme = memo(_global("torch", t.qscheme))
        if t.channel is not None:
            scales, zero_points = t.channel
            params = [scheme, _tensor(memo, scales), _tensor(memo, zero_points), _int(t.axis)]
        else:
            params = [scheme, b"G" + struct.pack(">d", t.scale), _int(t.zero_point)]
        args += [_tuple(params), b"\x89", hooks]
        rebuild = memo(_global("torch._utils", "_rebuild_qtensor"))
    else:
        args += [b"\x89", hooks]  # requires_grad False
        if classic:
            rebuild = memo(_global("torch._utils", "_rebuild_tensor_v2"))
        else:
            rebuild = memo(_global("torch._utils", "_rebuild_tensor_v3"))
            args.append(memo(_global("torch", dtype)))
    # rebuild + (args) + REDUCE, the args tuple opening with the persistent id's tuple
    return rebuild + b"(" + pid_head, pid_tail + b"".join(args) + b"tR"


def _itemsize(dtype: str) -> int:
    return DTYPES[dtype].itemsize
