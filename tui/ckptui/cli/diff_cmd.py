"""Provides `ckptui diff A B [--values] [--json]`: what differs between two checkpoints (what
`load_state_dict` would trip on); exit 1 when they differ."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ckptui.analysis.diff.compare import diff_checkpoints
from ckptui.cli.args import PATH_HELP
from ckptui.formats import open_checkpoint
from ckptui.report.diff import diff_json, render_diff


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ckptui diff",
        description="Compare two checkpoints: keys only in A or B, shape and dtype mismatches, "
        "and with --values the max absolute difference per tensor. Exit 1 when they differ.",
    )
    p.add_argument("a", metavar="A", help="first " + PATH_HELP)
    p.add_argument("b", metavar="B", help="second checkpoint, likewise")
    p.add_argument("--json", action="store_true", help="print the JSON contract")
    p.add_argument(
        "--values", action="store_true", help="also compare tensor values (reads tensor data)"
    )
    p.add_argument(
        "--compare",
        choices=["auto", "whole", "weights"],
        default="auto",
        help="what to compare (auto: whole trees when both keep their weights at the same "
        "place, else the detected weights subtrees)",
    )
    p.add_argument(
        "--keep-prefix",
        action="store_true",
        help="do not strip a module. / _orig_mod. prefix that only one side has",
    )
    p.add_argument("--top", type=int, default=20, metavar="N", help="rows per list")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def run(args: argparse.Namespace) -> int:
    a, b = open_checkpoint(args.a), open_checkpoint(args.b)
    options: dict[str, Any] = {"compare": args.compare, "strip_prefix": not args.keep_prefix}
    if not args.values or not sys.stderr.isatty():
        d = diff_checkpoints(a, b, values=args.values, **options)
    else:
        # deferred: --json and pipes never load rich
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

        columns = ("{task.description}", BarColumn(), DownloadColumn(binary_units=True))
        console = Console(stderr=True)
        with Progress(*columns, TimeRemainingColumn(), console=console, transient=True) as bar:
            task = bar.add_task("comparing values", total=None)
            d = diff_checkpoints(
                a,
                b,
                values=True,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                **options,
            )
    if args.json:
        json.dump(diff_json(d), sys.stdout)
        sys.stdout.write("\n")
    else:
        render_diff(d, top=max(1, args.top))
    return 1 if d.differs else 0
