"""Provides ShownInput: an Input that shows control characters as visible symbols.

An Input draws its value as it is, so a value from the file (the export target suggested
from a source named `run\\x1b[31m.pth`) put the ESC on the terminal and turned the dialog red.
The rest of the app shows such text with `units.printable` (`\\x1b`), but an Input's value is
what gets written: the real name has to stay, and the cursor has to move one character per
character. So each control character is drawn as one symbol (C0 as its Unicode control
picture, `␛`; DEL as `␡`; C1, bidi controls and separators as `�`), and only the drawing
changes: `value` stays the real name.
"""

from __future__ import annotations

from rich.cells import cell_len, get_character_cell_size
from rich.text import Text
from textual.widgets import Input


def shown(value: str) -> str:
    """`value` with each character that is not printable drawn as one visible symbol."""
    if value.isprintable():
        return value
    return "".join(c if c.isprintable() else _picture(c) for c in value)


def _picture(c: str) -> str:
    code = ord(c)
    if code < 0x20:
        return chr(0x2400 + code)  # ␀ … ␟
    return "␡" if code == 0x7F else "\ufffd"


class ShownInput(Input):
    """An Input drawing its value through `shown` (Textual's own drawing, with the value's
    characters swapped one for one, so cursor, selection and clicks line up)."""

    @property
    def _value(self) -> Text:
        if self.password:
            return super()._value
        text = Text(shown(self.value), no_wrap=True, overflow="ignore", end="")
        return self.highlighter(text) if self.highlighter is not None else text

    def _position_to_cell(self, position: int) -> int:
        return cell_len(shown(self.value[:position]))

    def _cell_offset_to_index(self, offset: int) -> int:
        scroll_x, _ = self.scroll_offset
        offset += scroll_x
        cells = 0
        for index, char in enumerate(shown(self.value)):
            width = get_character_cell_size(char)
            if cells <= offset < cells + width:
                return index
            cells += width
        return max(0, min(offset, len(self.value)))
