"""Provides the reader for `.safetensors` files: the 8-byte header length and the JSON header.

The spec (safetensors' README) is ten lines; reading it directly gives every tensor's byte range,
which the library's own API does not expose. Checks match the library's: header size bound,
known dtypes, offsets inside the data, no holes and no overlaps.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import Any

from ckptui.core.dtypes import SAFETENSORS_DTYPES, SUB_BYTE_NAMES, contiguous_strides
from ckptui.core.errors import CorruptFile
from ckptui.core.slotinit import maker
from ckptui.core.tree import Checkpoint, Node, NodeKind, Storage, TensorInfo
from ckptui.formats.source import Source, corrupt
from ckptui.unpickler.recorded import MAX_DIM, MAX_DIMS

try:  # parses a 90,000-tensor folder's headers 2x faster; optional, json gives the same values
    import orjson

    _orjson_loads: Any = orjson.loads
except ImportError:  # pragma: no cover - orjson is installed with ckptui
    _orjson_loads = None

MAX_HEADER = 100_000_000
"""safetensors' own limit on the header size."""


def looks_like_safetensors(head: bytes) -> bool:
    """An 8-byte length followed by a JSON object (the length is checked when reading)."""
    if len(head) < 10:
        return False
    (n,) = struct.unpack_from("<Q", head, 0)
    return n >= 2 and head[8:9] == b"{"


def read_safetensors(src: Source, storage_file: str | None = None) -> Checkpoint:
    """Read a safetensors file's header into a flat mapping of tensors.

    Args:
        src: the opened file.
        storage_file: for a shard of a folder, the shard's name in it: storages are then keyed
            `<storage_file>:<tensor name>` with `Storage.file` set, as `formats.folder` keeps
            them, so a 160-shard folder builds each tensor's objects once instead of building
            and then renaming them (issue 16). None: keyed by tensor name, as a file alone.
    """
    path = src.path
    # A local file's header in one pread with its length (a shard of ~600 tensors has a
    # 60 KB header); a URL reads the 8 bytes first, as a range request past them is waste
    first = src.read_at(0, FIRST_READ if src.fd is not None else 8)
    (n,) = struct.unpack_from("<Q", first, 0)
    if n > MAX_HEADER or n > src.size - 8:
        raise corrupt(path, f"safetensors header length {n:,} is larger than the file allows")
    raw = first[8 : 8 + n]
    if len(raw) < n:
        raw += src.read_at(8 + len(raw), n - len(raw))
    if _orjson_loads is not None:
        try:
            header = _orjson_loads(raw)
        except ValueError:  # orjson.JSONDecodeError: json decides below
            pass
        else:
            before = dict(src.storages)
            try:
                return _read_header(src, n, header, storage_file)
            except CorruptFile:
                # orjson reads an integer beyond 64 bits as a float where json reads an int:
                # no such header passes either way, but the message names json's value
                src.storages.clear()
                src.storages.update(before)
    return _read_header(src, n, _parse_header(path, raw), storage_file)


FIRST_READ = 256 << 10
"""Bytes a local file's first read takes: its header's length and, mostly, the header."""


def _read_header(src: Source, n: int, header: Any, storage_file: str | None) -> Checkpoint:
    """`read_safetensors` once the `n`-byte header is parsed."""
    path = src.path
    if not isinstance(header, dict):
        raise corrupt(path, "safetensors header is not a JSON object")
    data_start = 8 + n
    data_len = src.size - data_start
    metadata = header.pop("__metadata__", None)
    _check_metadata(path, metadata)
    children: list[Node] = []
    storages = src.storages
    prefix = "" if storage_file is None else f"{storage_file}:"
    tensor_kind = NodeKind.TENSOR
    for name, described, begin in _entries(path, header, data_len):
        shape_t, dtype, stride, itemsize, nbytes = described
        skey = prefix + name if prefix else name
        storages[skey] = _storage(
            skey, dtype, nbytes, "cpu", storage_file, None, data_start + begin, nbytes
        )
        info = _tensor_info(shape_t, dtype, stride, skey, 0, itemsize, "cpu")
        # what Node.make does for a tensor without rare fields, without its checks
        children.append(_node(tensor_kind, "torch.Tensor", name, (), info, None))
    if metadata:
        meta_nodes = tuple(
            Node.make(NodeKind.VALUE, "str", k, value=v) for k, v in metadata.items()
        )
        children.append(Node.make(NodeKind.MAPPING, "__metadata__", "__metadata__", meta_nodes))
    root = Node.make(NodeKind.MAPPING, "safetensors", None, tuple(children))
    info: dict[str, Any] = {"header_bytes": n, "metadata": dict(metadata or {})}
    if storage_file is not None:
        info["storage_file"] = storage_file
    return Checkpoint(path, "safetensors", src.size, root, dict(storages), (), info)


Row = tuple[tuple[int, ...], str, int]
"""(shape, dtype, file offset of its first byte) of one tensor as the reader reads it."""


def header_rows(path: str, header: Any, data_len: int, data_start: int) -> dict[str, Row]:
    """name -> `Row` of every tensor of a parsed header, checked by the reader's own rules
    (`_describe` for each entry, `__metadata__` strings, no holes or overlaps, the data's
    end), without building the tree: what an export's verification needs of the file it has
    just written (`export.run`), whose 100,000 tensors the reader would build objects for.

    Raises:
        CorruptFile: what `read_safetensors` would raise for the same header.
    """
    if not isinstance(header, dict):
        raise corrupt(path, "safetensors header is not a JSON object")
    _check_metadata(path, header.get("__metadata__"))
    return {
        name: (described[0], described[1], data_start + begin)
        for name, described, begin in _entries(path, header, data_len)
    }


def _check_metadata(path: str, metadata: Any) -> None:
    """`__metadata__`, when present, must map strings to strings (as safetensors insists)."""
    if metadata is not None and (
        not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values())
    ):
        raise corrupt(path, "safetensors __metadata__ must map strings to strings")


def _entries(
    path: str, header: dict[str, Any], data_len: int
) -> Iterator[tuple[str, _Described, int]]:
    """(name, what `_describe` makes of it, offset of its data after the header) of each
    tensor entry of `header` (`__metadata__` skipped), each checked as it goes by; after the
    last, that the data has no holes or overlaps and ends where the file does. The reader and
    an export's verification (`header_rows`) check a header by these same rules.

    Raises:
        CorruptFile: at the first entry, hole, overlap or end that is wrong.
    """
    # (dtype code, repr of the shape) -> what `_describe` made of them: an MoE shard holds
    # hundreds of tensors of a few shapes, and each costs a dict lookup instead of a validation
    # (issue 16). The repr, not a tuple: JSON's 4.0 and true equal 4 and 1 as keys do, and the
    # full check refuses them, while a repr is the same only for the same list of ints.
    seen: dict[tuple[str, str], _Described] = {}
    # The writers put the data in header order, so holes and overlaps are checked as the
    # entries go by: `expected` is where the next one must begin. An entry out of order
    # leaves the check to the sort after the loop, which gives the same answer for any order.
    expected = 0
    ordered = True
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        described = None
        if type(entry) is dict:
            code, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
            if type(code) is str and type(shape) is list:
                described = seen.get((code, repr(shape)))
        if (
            described is None
            or type(offsets) is not list
            or len(offsets) != 2
            or type(begin := offsets[0]) is not int
            or type(end := offsets[1]) is not int
            or not 0 <= begin <= end <= data_len
            or end - begin != described[4]
        ):  # inline, not a helper: it runs per tensor
            described = _describe(path, name, entry, data_len)  # raises the exact problem
            seen[entry["dtype"], repr(entry["shape"])] = described
            begin, end = entry["data_offsets"]
        if begin != expected:
            ordered = False
        expected = end
        yield name, described, begin
    if not ordered:
        expected = _check_spans(path, {k: v for k, v in header.items() if k != "__metadata__"})
    if expected != data_len:
        raise corrupt(
            path,
            f"tensor data ends at {expected:,} but the file holds {data_len:,} "
            "bytes after the header",
        )


def parse_header(path: str, raw: bytes) -> Any:
    """The JSON header as `read_safetensors` parses it: orjson, or json where orjson refuses
    it. (A header that only json reads right, integers beyond 64 bits, passes neither's checks.)

    Raises:
        CorruptFile: not valid JSON.
    """
    if _orjson_loads is not None:
        try:
            return _orjson_loads(raw)
        except ValueError:  # orjson.JSONDecodeError: json decides
            pass
    return _parse_header(path, raw)


def _check_spans(path: str, header: dict[str, Any]) -> int:
    """Where the data of `header`'s entries (all checked) ends, sorted by offset, raising at
    the first hole or overlap; for a header whose entries are not in data order."""
    spans = sorted((*entry["data_offsets"], name) for name, entry in header.items())
    expected = 0
    for begin, end, name in spans:
        if begin != expected:
            raise corrupt(
                path,
                f"tensor {name!r}: data does not start where the previous ends "
                "(holes or overlaps are invalid)",
            )
        expected = end
    return expected


# the objects of every tensor, built at half a constructor call's cost (`core.slotinit`)
_storage = maker(Storage)
_tensor_info = maker(TensorInfo)
_node = maker(Node)

_Described = tuple[tuple[int, ...], str, tuple[int, ...], int, int]
"""(shape, dtype, stride, itemsize, nbytes) of a header entry, as the TensorInfo takes them."""


def _parse_header(path: str, raw: bytes) -> Any:
    """The JSON header, by the stdlib parser: what decides when orjson (2x faster, tried
    first by `read_safetensors`) refuses a header (NaN, lone surrogates, a UTF-8 BOM, 1e400)
    or reads it otherwise (integers beyond 64 bits become floats)."""
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: JSON, huge ints
        raise corrupt(path, f"safetensors header is not valid JSON ({e})") from None


def _describe(path: str, name: str, entry: Any, data_len: int) -> _Described:
    """The checked entry's (shape, dtype, stride, itemsize, nbytes).

    Raises:
        CorruptFile: naming the tensor and what is wrong with its entry.
    """
    t = _tensor(path, name, entry, data_len)
    begin, end = entry["data_offsets"]
    return t.shape, t.dtype, t.stride, t.itemsize, end - begin


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
    stride = contiguous_strides(shape)
    return TensorInfo(tuple(shape), dtype, stride, name, 0, itemsize, "cpu")
