"""Provides `open_sharded`: a Hugging Face sharded model (`model.safetensors.index.json` or
`pytorch_model.bin.index.json` with `model-0000i-of-0000n.*` shards) opened as one flat state
dict, every tensor's storage naming its shard.

Shards are listed by the index's `weight_map`; a shard missing from the folder is reported (its
tensors appear as `missing` rows) and the rest still opens. The index is data from whoever made
the folder: every shard name is checked (`shard_name_problem`) before anything is opened, so
nothing outside the folder is read.
"""

from __future__ import annotations

import json
import operator
import re
from typing import Any

from ckptui.core.errors import CkptError, CorruptFile, NotACheckpoint, NotReadable
from ckptui.core.tree import Checkpoint, Finding, Node, NodeKind, Severity, Storage
from ckptui.formats.folder_files import LOCAL, Files
from ckptui.formats.folder_parts import in_file, naming_storages, rebased
from ckptui.formats.listing import MAX_FILES
from ckptui.formats.source import is_url

try:  # parses a 90,000-name index 2x faster; optional, json gives the same values
    import orjson

    _orjson_loads: Any = orjson.loads
except ImportError:  # pragma: no cover - orjson is installed with ckptui
    _orjson_loads = None

INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
"""Index files of sharded Hugging Face models, the safetensors one preferred when both exist."""
MAX_INDEX = 64 << 20
"""Bytes an index file may have (real ones are well under 1 MiB even for 1,000 shards)."""


def is_index_file(path: str) -> bool:
    """A sharded model's index (`*.index.json`)."""
    return path.endswith(".index.json")


def open_sharded(
    folder: str, index_name: str, shown_path: str, open_file: Any, files: Files = LOCAL
) -> Checkpoint:
    """Open a Hugging Face sharded model from its index: the index and each shard's metadata.

    Args:
        folder: the folder holding the index and the shards.
        index_name: the index file's name in it.
        shown_path: `Checkpoint.path` (what the user gave: the folder or the index).
        open_file: opens one shard.
        files: where the folder lives.

    Raises:
        CkptError: an unreadable or malformed index, or shard names outside the folder.
    """
    index_path = files.join(folder, index_name)
    problem = files.outside(folder, index_name)
    if problem is not None:
        raise NotReadable(index_path, problem)
    raw = files.read(index_path, MAX_INDEX)
    index = parse_index(raw)
    if index is None:
        try:
            index = json.loads(raw)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise CorruptFile(index_path, f"not valid JSON ({e})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    # the types checked by set(map(type, ...)), at C speed: JSON gives exact strs, and an
    # index of 90,000 names paid a generator step per name (issue 16)
    if (
        not isinstance(weight_map, dict)
        or not set(map(type, weight_map)) <= _STR
        or not set(map(type, weight_map.values())) <= _STR
    ):
        raise CorruptFile(index_path, "no weight_map of tensor name -> shard file")
    # The shard files in the order the index first names them, at C speed; which names each
    # holds is asked of `weight_map` itself (a shard's keys -> their shards, one `map`), and
    # grouped by shard in Python only for a shard that cannot be read (issue 16: 90,000 names)
    shards = dict.fromkeys(weight_map.values())
    if len(shards) > MAX_FILES:  # each costs a stat and an open: 100,000 took 35 s
        raise CorruptFile(index_path, f"names more than {MAX_FILES:,} shard files")
    for shard in shards:
        problem = shard_name_problem(shard)
        if problem is not None:
            raise CorruptFile(index_path, f"shard {shard!r} {problem}")
    for shard in sorted(shards):
        problem = files.outside(folder, shard)
        if problem is not None:
            raise NotReadable(files.join(folder, shard), problem)
    children: list[Node] = []
    storages: dict[str, Storage] = {}
    findings: list[Finding] = []
    sizes: dict[str, int] = {}
    formats: set[str] = set()
    seen: set[str] = set()
    metadata: Node | None = None
    names_of: dict[str, list[str]] | None = None  # shard -> its names, once one is unreadable
    opened = files.open_each(
        [files.join(folder, shard) for shard in sorted(shards)],
        naming_storages(open_file, files, folder, shards),
    )
    for shard in sorted(shards):
        full = files.join(folder, shard)
        ckpt = opened[full]
        if isinstance(ckpt, CkptError):
            e = ckpt
            if names_of is None:
                names_of = _names_by_shard(weight_map)
            missing = files.missing(full, e)
            what = "is missing" if missing else f"cannot be read ({e.message})"
            findings.append(
                Finding(
                    "missing_shard",
                    Severity.WARNING,
                    f"shard {shard} {what}: its {len(names_of[shard]):,} tensors are unavailable",
                    None,
                )
            )
            text = f"in {'missing' if missing else 'unreadable'} shard {shard}"
            children += [
                Node.make(NodeKind.VALUE, "missing", name, text=text)
                for name in names_of[shard]
                if name not in seen
            ]
            seen.update(names_of[shard])
            continue
        sizes[shard] = ckpt.file_bytes
        formats.add(ckpt.format)
        root = rebased(ckpt, shard, (), storages)
        kids = root.children
        keys = list(map(_KEY, kids))
        last = kids[-1] if kids and keys[-1] == "__metadata__" else None  # safetensors' place
        if last is not None:
            kids, keys = kids[:-1], keys[:-1]
        if (
            "__metadata__" not in keys
            and seen.isdisjoint(keys)
            and (not keys or set(map(weight_map.get, keys)) == {shard})
        ):
            # The usual shard, every tensor new and listed: the loop below as set operations
            # (90,000 tensors: a few C passes instead of four checks per tensor in Python)
            metadata = metadata or last
            children += kids
            seen.update(keys)
            findings += [in_file(f, shard, ()) for f in ckpt.findings]
            continue
        for child in root.children:
            if child.key == "__metadata__":  # safetensors' strings: shards repeat them; keep one
                metadata = metadata or child
                continue
            if child.key in seen:
                findings.append(
                    Finding(
                        "duplicate_key",
                        Severity.WARNING,
                        f"{child.key} is in more than one shard; {shard}'s copy is hidden",
                        (child.key,),
                    )
                )
                continue
            seen.add(child.key)  # type: ignore[arg-type]
            children.append(child)
            if weight_map.get(child.key) != shard:  # the index does not list it here
                findings.append(
                    Finding(
                        "unlisted_tensor",
                        Severity.INFO,
                        f"{child.key} is in {shard} but the index does not list it",
                        (child.key,),
                    )
                )
        findings += [in_file(f, shard, ()) for f in ckpt.findings]
    if not sizes and not children:
        raise NotACheckpoint(index_path, "the index lists no shards")
    if metadata is not None:
        children.append(metadata)
    meta = index.get("metadata")
    total = meta.get("total_size") if isinstance(meta, dict) else None
    info: dict[str, Any] = {
        "folder": files.absolute(folder),
        "index": index_name,
        "index_bytes": len(raw),
        "files": sizes,
        "shards": len(shards),
        "shard_formats": sorted(formats),
    }
    if type(total) is int:
        info["index_total_size"] = total
    root = Node.make(NodeKind.MAPPING, "dict", None, tuple(children))
    return Checkpoint(
        shown_path,
        "hf-sharded",
        sum(sizes.values()),
        root,
        storages,
        tuple(findings),
        info,
    )


_KEY = operator.attrgetter("key")


def _names_by_shard(weight_map: dict[str, str]) -> dict[str, list[str]]:
    """shard file -> the tensor names the index puts there, in the index's order."""
    out: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        names = out.get(shard)
        if names is None:
            names = out[shard] = []
        names.append(name)
    return out


def parse_index(raw: bytes) -> Any:
    """The index by orjson (a 90,000-name weight map: 2x faster than json), or None for json
    to decide: when orjson refuses it, or when `total_size` came out a float (orjson reads an
    integer beyond 64 bits as one, json as an int; no other number of an index is used)."""
    if _orjson_loads is None:
        return None
    try:
        index = _orjson_loads(raw)
    except ValueError:  # orjson.JSONDecodeError
        return None
    meta = index.get("metadata") if isinstance(index, dict) else None
    if isinstance(meta, dict) and type(meta.get("total_size")) is float:
        return None
    return index


_STR = {str}

_SEPARATORS = re.compile(r"[/\\]")
_DRIVE = re.compile(r"^[A-Za-z]:")


def shard_name_problem(shard: str) -> str | None:
    """What is wrong with a shard name from an index's `weight_map`, or None for a plain
    relative file name inside the folder.

    The index is data from whoever made the folder: a name must not reach outside it (absolute,
    `..`, a URL, a Windows drive or `\\` separator, which would escape on Windows), must be
    text a file system can take (no NUL, no lone surrogate), must name a file rather than the
    folder itself, and must not be an index (opening an index opens its shards: a loop).
    """
    if not shard:
        return "is an empty name"
    if "\0" in shard:
        return "holds a NUL byte"
    try:
        shard.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid text (a lone surrogate)"
    parts = _SEPARATORS.split(shard)
    if is_url(shard) or shard[0] in "/\\" or _DRIVE.match(shard) or ".." in parts:
        return "lies outside the folder"
    named = [p for p in parts if p not in ("", ".")]  # what the path resolves to (pathlib)
    if not named:
        return "names the folder itself, not a shard file"
    if shard[-1] in "/\\":
        return "ends with a separator: it names a folder, not a shard file"
    if is_index_file(named[-1]):
        return "is an index, not a shard file"
    return None
