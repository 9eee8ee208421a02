"""Provides the one opcode pattern the confined rewrite fuses: a tensor as `torch.save` writes it.

`torch.save` (protocol 2) writes every tensor as `_rebuild_tensor_v2(storage, offset, size,
stride, requires_grad, OrderedDict())` (torch/_tensor.py `__reduce_ex__`, its storage a
persistent id, torch/serialization.py `persistent_id`):

    F  ( ( 'storage' StorageClass key location numel t [PUT]  Q
           offset size [PUT] stride [PUT] requires_grad OrderedDict ) R [PUT d]  t [PUT e]  R

where F, the strings and the globals are GLOBALs, BINUNICODEs or memo GETs (a legacy
`torch.save` adds a None, the view metadata, to the persistent id). Read as it is, that
is two REDUCEs, each a Python callback of the C unpickler, and an `OrderedDict` made only to
be thrown away, 100,000 times in a MoE state dict (issue 16). `pieces` rewrites each run of
exactly this shape, from the first MARK to the last REDUCE, into

    F  ( ( 'storage' StorageClass key location numel t [PUT]  Q
           offset size [PUT] stride [PUT] requires_grad OrderedDict )  t  N N TUPLE3 TUPLE1 R

so the C unpickler makes one call, `F((args, None, None))`, whose `Global.__call__` hands the
seven values to `ConfinedUnpickler.confined_fused`. That does, in the same order, what the
two REDUCEs would have done (the BINPERSID is left as it was): `OrderedDict()` and F's call,
through the same `Global.__call__` the C unpickler would reach. Only when F is
`torch._utils._rebuild_tensor_v2` and the hooks global is `collections.OrderedDict`, both
served by their recorders, is the hooks dict skipped: the recorder ignores that argument and
making an empty `PDict` has no other effect. That check is made once per pair of `Global`
objects (the unpickler keeps the last pair that passed; a Global's name and the recorders
never change), so the next tensors naming the same two go straight to the recorder.

Why the rewritten run reads the same as the original (everything else is left to `pieces`):
- Every opcode is matched whole, so the run starts on an opcode boundary (`pieces` checks that
  the plain-opcode walk reaches it exactly) and no byte inside a string is taken for an opcode.
- The values the C unpickler builds are the same objects, made in the same order: the id
  tuple, the storage and the size and stride tuples keep their PUTs. What no longer exists
  are the hooks dict and the args tuple, whose PUTs d and e are dropped. A memo slot can be
  read back only by a BINGET or LONG_BINGET naming it, so the pattern takes there only
  LONG_BINPUTs of an index of 256 or more (which no BINGET can name) or none. A slot filled
  only by its dropped PUT is never filled in the rewritten stream, so a LONG_BINGET of it
  raises in the C unpickler and the inert loop reads the file. `pieces` declines the pickle
  when a `j` followed by the four bytes of a dropped index appears anywhere in it (a byte in a
  string counts too) and that index may be PUT somewhere else as well (`_put_elsewhere`). MEMOIZE numbers its slot by how many are filled, which dropping PUTs changes,
  so a pickle using protocol 3-5 opcodes is declined once a run has been fused.
- The fused call is unforgeable: every REDUCE of the file becomes `func((args,))` and every
  NEWOBJ `cls((args, None))` (`confined.py`), so only this rewrite makes a call of three.
- A run that names anything else as F, the storage class or the hooks (a Parameter, an
  `os.system`) is still fused, and goes through the same `Global.__call__`s as before, in the
  same order; a value that is not a `Global` where a call is made declines the pickle, as the
  C unpickler's TypeError would.
"""

from __future__ import annotations

import re
from functools import lru_cache


def counted(op: bytes, most: int, pad: bytes = b"") -> bytes:
    """Regex for `op`, a length byte n <= most (then `pad`), then n bytes: one alternative per
    length, so the regex engine picks the branch by the length byte (it skips branches whose
    first literal differs)."""
    bodies = b"|".join(
        re.escape(bytes([n]) + pad) + (b".{%d}" % n if n else b"") for n in range(most + 1)
    )
    return re.escape(op) + b"(?:" + bodies + b")"


_GET = rb"(?:h.|j.{4})"
_INT = rb"(?:K.|M.{2}|J.{4})"
_TEXT = b"(?:" + _GET + b"|" + counted(b"X", 63, b"\x00\x00\x00") + b")"
"""A short string (the storage's tag, key and location) or a memo GET; the GET first, or the
engine tries every length before it. Each length is a branch, so few: compiling costs."""
_KEY = b"(?:" + _GET + b"|" + counted(b"X", 127, b"\x00\x00\x00") + b")"
"""A state dict's key (a longer one sends that tensor the unfused way)."""
_NAME = rb"(?:c[^\n]*\n[^\n]*\n|" + _GET + b")"
_TUPLE = b"(?:\\)|" + _INT + b"(?:\\x85|" + _INT + b"(?:\\x86|" + _INT + b"\\x87)))"
"""A size or stride: (), or one to three ints and TUPLE1-3 (torch.save writes plain tuples)."""

_HIGH = rb".(?:[^\x00]..|.[^\x00].|..[^\x00])"
"""The 4 bytes of a memo index of 256 or more, which no 1-byte BINGET can name."""

FUSED_CALL = b"tNN\x87\x85R"
"""TUPLE (the args) NONE NONE TUPLE3 TUPLE1 REDUCE: `F((args, None, None))`."""


@lru_cache(maxsize=8)
def tensor_run(put: bytes, chained: bool = False) -> re.Pattern[bytes]:
    """The pattern (module docstring), `put` being the regex of an allowed BINPUT/LONG_BINPUT;
    the dropped slots d and e must be LONG_BINPUTs. Groups: `head` (kept), the BINPERSID,
    `tail` (kept), the hooks' REDUCE, `d` (its index bytes), the args TUPLE, `e`, the REDUCE.

    `chained`: the same, after what torch.save writes between two tensors of a dict (the
    last one's PUT, a SETITEMS and MARK every 1,000 items, the key, F), all plain opcodes
    kept as they are, so the next tensor is found by one match, not a search."""
    opt = b"(?:" + put + b")?"
    between = b""
    if chained:
        between = opt + b"(?:u\\()?(?:" + _KEY + opt + b")?" + _NAME + opt
    return re.compile(
        b"(?s)" + between + b"(?P<head>\\(\\(" + _TEXT + opt + _NAME + opt + _TEXT + opt + _TEXT
        + opt + _INT + b"N?t" + opt + b")Q"
        + b"(?P<tail>" + _INT + _TUPLE + opt + _TUPLE + opt + b"[\\x88\\x89]"
        + _NAME + opt + b"\\))R"
        + b"(?:r(?P<d>" + _HIGH + b"))?t(?:r(?P<e>" + _HIGH + b"))?R"
    )  # fmt: skip


LONG_GET = re.compile(rb"(?s)j(?=(.{4}))")
"""Every `j` and the four bytes after it: what a LONG_BINGET could name (overlapping)."""
