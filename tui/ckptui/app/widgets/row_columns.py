"""Provides the columns of a tensor row: shape | dtype | size, right-aligned at the tree's edge.

At 80 columns a tensor row used to read `module.layer1.0.conv1.weight  torch.Tensor [8, 8, 3, 3]
float32 · 2.2 KiB`, and the size, the part a user scans for, was the part cut off. Rows now put
the key on the left and the three facts in fixed columns on the right, so they line up from row
to row at any depth and survive 80 columns: a key too long for the line loses its middle
(`module.layer3.0.dow…1.running_mean`), never the numbers; before it is cut, the
shape gives way (the panel shows it). Only rich here, no Textual.
"""

from __future__ import annotations

from rich.style import Style
from rich.text import Text

from ckptui.core.tree import TensorInfo
from ckptui.core.units import printable, short_type, size
from ckptui.core.units import shape as shape_text

DTYPE_WIDTH = 8
"""Cells of the dtype column (`bfloat16`)."""
SIZE_WIDTH = 10
"""Cells of the size column (`1023.9 KiB`)."""
KEY_MIN = 12
"""A key keeps at least this many cells; below that the row falls back to one run of text."""
GAP = 2
"""Cells between the key and the columns."""


def tensor_columns(t: TensorInfo, shape: bool = True) -> str:
    """`  [8, 8, 3, 3] float32     2.2 KiB`: the shape right-aligned, the dtype (with a device
    other than the CPU, a layout other than strided) left-aligned, the size right-aligned. A
    type other than a plain tensor (`Parameter`, a subclass) comes first: it is rare, and says
    something. Without `shape`, the dtype and size only: what a row keeps when its key needs
    the room (the panel shows the shape)."""
    kind = printable(short_type(t.type))  # type, device and layout: strings from the file
    lead = "" if kind in ("torch.Tensor", "Tensor") else f"{kind} "
    dtype = t.dtype
    if t.device != "cpu":
        dtype += f" {printable(t.device)}"
    if t.layout not in ("strided", "storage"):
        dtype += f" {printable(t.layout)}"
    # The shape is not padded: right-aligned against the dtype, a long one grows to the left,
    # and the key keeps every cell the shape does not need.
    dims = f"{shape_text(t.shape)} " if shape else ""
    return f"{lead}{dims}{dtype:<{DTYPE_WIDTH}} {size(t.nbytes):>{SIZE_WIDTH}}"


def fit(key: Text, columns: Text, width: int, style: Style | str = "") -> Text | None:
    """`key`, padding, then `columns` ending exactly at `width` cells; a key too long loses its
    middle to `…`. None when even a `KEY_MIN`-cell key would not fit (the caller then writes
    the row as one run of text)."""
    room = width - columns.cell_len - GAP
    if room < KEY_MIN:
        return None
    if key.cell_len > room:
        head = (room - 1) // 2
        tail = room - 1 - head
        key = Text.assemble(key[:head], "…", key[len(key.plain) - tail :])
        while key.cell_len > room:  # wide characters: trim until it fits
            key = key[: len(key.plain) - 1]
    out = key.copy()
    out.append(" " * (width - key.cell_len - columns.cell_len), style)  # `style`: the cursor's
    out.append_text(columns)
    return out
