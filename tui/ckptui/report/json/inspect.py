"""Provides the stable JSON contract of `ckptui inspect --json` (see issue 3).

The document is written as a stream of text pieces (`iter_json`), so a checkpoint with a million
nodes never exists twice in memory (once as nodes, once as dicts); `checkpoint_json` parses the
same stream for callers that want dicts, so there is one definition of the contract. Paths are
lists of keys from the root (ints for sequence indexes), so keys containing dots stay
unambiguous. An object the pickle holds several times is written once; each later occurrence is
a `ref` entry naming the path of the first (README, "inspect --json").
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from json.encoder import encode_basestring_ascii
from typing import Any

from ckptui.analysis.frameworks import detect
from ckptui.analysis.training.facts import training_facts
from ckptui.core.bulk import gc_paused
from ckptui.core.tree import Checkpoint, KeyPath, Node, NodeKind, TensorInfo
from ckptui.report.json.training import training_json

_enc = json.JSONEncoder(ensure_ascii=True, allow_nan=False).encode


def _scalar(v: Any) -> str:
    """`_enc(v)`, without the encoder's call chain for the keys and values a tree is made of:
    for a `str` its `encode` is `encode_basestring_ascii`, for an exact int `int.__repr__`."""
    cls = v.__class__
    if cls is str:
        return encode_basestring_ascii(v)
    if cls is int:
        return int.__repr__(v)
    if v is None:
        return "null"
    return _enc(v)


_TYPES: dict[str, str] = {}
"""`_enc` of each node type met: a tree has a few types and 100,000 nodes."""


def _type(name: str) -> str:
    text = _TYPES.get(name)
    if text is None:
        text = _scalar(name)
        if len(_TYPES) < 4096:  # a crafted pickle's thousands of class names: not all kept
            _TYPES[name] = text
    return text


try:  # a C encoder ten times faster on lists of dicts; optional, json gives the same document
    import orjson

    _orjson_dumps: Any = orjson.dumps
except ImportError:  # pragma: no cover - orjson is installed with ckptui
    _orjson_dumps = None

_BATCH = 2000
"""Tensors (or storages) encoded per call: one call per entry cost more than the encoding on a
100,000-tensor file, one call for all would hold every entry's dict at once."""


def _dumps(value: Any) -> bytes:
    """`value` as UTF-8 JSON: orjson when it can (it refuses ints beyond 64 bits and lone
    surrogates, which the stdlib encoder writes, as ASCII), else the stdlib encoder."""
    if _orjson_dumps is not None:
        try:
            return _orjson_dumps(value)
        except TypeError:  # orjson.JSONEncodeError is a TypeError
            pass
    return _enc(value).encode()


def _items(value: Any) -> bytes | memoryview:
    """The items of a list `value` as JSON, without its brackets: for a full batch a view of
    `_dumps`'s bytes, not a copy (a 100,000-tensor file's rows are 40 MB of them); for a few
    rows (an optimizer state's three tensors, 30,000 times) a slice, cheaper than a view."""
    out = _dumps(value)
    return out[1:-1] if len(out) < 4096 else memoryview(out)[1:-1]


def _array(items: Iterator[Any]) -> Iterator[bytes | memoryview]:
    """A JSON array of `items`, encoded `_BATCH` at a time."""
    yield b"["
    batch: list[Any] = []
    first = True
    for item in items:
        batch.append(item)
        if len(batch) == _BATCH:
            if not first:
                yield b", "
            yield _items(batch)
            first = False
            batch = []
    if batch:
        if not first:
            yield b", "
        yield _items(batch)
    yield b"]"


def checkpoint_json(ckpt: Checkpoint) -> dict[str, Any]:
    """The whole contract as dicts: path, format, file_bytes, bytes_read, tree, tensors, ..."""
    return json.loads(b"".join(iter_json(ckpt)))


def iter_json(ckpt: Checkpoint) -> Iterator[bytes | memoryview]:
    """The contract as UTF-8 JSON, in pieces (bytes, or views of them: write them as they
    come). Bytes, not text: the rows come from orjson as UTF-8, and decoding 70 MB of them
    for stdout to encode again cost two copies of the document (issue 16)."""
    with gc_paused():  # a dict per tensor row, none in a cycle (`core.bulk`)
        yield from _iter_json(ckpt)


def _iter_json(ckpt: Checkpoint) -> Iterator[bytes | memoryview]:
    yield (
        f'{{"path": {_enc(ckpt.path)}, "format": {_enc(ckpt.format)}, '
        f'"file_bytes": {ckpt.file_bytes}, "bytes_read": {_enc(bytes_read(ckpt))}, "tree": '
    ).encode()
    yield from _node(ckpt.root)
    yield b', "tensors": '
    yield from _array(_tensor_rows(ckpt))
    yield b', "findings": '
    yield _enc(
        [
            {
                "kind": f.kind,
                "severity": f.severity.value,
                "path": None if f.path is None else list(f.path),
                "message": f.message,
            }
            for f in ckpt.findings
        ]
    ).encode()
    yield b', "storages": '
    yield from _array(
        {
            "key": s.key,
            "dtype": s.dtype,
            "nbytes": s.nbytes,
            "location": s.location,
            "record": s.record,
            "data_offset": s.data_offset,
            "missing": s.data_offset is None and s.record_nbytes is None,  # `Storage.missing`
            "file": s.file,
        }
        for s in ckpt.storages.values()
    )
    info = {k: v for k, v in ckpt.info.items() if _jsonable(v) and k != "bytes_read"}
    tail = [f', "info": {_enc(info)}, "framework": {_enc(framework_json(ckpt))}']
    tail += [
        f", {_enc(key)}: {_enc(value)}"
        for key, value in training_json(training_facts(ckpt)).items()
    ]
    tail.append("}")
    yield "".join(tail).encode()


def bytes_read(ckpt: Checkpoint) -> int | None:
    """`bytes_read`: bytes fetched from the server to open a remote checkpoint (a URL), or null
    for a local file, whose reads are memory-mapped page-cache hits that cost no transfer and that
    ckptui does not count."""
    value = ckpt.info.get("bytes_read")
    return value if isinstance(value, int) else None


def framework_json(ckpt: Checkpoint) -> dict[str, Any] | None:
    """`framework`: who wrote the file, or null. `{"name": "lightning", "version": "2.6.6",
    "parts": [{"path": ["state_dict"], "label": "model weights", "kind": "weights"}, ...],
    "optimizers": [["optimizer_states", 0], ...], "progress": {"epoch": 3, "step": 1200}}`."""
    framework = detect(ckpt)
    if framework is None:
        return None
    return {
        "name": framework.name,
        "version": framework.version,
        "parts": [
            {"path": list(p.path), "label": p.label, "kind": p.kind} for p in framework.parts
        ],
        "optimizers": [list(p) for p in framework.optimizers],
        "progress": dict(framework.progress),
    }


def tensor_json(ckpt: Checkpoint, path: KeyPath, t: TensorInfo) -> dict[str, Any]:
    """One entry of `tensors`."""
    key = t.storage_key
    st = ckpt.storages.get(key) if key is not None else None
    # Tuples, not lists: both encoders write them as arrays, and a 100,000-tensor file made
    # three lists per entry here (issue 16).
    out: dict[str, Any] = {
        "path": path,
        "shape": t.shape,
        "dtype": t.dtype,
        "device": t.device,
        "nbytes": t.nbytes,
        "storage_key": key,
        "storage_nbytes": st.nbytes if st else 0,
        "storage_offset": t.storage_offset,
        "stride": t.stride,
        "type": t.type,
        "layout": t.layout,
        "requires_grad": t.requires_grad,
        "missing": bool(st and st.missing),
        "file": st.file if st else None,  # the shard holding it, relative to the folder
    }
    if t.state_dict_key is not None:
        out["state_dict_key"] = t.state_dict_key
    return out


def _tensor_rows(ckpt: Checkpoint) -> Iterator[dict[str, Any]]:
    """`tensor_json` of every tensor, inlined: at 100,000 tensors the call and the properties
    it reads (`nbytes`, `Storage.missing`) cost more than encoding the row (issue 16)."""
    get = ckpt.storages.get
    prod = math.prod
    for path, t in ckpt.tensors():
        key = t.storage_key
        st = get(key) if key is not None else None
        item = t.itemsize
        out = {
            "path": path,
            "shape": t.shape,
            "dtype": t.dtype,
            "device": t.device,
            "nbytes": prod(t.shape) * item if item != 1 else t.nbytes,  # 1: maybe sub-byte
            "storage_key": key,
            "storage_nbytes": 0 if st is None else st.nbytes,
            "storage_offset": t.storage_offset,
            "stride": t.stride,
            "type": t.type,
            "layout": t.layout,
            "requires_grad": t.requires_grad,
            "missing": st is not None and st.data_offset is None and st.record_nbytes is None,
            "file": None if st is None else st.file,
        }
        if t.state_dict_key is not None:
            out["state_dict_key"] = t.state_dict_key
        yield out


def _node(node: Node) -> Iterator[bytes | memoryview]:
    """One node and its children, as pieces of UTF-8 JSON.

    One loop over an explicit stack rather than a generator per container: a training
    checkpoint's optimizer state is 30,000 small mappings, and the generator made, resumed and
    closed for each cost more than writing it (issue 16). The text is the same as ever:

    - a run of childless tensor children is one batch of `_BATCH` rows at most, encoded
      together (`_tensor_leaf`'s dicts, compact when orjson writes them);
    - every other separator is `", "`; a container is `{fields, "children": [...]}`.
    """
    refs: dict[int, tuple[Any, str, str]] = {}
    if node.kind is NodeKind.REF or not (node.children or node.kind in _CONTAINERS):
        yield _leaf(node, refs).encode()
        return
    tensor, ref, containers = NodeKind.TENSOR, NodeKind.REF, _CONTAINERS
    prod = math.prod
    # pieces not yet yielded: bytes, and views of orjson's bytes for a container's last leaves
    run: list[bytes | memoryview] = [("{" + _fields(node) + ', "children": [').encode()]
    # per open container: its children still to write, and whether none is written yet
    stack: list[list[Any]] = [[iter(node.children), True]]
    leaves: list[dict[str, Any]] = []  # the current run of childless tensors, not yet encoded
    while stack:
        frame = stack[-1]
        descended = False
        for child in frame[0]:
            kind = child.kind
            if kind is tensor and not child.children:
                t = child.value  # `_tensor_leaf` inlined: one per tensor of the file
                item = t.itemsize
                row = {
                    "key": child.key,
                    "kind": "tensor",
                    "type": child.type,
                    "shape": t.shape,
                    "dtype": t.dtype,
                    "device": t.device,
                    "nbytes": prod(t.shape) * item if item != 1 else t.nbytes,
                }
                if t.state_dict_key is not None:
                    row["state_dict_key"] = t.state_dict_key
                leaves.append(row)
                if len(leaves) == _BATCH:  # yielded as they are: not copied into a join
                    if not frame[1]:
                        run.append(b", ")
                    yield b"".join(run)
                    yield _items(leaves)
                    frame[1], leaves, run = False, [], []
                continue
            if leaves:
                if not frame[1]:
                    run.append(b", ")
                run.append(_items(leaves))
                frame[1], leaves = False, []
            if not frame[1]:
                run.append(b", ")
            frame[1] = False
            if kind is ref:
                cached = refs.get(id(child.value))
                if cached is not None and cached[0] is child.value and cached[1] == child.type:
                    # `_leaf`'s cache hit inline: a list of a million refs to one object
                    key = child.key
                    run.append(('{"key": ' + _scalar(key) + cached[2]).encode())
                else:
                    run.append(_leaf(child, refs).encode())
            elif child.children or kind in containers:
                run.append(("{" + _fields(child) + ', "children": [').encode())
                stack.append([iter(child.children), True])
                descended = True
                break
            else:
                run.append(("{" + _fields(child) + "}").encode())
            if len(run) >= _BATCH:
                yield b"".join(run)
                run = []
        if descended:
            continue
        if leaves:  # the container's last children
            if not frame[1]:
                run.append(b", ")
            run.append(_items(leaves))
            leaves = []
        run.append(b"]}")
        stack.pop()
        if len(run) >= _BATCH:
            yield b"".join(run)
            run = []
    yield b"".join(run)


_CONTAINERS = (NodeKind.MAPPING, NodeKind.SEQUENCE, NodeKind.OBJECT)
"""Kinds written with a `children` list even when empty."""
_KIND = {kind: f'"kind": "{kind.value}"' for kind in NodeKind}
"""The `kind` field of each kind (an enum's `.value` is a property: read once, not per node)."""
_REF_CACHE = 4096
"""Reference targets whose encoded text is kept at once (`_leaf`)."""


def _fields(node: Node) -> str:
    """`"key": ..., "kind": ..., "type": ...` and the kind's own fields, without braces."""
    kind = node.kind
    head = f'"key": {_scalar(node.key)}, {_KIND[kind]}, "type": {_type(node.type)}'
    if kind is NodeKind.VALUE:
        head += f', "value": {_scalar(node.value)}'
        extra = node.extra
        if extra is not None:
            if extra.text is not None:
                head += f', "text": {_scalar(extra.text)}'
            if extra.nbytes:
                head += f', "nbytes": {_scalar(extra.nbytes)}'
            if extra.safety == "danger":
                head += ', "safety": "danger"'
    elif kind is NodeKind.TENSOR:
        for name, value in _tensor_fields(node.value).items():
            head += f', "{name}": {_enc(value)}'
    elif kind is NodeKind.OBJECT:
        head += f', "safety": {_scalar(node.safety)}'
    return head


def _leaf(node: Node, refs: dict[int, tuple[Any, str, str]]) -> str:
    """A node written without children. A REF is `{"key", "kind": "ref", "type", "target"}`:
    the path of the object's first occurrence, never the object again; its text after the key
    is the same for every reference to one object, so it is encoded once (`refs`): one dict
    referenced a million times took 42 s and wrote 60 MB (issue 21)."""
    if node.kind is NodeKind.REF:
        # by the target's identity: every ref to one object shares its path tuple, and keys
        # equal as values may differ as JSON (True and 1)
        cached = refs.get(id(node.value))
        if cached is not None and cached[0] is node.value and cached[1] == node.type:
            tail = cached[2]
        else:
            target = _enc(list(node.value or ()))
            tail = f', "kind": "ref", "type": {_enc(node.type)}, "target": {target}}}'
            if len(refs) >= _REF_CACHE:  # many distinct targets: bounded, not one per node
                refs.clear()
            refs[id(node.value)] = (node.value, node.type, tail)
        return '{"key": ' + _scalar(node.key) + tail
    return "{" + _fields(node) + "}"


def _tensor_leaf(node: Node) -> dict[str, Any]:
    """A tensor node without children as `_fields` writes it, as a dict: a 100,000-tensor state
    dict cost six encoder calls per row, a batch of these costs one (issue 16). `_node` has it
    inline; this is its definition, for tests."""
    return {"key": node.key, "kind": "tensor", "type": node.type, **_tensor_fields(node.value)}


def _tensor_fields(t: TensorInfo) -> dict[str, Any]:
    """A tensor node's own fields in the tree: shape, dtype, device, nbytes (state_dict_key)."""
    out: dict[str, Any] = {
        "shape": list(t.shape),
        "dtype": t.dtype,
        "device": t.device,
        "nbytes": t.nbytes,
    }
    if t.state_dict_key is not None:
        out["state_dict_key"] = t.state_dict_key
    return out


def _jsonable(v: Any) -> bool:
    return isinstance(v, str | int | float | bool | dict | list) or v is None
