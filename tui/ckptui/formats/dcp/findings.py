"""Provides the findings for trouble with a DCP folder's data files, grouped one finding per file
and kind (a missing or short file, unreadable items, chunks that disagree with `.metadata`).

Separate from `dcp` (which builds the tree and the storages) because the wording of what went
wrong is a table of its own: the reader only notes each problem against the file and FQN it
concerns, and this module turns those notes into findings once the tree is built (the example
path of a finding is a tree path).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ckptui.core.tree import Finding, KeyPath, Severity


@dataclass
class Problems:
    """Per-file trouble, reported as one finding per file and kind."""

    by_file: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def add(self, file: str, kind: str, fqn: str) -> None:
        self.by_file.setdefault((file, kind), []).append(fqn)


_WHAT: dict[str, tuple[str, Severity, str]] = {
    "missing": ("missing_file", Severity.WARNING, "is missing: {n} items are unavailable"),
    "outside": (
        "outside_folder",
        Severity.WARNING,
        "is a symlink leading outside the folder, not read: {n} items are unavailable",
    ),
    "short": (
        "short_file",
        Severity.WARNING,
        "is shorter than .metadata says: {n} items are cut off",
    ),
    "unreadable": (
        "corrupt_item",
        Severity.WARNING,
        "holds {n} items that are not readable torch.save archives",
    ),
    "mismatch": (
        "chunk_mismatch",
        Severity.WARNING,
        "holds {n} chunks whose shape or dtype differ from .metadata",
    ),
    "transformed": (
        "transformed_items",
        Severity.INFO,
        (
            "holds {n} items written through stream transforms (e.g. compression): "
            "values cannot be read in place"
        ),
    ),
    "no_storage_data": (
        "no_storage_data",
        Severity.WARNING,
        ".metadata names no data for {n} items",
    ),
    "uncovered": (
        "uncovered_tensor",
        Severity.WARNING,
        "{n} tensors are not fully covered by their chunks",
    ),
    "clash": (
        "key_clash",
        Severity.WARNING,
        "{n} keys clash in planner_data; shown under their flat names",
    ),
}
"""Problem kind -> (finding kind, severity, message after the file name)."""


def problem_findings(problems: Problems, path_of: Callable[[str], KeyPath]) -> list[Finding]:
    """One finding per (file, kind) noted, in the order first noted.

    Args:
        problems: what the reader noted.
        path_of: an FQN's tree path (for the first FQN of each finding).

    Returns:
        The findings, each naming its file, how many items it concerns and the first of them.
    """
    out: list[Finding] = []
    for (file, kind), fqns in problems.by_file.items():
        fkind, sev, msg = _WHAT[kind]
        head = f"{file} " if file else ""
        example = f" (first: {fqns[0]})"
        path = path_of(fqns[0])
        out.append(Finding(fkind, sev, head + msg.format(n=f"{len(fqns):,}") + example, path))
    return out
