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
(`sharded.shard_name_problem`, `Files.outside`), so nothing outside the folder is read.

Storages are renamed `<file>:<key>` (shards of `torch.save` number their storages from 0 each)
and keep `Storage.file`, the file relative to the folder (`folder_parts`); readers of tensor
bytes open that file. No tensor data is read here.

File access goes through a `folder_files.Files` object, so that a folder at a URL
(`remote.folder.RemoteFiles`) is opened by this same code; `LOCAL` is the file system, and a
local path never imports anything remote. Sharded models are `sharded`'s.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ckptui.core.bulk import gc_paused
from ckptui.core.errors import CkptError, NotACheckpoint, NotReadable
from ckptui.core.tree import Checkpoint, Finding, KeyPath, Node, NodeKind, Severity, Storage
from ckptui.formats.folder_files import LOCAL, Files, LocalFiles
from ckptui.formats.folder_parts import in_file, naming_storages, rebased
from ckptui.formats.folder_text import with_text_files
from ckptui.formats.listing import MAX_FILES
from ckptui.formats.sharded import INDEX_NAMES, is_index_file, open_sharded


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
        naming_storages(open_file, access, folder, tried),
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
        root = rebased(ckpt, rel, prefix, storages)
        children.append(root if single else dataclasses.replace(root, key=rel))
        findings += [in_file(f, rel, prefix) for f in ckpt.findings]
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
