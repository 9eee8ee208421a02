"""Provides `ckptui why PATH [--json]`: where a checkpoint's bytes went, and what each remedy would
save (the size breakdown, with the duplicate search unless `--no-duplicates`)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ckptui.analysis.sizes.duplicates import duplicates_of, find_duplicates, skip_reason
from ckptui.analysis.sizes.folder import breakdown_of
from ckptui.cli.args import PATH_HELP
from ckptui.cli.ending import keep_for_exit
from ckptui.core.errors import CkptError
from ckptui.core.units import printable
from ckptui.export.size import exported_size
from ckptui.formats import open_checkpoint
from ckptui.report.why import breakdown_json, render_breakdown


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ckptui why",
        description="Explain a checkpoint's size: every byte attributed, and what could be "
        "dropped, with the bytes each remedy would save.",
    )
    p.add_argument("path", metavar="PATH", help=PATH_HELP)
    p.add_argument("--json", action="store_true", help="print the JSON contract")
    p.add_argument(
        "--no-duplicates",
        action="store_true",
        help="skip looking for identical tensors (the one step that reads tensor data)",
    )
    p.add_argument("--top", type=int, default=10, metavar="N", help="rows per grouping")
    p.add_argument("--depth", type=int, default=2, metavar="N", help="module-prefix levels to show")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def run(args: argparse.Namespace) -> int:
    show_progress = not args.json and sys.stderr.isatty()
    ckpt = open_checkpoint(args.path)
    # a folder's checkpoint files are broken down, and searched for duplicates, each on its own
    files: list[tuple[str, Any, Any]] = []
    b = breakdown_of(ckpt, lambda name, c, fb: files.append((name, c, fb)), exported_size)
    if not args.no_duplicates:
        search = lambda c, fb: _duplicates(c, fb, show_progress)
        b.add_findings(duplicates_of(ckpt, b, files, search))
    if args.json:
        json.dump(breakdown_json(b), sys.stdout)
        sys.stdout.write("\n")
    else:
        render_breakdown(ckpt, b, top=max(1, args.top), depth=max(1, args.depth))
    keep_for_exit(ckpt, b, files)
    return 0


def _duplicates(ckpt: Any, b: Any, show_progress: bool) -> list[Any]:
    """Look for identical tensors, with a progress bar on a terminal."""
    skipped = skip_reason(ckpt)
    if skipped is not None:
        if show_progress:  # a human at a terminal: say why no duplicates are listed
            print(printable(f"duplicates {skipped}"), file=sys.stderr)
        return []
    try:
        if not show_progress:
            return find_duplicates(ckpt, b)
        from rich.progress import Progress  # deferred: --json and pipes never load rich

        with Progress(transient=True) as progress:
            task = progress.add_task("comparing same-shaped tensors", total=None)
            return find_duplicates(
                ckpt, b, lambda done, total: progress.update(task, completed=done, total=total)
            )
    except OSError as e:
        raise CkptError(ckpt.path, f"cannot read tensor data ({e.strerror or e})") from None
