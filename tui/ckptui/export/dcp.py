"""Provides `export_dcp`: consolidate a DCP folder into one weights-only `.pth` or `.safetensors`.

The tensors are read by PyTorch's own DCP machinery (`FileSystemReader` + the planner behind
`format_utils.dcp_to_torch_save`, with `no_dist=True`: no process group), which stitches chunks
saved by many ranks back into whole tensors; ckptui does not re-implement that. Two guards keep
torch from running anything the folder says:

- `.metadata` is unpickled by a `pickle.Unpickler` whose `find_class` admits only DCP's own
  metadata classes and the plain torch values they hold (torch's weights-only unpickler cannot
  read it: it lacks protocol 4's FRAME), and an export is refused outright when ckptui's inert
  reading found a dangerous call in the checkpoint;
- only tensor keys are requested, so DCP never `torch.load(weights_only=False)`s the pickled
  objects (optimizer param groups, step counters) beside them; tensor items are read by torch
  with `weights_only=True`.

What to keep, the names, prefix stripping and the cast follow `export.plan` (its helpers are
reused); writing follows `export.run`: a temporary file beside the target, fsync, verification
by reloading the output with torch (`weights_only=True` / `safetensors.torch.load_file`) and
`torch.equal` against the tensors DCP loaded, then an atomic rename; on any failure or an
interrupt the temporary file is removed. torch is imported only inside these functions.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckptui.core.dtypes import SAFETENSORS_CODE, itemsize_of
from ckptui.core.errors import ExportError
from ckptui.core.keypath import describe_path
from ckptui.core.progress import NamedProgress
from ckptui.core.tree import Checkpoint, KeyPath, TensorInfo
from ckptui.export.atomic import check_target, fsync_dir, temp_beside
from ckptui.export.plan import (
    CAST_TARGETS,
    Plan,
    Result,
    cast_dtype,
    file_metadata,
    kept_tensors,
    output_names,
)

BATCH_BYTES = 1 << 30
"""Tensor bytes requested from DCP per load call: progress is reported after each batch."""


@dataclass(frozen=True, slots=True)
class _Item:
    name: str
    fqn: str
    path: KeyPath
    tensor: TensorInfo
    dtype: str


def chunked_kept(plan: Plan) -> list[TensorInfo]:
    """The kept tensors of a DCP checkpoint saved in chunks by several ranks: only torch's DCP
    reader stitches those, so an export holding any goes through `export_dcp`."""
    if plan.ckpt.format != "dcp":
        return []
    out = []
    for path, _ in plan.skipped:
        node = plan.ckpt.find(path)
        if node is not None and node.tensor is not None and node.tensor.layout == "chunked":
            out.append(node.tensor)
    return out


def stitched_bytes(plan: Plan) -> int:
    """Output bytes of the chunked tensors `export_dcp` would add to `plan`'s (0 for none)."""
    return sum(t.numel * _itemsize(cast_dtype(t.dtype, plan.dtype)) for t in chunked_kept(plan))


def export_dcp_plan(
    plan: Plan,
    out: str | os.PathLike[str],
    force: bool = False,
    progress: NamedProgress | None = None,
) -> Result:
    """`export_dcp` with the choices of a plan made by `make_plan` on the same checkpoint."""
    return export_dcp(
        plan.ckpt,
        out,
        plan.keep,
        plan.strip_prefix or "none",
        plan.dtype,
        plan.format,
        force,
        progress,
    )


def export_dcp(
    ckpt: Checkpoint,
    out: str | os.PathLike[str],
    keep: list[KeyPath] | None = None,
    strip_prefix: str = "auto",
    dtype: str = "keep",
    fmt: str = "pth",
    force: bool = False,
    progress: NamedProgress | None = None,
) -> Result:
    """Write the tensors under `keep` of a DCP checkpoint (opened by `formats.dcp.read_dcp`)
    to one file, via a verified temporary file.

    Args:
        ckpt: the opened DCP folder (`ckpt.format == "dcp"`).
        out: the output file.
        keep: tree paths to keep (default: the detected weights, e.g. `("model",)`).
        strip_prefix: `auto` (strip `module.`/`_orig_mod.` when every name has it), `none`,
            or a literal prefix.
        dtype: `keep`, `bf16` or `fp16` (floating tensors only).
        fmt: `pth` (`torch.load(weights_only=True)`-loadable) or `safetensors`.
        force: replace an existing `out`.
        progress: called with (bytes done, bytes total, last tensor name) as tensors load.

    Returns:
        The export's `Result`; `predicted_bytes` is the tensor data it holds (the file adds
        torch's or safetensors' few KB of framing).

    Raises:
        ExportError: not a DCP checkpoint, nothing to keep, a tensor whose data is missing,
            a dangerous `.metadata`, a bad target, a full disk or failed verification.
    """
    keep, items = _plan(ckpt, keep, strip_prefix, dtype, fmt)
    target = Path(out)
    problem = check_target(target, ckpt)
    if problem is not None and (problem[0] != "exists" or not force):
        raise ExportError(str(target), problem[1])
    folder = target.parent if str(target.parent) else Path()
    total = sum(it.tensor.numel * _itemsize(it.dtype) for it in items)
    fd, tmp = temp_beside(target, folder)
    try:
        tensors = _load(ckpt, items, progress, total)
        meta = {"format": "pt", **file_metadata(ckpt)} if fmt == "safetensors" else None
        _write(tensors, fd, tmp, meta)
        fd = -1
        size = Path(tmp).stat().st_size
        _verify(ckpt, tensors, tmp, fmt)
        del tensors
        Path(tmp).replace(target)
    except OSError as e:
        _cleanup(fd, tmp)
        if e.errno == errno.ENOSPC:
            raise ExportError(
                str(target), "no space left on the device; nothing was written"
            ) from None
        raise ExportError(str(target), f"cannot write: {e.strerror or e}") from None
    except RuntimeError as e:  # torch.save reports a failed write this way
        _cleanup(fd, tmp)
        raise ExportError(str(target), f"cannot write: {str(e).splitlines()[0]}") from None
    except BaseException:
        _cleanup(fd, tmp)
        raise
    fsync_dir(folder)
    return Result(str(target), size, len(items), total, True, tuple(keep))


def _cleanup(fd: int, tmp: str) -> None:
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)
    with contextlib.suppress(OSError):
        Path(tmp).unlink()


def _itemsize(dtype: str) -> int:
    return itemsize_of(dtype)


def _plan(
    ckpt: Checkpoint, keep: list[KeyPath] | None, strip_prefix: str, dtype: str, fmt: str
) -> tuple[list[KeyPath], list[_Item]]:
    """The kept paths (default: the detected weights) and the tensors to load and write."""
    if ckpt.format != "dcp":
        raise ExportError(ckpt.path, "not a torch.distributed.checkpoint folder")
    if dtype not in CAST_TARGETS:
        raise ExportError(ckpt.path, f"unknown --dtype {dtype!r} (keep, bf16 or fp16)")
    if fmt not in ("pth", "safetensors"):
        raise ExportError(ckpt.path, f"unknown --format {fmt!r} (pth or safetensors)")
    danger = [f for f in ckpt.findings if f.severity.value == "danger"]
    if danger:
        raise ExportError(
            ckpt.path,
            f"refusing to hand this folder to torch's DCP reader: {danger[0].message}",
        )
    keep, kept = kept_tensors(ckpt, keep)
    found: list[tuple[str, KeyPath, TensorInfo]] = []
    for name, path, t in kept:
        _check_available(ckpt, path, t)
        found.append((name, path, t))  # a kept tensor itself is named by its key (kept_tensors)
    if not found:
        raise ExportError(ckpt.path, f"no tensors under {', '.join(map(keep))}")
    _, names = output_names(ckpt, [n for n, _, _ in found], strip_prefix)
    items: list[_Item] = []
    for name, (_, path, t) in zip(names, found, strict=True):
        out_dtype = cast_dtype(t.dtype, dtype)
        if fmt == "safetensors" and out_dtype not in SAFETENSORS_CODE:
            raise ExportError(
                ckpt.path, f"{describe_path(path)}: {out_dtype} has no safetensors code"
            )
        # DCP flattens a state dict by joining the key path with dots (flatten_state_dict);
        # without planner data the path is the FQN itself.
        items.append(_Item(name, ".".join(map(str, path)), path, t, out_dtype))
    return keep, items


def _check_available(ckpt: Checkpoint, path: KeyPath, t: TensorInfo) -> None:
    node = ckpt.find(path)
    keys: tuple[str, ...] = ()
    if t.storage_key is not None:
        keys = (t.storage_key,)
    elif node is not None:
        keys = dict(node.attrs).get("chunk_storages", ())
    if not keys:
        raise ExportError(
            ckpt.path, f"{describe_path(path)}: its data cannot be located in the folder"
        )
    for k in keys:
        st = ckpt.storages.get(k)
        if st is None or st.missing:
            where = f" ({st.file})" if st is not None and st.file else ""
            raise ExportError(ckpt.path, f"{describe_path(path)}: its data is missing{where}")


def _safe_reader(folder: str) -> Any:
    """A `FileSystemReader` whose `.metadata` is unpickled through an allow-list of classes."""
    import pathlib
    import pickle

    import torch
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint import filesystem as fs
    from torch.distributed.checkpoint import metadata as md

    allowed: dict[tuple[str, str], Any] = {
        (c.__module__, c.__qualname__): c
        for c in (
            md.Metadata, md.TensorStorageMetadata, md.BytesStorageMetadata,
            md.ChunkStorageMetadata, md.TensorProperties, md.MetadataIndex, md.StorageMeta,
            md._MEM_FORMAT_ENCODING, fs._StorageInfo, pathlib.PosixPath, pathlib.WindowsPath,
        )
    }  # fmt: skip
    allowed[("torch", "Size")] = torch.Size
    allowed[("torch.serialization", "_get_layout")] = torch.serialization._get_layout
    dtypes = {name: v for name, v in vars(torch).items() if isinstance(v, torch.dtype)}

    class MetadataUnpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if module == "torch" and name in dtypes:
                return dtypes[name]
            cls = allowed.get((module, name))
            if cls is None:
                raise pickle.UnpicklingError(f"{module}.{name} is not allowed in DCP metadata")
            return cls

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            with Path(folder, ".metadata").open("rb") as f:
                metadata = MetadataUnpickler(f).load()
            if not isinstance(metadata, md.Metadata):
                raise pickle.UnpicklingError(".metadata does not hold DCP Metadata")
            if metadata.storage_meta is None:
                metadata.storage_meta = md.StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(folder)


def _load(ckpt: Checkpoint, items: list[_Item], progress: NamedProgress | None, total: int) -> Any:
    """The kept tensors, by output name, loaded (and cast) by torch's DCP reader."""
    import pickle
    import warnings

    import torch
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    class KeysPlanner(_EmptyStateDictLoadPlanner):
        """Exactly the requested FQNs (the parent also matches key-path prefixes, and fails
        without planner data)."""

        def _should_include_key(self, key: str, metadata: Any) -> bool:
            return key in self.keys

    folder = ckpt.info.get("folder", ckpt.path)
    out: dict[str, Any] = {}
    done = 0
    for batch in _batches(items):
        sd: dict[str, Any] = {}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _load_state_dict(
                    sd,
                    storage_reader=_safe_reader(folder),
                    planner=KeysPlanner(keys={it.fqn for it in batch}),
                    no_dist=True,
                )
        except CheckpointException as e:  # a BaseException wrapping what failed
            failures = list(e.failures.values())
            raise _reader_failed(ckpt, failures[0][0] if failures else e) from None
        except (pickle.UnpicklingError, EOFError, OSError, ValueError, RuntimeError) as e:
            raise _reader_failed(ckpt, e) from None
        for it in batch:
            t = _at(sd, it.path)
            if not isinstance(t, torch.Tensor):
                raise ExportError(ckpt.path, f"torch's DCP reader did not return {it.fqn}")
            want = getattr(torch, it.dtype)
            if t.dtype != want:
                t = t.to(want)
            out[it.name] = t.contiguous()
            done += it.tensor.numel * _itemsize(it.dtype)
            if progress:
                progress(done, total, it.name)
    return out


def _reader_failed(ckpt: Checkpoint, e: BaseException) -> ExportError:
    import pickle

    lines = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {lines[-1] if lines else ''}"
    if isinstance(e, pickle.UnpicklingError | EOFError):
        return ExportError(ckpt.path, f"torch cannot read .metadata ({text})")
    return ExportError(ckpt.path, f"torch's DCP reader failed ({text})")


def _batches(items: list[_Item]) -> list[list[_Item]]:
    out: list[list[_Item]] = [[]]
    size = 0
    for it in items:
        n = it.tensor.nbytes
        if out[-1] and size + n > BATCH_BYTES:
            out.append([])
            size = 0
        out[-1].append(it)
        size += n
    return out


def _at(sd: Any, path: KeyPath) -> Any:
    node = sd
    for k in path:
        in_list = isinstance(node, list) and isinstance(k, int) and 0 <= k < len(node)
        if in_list or (isinstance(node, dict) and k in node):
            node = node[k]
        else:
            return None
    return node


def _write(tensors: dict[str, Any], fd: int, tmp: str, meta: dict[str, str] | None) -> None:
    """torch.save (.pth) or safetensors' save_file (with string metadata), then fsync."""
    if meta is None:
        import torch

        with os.fdopen(fd, "wb") as f:
            torch.save(tensors, f)
            f.flush()
            os.fsync(f.fileno())
        return
    from safetensors.torch import save_file

    os.close(fd)
    save_file(tensors, tmp, metadata=meta)
    with Path(tmp).open("rb+") as f:
        os.fsync(f.fileno())


def _verify(ckpt: Checkpoint, tensors: dict[str, Any], written: str, fmt: str) -> None:
    """Reload the output with torch and compare every tensor with what DCP loaded."""
    import torch

    if fmt == "pth":
        back = torch.load(written, map_location="cpu", weights_only=True, mmap=True)
    else:
        from safetensors.torch import load_file

        back = load_file(written)
    if not isinstance(back, dict) or set(back) != set(tensors):
        raise ExportError(ckpt.path, "verification failed: the output holds other names")
    for name, t in tensors.items():
        b = back[name]
        # bit for bit (torch.equal says NaN != NaN)
        same = b.dtype == t.dtype and b.shape == t.shape
        if not same or not torch.equal(_bits(b), _bits(t)):
            raise ExportError(ckpt.path, f"verification failed: {name} differs from the source")


def _bits(t: Any) -> Any:
    import torch

    return t.reshape(-1).view(torch.uint8)
