"""Provides the rewrite behind the confined C unpickler (`confined.py`): the pickle checked
against an opcode allow-list and rewritten so that every call, BUILD and container the C
unpickler makes goes through ckptui's markers, streamed piece by piece.

Why each opcode is allowed, declined or rewritten is `confined.py`'s docstring (points 1-2);
this module holds the regexes and the walk, and `PieceReader`, which hands the pieces to the
C unpickler as a file so the rewritten copy is never held whole.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from ckptui.unpickler.fast_pattern import FUSED_CALL, LONG_GET, counted, tensor_run


class Decline(Exception):
    """The confined path declines the pickle; the inert loop reads it instead."""


_MARK = rb"\((?![eu\x95])(?!\Z)"
"""MARK not followed by APPENDS/SETITEMS (rewritten) or FRAME, nor ending a frame (declined)."""
_REPLAYED = (
    rb"[)t\x85\x86\x87N\x88\x89Qsuae]|[Khq].|[Jj].{4}|M.{2}|G.{8}|" + _MARK
    + b"|" + counted(b"X", 255, b"\x00\x00\x00")
    + b"|" + counted(b"\x8a", 32)
    + rb"|c[^\n]*\n[^\n]*\n"
)  # fmt: skip
"""Plain opcodes that torch's weights-only unpickler also reads (its protocol-2 loop)."""
_MORE = (
    rb"[\x94\x93]|" + counted(b"\x8c", 255) + b"|" + counted(b"C", 64)
    + b"|" + counted(b"B", 64, b"\x00\x00\x00")
)  # fmt: skip
"""Plain protocol 3-5 opcodes: MEMOIZE, STACK_GLOBAL, SHORT_BINUNICODE, short bytes."""


def _long_put(bits: int) -> bytes:
    """Regex of a LONG_BINPUT below 2**bits."""
    full, rest = divmod(bits, 8)
    put = b"r" + b".{%d}" % full
    if rest:
        put += b"[\\x00-" + re.escape(bytes([(1 << rest) - 1])) + b"]"
        full += 1
    return put + b"\\x00" * (4 - full)


@lru_cache(maxsize=8)
def _run(bits: int, more: bool) -> re.Pattern[bytes]:
    """Regex of a run of plain opcodes (`_MORE` too when `more`), LONG_BINPUT below 2**bits.
    Compiling one costs tens of milliseconds, so `bits` comes in a few tiers and the protocol
    3-5 one is compiled only for a pickle that needs it."""
    put = _long_put(bits)
    return re.compile(
        rb"(?s)(?:" + _REPLAYED + b"|" + put + (b"|" + _MORE if more else b"") + rb")*+"
    )


def _tensor_run(bits: int, chained: bool) -> re.Pattern[bytes]:
    """`fast_pattern.tensor_run` with this pickle's PUTs."""
    return tensor_run(b"q.|" + _long_put(bits), chained)


_TIERS = (12, 16, 20, 24)


def _memo_bits(n: int) -> int:
    """The LONG_BINPUT bound for a pickle of up to `n` bytes: indices below a quarter of its
    bytes (each memoized object costs an opcode and a 5-byte LONG_BINPUT), rounded up to a
    tier, and below 2**24 whatever follows the pickle (a legacy file's storages): the C memo is
    then at most 1 MiB for a pickle under 64 KiB, and never over 256 MiB, what the inert loop's
    own memo costs for that many objects."""
    need = (n // 4).bit_length()
    return next((t for t in _TIERS if t >= need), _TIERS[-1])


def _marker(nonce: bytes, name: bytes) -> bytes:
    """Opcodes pushing the marker `name`: STACK_GLOBAL(nonce, name)."""
    return b"\x8c" + bytes([len(nonce)]) + nonce + b"\x8c" + bytes([len(name)]) + name + b"\x93"


FUSE = True
"""Fuse torch.save's tensors (`fast_pattern`); tests turn it off to compare with the unfused
confined path."""
FUSE_AFTER = 2000
"""REDUCEs seen before fusing starts: a torch.save state dict of 1,000 tensors (tests lower
it to fuse small files)."""
_BATCH = 2048
"""Pieces joined into one chunk for the reader: a few tens of KiB of a torch.save pickle."""


class Progress:
    """What `pieces` learns by the end: where the pickle stops, and whether it is exact."""

    __slots__ = ("exact", "stop")

    def __init__(self) -> None:
        self.stop: int | None = None
        """Position just after the pickle's STOP in the original buffer, once reached."""
        self.exact = False
        """Only opcodes torch's weights-only unpickler reads (`confined.py`'s docstring)."""


class Rewritten:
    """A pickle made ready for the C unpickler, whole."""

    __slots__ = ("exact", "nonce", "stop", "stream")

    def __init__(self, stream: bytes, stop: int, nonce: str, exact: bool) -> None:
        self.stream = stream
        self.stop = stop
        """Position just after the pickle's STOP in the original buffer."""
        self.nonce = nonce
        self.exact = exact
        """Only opcodes torch's weights-only unpickler reads (module docstring)."""


def pieces(
    buf: Any, pos: int, end: int, inline_text: int, nonce: bytes, done: Progress
) -> Iterator[bytes]:
    """The pickle at `buf[pos:end]` checked and rewritten (`confined.py`'s docstring, points
    1-2), in chunks of checked pieces; raises `Decline` where the confined path declines it (a
    chunk goes out only whole, so the C unpickler never reads past what was checked). `done` is
    filled in before the last piece (the STOP) is yielded."""
    if end - pos < 2 or buf[pos] != 0x80 or buf[pos + 1] > 5:
        raise Decline("protocol 0/1 (text opcodes), or no PROTO: the inert loop reads those")
    seqs = {
        # No marker for the calls: a marker is a `find_class` call in Python, and a torch.save
        # file makes two calls per tensor (issue 16). The shape of what the call gets tells
        # them apart, and only these opcodes make a call (`confined.py`, point 2).
        0x52: b"\x85\x85R",  # REDUCE -> func((args,)): TUPLE1 TUPLE1 REDUCE
        0x81: b"N\x86\x85R",  # NEWOBJ -> cls((args, None)): NONE TUPLE2 TUPLE1 REDUCE
        0x62: _marker(nonce, b"B") + b"\x86b",  # BUILD -> (state, BUILD_MARK)
        0x7D: _marker(nonce, b"D") + b")R",  # EMPTY_DICT -> PDict()
        0x5D: _marker(nonce, b"L") + b")R",  # EMPTY_LIST -> _List()
    }
    bits = _memo_bits(end - pos)
    run = run2 = _run(bits, False).match
    exact = True
    first = pos
    # torch.save's tensors, fused (`fast_pattern`) once `FUSE_AFTER` REDUCEs show a big state
    # dict (compiling the patterns costs more than fusing a few hundred tensors saves):
    # `span_at` is where the next one starts (`limit` when none is left), `slots` the index
    # bytes of the PUTs each left out.
    fused: re.Pattern[bytes] | None = None
    chained: Any = None
    calls = 0 if FUSE else -1
    if FUSE and FUSE_AFTER <= 0:
        fused, chained = _tensor_run(bits, False), _tensor_run(bits, True).match
    span_at = -1
    found = None
    slots: list[tuple[bytes | None, bytes | None]] = []
    out = [bytes(buf[pos : pos + 2])]
    put = out.append  # pieces go out joined, `_BATCH` at a time (a yield each cost 2x)
    # Each rewritten opcode grows by ~22 bytes: a pickle made of little else would make a
    # stream many times its size, so growth past 4x (a torch.save pickle grows ~0.4x) declines.
    room = 4 * (end - pos) + 4096
    pos += 2
    limit = end
    """Where the current frame (or the buffer) ends: no opcode may cross it."""
    framed = False
    while True:
        if len(out) >= _BATCH:
            yield b"".join(out)
            out.clear()
        start = pos
        if fused is not None:
            m = None
            if span_at == pos:  # right after a fused tensor: the next, if torch.save's way
                m = chained(buf, pos, limit)
                span_at = -1  # else search on from here
            if m is None:
                if span_at < pos:
                    found = fused.search(buf, pos, limit)
                    span_at = limit if found is None else found.start()
                if span_at < limit and run(buf, pos, span_at).end() == span_at:
                    m = found  # the walk reaches it, so it starts on an opcode
            if m is not None:
                # The fused tensors that follow one another, in a loop of their own: ~1 us a
                # tensor here is most of what fusing saves in the C unpickler.
                while m is not None:
                    put(buf[start : m.end("tail")])  # up to the hooks' REDUCE
                    put(FUSED_CALL)
                    slots.append(m.group("d", "e"))
                    start = m.end()
                    if len(out) >= _BATCH:
                        break
                    m = chained(buf, start, limit)
                pos = span_at = start
                continue
        pos = run(buf, pos, limit).end()
        if pos > start:
            put(buf[start:pos])
        if pos == limit:
            if not framed:
                raise Decline("no STOP before the end")
            framed, limit = False, end
            continue
        op = buf[pos]
        seq = seqs.get(op)
        if seq is not None:
            put(seq)
            pos += 1
            if calls >= 0 and op == 0x52:
                calls += 1
                if calls == FUSE_AFTER and run is run2:
                    fused, chained = _tensor_run(bits, False), _tensor_run(bits, True).match
            room -= len(seq)
            if room < 0:
                raise Decline("the rewrite grows past 4x")
        elif op == 0x28 and pos + 1 < limit and buf[pos + 1] in (0x65, 0x75):
            mark = b"E" if buf[pos + 1] == 0x65 else b"U"  # MARK APPENDS / MARK SETITEMS
            put(_marker(nonce, mark) + b"b")
            pos += 2
            room -= 25
        elif op == 0x2E:  # STOP
            dropped = {index for pair in slots for index in pair if index is not None}
            read = dropped.intersection(LONG_GET.findall(buf, first, pos)) if dropped else ()
            if read and _put_elsewhere(buf, first, pos, read):
                raise Decline("a LONG_BINGET may read a PUT the fused tensors left out")
            done.stop, done.exact = pos + 1, exact
            put(b".")
            yield b"".join(out)
            return
        elif op == 0x95 and not framed:  # FRAME: dropped; its opcodes must not cross its end
            if pos + 9 > limit:
                raise Decline("FRAME cut short")
            (n,) = struct.unpack_from("<Q", buf, pos + 1)
            pos += 9
            if not 0 < n <= end - pos:
                raise Decline("FRAME length out of range")
            framed, limit = True, pos + n
            run, exact = _run(bits, True).match, False  # the weights-only loop has no FRAME
            fused, calls = _no_more_fusing(slots), -1
        elif op == 0x58:  # BINUNICODE too long for the regex: checked here
            if pos + 5 > limit:
                raise Decline("BINUNICODE cut short")
            (n,) = struct.unpack_from("<I", buf, pos + 1)
            if n > inline_text or pos + 5 + n > limit:
                raise Decline("BINUNICODE too long or cut short")
            put(buf[pos : pos + 5 + n])
            pos += 5 + n
        elif exact:  # maybe a protocol 3-5 opcode: go on with all of them
            run = _run(bits, True).match
            exact = False
            fused, calls = _no_more_fusing(slots), -1
            if run(buf, pos, limit).end() == pos:
                raise Decline(f"opcode {op:#04x}")
        else:
            raise Decline(f"opcode {op:#04x}")


def _put_elsewhere(buf: Any, first: int, stop: int, read: set[bytes]) -> bool:
    """Whether a slot in `read` (dropped, and maybe read by a LONG_BINGET) may also be filled
    by a PUT other than its dropped one.

    If not, the rewritten stream never fills it, so a real LONG_BINGET of it raises in the C
    unpickler ("Memo value not found") and the inert loop reads the file: the result is exact
    either way. Only a slot PUT twice (which torch.save never writes) can silently give the
    C unpickler another value than the inert loop, so only that declines. The byte scan of
    `LONG_GET` alone raised false alarms (a `j` among the ints of an optimizer's 30,000
    parameter indices sent a whole training checkpoint to the inert loop, 4x slower); a false
    alarm here needs a second one, on the same index, and still only declines.
    """
    for index in read:
        puts = re.compile(re.escape(b"r" + index)).finditer(buf, first, stop)
        if next(puts, None) is not None and next(puts, None) is not None:
            return True
    return False


def _no_more_fusing(slots: list[tuple[bytes | None, bytes | None]]) -> None:
    """Protocol 3-5 opcodes ahead (MEMOIZE numbers its slot by how many are filled): no more
    fusing, and a pickle that already fused a tensor declines (`fast_pattern`)."""
    if slots:
        raise Decline("protocol 3-5 opcodes after fused tensors")


def rewrite(buf: Any, pos: int, end: int, inline_text: int) -> Rewritten | None:
    """The whole rewritten stream of the pickle at `buf[pos:end]` (for tests and tools), or
    None when the confined path declines it."""
    nonce = os.urandom(12).hex().encode()
    done = Progress()
    try:
        stream = b"".join(pieces(buf, pos, end, inline_text, nonce, done))
    except Decline:
        return None
    assert done.stop is not None  # the generator ends only at a STOP
    return Rewritten(stream, done.stop, nonce.decode(), done.exact)


class PieceReader:
    """A read-only file over `pieces`, for the C unpickler: it prefetches 128 KiB at a time
    with `peek`, so the rewritten stream never exists whole (on a 100,000-tensor `data.pkl`
    it was 18 MB held beside the file's own 12 MB, issue 16). `Decline` raised by the pieces
    comes out of the unpickler's `load`."""

    def __init__(self, parts: Iterator[bytes]) -> None:
        self._parts = parts
        self._buf = b""
        self._pos = 0

    def _fill(self, n: int) -> None:
        """Hold at least `n` unread bytes, or all that are left."""
        have = len(self._buf) - self._pos
        if have >= n:
            return
        got = [self._buf[self._pos :]]
        for part in self._parts:
            got.append(part)
            have += len(part)
            if have >= n:
                break
        self._buf, self._pos = b"".join(got), 0

    def peek(self, n: int = 1) -> bytes:
        self._fill(max(n, 1))
        return self._buf[self._pos : self._pos + max(n, 1)]

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            self._fill(1 << 62)
            n = len(self._buf) - self._pos
        self._fill(n)
        out = self._buf[self._pos : self._pos + n]
        self._pos += len(out)
        return out

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readline(self) -> bytes:
        while True:
            at = self._buf.find(b"\n", self._pos)
            if at >= 0:
                return self.read(at + 1 - self._pos)
            before = len(self._buf) - self._pos
            self._fill(before + 4096)
            if len(self._buf) - self._pos == before:  # the end: no newline left
                return self.read()
