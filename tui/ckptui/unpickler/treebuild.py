"""Provides the conversion of the inert unpickler's objects into the frozen `Node` tree.

An object reached a second time (through the pickle's memo) becomes a REF node naming the path of
its first occurrence, so a pickle that references one container a million times costs a million
small nodes, never a million copies. Nesting is bounded. Placeholder `torch.nn.Module`s from
whole-module pickles get their parameters and persistent buffers named as `state_dict()` would.
"""

from __future__ import annotations

import math
from typing import Any

from ckptui.core.dtypes import itemsize_of
from ckptui.core.tree import Key, KeyPath, Node, NodeKind, TensorInfo, new_node, new_tensor_info
from ckptui.unpickler.inert import Blob, Global, PDict, PObject, PSet
from ckptui.unpickler.recorded import (
    NumpyArray,
    NumpyDtype,
    NumpyScalar,
    ScriptObjectRec,
    StorageRef,
    TensorRec,
    TorchDtype,
)
from ckptui.unpickler.safety import Safety

MAX_DEPTH = 200


class TreeBuilder:
    """Builds nodes from unpickled objects; remembers where globals and modules were seen."""

    def __init__(self) -> None:
        self._seen: dict[int, tuple[KeyPath, str]] = {}
        """id of each compound object shown -> (its first path, its type name)."""
        self._keep: list[Any] = []  # keeps ids stable while building
        self.global_paths: dict[str, KeyPath] = {}
        """First path at which each global appears (called or as a value)."""
        self.modules: list[tuple[KeyPath, str]] = []
        """Top-most placeholder nn.Modules: (path, class name)."""
        self.too_deep: KeyPath | None = None
        self._names: dict[int, str] = {}
        """id of each tensor of a whole-module pickle -> its first state-dict name."""
        self._path_names: dict[KeyPath, str] = {}
        """Tree path of each such tensor -> its state-dict name: a tied weight has several."""

    def build(self, obj: Any, key: Key = None, path: KeyPath = ()) -> Node:
        """Convert `obj` found at `path` (its key in the parent is `key`)."""
        return self._node(obj, key, path, 0)

    def forget(self) -> None:
        """Drop what `build` remembers of the objects shown, once nothing more will be built
        (the globals' paths and the modules stay): a path and an entry per object."""
        self._seen = {}
        self._keep = []

    def _node(self, obj: Any, key: Key, path: KeyPath, depth: int) -> Node:
        # Refs first: a pickle may hold a million of them, and ids of the objects in `_seen`
        # (kept alive by `_keep`) cannot be reused by any other live object.
        first = self._seen.get(id(obj))
        if first is not None:
            name = self._path_names.get(path) if self._path_names else None
            if name is not None:  # a tied weight: this path is a state-dict key of its own
                return Node.make(
                    NodeKind.REF, first[1], key, target=first[0], attrs=(("state_dict_key", name),)
                )
            if type(obj) is tuple and len(obj) <= 8 and all(map(_is_scalar, obj)):
                # A small tuple shared through the memo (two param groups given one `betas`):
                # the row shows its value, not only where it was first seen.
                return Node.make(NodeKind.REF, first[1], key, target=first[0], text=_short(obj))
            return new_node(NodeKind.REF, first[1], key, (), first[0])
        if type(obj) is TensorRec and depth < MAX_DEPTH:
            # Most nodes of a big state dict: straight here, past the type tests below.
            self._seen[id(obj)] = (path, obj.type)
            self._keep.append(obj)
            return self._tensor(obj, key, path, depth)
        if obj is None or isinstance(obj, bool | str):
            return Node.make(NodeKind.VALUE, type(obj).__name__, key, value=obj)
        if isinstance(obj, int):
            if obj.bit_length() <= 64:
                return Node.make(NodeKind.VALUE, "int", key, value=obj)
            return Node.make(NodeKind.VALUE, "int", key, text=f"int of {obj.bit_length()} bits")
        if isinstance(obj, float):
            if math.isfinite(obj):
                return Node.make(NodeKind.VALUE, "float", key, value=obj)
            return Node.make(NodeKind.VALUE, "float", key, text=repr(obj))
        if isinstance(obj, complex):
            return Node.make(NodeKind.VALUE, "complex", key, text=repr(obj))
        if isinstance(obj, bytes):
            return Node.make(NodeKind.VALUE, "bytes", key, text=_bytes_text(obj), nbytes=len(obj))
        if isinstance(obj, Global):
            self._note_global(obj, path)
            return Node.make(NodeKind.VALUE, "global", key, text=obj.full, safety=_safety(obj))
        if isinstance(obj, TorchDtype):
            return Node.make(NodeKind.VALUE, "torch.dtype", key, text=f"torch.{obj.name}")
        if isinstance(obj, NumpyDtype):
            return Node.make(NodeKind.VALUE, "numpy.dtype", key, text=obj.name)
        if isinstance(obj, NumpyScalar):
            value = obj.value
            if isinstance(value, float) and not math.isfinite(value):
                return Node.make(NodeKind.VALUE, f"numpy.{obj.dtype}", key, text=repr(value))
            return Node.make(
                NodeKind.VALUE,
                f"numpy.{obj.dtype}",
                key,
                value=value,
                text=None if value is not None else "numpy scalar",
            )

        # Compound objects: shown once, then referenced (see the fast path above).
        self._seen[id(obj)] = (path, _type_name(obj))
        self._keep.append(obj)
        if depth >= MAX_DEPTH:
            self.too_deep = self.too_deep or path
            return Node.make(
                NodeKind.VALUE,
                _type_name(obj),
                key,
                text=f"nesting deeper than {MAX_DEPTH} levels not shown",
            )

        if isinstance(obj, Blob):
            return Node.make(
                NodeKind.VALUE,
                obj.kind,
                key,
                text=f"{obj.kind} of {obj.length:,} bytes",
                nbytes=obj.length,
            )
        if isinstance(obj, TensorRec):
            return self._tensor(obj, key, path, depth)
        if isinstance(obj, StorageRef):
            info = TensorInfo(
                (obj.nbytes // obj.itemsize,),
                obj.dtype,
                (1,),
                obj.key,
                0,
                obj.itemsize,
                obj.location,
                type="torch.storage.TypedStorage",
                layout="storage",
            )
            return Node.make(NodeKind.TENSOR, info.type, key, tensor=info)
        if isinstance(obj, NumpyArray):
            shape = ", ".join(str(d) for d in obj.shape)
            return Node.make(
                NodeKind.VALUE,
                "numpy.ndarray",
                key,
                text=f"[{shape}] {obj.dtype}",
                nbytes=obj.nbytes,
                attrs=(("shape", obj.shape), ("dtype", obj.dtype)),
            )
        if isinstance(obj, list | tuple):
            return Node.make(
                NodeKind.SEQUENCE, type(obj).__name__, key, self._seq(obj, path, depth)
            )
        if isinstance(obj, PSet):
            children = tuple(
                self._node(v, i, (*path, i), depth + 1) for i, v in enumerate(obj.items)
            )
            return Node.make(NodeKind.SEQUENCE, obj.type.removeprefix("builtins."), key, children)
        if isinstance(obj, PDict):
            attrs = tuple((f"attr:{k}", _short(v)) for k, v in obj.attrs.items())
            versions = _versions(obj.attrs.get("_metadata")) if obj.attrs else ()
            if versions:
                attrs += (("state_dict_versions", versions),)
            return Node.make(
                NodeKind.MAPPING,
                obj.type,
                key,
                self._items(obj.items, path, depth),
                attrs=attrs,
            )
        if isinstance(obj, PObject):
            return self._object(obj, key, path, depth)
        if isinstance(obj, ScriptObjectRec):
            # Typed by its C++ class (`torch.classes.quantized.LinearPackedParamsBase`): its
            # state is what that class's __getstate__ returned, a (weight, bias) pair for packed
            # Linear params.
            children = ()
            if obj.state is not None:
                children = (self._node(obj.state, "__state__", (*path, "__state__"), depth + 1),)
            return Node.make(
                NodeKind.OBJECT,
                obj.qualname.removeprefix("__torch__.") or "torch.ScriptObject",
                key,
                children,
                safety="safe" if obj.is_torch_class else "unknown",
                attrs=(("script_class", obj.qualname),),
            )
        return Node.make(NodeKind.VALUE, type(obj).__name__, key, text=f"<{type(obj).__name__}>")

    def _items(self, items: list[list[Any]], path: KeyPath, depth: int) -> tuple[Node, ...]:
        out, seen = [], self._seen
        plain, tensors = not self._path_names, depth + 1 < MAX_DEPTH
        for k, v in items:
            key = k if type(k) is str else _key(k)
            first = seen.get(id(v)) if plain and type(v) is not tuple else None
            if first is not None:  # `_node`'s plain ref, without making this child's path
                out.append(new_node(NodeKind.REF, first[1], key, (), first[0]))
            elif plain and type(v) is TensorRec and tensors:  # `_node`'s tensor, a call sooner
                seen[id(v)] = (child := (*path, key), v.type)
                self._keep.append(v)
                out.append(self._tensor(v, key, child, depth + 1))
            else:
                out.append(self._node(v, key, (*path, key), depth + 1))
        return tuple(out)

    def _seq(self, obj: list[Any] | tuple[Any, ...], path: KeyPath, depth: int) -> tuple[Node, ...]:
        """A list's or tuple's children; as `_items`, a plain ref is made here directly, since
        one list can hold a million references to one object (issue 21)."""
        out = []
        seen = self._seen
        for i, v in enumerate(obj):
            first = None if self._path_names or type(v) is tuple else seen.get(id(v))
            if first is not None:
                out.append(new_node(NodeKind.REF, first[1], i, (), first[0]))
            else:
                out.append(self._node(v, i, (*path, i), depth + 1))
        return tuple(out)

    def _tensor(self, t: TensorRec, key: Key, path: KeyPath, depth: int) -> Node:
        st = t.storage
        # Positional: keywords cost half of this call, made once per tensor (issue 16).
        info = new_tensor_info(
            t.shape,
            t.dtype,
            t.stride,
            st.key if st else None,
            t.offset,
            # the storage's when the dtypes agree (`_rebuild_tensor_v2`'s): one call fewer
            st.itemsize if st is not None and st.dtype == t.dtype else itemsize_of(t.dtype),
            st.location if st else ("meta" if t.layout == "meta" else "cpu"),
            t.requires_grad,
            t.type,
            t.layout,
            self._names.get(id(t)) if self._names else None,
        )
        if not t.has_parts:  # what `Node.make` would build, without its keyword handling
            return new_node(NodeKind.TENSOR, t.type, key, (), info, None)
        children = tuple(self._node(v, name, (*path, name), depth + 1) for name, v in t.parts)
        return Node.make(NodeKind.TENSOR, t.type, key, children, tensor=info)

    def _object(self, obj: PObject, key: Key, path: KeyPath, depth: int) -> Node:
        if isinstance(obj.cls, Global):
            self._note_global(obj.cls, path)
        state = obj.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], PDict):
            # (dict_state, slot_state): merge slots into the fields
            merged = PDict()
            for part in state:
                if isinstance(part, PDict):
                    for k, v in part.items:
                        merged.set(k, v)
            state = merged
        if isinstance(state, PDict) and _is_module(state) and not self._names_covers(obj):
            self.modules.append((path, obj.name))
            self._name_module(obj, "", set(), path)
        children: list[Node] = []
        if obj.args and (obj.how == "reduce" or state is None):
            children.append(self._node(obj.args, "__args__", (*path, "__args__"), depth + 1))
        if isinstance(state, PDict):
            children.extend(self._items(state.items, path, depth))
        elif state is not None:
            children.append(self._node(state, "__state__", (*path, "__state__"), depth + 1))
        if obj.items:
            children.append(self._node(obj.items, "__items__", (*path, "__items__"), depth + 1))
        if obj.dictitems:
            children.extend(self._items(obj.dictitems, path, depth))
        return Node.make(
            NodeKind.OBJECT,
            obj.name,
            key,
            tuple(children),
            safety=_safety(obj.cls) if isinstance(obj.cls, Global) else "unknown",
        )

    def _note_global(self, g: Global, path: KeyPath) -> None:
        self.global_paths.setdefault(g.full, path)

    # -- whole-module pickles ---------------------------------------------------------------
    def _names_covers(self, module: PObject) -> bool:
        return id(module) in self._module_ids if hasattr(self, "_module_ids") else False

    def _name_module(self, module: PObject, prefix: str, visiting: set[int], path: KeyPath) -> None:
        """Name parameters and persistent buffers as `module.state_dict()` would.

        `path` is where the module's node will be: its state's keys become its children, so a
        parameter `k` sits at `(*path, "_parameters", k)`. Every such path is a state-dict key,
        also the second one reaching a tied weight (which the tree shows as a REF).
        """
        if id(module) in visiting:
            return
        visiting.add(id(module))
        if not hasattr(self, "_module_ids"):
            self._module_ids: set[int] = set()
        self._module_ids.add(id(module))
        state = module.state
        if not isinstance(state, PDict):
            return
        params = state.get("_parameters")
        if isinstance(params, PDict):
            for k, v in params.items:
                if isinstance(v, TensorRec):
                    self._names.setdefault(id(v), f"{prefix}{k}")
                    self._path_names[(*path, "_parameters", k)] = f"{prefix}{k}"
        buffers = state.get("_buffers")
        skip = state.get("_non_persistent_buffers_set")
        skip_names = (
            {x for x in skip.items if isinstance(x, str)} if isinstance(skip, PSet) else set()
        )
        if isinstance(buffers, PDict):
            for k, v in buffers.items:
                if isinstance(v, TensorRec) and k not in skip_names:
                    self._names.setdefault(id(v), f"{prefix}{k}")
                    self._path_names[(*path, "_buffers", k)] = f"{prefix}{k}"
        modules = state.get("_modules")
        if isinstance(modules, PDict):
            for k, sub in modules.items:
                if isinstance(sub, PObject):
                    self._name_module(sub, f"{prefix}{k}.", visiting, (*path, "_modules", k))


def _versions(metadata: Any) -> tuple[tuple[str, int], ...]:
    """`state_dict()`'s `_metadata` (module prefix -> {"version": n}) as (prefix, n) pairs:
    `load_state_dict` hands each module its version, and torch.ao's quantized modules choose
    their layout by it, so an export of their weights must carry it."""
    if not isinstance(metadata, PDict):
        return ()
    out = []
    for prefix, entry in metadata.items[:100_000]:
        version = entry.get("version") if isinstance(entry, PDict) else None
        if isinstance(prefix, str) and type(version) is int:
            out.append((prefix, version))
    return tuple(out)


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, bool | int | float | str)


def _is_module(state: PDict) -> bool:
    return all(state.get(k) is not None for k in ("_parameters", "_modules"))


def _safety(g: Any) -> str:
    if not isinstance(g, Global):
        return "unknown"
    s = g.verdict.safety
    return {
        Safety.DATA: "safe",
        Safety.KNOWN: "safe",
        Safety.UNKNOWN: "unknown",
        Safety.DANGER: "danger",
    }[s]


def _key(k: Any) -> Key:
    if isinstance(k, bool) or k is None:
        return repr(k)
    if isinstance(k, str | int):
        return k
    return _short(k)


def _short(v: Any) -> str:
    if isinstance(v, str):
        return v if len(v) <= 80 else v[:79] + "…"
    if isinstance(v, int | float | bool) or v is None:
        return repr(v)
    if isinstance(v, tuple) and len(v) <= 8:
        return "(" + ", ".join(_short(x) for x in v) + ("," if len(v) == 1 else "") + ")"
    if isinstance(v, Global):
        return v.full
    if isinstance(v, PDict):
        return f"{v.type} of {len(v.items)} items"
    return f"<{_type_name(v)}>"


def _type_name(obj: Any) -> str:
    if isinstance(obj, PDict | PSet):
        return obj.type
    if isinstance(obj, PObject):
        return obj.name
    if isinstance(obj, TensorRec):
        return obj.type
    if isinstance(obj, Blob):
        return obj.kind
    if isinstance(obj, NumpyArray):
        return "numpy.ndarray"
    return type(obj).__name__


def _bytes_text(b: bytes) -> str:
    head = repr(b[:24])
    return f"{len(b)} bytes {head}{'…' if len(b) > 24 else ''}"
