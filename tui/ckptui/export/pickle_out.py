"""Provides `state_dict_pickle`: the `data.pkl` of a `torch.save`d dict of tensors, without torch.

Written opcode by opcode (protocol 2, as torch.save uses): the standard pickler would need the
real `torch._utils._rebuild_tensor_v2` to name it, which means importing torch. The output uses
only what `torch.load(weights_only=True)` allows: `_rebuild_tensor_v2` (or `_rebuild_tensor_v3`
with a dtype for newer dtypes), storage classes in persistent ids, `collections.OrderedDict`
for the empty backward-hooks argument, and torch dtypes.
"""

from __future__ import annotations

import struct

from ckptui.core.dtypes import STORAGE_DTYPES

_CLASSIC = {
    dtype: name.split(".", 1)[1]
    for name, dtype in STORAGE_DTYPES.items()
    if name.count(".") == 1 and name != "torch.UntypedStorage"
}
"""dtype -> storage class name in module `torch` (`float32` -> `FloatStorage`)."""


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


def state_dict_pickle(entries: list[tuple[str, str, str, int, tuple[int, ...]]]) -> bytes:
    """Pickle `{name: tensor}` for entries (name, dtype, storage key, storage elements, shape).

    Every tensor is contiguous at offset 0 of its storage; entries naming one storage key
    share it (torch.load caches storages by key), as tied weights do.
    """
    memo = _Memo()
    out = [b"\x80\x02}("]  # PROTO 2, EMPTY_DICT, MARK
    for name, dtype, key, elements, shape in entries:
        stride: list[int] = []
        acc = 1
        for d in reversed(shape):
            stride.insert(0, acc)
            acc *= d
        classic = dtype in _CLASSIC
        # Newer dtypes (float8, float4, uint16...) are counted in bytes of an untyped storage,
        # named as torch.save names it: weights_only refuses the `torch.UntypedStorage` alias.
        storage_cls = memo(
            _global("torch", _CLASSIC[dtype])
            if classic
            else _global("torch.storage", "UntypedStorage")
        )
        count = elements if classic else elements * _itemsize(dtype)
        pid = [memo(_str("storage")), storage_cls, _str(key), memo(_str("cpu")), _int(count)]
        # a new, empty OrderedDict per tensor (its backward hooks): only the class is shared
        hooks = memo(_global("collections", "OrderedDict")) + b")R"
        args = [
            _tuple(pid) + b"Q",
            _int(0),
            _tuple([_int(d) for d in shape]),
            _tuple([_int(s) for s in stride]),
            b"\x89",  # requires_grad False
            hooks,
        ]
        if classic:
            rebuild = memo(_global("torch._utils", "_rebuild_tensor_v2"))
        else:
            rebuild = memo(_global("torch._utils", "_rebuild_tensor_v3"))
            args.append(memo(_global("torch", dtype)))
        out.append(_str(name) + rebuild + _tuple(args) + b"R")
    out.append(b"u.")  # SETITEMS, STOP
    return b"".join(out)


def _itemsize(dtype: str) -> int:
    from ckptui.core.dtypes import DTYPES

    return DTYPES[dtype].itemsize
