"""Provides `ckptui export PATH -o OUT`: a slimmed, verified weights-only copy (one file, or shards
with `--max-shard-size`), with a progress bar on a terminal and `--json` for scripts."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ckptui.cli.args import PATH_HELP
from ckptui.cli.ending import keep_for_exit
from ckptui.core.errors import CkptError
from ckptui.core.units import plural, printable, size, size_change
from ckptui.export import export, make_plan, resolve_path
from ckptui.export.dcp import chunked_kept
from ckptui.export.shards import export_sharded, parse_size
from ckptui.formats import open_checkpoint
from ckptui.formats.source import is_url
from ckptui.report.json.export import export_json, shards_json


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ckptui export",
        description="Write a slimmed copy (by default the detected weights) that loads with "
        "torch.load(weights_only=True) or safetensors; verified before it is named.",
    )
    p.add_argument("path", metavar="PATH", help=PATH_HELP + ", or a shard index")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="file to write")
    p.add_argument(
        "--keep",
        action="append",
        metavar="PATH.IN.TREE",
        help="subtree to keep (repeatable; default: the detected weights), e.g. model or "
        "\"['model']['encoder']\"",
    )
    p.add_argument(
        "--strip-prefix",
        default="auto",
        metavar="auto|PREFIX|none",
        help="remove a key prefix (auto: module. / _orig_mod. when every key has it)",
    )
    p.add_argument(
        "--dtype",
        default="keep",
        choices=["keep", "bf16", "fp16"],
        help="cast floating-point tensors to bf16 or fp16 (integer and bool buffers stay as "
        "they are; default keep)",
    )
    p.add_argument(
        "--format",
        choices=["pth", "safetensors"],
        default=None,
        help="output format (default: from OUT's extension, else pth)",
    )
    p.add_argument(
        "--max-shard-size",
        metavar="SIZE",
        help="write Hugging Face-style shards of at most SIZE (e.g. 5GB, 500MB) of tensor data "
        "plus OUT.index.json, instead of one file",
    )
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="export the tensors present when some are in missing files (a deleted shard)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def run(args: argparse.Namespace) -> int:
    ckpt = open_checkpoint(args.path)
    fmt = args.format or ("safetensors" if args.output.endswith(".safetensors") else "pth")
    keep = [resolve_path(ckpt, k) for k in args.keep] if args.keep else None
    plan = make_plan(ckpt, keep, args.strip_prefix, args.dtype, fmt)
    stitched = False
    if ckpt.format == "dcp":  # chunks saved by several ranks: torch's DCP reader stitches them
        stitched = bool(chunked_kept(plan))
    for path, why in [] if stitched else plan.skipped[:20]:
        print(printable(f"ckptui: skipped {'.'.join(map(str, path))}: {why}"), file=sys.stderr)
    _check_missing(args, plan)
    if args.max_shard_size:
        return _export_shards(args, ckpt, plan)
    if args.json or not sys.stderr.isatty():
        result = export(plan, args.output, force=args.force)
    else:
        # deferred: --json and pipes never load rich
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

        columns = ("{task.description}", BarColumn(), DownloadColumn(binary_units=True))
        with Progress(*columns, TimeRemainingColumn(), transient=True) as bar:
            doing = "fetching and writing" if is_url(ckpt.path) else "writing"
            task = bar.add_task(doing, total=plan.data_bytes)
            check = bar.add_task("verifying", total=plan.data_bytes, visible=False)
            result = export(
                plan,
                args.output,
                force=args.force,
                progress=lambda done, _t, _n: bar.update(task, completed=done),
                verify_progress=lambda done, _t, _n: bar.update(
                    check, completed=done, visible=True
                ),
            )
    if args.json:
        json.dump(export_json(result, plan), sys.stdout)
        sys.stdout.write("\n")
    else:
        stripped = f", stripped {plan.strip_prefix!r}" if plan.strip_prefix else ""
        print(
            f"wrote {result.output}: {plural(result.tensors, 'tensor')}, {size(result.bytes)} "
            f"({size_change(ckpt.file_bytes, result.bytes)}){stripped}; "
            + (
                f"fetched {size(result.bytes_read)} from the server; "
                if result.bytes_read is not None
                else ""
            )
            + "verified against the source"
            + (f"; {len(plan.missing):,} missing tensors not exported" if plan.missing else "")
        )
    keep_for_exit(ckpt, plan)
    return 0


def _check_missing(args: argparse.Namespace, plan: Any) -> None:
    """Tensors whose file is gone (a deleted shard) are not exported silently: without
    --allow-missing the export stops and says what it would leave out; with it, each is listed.

    Raises:
        CkptError: tensors are missing and --allow-missing was not given.
    """
    if not plan.missing:
        return
    where = sorted({why for _, why in plan.missing})
    n, present = len(plan.missing), len(plan.items)
    if not args.allow_missing:
        raise CkptError(
            plan.ckpt.path,
            f"{plural(n, 'tensor')} {'is' if n == 1 else 'are'} {'; '.join(where)}; "
            "pass --allow-missing to export the "
            f"{present:,} present without them",
        )
    for path, why in plan.missing[:20]:
        print(printable(f"ckptui: not exported {'.'.join(map(str, path))}: {why}"), file=sys.stderr)
    if n > 20:
        print(f"ckptui: … and {n - 20:,} more not exported", file=sys.stderr)


def _export_shards(args: argparse.Namespace, ckpt: Any, plan: Any) -> int:
    """`export --max-shard-size`: shards of at most SIZE plus an index beside them."""
    try:
        limit = parse_size(args.max_shard_size)
    except ValueError as e:
        raise CkptError(args.output, str(e)) from None
    if limit <= 0:
        raise CkptError(args.output, "--max-shard-size must be positive")
    if args.json or not sys.stderr.isatty():
        results, index = export_sharded(plan, args.output, limit, force=args.force)
    else:
        # deferred: --json and pipes never load rich
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

        columns = ("{task.description}", BarColumn(), DownloadColumn(binary_units=True))
        with Progress(*columns, TimeRemainingColumn(), transient=True) as bar:
            task = bar.add_task("writing shards", total=plan.data_bytes)
            results, index = export_sharded(
                plan,
                args.output,
                limit,
                force=args.force,
                progress=lambda done, _t, _n: bar.update(task, completed=done),
            )
    written = sum(r.bytes for r in results)
    if args.json:
        json.dump(shards_json(results, index, plan), sys.stdout)
        sys.stdout.write("\n")
    else:
        print(
            f"wrote {plural(len(results), 'shard')} and {index}: "
            f"{plural(sum(r.tensors for r in results), 'tensor')}, {size(written)} "
            f"({size_change(ckpt.file_bytes, written)}); "
            "each verified against the source"
        )
    return 0
