"""Provides `diff_json` and `render_diff`: a `diff.Diff` as the `--json` contract or as text.

rich is imported only inside `render_diff`, so the JSON path (and the core) never loads it.
"""

from __future__ import annotations

import math
from typing import Any

from ckptui.analysis.diff.compare import Diff
from ckptui.core.keypath import path_text, show_path
from ckptui.core.units import json_number, number
from ckptui.core.units import shape as show_shape

__all__ = ["diff_json", "render_diff"]


def diff_json(d: Diff) -> dict[str, Any]:
    """The `ckptui diff --json` contract (issue 7), plus `mode`, roots and extras."""
    return {
        "a": d.a,
        "b": d.b,
        "prefix": {"a": d.prefix_a, "b": d.prefix_b},
        "only_a": [list(p) for p in d.only_a],
        "only_b": [list(p) for p in d.only_b],
        "shape_mismatch": [
            {"path": list(p), "a": list(sa), "b": list(sb)} for p, sa, sb in d.shape_mismatch
        ],
        "dtype_mismatch": [{"path": list(p), "a": x, "b": y} for p, x, y in d.dtype_mismatch],
        # Only the tensors whose values differ; the equal ones are counted (issue 17).
        # max_rel = max |a-b| / max |a| (max |b| where A is all zeros): `diff.values.relative`
        "value_diff": [
            {"path": list(p), "max_abs": json_number(m), "max_rel": json_number(rel(d, p))}
            for p, m in d.changed_values
        ],
        "values_equal": len(d.value_diff) - len(d.changed_values),
        "equal": d.equal,
        "mode": d.mode,
        "a_root": list(d.a_root),
        "b_root": list(d.b_root),
        "values_compared": d.values,
        "not_compared": [{"path": list(p), "reason": r} for p, r in d.not_compared],
        "other_diff": [{"path": list(p), "a": x, "b": y} for p, x, y in d.other_diff],
    }


def rel(d: Diff, path: tuple[object, ...]) -> float:
    """A compared tensor's relative difference (NaN if it was not recorded)."""
    return d.value_rel.get(path, math.nan)


def render_diff(d: Diff, console: Any = None, top: int = 20) -> None:
    """Print the comparison with rich: where, a summary line, then each kind of difference."""
    from rich.padding import Padding
    from rich.table import Table

    # deferred with rich: diff_json (the --json path) never loads rich
    from ckptui.report.text.inspect import escape, stdout_console

    console = console or stdout_console()
    sides = (("A", d.a, d.formats[0], d.a_root), ("B", d.b, d.formats[1], d.b_root))
    for name, path, fmt, root in sides:
        where = "whole file" if d.mode == "whole" else f"weights: {path_text(root) or 'the root'}"
        console.print(f"[bold]{name}[/]  {escape(path)}  [dim]{escape(fmt)} · {escape(where)}[/]")
    if d.prefix_a or d.prefix_b:
        prefixes = (("A", d.prefix_a), ("B", d.prefix_b))
        has = ", ".join(f"{n}'s keys start with {p!r}" for n, p in prefixes if p)
        console.print(
            f"prefix: {escape(has)}; compared without it (strip it before load_state_dict, "
            "as ckptui export does)"
        )
    changed = d.changed_values
    counts = [
        (d.equal, "equal"),
        (len(d.only_a), "only in A"),
        (len(d.only_b), "only in B"),
        (len(d.shape_mismatch), "shape"),
        (len(d.dtype_mismatch), "dtype"),
    ]
    if d.values:
        differ = "value differs" if len(changed) == 1 else "values differ"  # `1 value differs`
        counts += [(len(changed), differ), (len(d.not_compared), "not compared")]
    verdict = "[bold red]differ[/]" if d.differs else "[bold green]match[/]"
    shown = " · ".join(f"{n:,} {what}" for n, what in counts if n or what == "equal")
    console.print(f"{verdict}: {shown}")
    if not d.values:
        console.print("[dim]values not compared (add --values)[/]")

    def section(
        title: str, rows: list[tuple[str, ...]], head: tuple[str, ...] = (), wrap: bool = False
    ) -> None:
        if not rows:
            return
        t = Table(box=None, show_header=bool(head), pad_edge=False)
        t.add_column(head[0] if head else "path", overflow="fold")
        for h in head[1:] or [""] * (len(rows[0]) - 1):
            t.add_column(h, no_wrap=not wrap, overflow="fold", justify="left" if wrap else "right")
        for row in rows[:top]:
            t.add_row(*map(escape, row))
        if len(rows) > top:
            t.add_row(f"[dim]… and {len(rows) - top:,} more[/]")
        console.print()
        console.print(f"[bold]{escape(title)}[/]")
        console.print(Padding(t, (0, 0, 0, 2), expand=False))

    section(f"Only in A ({len(d.only_a):,})", [(show_path(p),) for p in d.only_a])
    section(f"Only in B ({len(d.only_b):,})", [(show_path(p),) for p in d.only_b])
    rows = [(show_path(p), show_shape(x), show_shape(y)) for p, x, y in d.shape_mismatch]
    section(f"Shape mismatch ({len(rows):,})", rows, ("path", "A", "B"))
    rows = [(show_path(p), x, y) for p, x, y in d.dtype_mismatch]
    section(f"Dtype mismatch ({len(rows):,})", rows, ("path", "A", "B"))
    order = sorted(changed, key=lambda e: math.inf if math.isnan(e[1]) else e[1], reverse=True)
    rows = [(show_path(p), number(m), number(rel(d, p))) for p, m in order]
    title = f"Value differences ({len(rows):,} of {len(d.value_diff):,} compared, largest first)"
    section(title, rows, ("path", "max |A-B|", "relative"))
    rows = [(show_path(p), r) for p, r in d.not_compared]
    section(f"Values not compared ({len(rows):,})", rows, ("path", "why"), wrap=True)
    rows = [(show_path(p), x or "-", y or "-") for p, x, y in d.other_diff]
    title = "Other values (not tensors; not counted in the result)"
    section(title, rows, ("path", "A", "B"), wrap=True)
