"""Provides human text for sizes (binary units), shapes, counts and node summaries."""

from __future__ import annotations

import math


def size(nbytes: int) -> str:
    """`2.3 GiB`, binary units as DESIGN.md asks."""
    if nbytes < 1024:
        return f"{nbytes} B"
    # deferred: `core.errors` imports this module, so every command paid humanize's import
    # (3.5 ms warm, 20 ms from a cold disk) though `inspect --json` never writes a size
    import humanize

    return humanize.naturalsize(nbytes, binary=True, format="%.1f")


def size_change(before: int, after: int) -> str:
    """`2.4 GiB → 406.0 MiB, −83 %`: how an export changes a file's size (a true minus sign,
    as the issue's example writes it)."""  # noqa: RUF002
    pct = 100 * (after - before) / max(1, before)
    sign = "+" if pct > 0 else "−" if round(pct) < 0 else "±"  # noqa: RUF001
    return f"{size(before)} → {size(after)}, {sign}{abs(pct):.0f} %"


_CONTROL = [
    *range(0x20),  # C0: ESC starts sequences; \n, \r, \x0b, \x0c and \x1c-\x1e break lines
    *range(0x7F, 0xA0),  # DEL and C1 (\x85 breaks lines; \x9b is a one-byte CSI)
    0x2028,  # line and paragraph separators: str.splitlines breaks there
    0x2029,
    0x061C,  # bidi marks, embeddings, overrides and isolates: a key that reads as another
    0x200E,
    0x200F,
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
]
_VISIBLE = str.maketrans({c: repr(chr(c))[1:-1] for c in _CONTROL})
"""Each of those characters as repr writes it (`\\x1b`, `\\r`, `\\u202e`)."""


def printable(text: object) -> str:
    """`text` with every control character made a visible escape, as repr writes it: the one
    escaping of file text for a terminal, used by the renderers, the browser and every error
    message (`CkptError` applies it to its path and message).

    Keys, class names and messages quoting them come from the file: printed raw, a class name
    of cursor-up + erase-line sequences wiped the danger line above it (issue 21), a newline
    splits a one-line error in two, and a bidi override can make a key read as another.
    Backslashes are left alone so that ordinary keys print as before. Not markup escaping:
    rich markup still needs `rich.markup.escape` (or `Text`)."""
    s = str(text)
    return s if s.isprintable() else s.translate(_VISIBLE)


def shape(dims: tuple[int, ...]) -> str:
    """`[64, 3, 7, 7]`."""
    return "[" + ", ".join(str(d) for d in dims) + "]"


def short_type(type_name: str) -> str:
    """`collections.OrderedDict` -> `OrderedDict`; other qualified names stay whole."""
    return {
        "collections.OrderedDict": "OrderedDict",
        "collections.defaultdict": "defaultdict",
        "torch.nn.parameter.Parameter": "Parameter",
    }.get(type_name, type_name)


def json_number(x: float) -> float | str:
    """A float as JSON can hold it: JSON has no NaN or infinity, so those become the strings
    `"nan"`, `"inf"` and `"-inf"` (what `str` gives)."""
    return x if math.isfinite(x) else str(x)


DIGITS = 4
"""Significant digits of every measured number the app and the text reports print (values,
statistics, differences): one precision, so the panel's min/max and its histogram's bounds
read alike."""


def number(x: float, digits: int = DIGITS) -> str:
    """`0.1235`, `1.235e-05`, `2048`, `0`, `nan`, `inf`: a measured float, `digits`
    significant digits."""
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return "0" if x == 0 else f"{x:.{digits}g}"


def percent(part: float, whole: float = 1.0) -> str:
    """`66 %`, `4.2 %`, `0.31 %`, `0 %`: `part` of `whole` with two significant digits (whole
    percents from 10 % up), the one way sizes' shares are written. `whole` 0 gives `0 %`."""
    p = 100 * part / whole if whole else 0.0
    if p == 0 or not math.isfinite(p):
        return "0 %" if p == 0 else f"{p} %"
    return f"{p:.0f} %" if abs(p) >= 9.95 else f"{p:.2g} %"


def plural(n: int, word: str, many: str | None = None) -> str:
    """`1 tensor`, `2 tensors`, `1,000 storages`, `1 entry` / `2 entries` (`many` given)."""
    return f"{n:,} {word if n == 1 else many or word + 's'}"


def kind_words(kind: str) -> str:
    """A finding's kind as words (`optimizer_state` -> `optimizer state`): the browser's `w`
    screen and the CLI's `why` table say it alike."""
    return kind.replace("_", " ")
