"""Provides `open_folder`: checkpoints kept in many files, opened as one tree.

- A Hugging Face sharded model (`model.safetensors.index.json` or `pytorch_model.bin.index.json`
  with `model-0000i-of-0000n.*` shards, given as the folder or as the index file) becomes one
  flat state dict, every tensor's storage naming its shard. Shards are listed by the index's
  `weight_map`; a shard missing from the folder is reported (its tensors appear as `missing`
  rows) and the rest still opens.
- A DCP folder (`.metadata` + `*.distcp`) is read by `formats.dcp`.
- Any other folder of checkpoints (DeepSpeed `global_step*/` with `mp_rank_00_model_states.pt`
  and `*_optim_states.pt`, a folder of epochs) gets one top-level node per checkpoint file, keyed
  by its path relative to the folder; files that are not checkpoints (`config.json`,
  `zero_to_fp32.py`, `latest`) are left out and listed in `info["other_files"]`. A folder with
  one checkpoint file (`save_pretrained` without shards: `config.json` + `model.safetensors`)
  is that file's tree, its name in `info["single_file"]`. A `pytorch_model.bin` beside a
  `model.safetensors` (and the PEFT and diffusers pairs) is not opened: `from_pretrained`
  loads the safetensors one, and both as nodes would export every weight twice.

Names from an index (`weight_map`) and symlinks are checked before anything is opened: a name
reaching outside the folder or a symlink leading out of it is refused by name
(`shard_name_problem`, `Files.outside`), so nothing outside the folder is read.

Storages are renamed `<file>:<key>` (shards of `torch.save` number their storages from 0 each)
and keep `Storage.file`, the file relative to the folder; readers of tensor bytes open that
file. No tensor data is read here.

File access (list, read the index, tell a missing file) goes through a `Files` object, so that
a folder at a URL (`remote_folder.RemoteFiles`) is opened by this same code; `LOCAL` is the
file system, and a local path never imports anything remote.
"""

from __future__ import annotations

import dataclasses
import json
import re
import stat
from pathlib import Path
from typing import Any, Protocol

from ckptui.core.bulk import gc_paused
from ckptui.core.errors import CkptError, CorruptFile, NotACheckpoint, NotReadable
from ckptui.core.tree import Checkpoint, Finding, KeyPath, Node, NodeKind, Severity, Storage, evolve
from ckptui.formats.dcp.listing import looks_like_dcp
from ckptui.formats.dcp.reader import read_dcp
from ckptui.formats.folder_text import with_text_files
from ckptui.formats.listing import MAX_FILES, folder_files
from ckptui.formats.source import is_url, leads_outside

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


def check_folder(folder: str) -> None:
    """Fail fast, before a full-screen app starts, for a folder that holds nothing to open:
    only its top level is listed (a subfolder may hold DeepSpeed's files, so it counts).

    Raises:
        NotReadable, NotACheckpoint.
    """
    try:
        entries = list(Path(folder).iterdir())
    except OSError as e:
        raise NotReadable(folder, e.strerror or str(e)) from None
    for entry in entries:
        name = entry.name
        if name == ".metadata" or is_index_file(name) or entry.is_dir():
            return
        if entry.is_file() and _worth_trying(name, entry.stat().st_size):
            return
    raise NotACheckpoint(folder, "no checkpoint files in this folder")


class Files(Protocol):
    """Where a folder's files live: the local file system (`LOCAL`) or a URL."""

    def is_dir(self, path: str) -> bool:
        """`path` is a folder."""
        ...

    def split(self, path: str) -> tuple[str, str]:
        """(folder, name) of a file."""
        ...

    def join(self, folder: str, rel: str) -> str:
        """The path of `rel` inside `folder`, as `open_file` takes it."""
        ...

    def names(self, folder: str) -> list[str]:
        """The folder's top-level entries (files and subfolders), sorted."""
        ...

    def sizes(self, folder: str) -> dict[str, int]:
        """(path relative to the folder) -> size of every file below it, sorted."""
        ...

    def read(self, path: str, limit: int) -> bytes:
        """A small file's bytes (an index); CorruptFile past `limit` bytes."""
        ...

    def missing(self, path: str, error: CkptError) -> bool:
        """Whether opening `path` failed with `error` because the file is not there."""
        ...

    def outside(self, folder: str, rel: str) -> str | None:
        """Why `rel` (an index, or a shard name already checked by `shard_name_problem`) is
        not a file inside `folder` (a symlink leading out, a subfolder), or None; reads no
        file."""
        ...

    def refused(self, folder: str) -> dict[str, str]:
        """Files below `folder` that are left unread, relative name -> why (symlinks out)."""
        ...

    def absolute(self, folder: str) -> str:
        """`info["folder"]`: what `Checkpoint.file_of` joins a storage's file to."""
        ...

    def dcp(self, folder: str) -> Checkpoint | None:
        """The folder opened as a DCP checkpoint, or None when it is not one."""
        ...

    def open_each(self, paths: list[str], open_file: Any) -> dict[str, Checkpoint | CkptError]:
        """`open_file` of every path: its checkpoint, or the CkptError it raised."""
        ...


class LocalFiles:
    """`Files` on the local file system."""

    def is_dir(self, path: str) -> bool:
        """`path` is a folder."""
        return Path(path).is_dir()

    def split(self, path: str) -> tuple[str, str]:
        """(folder, name) of a file."""
        return str(Path(path).parent), Path(path).name

    def join(self, folder: str, rel: str) -> str:
        """The path of `rel` inside `folder`."""
        return str(Path(folder) / rel)

    def names(self, folder: str) -> list[str]:
        """The folder's top-level entries, sorted."""
        try:
            return sorted(p.name for p in Path(folder).iterdir())
        except OSError as e:
            raise NotReadable(folder, e.strerror or str(e)) from None

    def sizes(self, folder: str) -> dict[str, int]:
        """Every regular file below `folder` (`listing.folder_files`)."""
        return dict(folder_files(folder))

    def read(self, path: str, limit: int) -> bytes:
        """A small file's bytes."""
        try:
            st = Path(path).stat()
            if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read forever
                raise NotReadable(path, "is not a regular file")
            if st.st_size > limit:
                raise CorruptFile(path, "index file is implausibly large")
            return Path(path).read_bytes()
        except OSError as e:
            raise NotReadable(path, e.strerror or str(e)) from None

    def missing(self, path: str, error: CkptError) -> bool:
        """The file is not there (whatever the error said)."""
        return not Path(path).exists()

    def outside(self, folder: str, rel: str) -> str | None:
        """A symlink leading out of the folder, or a folder where a shard file should be."""
        path = Path(folder) / rel
        why = leads_outside(folder, str(path))
        if why is None and path.is_dir():
            why = "a folder, not a file"
        return why

    def refused(self, folder: str) -> dict[str, str]:
        """Symlinks below `folder` leading out of it (`listing.folder_files`)."""
        out: dict[str, str] = {}
        folder_files(folder, out)
        return out

    def absolute(self, folder: str) -> str:
        """The folder's absolute path."""
        return str(Path(folder).absolute())

    def dcp(self, folder: str) -> Checkpoint | None:
        """`formats.dcp`'s reading of the folder, when it is one."""
        return read_dcp(folder) if looks_like_dcp(folder) else None

    def open_each(self, paths: list[str], open_file: Any) -> dict[str, Checkpoint | CkptError]:
        """One after another: local metadata reads take microseconds, threads would not help."""
        out: dict[str, Checkpoint | CkptError] = {}
        for path in paths:
            try:
                out[path] = open_file(path)
            except CkptError as e:  # noqa: PERF203 - one try per file
                out[path] = e
        return out


LOCAL = LocalFiles()


def open_folder(path: str, open_file: Any, files: Files = LOCAL) -> Checkpoint:
    """Open a folder, or a shard index file, as one checkpoint.

    Args:
        path: the folder or the `*.index.json` file.
        open_file: `formats.open_checkpoint` for one file (passed in to avoid an import cycle).
        files: where the folder lives (a URL's folder: `remote_folder.RemoteFiles`).

    Raises:
        CkptError: an unreadable folder or index, or a folder holding no checkpoint.
    """
    try:
        with gc_paused():  # trees of 90,000 tensors hold no cycles: 0.4 s of 1.3 s
            ckpt = _open_folder(path, open_file, files)
        if isinstance(files, LocalFiles):  # config.json & co. beside the weights (folder_text)
            ckpt = _with_text(ckpt, path, files)
        return ckpt
    except OSError as e:  # a file vanishing or turning unreadable between listing and reading
        where = e.filename if isinstance(e.filename, str) else path
        raise NotReadable(where, e.strerror or str(e)) from None


def _open_folder(path: str, open_file: Any, files: Files) -> Checkpoint:
    if is_index_file(path) and not files.is_dir(path):
        folder, name = files.split(path)
        return open_sharded(folder, name, path, open_file, files)
    names = files.names(path)
    if ".metadata" in names and any(n.endswith(".distcp") for n in names):
        ckpt = files.dcp(path)
        if ckpt is not None:
            return ckpt
    for index in INDEX_NAMES:
        if index in names:
            return open_sharded(path, index, path, open_file, files)
    indexes = sorted(n for n in names if is_index_file(n))
    if len(indexes) == 1:
        return open_sharded(path, indexes[0], path, open_file, files)
    return _files(path, open_file, files)


def _with_text(ckpt: Checkpoint, path: str, files: LocalFiles) -> Checkpoint:
    """The folder's small text files as nodes (`folder_text`): a folder of checkpoint files
    lists them in `other_files` already; a sharded model's folder is listed for them."""
    folder = path if files.is_dir(path) else files.split(path)[0]
    sizes = ckpt.info.get("other_files")
    if sizes is None and ckpt.format == "hf-sharded":
        sizes = files.sizes(folder)
    if not sizes:
        return ckpt
    return with_text_files(ckpt, sizes, lambda rel, cap: files.read(files.join(folder, rel), cap))


# -- Hugging Face shards ----------------------------------------------------------------------
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
    index = _parse_index(raw)
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
    shards: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        names = shards.get(shard)
        if names is None:
            names = shards[shard] = []
        names.append(name)
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
    opened = files.open_each(
        [files.join(folder, shard) for shard in sorted(shards)],
        _naming_storages(open_file, files, folder, shards),
    )
    for shard in sorted(shards):
        full = files.join(folder, shard)
        ckpt = opened[full]
        if isinstance(ckpt, CkptError):
            e = ckpt
            missing = files.missing(full, e)
            what = "is missing" if missing else f"cannot be read ({e.message})"
            findings.append(
                Finding(
                    "missing_shard",
                    Severity.WARNING,
                    f"shard {shard} {what}: its {len(shards[shard]):,} tensors are unavailable",
                    None,
                )
            )
            text = f"in {'missing' if missing else 'unreadable'} shard {shard}"
            children += [
                Node.make(NodeKind.VALUE, "missing", name, text=text)
                for name in shards[shard]
                if name not in seen
            ]
            seen.update(shards[shard])
            continue
        sizes[shard] = ckpt.file_bytes
        formats.add(ckpt.format)
        root = _rebased(ckpt, shard, (), storages)
        listed = set(shards[shard])
        kids, keys = root.children, [child.key for child in root.children]
        last = kids[-1] if kids and keys[-1] == "__metadata__" else None  # safetensors' place
        if last is not None:
            kids, keys = kids[:-1], keys[:-1]
        if "__metadata__" not in keys and seen.isdisjoint(keys) and listed.issuperset(keys):
            # The usual shard, every tensor new and listed: the loop below as set operations
            # (90,000 tensors: a few C passes instead of four checks per tensor in Python)
            metadata = metadata or last
            children += kids
            seen.update(keys)
            findings += [_in_file(f, shard, ()) for f in ckpt.findings]
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
            if child.key not in listed:
                findings.append(
                    Finding(
                        "unlisted_tensor",
                        Severity.INFO,
                        f"{child.key} is in {shard} but the index does not list it",
                        (child.key,),
                    )
                )
        findings += [_in_file(f, shard, ()) for f in ckpt.findings]
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


def _parse_index(raw: bytes) -> Any:
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


# -- any folder of checkpoint files ----------------------------------------------------------
def _files(folder: str, open_file: Any, access: Files) -> Checkpoint:
    sizes = access.sizes(folder)
    if len(sizes) > MAX_FILES:
        raise NotReadable(folder, f"holds more than {MAX_FILES:,} files")
    children: list[Node] = []
    storages: dict[str, Storage] = {}
    findings: list[Finding] = []
    files: dict[str, int] = {}
    other: dict[str, int] = {}
    formats: set[str] = set()
    read: dict[str, Checkpoint] = {}
    for rel, why in access.refused(folder).items():
        findings.append(Finding("outside_folder", Severity.WARNING, f"{rel}: {why}", None))
    twins = _twins(sizes)
    for rel, twin in twins.items():
        findings.append(
            Finding(
                "alternative_weights",
                Severity.INFO,
                f"{rel}: not opened: {twin} beside it is what from_pretrained loads",
                None,
            )
        )
    tried = [rel for rel, size in sizes.items() if _worth_trying(rel, size) and rel not in twins]
    opened = access.open_each(
        [access.join(folder, rel) for rel in tried],
        _naming_storages(open_file, access, folder, tried),
    )
    for rel, size in sizes.items():
        if not _worth_trying(rel, size) or rel in twins:
            other[rel] = size
            continue
        ckpt = opened[access.join(folder, rel)]
        if isinstance(ckpt, NotACheckpoint):
            other[rel] = size
            continue
        if isinstance(ckpt, CkptError):
            findings.append(
                Finding("unreadable_file", Severity.WARNING, f"{rel}: {ckpt.message}", None)
            )
            other[rel] = size
            continue
        files[rel] = ckpt.file_bytes
        formats.add(ckpt.format)
        read[rel] = ckpt
    if not read:
        raise NotACheckpoint(folder, "no checkpoint files in this folder")
    # One checkpoint file (save_pretrained's model.safetensors or pytorch_model.bin beside
    # config.json, a PEFT adapter, a diffusers UNet): the folder is that checkpoint, so its
    # tree is the file's, not one node named after it (an export would prefix every name
    # with `model.safetensors.`). Several files: one top-level node per file.
    single = len(read) == 1
    for rel, ckpt in read.items():
        prefix: KeyPath = () if single else (rel,)
        root = _rebased(ckpt, rel, prefix, storages)
        children.append(root if single else dataclasses.replace(root, key=rel))
        findings += [_in_file(f, rel, prefix) for f in ckpt.findings]
    kind = "deepspeed" if any("mp_rank_" in r and r.endswith("_states.pt") for r in files) else ""
    info = {
        "folder": access.absolute(folder),
        "files": files,
        "other_files": other,
        "file_formats": sorted(formats),
    }
    if kind:
        info["producer"] = kind
    if single:
        info["single_file"] = next(iter(read))
        root = children[0]
    else:
        root = Node.make(NodeKind.MAPPING, "folder", None, tuple(children))
    return Checkpoint(folder, "folder", sum(files.values()), root, storages, tuple(findings), info)


TWINS = {
    "pytorch_model.bin": "model.safetensors",
    "adapter_model.bin": "adapter_model.safetensors",
    "diffusion_pytorch_model.bin": "diffusion_pytorch_model.safetensors",
}
"""A `.bin` weights file -> its safetensors twin, which `from_pretrained` (transformers, PEFT,
diffusers) loads instead when both are there (hub repos often ship both)."""


def _twins(sizes: dict[str, int]) -> dict[str, str]:
    """The `.bin` files of `sizes` whose safetensors twin lies beside them -> that twin."""
    out: dict[str, str] = {}
    for rel in sizes:
        below, _, name = rel.rpartition("/")
        twin = TWINS.get(name)
        if twin is not None:
            twin = f"{below}/{twin}" if below else twin
            if twin in sizes:
                out[rel] = twin
    return out


SKIP_SUFFIXES = (".json", ".py", ".txt", ".md", ".yaml", ".yml", ".log", ".model", ".csv", ".png")


def _worth_trying(rel: str, size: int) -> bool:
    """Files that cannot be checkpoints (configs, code, tokenizers, `latest`) are not opened."""
    name = Path(rel).name
    return size >= 16 and not name.startswith(".") and not name.endswith(SKIP_SUFFIXES)


# -- helpers --------------------------------------------------------------------------------
def _naming_storages(open_file: Any, files: Files, folder: str, rels: Any) -> Any:
    """`open_file` for the files `rels` of a local folder, asking each reader to key its storages
    as `_rebased` would (`<file>:<key>`, `Storage.file` set): a safetensors shard then builds
    each tensor once, not once and again renamed (90,000 tensors: 1.7 s of a 160-shard open).
    A folder at a URL opens its files its own way, and `_rebased` renames them."""
    if not isinstance(files, LocalFiles):
        return open_file
    rel_of = {files.join(folder, rel): rel for rel in rels}
    return lambda path: open_file(path, storage_file=rel_of[path])


def _rebased(ckpt: Checkpoint, file: str, prefix: KeyPath, storages: dict[str, Storage]) -> Node:
    """`ckpt`'s tree with storage keys made unique (`file:key`) and refs moved under `prefix`,
    adding its storages (with `file` set) to `storages`."""
    if ckpt.info.get("storage_file") == file:
        # keyed so by its reader (`_naming_storages`); a safetensors tree holds no refs
        storages.update(ckpt.storages)
        return ckpt.root
    for key, st in ckpt.storages.items():
        name = f"{file}:{key}"
        # the constructor, not `evolve`: 3x faster, and a folder's every storage passes here
        storages[name] = Storage(
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
        # Node's constructor, not dataclasses.replace: 3x faster, and a 160-shard folder
        # rebuilds 90,000 nodes here (issue 16)
        if node.kind is NodeKind.TENSOR:
            return Node(
                node.kind, node.type, node.key, node.children, tensor(node.value), node.extra
            )
        if node.kind is NodeKind.REF:
            target = (*prefix, *node.value)
            return Node(node.kind, node.type, node.key, node.children, target, node.extra)
        if not node.children:
            return node
        children = tuple(rebuild(c) for c in node.children)
        return Node(node.kind, node.type, node.key, children, node.value, node.extra)

    return rebuild(ckpt.root)


def _in_file(f: Finding, file: str, prefix: KeyPath) -> Finding:
    path = None if f.path is None else (*prefix, *f.path)
    return dataclasses.replace(f, message=f"{file}: {f.message}", path=path)
