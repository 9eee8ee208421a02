"""Provides the reader for `.safetensors` files: the 8-byte header length and the JSON header.

The spec (safetensors' README) is ten lines; reading it directly gives every tensor's byte range,
which the library's own API does not expose. Checks match the library's: header size bound,
known dtypes, offsets inside the data, no holes and no overlaps.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from ckptui.core.dtypes import SAFETENSORS_DTYPES, SUB_BYTE_NAMES
from ckptui.core.tree import Checkpoint, Node, NodeKind, Storage, TensorInfo
from ckptui.formats.source import Source, corrupt
from ckptui.unpickler.recorded import MAX_DIM, MAX_DIMS

MAX_HEADER = 100_000_000
"""safetensors' own limit on the header size."""


def looks_like_safetensors(head: bytes) -> bool:
    """An 8-byte length followed by a JSON object (the length is checked when reading)."""
    if len(head) < 10:
        return False
    (n,) = struct.unpack_from("<Q", head, 0)
    return n >= 2 and head[8:9] == b"{"


def read_safetensors(src: Source) -> Checkpoint:
    """Read a safetensors file's header into a flat mapping of tensors."""
    path = src.path
    (n,) = struct.unpack("<Q", src.read_at(0, 8))
    if n > MAX_HEADER or n > src.size - 8:
        raise corrupt(path, f"safetensors header length {n:,} is larger than the file allows")
    try:
        header = json.loads(src.read_at(8, n))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: JSON, huge ints
        raise corrupt(path, f"safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise corrupt(path, "safetensors header is not a JSON object")
    data_start = 8 + n
    data_len = src.size - data_start
    metadata = header.pop("__metadata__", None)
    if metadata is not None and (
        not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values())
    ):
        raise corrupt(path, "safetensors __metadata__ must map strings to strings")
    children: list[Node] = []
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        info = _tensor(path, name, entry, data_len)
        begin, end = entry["data_offsets"]
        spans.append((begin, end, name))
        src.storages[name] = Storage(
            name,
            info.dtype,
            end - begin,
            "cpu",
            data_offset=data_start + begin,
            record_nbytes=end - begin,
        )
        children.append(Node.make(NodeKind.TENSOR, "torch.Tensor", name, tensor=info))
    spans.sort()
    expected = 0
    for begin, end, name in spans:
        if begin != expected:
            raise corrupt(
                path,
                f"tensor {name!r}: data does not start where the previous ends "
                "(holes or overlaps are invalid)",
            )
        expected = end
    if expected != data_len:
        raise corrupt(
            path,
            f"tensor data ends at {expected:,} but the file holds {data_len:,} "
            "bytes after the header",
        )
    if metadata:
        meta_nodes = tuple(
            Node.make(NodeKind.VALUE, "str", k, value=v) for k, v in metadata.items()
        )
        children.append(Node.make(NodeKind.MAPPING, "__metadata__", "__metadata__", meta_nodes))
    root = Node.make(NodeKind.MAPPING, "safetensors", None, tuple(children))
    info = {"header_bytes": n, "metadata": dict(metadata or {})}
    return Checkpoint(path, "safetensors", src.size, root, dict(src.storages), (), info)


def _tensor(path: str, name: str, entry: Any, data_len: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise corrupt(path, f"tensor {name!r}: header entry is not an object")
    code, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(code, str) or code not in SAFETENSORS_DTYPES:
        raise corrupt(path, f"tensor {name!r}: unknown dtype {code!r}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise corrupt(path, f"tensor {name!r}: shape must be a list of non-negative ints")
    # torch holds at most MAX_DIMS dims, so no longer shape can load; checked first so that
    # a million-long shape costs one len() and never reaches a message or a loop
    if len(shape) > MAX_DIMS or any(d >= MAX_DIM for d in shape):
        raise corrupt(
            path,
            f"tensor {name!r}: shape of {len(shape):,} dims; torch holds at most {MAX_DIMS} "
            f"dims of under 2**62",
        )
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
        or offsets[1] > data_len
    ):
        raise corrupt(path, f"tensor {name!r}: data_offsets {offsets!r} are outside the data")
    dtype, bits, itemsize = SAFETENSORS_DTYPES[code]
    numel = 1
    for d in shape:
        numel *= d
    if (numel * bits) % 8 or numel * bits // 8 != offsets[1] - offsets[0]:
        raise corrupt(
            path,
            f"tensor {name!r}: {offsets[1] - offsets[0]} bytes do not hold shape {shape} of {code}",
        )
    if code == "F4" and shape and shape[-1] % 2 == 0:
        # The header counts 4-bit values; torch's float4_e2m1fn_x2 element is the packed pair
        # (one byte), and safetensors loads `[2, 6]` of F4 as `[2, 3]` of it: show that.
        shape = [*shape[:-1], shape[-1] // 2]
    elif bits < 8:
        # No torch dtype holds these as they are stored (F6; F4 with an odd last dimension):
        # the header's shape, and a name whose bytes count by bits (see dtypes.SUB_BYTE_BITS).
        dtype = SUB_BYTE_NAMES[code]
    stride: list[int] = []
    acc = 1
    for d in reversed(shape):  # appended then reversed: linear, where insert(0) was quadratic
        stride.append(acc)
        acc *= d
    stride.reverse()
    return TensorInfo(tuple(shape), dtype, tuple(stride), name, 0, itemsize, "cpu")
