"""Provides how one checkpoint file's tree joins a folder's: its storages renamed `<file>:<key>`
with `Storage.file` set (`rebased`, or keyed so by the reader itself: `naming_storages`), its
refs and findings moved under the file (`in_file`).

Shared by the sharded-model reader (`sharded`) and the any-folder reader (`folder`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ckptui.core.slotinit import maker
from ckptui.core.tree import Checkpoint, Finding, KeyPath, Node, NodeKind, Storage, evolve
from ckptui.formats.folder_files import Files, LocalFiles


def naming_storages(open_file: Any, files: Files, folder: str, rels: Any) -> Any:
    """`open_file` for the files `rels` of a local folder, asking each reader to key its storages
    as `rebased` would (`<file>:<key>`, `Storage.file` set): a safetensors shard then builds
    each tensor once, not once and again renamed (90,000 tensors: 1.7 s of a 160-shard open).
    A folder at a URL opens its files its own way, and `rebased` renames them."""
    if not isinstance(files, LocalFiles):
        return open_file
    rel_of = {files.join(folder, rel): rel for rel in rels}
    return lambda path: open_file(path, storage_file=rel_of[path])


def rebased(ckpt: Checkpoint, file: str, prefix: KeyPath, storages: dict[str, Storage]) -> Node:
    """`ckpt`'s tree with storage keys made unique (`file:key`) and refs moved under `prefix`,
    adding its storages (with `file` set) to `storages`."""
    if ckpt.info.get("storage_file") == file:
        # keyed so by its reader (`naming_storages`); a safetensors tree holds no refs
        storages.update(ckpt.storages)
        return ckpt.root
    for key, st in ckpt.storages.items():
        name = f"{file}:{key}"
        # a maker, not `evolve`: half a constructor call, and every storage of a folder passes here
        storages[name] = _storage(
            name, st.dtype, st.nbytes, st.location, file, st.record, st.data_offset,
            st.record_nbytes,
        )  # fmt: skip
    cache: dict[int, Any] = {}

    def tensor(t: Any) -> Any:
        if t.storage_key is None:
            return t
        new = cache.get(id(t))
        if new is None:
            new = cache[id(t)] = evolve(t, storage_key=f"{file}:{t.storage_key}")
        return new

    def rebuild(node: Node) -> Node:
        # a maker, not dataclasses.replace: half a constructor call; a 160-shard folder of `.bin`
        # files rebuilds 90,000 nodes here (issue 16)
        if node.kind is NodeKind.TENSOR:
            return _node(
                node.kind, node.type, node.key, node.children, tensor(node.value), node.extra
            )
        if node.kind is NodeKind.REF:
            target = (*prefix, *node.value)
            return _node(node.kind, node.type, node.key, node.children, target, node.extra)
        if not node.children:
            return node
        children = tuple(rebuild(c) for c in node.children)
        return _node(node.kind, node.type, node.key, children, node.value, node.extra)

    return rebuild(ckpt.root)


_storage = maker(Storage)
_node = maker(Node)
"""`Storage(...)` and `Node(...)` at half the cost (`core.slotinit`)."""


def in_file(f: Finding, file: str, prefix: KeyPath) -> Finding:
    path = None if f.path is None else (*prefix, *f.path)
    return dataclasses.replace(f, message=f"{file}: {f.message}", path=path)
