"""Provides the recorders for builtin and `collections` constructors: dicts, sets, numbers, bytes.

Checkpoints pickle `OrderedDict`s, `defaultdict`s, sets and `_codecs.encode` calls as reduce
calls; these rebuild them as placeholders (`PDict`, `PSet`) or plain values, never calling
anything the file names beyond the type itself on plain arguments.
"""

from __future__ import annotations

from typing import Any

from ckptui.unpickler.inert import Blob, InertUnpickler, Malformed, PDict, PObject, PSet, Recorder


def ordered_dict(u: InertUnpickler, args: tuple[Any, ...]) -> PDict:
    """`collections.OrderedDict()` or `OrderedDict([(k, v), ...])`."""
    d = PDict("collections.OrderedDict")
    if args:
        _fill_pairs(d, args[0])
    return d


def _fill_pairs(d: PDict, src: Any) -> None:
    if isinstance(src, PDict):
        for k, v in src.items:
            d.set(k, v)
    elif isinstance(src, list | tuple):
        for pair in src:
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise Malformed("dict items must be pairs")
            d.set(pair[0], pair[1])
    else:
        raise Malformed(f"cannot make a dict from {type(src).__name__}")


def dict_like(type_name: str) -> Recorder:
    def make(u: InertUnpickler, args: tuple[Any, ...]) -> PDict:
        d = PDict(type_name)
        if type_name == "collections.defaultdict":
            if args:
                d.set_attr("default_factory", args[0])
        elif args:
            _fill_pairs(d, args[0])
        return d

    return make


def set_like(type_name: str) -> Recorder:
    def make(u: InertUnpickler, args: tuple[Any, ...]) -> PSet:
        items = args[0] if args else []
        if isinstance(items, PSet):
            items = items.items
        if not isinstance(items, list | tuple):
            raise Malformed(f"{type_name} takes a sequence")
        return PSet(type_name, list(items))

    return make


def plain_type(kind: type) -> Recorder:
    def make(u: InertUnpickler, args: tuple[Any, ...]) -> Any:
        for a in args:
            if not isinstance(a, int | float | str | bytes | bool) or isinstance(a, Blob):
                return PObject(u._global("builtins", kind.__name__), args, "reduce")
        if kind is bytes and args and not isinstance(args[0], str | bytes):
            # bytes(n) would allocate n bytes: a number the file merely claims
            return PObject(u._global("builtins", "bytes"), args, "reduce")
        try:
            return kind(*args)
        except (TypeError, ValueError, OverflowError, LookupError) as e:
            raise Malformed(f"builtins.{kind.__name__}: {e}") from None

    return make


def codecs_encode(u: InertUnpickler, args: tuple[Any, ...]) -> Any:
    """`_codecs.encode(text, 'latin1')`: how protocol-2 numpy pickles carry raw bytes."""
    if not args or len(args) > 2:
        raise Malformed("_codecs.encode takes (obj[, encoding])")
    text = args[0]
    if isinstance(text, Blob):
        # A long latin-1 string (protocol-2 storages over 1 MB): its UTF-8 bytes on disk are not
        # the payload, so decode it now; it is one storage's worth, read once.
        raw = bytes(u.buf[text.offset : text.offset + text.length])
        text = raw.decode("utf-8", "surrogatepass")
    if not isinstance(text, str):
        raise Malformed("_codecs.encode of a non-string")
    enc = args[1] if len(args) == 2 and isinstance(args[1], str) else "utf-8"
    if enc.lower().replace("-", "") not in ("latin1", "utf8", "iso88591", "ascii"):
        raise Malformed(f"_codecs.encode with encoding {enc!r}")
    try:
        return text.encode(enc)
    except (UnicodeEncodeError, LookupError) as e:
        raise Malformed(f"_codecs.encode failed: {e}") from None
