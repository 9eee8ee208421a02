"""Provides the stable JSON contract of `ckptui inspect --json` (see issue 3).

Plain dicts only; the CLI dumps them. Paths are lists of keys from the root (ints for sequence
indexes), so keys containing dots stay unambiguous.
"""

from __future__ import annotations

from typing import Any

from .model import Checkpoint, Node, NodeKind, Path, TensorInfo


def checkpoint_json(ckpt: Checkpoint) -> dict[str, Any]:
    """The whole contract: path, format, file_bytes, tree, tensors, findings (+ storages, info)."""
    return {
        "path": ckpt.path,
        "format": ckpt.format,
        "file_bytes": ckpt.file_bytes,
        "tree": node_json(ckpt.root),
        "tensors": [tensor_json(ckpt, p, t) for p, t in ckpt.tensors()],
        "findings": [
            {
                "kind": f.kind,
                "severity": f.severity.value,
                "path": None if f.path is None else list(f.path),
                "message": f.message,
            }
            for f in ckpt.findings
        ],
        "storages": [
            {
                "key": s.key,
                "dtype": s.dtype,
                "nbytes": s.nbytes,
                "location": s.location,
                "record": s.record,
                "data_offset": s.data_offset,
                "missing": s.missing,
            }
            for s in ckpt.storages.values()
        ],
        "info": {k: v for k, v in ckpt.info.items() if _jsonable(v)},
    }


def tensor_json(ckpt: Checkpoint, path: Path, t: TensorInfo) -> dict[str, Any]:
    """One entry of `tensors`."""
    st = ckpt.storages.get(t.storage_key) if t.storage_key is not None else None
    out: dict[str, Any] = {
        "path": list(path),
        "shape": list(t.shape),
        "dtype": t.dtype,
        "device": t.device,
        "nbytes": t.nbytes,
        "storage_key": t.storage_key,
        "storage_nbytes": st.nbytes if st else 0,
        "storage_offset": t.storage_offset,
        "stride": list(t.stride),
        "type": t.type,
        "layout": t.layout,
        "requires_grad": t.requires_grad,
        "missing": bool(st and st.missing),
    }
    if t.state_dict_key is not None:
        out["state_dict_key"] = t.state_dict_key
    return out


def node_json(node: Node) -> dict[str, Any]:
    """One node and its children (iterative enough: nesting is bounded by the reader)."""
    out: dict[str, Any] = {"key": node.key, "kind": node.kind.value, "type": node.type}
    if node.kind is NodeKind.VALUE:
        out["value"] = node.value
        if node.text is not None:
            out["text"] = node.text
        if node.nbytes:
            out["nbytes"] = node.nbytes
    elif node.kind is NodeKind.TENSOR and node.tensor is not None:
        t = node.tensor
        out.update(shape=list(t.shape), dtype=t.dtype, device=t.device, nbytes=t.nbytes)
        if t.state_dict_key is not None:
            out["state_dict_key"] = t.state_dict_key
    elif node.kind is NodeKind.REF:
        out["target"] = list(node.target or ())
    elif node.kind is NodeKind.OBJECT:
        out["safety"] = node.safety
    if node.safety == "danger" and node.kind is NodeKind.VALUE:
        out["safety"] = "danger"
    if node.children or node.kind in (NodeKind.MAPPING, NodeKind.SEQUENCE, NodeKind.OBJECT):
        out["children"] = [node_json(c) for c in node.children]
    return out


def _jsonable(v: Any) -> bool:
    return isinstance(v, str | int | float | bool | dict | list) or v is None
