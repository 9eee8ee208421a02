"""Provides the loading of a DCP folder's `.metadata` pickle into `DcpMetadata`, without running it.

`.metadata` is a pickle of torch's `Metadata` dataclass (FORMATS.md). It names, for every
flattened key (FQN), either a tensor (dtype, global size and the chunks that tile it) or a
pickled object, and for every chunk or object the `.distcp` file, offset and length of its item
(`storage_data`). A 10,000-tensor checkpoint writes a 2 MiB pickle of about a million opcodes:
ckptui's pure-Python inert loop (`unpickle.py`) needs ~0.8 s for it, so this module first tries
a fast path, and falls back to the inert loop for anything the fast path does not accept.

The fast path is `dcp_fast_unpickler`: CPython's C `pickle.Unpickler` behind an opcode
allow-list, resolving globals only to ckptui's own record classes (its docstring says why it can
never import or call anything from the file). Any exception at all makes the fast path decline,
and the inert loop reads the file, reporting dangerous or unknown globals as findings exactly as
before.

Both paths feed one interpretation (`dcp_interpretation`), so they produce the same
`DcpMetadata`; the fast path declines what the interpretation would reject, and the inert path
then raises the `CorruptFile` it always did. The fast path is a shade more lenient on values the
interpretation never reads (`torch.Size()` without arguments is `()`, as torch has it).

No torch here: opening must not pay torch's start-up.
"""

from __future__ import annotations

import io

from ckptui.core.errors import CorruptFile
from ckptui.formats.dcp.fast_unpickler import MD_PREFIX, FastUnpickler, Record, rewrite
from ckptui.formats.dcp.interpretation import DcpMetadata, interpret
from ckptui.formats.source import Source, attach_partial
from ckptui.unpickler.inert import Malformed, PObject, classify_global

METADATA = ".metadata"
DCP_GLOBALS = frozenset(
    {
        f"{MD_PREFIX}Metadata", f"{MD_PREFIX}TensorStorageMetadata", f"{MD_PREFIX}BytesStorageMetadata",
        f"{MD_PREFIX}ChunkStorageMetadata", f"{MD_PREFIX}TensorProperties", f"{MD_PREFIX}MetadataIndex",
        f"{MD_PREFIX}StorageMeta", f"{MD_PREFIX}_MEM_FORMAT_ENCODING",
        "torch.distributed.checkpoint.filesystem._StorageInfo",
        "torch.distributed.checkpoint.filesystem._StoragePrefix",
    }
)  # fmt: skip
"""torch's own metadata classes: interpreted here as data, so not reported as unknown."""
FAST_MAX_BYTES = 256 << 20
"""A larger `.metadata` goes to the inert loop, which maps the file instead of copying it."""


def load_metadata(src: Source) -> DcpMetadata:
    """Read and check `.metadata`: by the fast path when it accepts the pickle, else inertly.

    Args:
        src: the open `.metadata` file.

    Returns:
        The checked metadata.

    Raises:
        CorruptFile: not a readable DCP Metadata pickle.
    """
    if src.size == 0:
        raise CorruptFile(src.path, "empty .metadata file")
    if src.size <= FAST_MAX_BYTES:
        md = load_fast(src.read_at(0, src.size))
        if md is not None:
            return md
    return load_inert(src)


# -- the inert path ---------------------------------------------------------------------------
def load_inert(src: Source) -> DcpMetadata:
    """Read `.metadata` with ckptui's inert opcode loop (every pickle, hostile ones included)."""
    path = src.path
    if src.size == 0:
        raise CorruptFile(path, "empty .metadata file")
    root, _ = src.unpickler(src.buf, METADATA, None).load(0, src.size)
    if not (isinstance(root, PObject) and root.name == f"{MD_PREFIX}Metadata"):
        found = root.name if isinstance(root, PObject) else type(root).__name__
        e = CorruptFile(path, f"not a DCP Metadata pickle (it holds {found}){_danger(src)}")
        e.partial_root = root
        attach_partial(src, e)  # a danger torch's reader would run is reported as one
        raise e
    try:
        return interpret(root, src.globals)
    except Malformed as e:
        raise CorruptFile(path, f"malformed DCP metadata: {e}{_danger(src)}") from None


def _danger(src: Source) -> str:
    ran = [
        g.full for g in src.globals.values() if classify_global(g) == ("dangerous_call", "danger")
    ]
    if not ran:
        return ""
    return f"; pickle.load (and torch's reader) would run {', '.join(ran[:3])}: ckptui did not"


# -- the fast path ---------------------------------------------------------------------------
def load_fast(data: bytes) -> DcpMetadata | None:
    """Read `.metadata` bytes by the fast path, or None when it declines them (the caller then
    reads them inertly). Never raises."""
    try:
        stream = rewrite(data)
        if stream is None:
            return None
        root = FastUnpickler(io.BytesIO(stream)).load()
        if not (isinstance(root, Record) and root.name == f"{MD_PREFIX}Metadata"):
            return None
        md = interpret(root, {})
    except Exception:  # noqa: BLE001  # any failure: the inert loop reads it and says what is wrong
        return None
    md.fast = True
    return md
