"""Provides RowLabels: how the browser's tree draws a row (key, summary, marks, badges, and a
tensor's shape | dtype | size columns at the right edge).

A mixin of CkptTree, split from it by concept: this is everything about a row's text, and
nothing about which rows exist (`ckpt_tree`), their order (`tree_sort`), the module view
(`tree_modules`), the filter (`tree_filter`) or marks (`tree_marks`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.style import Style
from rich.text import Text
from textual.widgets.tree import TreeNode

from ckptui.analysis import modules as mv
from ckptui.analysis.index import summary
from ckptui.app.widgets.row_columns import GAP, KEY_MIN, fit, tensor_columns
from ckptui.app.widgets.tree_entry import GROUP, Entry
from ckptui.core.tree import KeyPath, Node, NodeKind, TensorInfo
from ckptui.core.units import printable, size


class RowLabels:
    """Row labels of CkptTree (a mixin: `self` is the tree)."""

    ckpt: Any
    marks: dict[KeyPath, None]
    matches: list[KeyPath]
    parts: dict[KeyPath, str]
    params: dict[KeyPath, Any]
    badges: dict[KeyPath, str]
    _fg_styles: dict[str, Style]
    _summaries: dict[int, str]

    def _fg(self, component: str) -> Style:
        """A component class's foreground only: `partial=True` would drop the blending of
        translucent theme colours ($text-muted), and a background would hide the cursor.

        Kept until the styles change (theme, focus): Textual's own cache is cleared by every
        refresh, so a 1000-row group would compute each style 1000 times (60% of its expand)."""
        style = self._fg_styles.get(component)
        if style is None:
            s = self.get_component_rich_style(component)
            style = self._fg_styles[component] = Style(color=s.color, bold=s.bold, italic=s.italic)
        return style

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._fg_styles = {}

    def _label(
        self,
        node: Node,
        key_text: str,
        match: bool = False,
        mark: str = "",
        part: str = "",
        more: str = "",
        badge: str = "",
    ) -> Text:
        """A row's text; `mark` is `self` for a marked row, `below` for a row under one; `part`
        is what a framework's part is for, shown dim and slanted after the summary."""
        if node.safety == "danger":
            key_style = self._fg("ckpt-tree--danger")
        elif match:
            key_style = self._fg("ckpt-tree--match")
        elif mark:
            key_style = self._fg("ckpt-tree--marked")
        else:
            key_style = Style()
        summary_style = self._fg("ckpt-tree--summary")
        if node.kind is NodeKind.TENSOR and node.tensor is not None and not more:
            # shape | dtype | size are columns at the row's right edge (`render_label`)
            bullet = ("● ", self._fg("ckpt-tree--marked")) if mark == "self" else ""
            text = Text.assemble(bullet, (printable(key_text), key_style))
            if badge:  # words, not only colour: NO_COLOR shows it too
                text.append(f" ⚠ {badge}", self._fg("ckpt-tree--danger"))
            if part:
                text.append(f" — {printable(part)}", summary_style + Style(italic=True))
            return text
        if len(node.children) > GROUP:
            # its bytes are a walk of every node below: a 100,000-key root's label is made
            # again on every rebuild (m, esc), 0.3-1 s each time; the model is frozen
            text = self._summaries.get(id(node))
            if text is None:
                text = self._summaries[id(node)] = summary(node)
        else:
            text = summary(node)
        bullet = ("● ", self._fg("ckpt-tree--marked")) if mark == "self" else ""
        # keys, class names and parts come from the file: control characters shown as escapes
        text = Text.assemble(
            bullet,
            (printable(key_text), key_style),
            "  ",
            (printable(text + more), summary_style),
        )
        if part:
            text.append(f" — {printable(part)}", summary_style + Style(italic=True))
        return text

    def render_label(self, node: TreeNode[Entry], base_style: Style, style: Style) -> Text:
        """The label, and for a tensor row its shape | dtype | size columns, right-aligned at
        the tree's edge (`row_columns`); Textual caches the drawn line per width."""
        text = super().render_label(node, base_style, style)
        t = self._tensor_row(node)
        if t is None:
            return text
        room = self._room(node)
        full = tensor_columns(t)
        if text.cell_len + GAP + len(full) > room:
            # the key comes first: a shape the panel shows anyway gives way before it is cut
            full = tensor_columns(t, shape=False)
        columns = Text(full, style=self._fg("ckpt-tree--summary"))
        columns.stylize(style)
        fitted = fit(text, columns, room, style)
        if fitted is not None:
            return fitted
        text.append("  ")  # no room for columns: one run of text, as other rows, shape kept
        text.append(" ".join(tensor_columns(t).split()), columns.style)
        return text

    def get_label_width(self, node: TreeNode[Entry]) -> int:
        """A tensor row fills the line (`render_label`), known without drawing it: Textual asks
        for every row's width each time rows open (1000 of them in a group)."""
        t = self._tensor_row(node)
        if t is not None:
            room = self._room(node)
            if room - len(tensor_columns(t, shape=False)) - GAP >= KEY_MIN:
                return room
        return super().get_label_width(node)

    @staticmethod
    def _tensor_row(node: TreeNode[Entry]) -> TensorInfo | None:
        """The tensor a row shows in columns, or None (a container, a group, the compare
        screen's rows: DiffEntry, with their own summaries)."""
        entry = node.data
        if not isinstance(entry, Entry) or entry.group or entry.module or entry.raw:
            return None
        return entry.node.tensor if entry.node.kind is NodeKind.TENSOR else None

    def _room(self, node: TreeNode[Entry]) -> int:
        """Cells from the end of a row's guides to the tree's right edge."""
        depth, up = 0, node.parent
        while up is not None:
            depth, up = depth + 1, up.parent
        return self.scrollable_content_region.width - depth * self.guide_depth

    def _mark_of(self, path: KeyPath) -> str:
        if not self.marks:
            return ""
        if path in self.marks:
            return "self"
        return "below" if any(path[:i] in self.marks for i in range(len(path))) else ""

    @staticmethod
    def _key_text(child: Node, parent: Node) -> str:
        return f"[{child.key}]" if parent.kind is NodeKind.SEQUENCE else str(child.key)

    def _row_label(
        self, node: Node, path: KeyPath, owner: Node | None, name: str | None = None
    ) -> Text:
        if name is not None:
            key_text = name
        elif owner is None:  # the root row is named after the file
            assert self.ckpt is not None
            key_text = Path(self.ckpt.path).name
        else:
            key_text = self._key_text(node, owner)
        part = self.parts.get(path, "") if self.parts else ""
        params = self.params.get(path) if self.params else None
        more = f" · {params.text()}" if params is not None and node.children else ""
        badge = self.badges.get(path, "") if self.badges else ""
        return self._label(
            node, key_text, path in self._match_set, self._mark_of(path), part, more, badge
        )

    @property
    def _match_set(self) -> set[KeyPath]:
        if not hasattr(self, "_matches_cache") or self._matches_cache[0] is not self.matches:
            self._matches_cache = (self.matches, set(self.matches))
        return self._matches_cache[1]

    def _module_label(self, row: mv.Module) -> Text:
        """`conv1  Conv2d(3, 64, kernel_size=7, stride=2) · 9,408 params · 36.8 KiB · float32`."""
        p = row.params
        parts = [row.title] if row.title else []
        if p.tensors:
            parts += [p.text(), size(p.nbytes)]
            if p.dtype_mix(0.01):
                parts.append(p.dtype_mix(0.01))
        mark = self._mark_of(row.path) if row.node is not None else ""
        key_style = self._fg("ckpt-tree--marked") if mark else Style(bold=True)
        return Text.assemble(
            (printable(row.name), key_style),
            "  ",
            (printable(" · ".join(parts)), self._fg("ckpt-tree--summary")),
        )

    def _relabel(self, row: TreeNode[Entry]) -> None:
        """Redraw the labels of `row` and every loaded row below it."""
        stack = [row]
        while stack:
            r = stack.pop()
            stack.extend(r.children)
            e = r.data
            if e is None or e.group is not None or e.raw:
                continue
            if e.module is not None:
                r.set_label(self._module_label(e.module))
                continue
            owner = r.parent.data.node if r.parent is not None and r.parent.data else None
            r.set_label(self._row_label(e.node, e.path, owner, e.name))

    def add_parts(self, labels: dict[KeyPath, str]) -> None:
        """Label more rows (optimizer entries naming their parameter) and redraw loaded ones."""
        if not labels:
            return
        self.parts = {**self.parts, **labels}
        self._relabel(self.root)

    def set_badge(self, path: KeyPath, badge: str) -> None:
        """Show `badge` (`NaN`, `Inf`) on the row of the tensor at `path`, wherever it is
        loaded (the stored view and the module view share rows' paths)."""
        if self.badges.get(path) == badge:
            return
        self.badges[path] = badge
        stack = [self.root]
        while stack:
            row = stack.pop()
            stack.extend(row.children)
            if row.data is not None and row.data.path == path and row.data.module is None:
                self._relabel(row)


def big_summaries(root: Node, depth: int = 2) -> dict[int, str]:
    """The summaries (by node id) of the rows with over GROUP children in the first `depth`
    levels: each walks every node below it for its bytes (0.3 s for a 100,000-key root), so
    the browser makes them in its open worker rather than while showing the tree."""
    out: dict[int, str] = {}
    level = [root]
    for _ in range(depth + 1):
        below: list[Node] = []
        for node in level:
            if node.kind is NodeKind.REF:
                continue
            if len(node.children) > GROUP:
                out[id(node)] = summary(node)
            below.extend(node.children)
        level = below
    return out
