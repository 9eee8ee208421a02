"""Provides what every pickle-based reader shares: the open file, the storage table, nested
checkpoints, and assembling findings and the tree into a `Checkpoint`.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import PurePath
from typing import Any, ClassVar

from ckptui.core.bulk import gc_paused
from ckptui.core.dtypes import STORAGE_DTYPES, itemsize_of
from ckptui.core.errors import CkptError, CorruptFile
from ckptui.core.tree import Checkpoint, Finding, KeyPath, Node, Severity, Storage
from ckptui.unpickler.confined import ConfinedUnpickler
from ckptui.unpickler.inert import Blob, Global, InertUnpickler, Limits, Malformed, classify_global
from ckptui.unpickler.recorded import StorageRef
from ckptui.unpickler.recorders import CONSTANTS, RECORDERS
from ckptui.unpickler.safety import Safety
from ckptui.unpickler.treebuild import MAX_DEPTH, TreeBuilder

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
"""First pickle of the legacy format (torch/serialization.py)."""

STORAGE_ITEMS = {cls: (dtype, itemsize_of(dtype)) for cls, dtype in STORAGE_DTYPES.items()}
"""Storage class -> (dtype, bytes per element), looked up once per storage by the readers of
torch's persistent ids (zip and legacy)."""
_COUNT = struct.Struct("<q")
"""A legacy storage's element count (`Source.expect_count`)."""
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(path: str | os.PathLike[str]) -> bool:
    """A `scheme://` path (`https://`, `s3://`, any fsspec URL), read by `formats.remote`."""
    return isinstance(path, str) and _URL.match(path) is not None


def leads_outside(folder: str, path: str) -> str | None:
    """Why `path`, named inside `folder`, is really outside it (a symlink, or a symlinked folder
    on the way, leading elsewhere), or None when it stays inside.

    A folder's files are read because the folder was given, so a symlink out of it (planted in
    a downloaded archive, say) must not make ckptui read some other file. One exception: a
    Hugging Face hub cache snapshot (`.../snapshots/<rev>/`) holds symlinks into the cache's own
    `.../blobs/`, which is how every downloaded model looks (huggingface_hub's cache layout).
    """
    root = PurePath(os.path.realpath(folder))
    real = PurePath(os.path.realpath(path))
    if real.is_relative_to(root):
        return None
    if root.parent.name == "snapshots" and real.is_relative_to(root.parent.parent / "blobs"):
        return None
    return f"a symlink leading outside the folder (to {real}): not read"


NestedReader = Callable[["Source", InertUnpickler, "Blob | bytes"], Any]
"""Reads an embedded checkpoint: (the outer source, its unpickler, the bytes) -> the root object."""


@dataclass
class Source:
    """An open file plus what the readers learn about it.

    A URL opens a `remote.RemoteSource` instead, which answers `read_at` with range requests
    (and has no `buf`); a local path never imports it.

    Small scattered reads (zip local headers, legacy storage counts, the data.pkl record) use
    `read_at` (pread). Only pickles that may embed large payloads (legacy and plain pickle files)
    are parsed through `buf`, a read-only memory map advised MADV_RANDOM: touching a mapped page
    makes the kernel map its whole page-cache folio, which counted in peak RSS and grew with the
    file's size when every storage's header was read through the map (measured: 411 MiB for a
    6 GB checkpoint, against 65 MiB for 0.6 GB).
    """

    path: str
    data: Any
    """The bytes themselves, for a source that is not a file (an embedded copy)."""
    size: int
    fd: int | None = None
    _map: Any = None
    storages: dict[str, Storage] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    globals: dict[str, Global] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    nested: int = 0
    kind: str = "pickle"
    """The format the file is being read as (`Checkpoint.format`), once the reader knows it."""
    read_nested: ClassVar[NestedReader | None] = None
    """Reads a checkpoint embedded in a pickle (`nested.read_nested`). The readers that find
    embedded checkpoints (zip, legacy) are the ones that read them, and they import this module:
    `formats.nested` sets this when it loads (importing any of `formats` loads it), so this
    module imports none of them."""
    replay_exact: bool | None = None
    """Every pickle read so far went through the confined C path, which found nothing torch's
    weights-only unpickler would refuse (`confined.py`): its replay can be skipped."""

    @classmethod
    def open(cls, path: str) -> Source:
        """Open the local file `path` for reading (any path, a URL too: `opening.open_source`)."""
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
        except OSError:
            os.close(fd)
            raise
        return cls(path, None, size, fd)

    @property
    def buf(self) -> Any:
        """The whole file as a buffer (mapped on first use; bytes for an in-memory source)."""
        if self.fd is None:
            return self.data
        if self._map is None:
            if self.size == 0:
                return b""
            self._map = mmap.mmap(self.fd, 0, access=mmap.ACCESS_READ)
            if hasattr(self._map, "madvise"):
                self._map.madvise(mmap.MADV_RANDOM)
        return self._map

    def read_at(self, offset: int, n: int) -> bytes:
        """Up to `n` bytes at `offset` (fewer at the end of the file)."""
        if offset < 0 or n <= 0 or offset >= self.size:
            return b""
        if self.fd is None:
            return bytes(self.data[offset : offset + n])
        return os.pread(self.fd, min(n, self.size - offset), offset)

    def expect_count(self, pos: int, count: int, end: int) -> int:
        """The 8-byte element count of a legacy storage at `pos`, or -1 past the file's end.
        (`count`, what the pickle declares, and `end`, where the storage ends, let a remote
        source predict it instead of asking: see `RemoteSource.expect_count`.)

        Read from the mapping (`buf`), not by `read_at`: a `pread` per storage was a fifth of
        a 100,000-tensor legacy file's open (issue 16); the bytes are the same."""
        if pos < 0 or pos + 8 > self.size:
            return -1  # what `read_at` gives there: fewer than 8 bytes
        return _COUNT.unpack_from(self.buf, pos)[0]  # type: ignore[no-any-return]

    def prefetch_zip(self) -> None:
        """Get ready to read the file as a zip. A local file reads its directory and headers
        as they are needed; a remote one (`RemoteSource.prefetch_zip`) fetches them up front."""

    def close(self) -> None:
        """Release the mapping and the file."""
        if self._map is not None:
            self._map.close()
            self._map = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def warn(
        self,
        kind: str,
        message: str,
        path: KeyPath | None = None,
        severity: Severity = Severity.WARNING,
    ) -> None:
        """Add a finding."""
        self.findings.append(Finding(kind, severity, message, path))

    def unpickler(
        self, buf: Any, part: str, persistent_load: Any, nest: int = 0, base: int | None = 0
    ) -> InertUnpickler:
        """An inert unpickler over `buf` whose globals are collected into this source.

        Args:
            part: where in the file the pickle lies (`archive/data.pkl`), for messages.
            base: absolute file offset of `buf[0]`, or None when `buf` is not the file's bytes
                (a decompressed record), so blobs inside cannot be located in the file.
        """
        u = ConfinedUnpickler(
            buf, self.path, persistent_load, RECORDERS, CONSTANTS, self.limits, nest, part
        )
        u.globals = self.globals
        u.extra["base"] = base
        u.extra["load_nested"] = self._load_nested
        u.extra["warn"] = self.warn
        u.extra["save_state"] = self._save_state
        u.extra["exact"] = self._note_exact
        return u

    def _save_state(self) -> Any:
        """A function undoing what a declined confined attempt added (storages, findings,
        the nested count); it only ever adds, so lengths suffice."""
        n_storages, n_findings, nested = len(self.storages), len(self.findings), self.nested

        def restore() -> None:
            for key in list(self.storages)[n_storages:]:
                del self.storages[key]
            del self.findings[n_findings:]
            self.nested = nested

        return restore

    def _note_exact(self, exact: bool) -> None:
        self.replay_exact = exact and self.replay_exact is not False

    def _load_nested(self, u: InertUnpickler, blob: Blob | bytes) -> Any:
        """Read the checkpoint embedded by `torch.storage._load_from_bytes(blob)`."""
        if self.read_nested is None:  # only a Source made without the readers loaded
            raise Malformed("embedded checkpoints are not read here")
        if u.nest + 1 > self.limits.max_nesting:
            raise Malformed("embedded checkpoints nest too deep")
        self.nested += 1
        if self.nested > self.limits.max_nested_checkpoints:
            raise Malformed("too many embedded checkpoints")
        return self.read_nested(self, u, blob)


def storage_ref(
    src: Source, key: str, dtype: str, nbytes: int, location: str, cache: dict[str, StorageRef]
) -> StorageRef:
    """One StorageRef per key: a storage reached twice is the same storage."""
    ref = cache.get(key)
    if ref is None:
        ref = StorageRef(key, dtype, nbytes, location)
        cache[key] = ref
    elif ref.nbytes != nbytes:
        raise Malformed(f"storage {key} declared with two sizes")
    return ref


def parse_pid_location(value: Any) -> str:
    """The location string of a persistent id."""
    if not isinstance(value, str) or len(value) > 100:
        raise Malformed("storage location is not a short string")
    return value


def assemble(
    src: Source, fmt: str, root_obj: Any, info: dict[str, Any], root_type: str | None = None
) -> Checkpoint:
    """Build the tree and findings for an unpickled root object.

    Findings come from the globals the pickle named (dangerous callables, unknown classes),
    whole-module pickles, tensors that do not fit their storage, and missing storages.
    """
    with gc_paused():  # a node per object, none in a cycle (`core.bulk`)
        return _assemble(src, fmt, root_obj, info, root_type)


def _assemble(
    src: Source, fmt: str, root_obj: Any, info: dict[str, Any], root_type: str | None
) -> Checkpoint:
    builder = TreeBuilder()
    root = builder.build(root_obj)
    builder.forget()  # its map of every object shown: 17 MB on a 100,000-tensor file
    if root_type is not None:
        root = _retype(root, root_type)
    findings: list[Finding] = []
    for g in src.globals.values():
        verdict = classify_global(g)
        if verdict is None:
            continue
        kind, severity = verdict
        where = builder.global_paths.get(g.full)
        called = f" with {g.call_args}" if g.call_args else ""
        if kind == "dangerous_call":
            why = f" ({g.verdict.reason})" if g.verdict.reason else ""
            msg = f"{g.full}{why}{called}: torch.load would call this; ckptui did not"
        elif kind == "unknown_class":
            msg = f"{g.full}: class not known to ckptui, shown as a placeholder (not imported)"
        else:
            msg = f"{g.full}{called}: unknown function that torch.load would call; not run here"
        findings.append(Finding(kind, Severity(severity), msg, where))
    for path, name in builder.modules:
        findings.append(
            Finding(
                "whole_module",
                Severity.INFO,
                f"whole-module pickle of {name}: loading it needs that class's source code; "
                "its weights are shown under their state_dict names",
                path,
            )
        )
    if builder.too_deep is not None:
        findings.append(
            Finding(
                "too_deep",
                Severity.WARNING,
                f"objects nested deeper than {MAX_DEPTH} levels are not shown",
                builder.too_deep,
            )
        )
    storages = dict(src.storages)  # one copy for both: 100,000 entries are 5 MB
    ckpt = Checkpoint(src.path, fmt, src.size, root, storages, (), info)
    findings.extend(src.findings)
    findings.extend(_tensor_findings(ckpt))
    order = {"danger": 0, "warning": 1, "info": 2}
    findings.sort(key=lambda f: order[f.severity.value])
    ckpt = Checkpoint(src.path, fmt, src.size, root, storages, tuple(findings), info)
    if src.replay_exact:  # the weights-only verdict needs no second pass (`confined.py`)
        ckpt.memo("weights_only_replay_free", lambda: True)
    return ckpt


def _retype(node: Node, type_name: str) -> Node:

    return replace(node, type=type_name)


def _tensor_findings(ckpt: Checkpoint) -> list[Finding]:
    out: list[Finding] = []
    missing_reported: set[str] = set()
    storages = ckpt.storages
    for path, t in ckpt.tensors():
        key = t.storage_key
        if key is None:
            continue
        st = storages.get(key)
        if st is None:
            continue
        shape, stride = t.shape, t.stride
        if len(shape) == 1 and len(stride) == 1 and stride[0] >= 0 and not st.missing:
            # Most tensors of a big state dict: `span_elements` of one dimension, inline; one
            # out of bounds goes on below, where the finding is worded.
            d = shape[0]
            if not d or (t.storage_offset + (d - 1) * stride[0] + 1) * t.itemsize <= st.nbytes:
                continue
        if st.missing and st.key not in missing_reported:
            missing_reported.add(st.key)
            out.append(
                Finding(
                    "missing_storage",
                    Severity.WARNING,
                    f"storage {st.key} ({st.record or 'data'}) is missing from the "
                    "file: this tensor cannot be loaded",
                    path,
                )
            )
        span = t.span_elements() * t.itemsize
        if any(s < 0 for s in t.stride) or span > st.nbytes:
            out.append(
                Finding(
                    "out_of_bounds",
                    Severity.WARNING,
                    f"tensor view reaches byte {span:,} of a {st.nbytes:,}-byte "
                    "storage: torch.load would refuse it",
                    path,
                )
            )
    return out


def attach_partial(src: Source, e: CorruptFile) -> None:
    """A file that breaks only after torch.load has already run something dangerous is a
    danger first: keep what was read, with its findings and the damage as one more, on the
    error (`e.partial`), so `inspect` can report it (issue: a scanner treating exit 2 as "not a
    checkpoint, skip it" would wave the file through)."""
    if not any(g.called and g.verdict.safety is Safety.DANGER for g in src.globals.values()):
        return
    src.warn("corrupt", f"the file is damaged after what is shown ({e.message})")
    try:
        e.partial = assemble(src, src.kind, e.partial_root, {"corrupt": e.message})
    except CkptError:  # the partial tree itself is unusable: the message still names the call
        e.partial = None


def corrupt(path: str, what: str) -> CorruptFile:
    """A CorruptFile error for `path`."""
    return CorruptFile(path, what)
