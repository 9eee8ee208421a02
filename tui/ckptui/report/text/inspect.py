"""Provides the rich rendering of `ckptui inspect`: the tree, the findings and a one-line total.

This is the CLI's presentation layer (it imports rich); the core modules never import it.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape as _markup_escape
from rich.tree import Tree

from ckptui.analysis.frameworks import detect
from ckptui.analysis.index import summary
from ckptui.core import units
from ckptui.core.tree import Checkpoint, KeyPath, Node, NodeKind

_SEVERITY_STYLE = {"danger": "bold red", "warning": "yellow", "info": "cyan"}
_NO_WRAP_WIDTH = 100_000
"""The width given to output that is not a terminal: wide enough that no row is ever wrapped."""


def escape(text: str) -> str:
    """File text made safe for markup and for the terminal: control characters become visible
    escapes (`units.printable`), then rich markup is escaped. Every string from the file that
    this module prints goes through it."""
    return _markup_escape(units.printable(text))


def stdout_console() -> Console:
    """A Console for stdout. On a terminal it wraps at the terminal's width; piped or
    redirected it never wraps a row (rich would cut at 80 columns, so `grep` would miss the
    rest of the row on the next line)."""
    if sys.stdout.isatty():
        return Console(highlight=False)
    return Console(highlight=False, width=_NO_WRAP_WIDTH)


def _summary(node: Node) -> str:
    """A row's summary; a tensor's as the browser's row reads it, `[64, 3, 7, 7] float32 ·
    36.8 KiB` (shape, dtype, size), its type named only when it is not a plain tensor
    (`Parameter`): `torch.Tensor` on every row said nothing and pushed the size off the line."""
    t = node.tensor
    if node.kind is not NodeKind.TENSOR or t is None:
        return summary(node)
    kind = units.short_type(t.type)
    lead = "" if kind in ("torch.Tensor", "Tensor") else f"{kind} "
    parts = [f"{lead}{units.shape(t.shape)} {t.dtype}"]
    if t.device != "cpu":
        parts.append(t.device)
    if t.layout not in ("strided", "storage"):
        parts.append(t.layout)
    parts.append(units.size(t.nbytes))
    return " · ".join(parts)


def _label(node: Node, key_text: str, part: str | None = None) -> str:
    style = "bold red" if node.safety == "danger" else "bold"
    text = f"[{style}]{escape(key_text)}[/]  [dim]{escape(_summary(node))}[/]"
    return text + (f" [dim italic]— {escape(part)}[/]" if part else "")


def _key_text(node: Node, parent: Node) -> str:
    """Sequence indexes as `[3]`; mapping keys (also int ones, like optimizer state) as is."""
    if node.key is None:
        return "<root>"
    return f"[{node.key}]" if parent.kind is NodeKind.SEQUENCE else str(node.key)


def build_tree(ckpt: Checkpoint, max_children: int | None, depth: int | None) -> Tree:
    """A rich Tree of the checkpoint, eliding past `max_children` per node and below `depth`.

    A recognised framework's parts (Lightning's `state_dict`, `optimizer_states`, ...) carry
    their label after the summary."""
    framework = detect(ckpt)
    parts = {p.path: p.label for p in framework.parts} if framework else {}
    root = Tree(_label(ckpt.root, ckpt.path), guide_style="dim")
    stack: list[tuple[Node, Tree, int, KeyPath]] = [(ckpt.root, root, 0, ())]
    while stack:
        node, branch, level, path = stack.pop()
        if depth is not None and level >= depth:
            if node.children:
                branch.add(f"[dim]… {len(node.children):,} children[/]")
            continue
        shown = node.children if max_children is None else node.children[:max_children]
        pending = []
        for child in shown:
            child_path = (*path, child.key)
            sub = branch.add(_label(child, _key_text(child, node), parts.get(child_path)))
            if child.kind is not NodeKind.REF:
                pending.append((child, sub, level + 1, child_path))
        stack.extend(reversed(pending))
        hidden = len(node.children) - len(shown)
        if hidden > 0:
            branch.add(f"[dim]… {hidden:,} more (use --all)[/]")
    return root


def render_checkpoint(
    ckpt: Checkpoint,
    max_children: int | None = 50,
    depth: int | None = None,
    console: Console | None = None,
) -> None:
    """Print the tree, findings and total."""
    console = console or stdout_console()
    console.print(build_tree(ckpt, max_children, depth))
    for f in ckpt.findings:
        where = ".".join(str(k) for k in f.path) if f.path else "-"
        style = _SEVERITY_STYLE[f.severity.value]
        console.print(
            f"[{style}]{f.severity.value:>7}[/] {escape(f.kind)} [dim]{escape(where)}[/]"
            f": {escape(f.message)}"
        )
    _text_files(ckpt, console)
    _training_sections(ckpt, console)
    tensors = list(ckpt.tensors())
    unique = {t.storage_key for _, t in tensors if t.storage_key is not None}
    data = sum(ckpt.storages[k].nbytes for k in unique if k in ckpt.storages)
    dangers = sum(1 for f in ckpt.findings if f.severity.value == "danger")
    framework = detect(ckpt)
    fetched = ckpt.info.get("bytes_read")  # a URL: what opening it cost
    console.print(
        f"[bold]{escape(ckpt.format)}[/] · "
        + (f"[bold]{escape(framework.heading())}[/] · " if framework else "")
        + f"{units.size(ckpt.file_bytes)} file · "
        f"{units.plural(len(tensors), 'tensor')} in {units.plural(len(unique), 'storage')} · "
        f"{units.size(data)} tensor data"
        + (f" · {units.size(fetched)} read from the server" if fetched is not None else "")
        + (f" · [bold red]{units.plural(dangers, 'dangerous call')}[/]" if dangers else "")
    )


def _text_files(ckpt: Checkpoint, console: Console) -> None:
    """The folder's small text files (`formats.folder_text`), one line: what the browser shows
    as rows after the weights (`config.json  JSON · 30 keys`). Not part of the tree above."""
    files = ckpt.info.get("text_files")
    if not isinstance(files, Node) or not files.children:
        return
    shown = [f"{escape(str(n.key))} [dim]({escape(summary(n))})[/]" for n in files.children]
    console.print(f"[bold]text files[/] (not in the checkpoint): {', '.join(shown)}")


def _training_sections(ckpt: Checkpoint, console: Console) -> None:
    """The root panel's answers, as the browser shows them: can training resume from the file,
    and what `torch.load(weights_only=True)` would refuse (README: inspect shows what torch.load
    would run)."""
    # Deferred: the training analysis and its renderers cost start-up the tree alone does not need.
    from ckptui.analysis.training.facts import training_facts
    from ckptui.report.text.training import resume_card, weights_only_verdict

    facts = training_facts(ckpt)
    if facts.resume is not None:
        console.print(resume_card(facts.resume))
    if facts.weights_only is not None:
        console.print(weights_only_verdict(facts.weights_only))
    for error in facts.errors:
        console.print(f"[yellow]{escape(error)}[/]")
    console.print()
