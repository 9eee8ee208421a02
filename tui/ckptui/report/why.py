"""Provides the `ckptui why` output: the size breakdown as rich text, or as the JSON contract.

The core (`sizes`, `duplicates`) computes; this module only presents, so it is the one place of
the `why` command that imports rich.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ckptui.analysis.roles import ROLE_LABELS
from ckptui.analysis.sizes.breakdown import Breakdown, Prefix
from ckptui.core.keypath import show_path
from ckptui.core.tree import Checkpoint
from ckptui.core.units import kind_words, percent, plural, size

BAR = 24


def breakdown_json(b: Breakdown) -> dict[str, Any]:
    """The `ckptui why --json` contract (issue 5)."""
    return {
        "file_bytes": b.file_bytes,
        "categories": dict(b.categories),
        "overhead_detail": dict(b.overhead_detail),
        "metadata_detail": dict(b.metadata_detail),
        "groups": [
            {"path": list(g.path), "role": g.role.value, "bytes": g.bytes} for g in b.groups
        ],
        "findings": [
            {
                "kind": f.kind,
                "bytes": f.bytes,
                "saving_bytes": f.saving_bytes,
                "paths": [list(p) for p in f.paths],
                "message": f.message,
            }
            for f in b.findings
        ],
        "shared": [{"path": list(a), "owner": list(o)} for a, o in b.shared],
        "weights_path": list(b.weights_path) if b.weights_path is not None else None,
        "weights_only_bytes": b.weights_only_bytes,
    }


def bar(fraction: float, width: int = BAR) -> str:
    """A horizontal bar of eighth blocks, `width` cells long at fraction 1."""
    fraction = min(max(fraction, 0.0), 1.0)
    eighths = round(fraction * width * 8)
    full, rest = divmod(eighths, 8)
    return "█" * full + ("▏▎▍▌▋▊▉"[rest - 1] if rest else "")


def prefix_rows(root: Prefix, depth: int) -> Iterator[tuple[int, Prefix]]:
    """(level, prefix) down to `depth` levels, largest first at each level."""
    stack = [(0, c) for c in reversed(root.sorted_children())]
    while stack:
        level, p = stack.pop()
        yield level, p
        if level + 1 < depth:
            stack.extend((level + 1, c) for c in reversed(p.sorted_children()))


def render_breakdown(
    ckpt: Checkpoint, b: Breakdown, console: Any = None, top: int = 10, depth: int = 2
) -> None:
    """Print the headline, the groupings as bars and the findings."""
    from rich.table import Table

    # deferred with rich: breakdown_json (the --json path) never loads rich
    from ckptui.report.text.inspect import escape, stdout_console

    console = console or stdout_console()
    label_width = 48 if console.is_terminal else None  # piped: one row per line, for grep
    total = max(1, b.file_bytes)
    console.print(f"[bold]{escape(ckpt.path)}[/]  [dim]{escape(ckpt.format)}[/]")
    console.print(f"[bold]{escape(b.headline)}[/]")

    def table(title: str, rows: list[tuple[str, int]], of: int = total) -> None:
        t = Table(show_header=False, box=None, pad_edge=False)
        t.add_column("what", overflow="fold", max_width=label_width)
        t.add_column("bytes", justify="right", no_wrap=True)
        t.add_column("%", justify="right", no_wrap=True)
        t.add_column("bar", no_wrap=True, style="cyan")
        for label, n in rows:
            t.add_row(escape(label), size(n), percent(n, max(1, of)), bar(n / max(1, of)))
        console.print()
        console.print(f"[italic]{escape(title)}[/]")  # not a table title: those wrap
        console.print(t)

    table("By category (sums to the file size)", [(k, v) for k, v in b.categories.items() if v])
    table("By role", [(ROLE_LABELS[r], v) for r, v in b.roles.items()] + rest_rows(b))
    keys = [(show_path(p), v) for p, v in b.top_level[:top]]
    if len(b.top_level) > top:
        rest = sum(v for _, v in b.top_level[top:])
        keys.append((f"… {len(b.top_level) - top:,} more keys", rest))
    table("By top-level key", keys + rest_rows(b))
    if b.modules.children:
        weights = max(1, b.modules.bytes)
        rows = [("  " * lvl + p.name, p.bytes) for lvl, p in prefix_rows(b.modules, depth)]
        table(
            f"Weights by module prefix (of {size(b.modules.bytes)}, {depth} levels)",
            rows[: top * 3],
            weights,
        )
    table("By dtype", list(b.dtypes.items()))
    if b.largest:
        t = Table(box=None)
        t.add_column("path", overflow="fold")
        t.add_column("shape")
        t.add_column("dtype")
        t.add_column("bytes", justify="right")
        for item in b.largest:
            shape = "[" + ", ".join(str(d) for d in item.tensor.shape) + "]"
            t.add_row(escape(show_path(item.path)), shape, item.tensor.dtype, size(item.bytes))
        console.print()
        console.print(f"[italic]Largest {plural(len(b.largest), 'tensor')}[/]")
        console.print(t)
    if b.shared:
        console.print()
        console.print(
            f"[bold]Shared storages[/] ({plural(len(b.shared), 'tensor')} "
            f"{'views' if len(b.shared) == 1 else 'view'} a storage counted at an earlier tensor, "
            "so their bytes are not counted again)"
        )
        for a, o in b.shared[:top]:
            console.print(f"  {escape(show_path(a))} [dim]→ counted at[/] {escape(show_path(o))}")
        if len(b.shared) > top:
            console.print(f"  [dim]… {len(b.shared) - top:,} more[/]")
    console.print()
    if not b.findings:
        console.print("[bold]Findings:[/] none")
        return
    console.print("[italic]Findings[/]")
    t = Table(box=None, show_header=True)
    t.add_column("saves", justify="right", no_wrap=True, style="bold")
    t.add_column("kind", no_wrap=True, style="yellow")
    t.add_column("what to do", overflow="fold")
    for f in b.findings:
        saves = size(f.saving_bytes) if f.saving_bytes else "-"
        t.add_row(saves, kind_words(f.kind), escape(f.message))  # words, as the `w` screen
    console.print(t)


def rest_rows(b: Breakdown) -> list[tuple[str, int]]:
    """What the tensor-owning groups leave: pickle structure, metadata, overhead (so that a
    grouping plus these rows adds up to the file size)."""
    owned = sum(b.storage_bytes.get(k, 0) for k in b.owner)
    inline = sum(b.path_bytes.values()) - owned
    rows = [
        ("(storages no tensor uses)", b.categories["tensor_data"] - owned),
        ("(pickle structure)", b.categories["pickle"] - inline),
        ("(format metadata and overhead)", b.categories["metadata"] + b.categories["overhead"]),
        ("(unaccounted)", b.categories["unaccounted"]),
        ("(other files)", b.categories.get("other_files", 0)),
    ]
    return [(k, v) for k, v in rows if v]
