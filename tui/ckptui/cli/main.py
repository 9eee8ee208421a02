"""Provides the `ckptui` command: `ckptui PATH`, `ckptui A B` (compare), `ckptui inspect PATH
[--json]`, `ckptui --demo`.

Exit codes (DESIGN.md): 0 success, 1 the command ran and found a problem it reports
(`--fail-on-unsafe`), 2 bad input or usage, always as one line `ckptui: <path>: <what is wrong>`
(`--debug` shows the traceback). rich is imported only to render human output; `--json` needs
neither rich nor Textual, so scripts pay only for reading the file.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

from ckptui.core.errors import CkptError
from ckptui.core.units import printable

SUBCOMMANDS = ("inspect", "why", "export", "diff")


PATH_HELP = "checkpoint file, folder (shards, DCP, checkpoints) or URL (https://, s3://, ...)"

_SUBCOMMAND_HELP = """subcommands (ckptui SUBCOMMAND --help for each):
  inspect PATH [--json]        print the tree, findings, resume card and weights_only verdict
  why PATH [--json]            where the bytes went, and what each remedy would save
  export PATH -o OUT           write a slimmed, verified weights-only copy
  diff A B [--values] [--json] what differs (what load_state_dict would trip on)"""


def _parser_main() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ckptui",
        usage="ckptui [-h] [--demo] [--debug] [--version] [PATH [OTHER]]\n"
        "       ckptui {inspect,why,export,diff} ...",
        description="Look inside a PyTorch checkpoint without running it: the browser for\n"
        "PATH (or compare PATH with OTHER), or one of the subcommands below.",
        epilog=_SUBCOMMAND_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", nargs="?", metavar="PATH", help=PATH_HELP + ", to browse")
    p.add_argument(
        "other",
        nargs="?",
        metavar="OTHER",
        help="a second checkpoint: compare the two (keys, shapes, dtypes; values on demand)",
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help="write a sample training checkpoint to a temporary folder and open it",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"ckptui {_version()}")
    return p


def _parser_inspect() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ckptui inspect", description="Print a checkpoint's tree, tensors and findings."
    )
    p.add_argument("path", metavar="PATH", help=PATH_HELP)
    p.add_argument("--json", action="store_true", help="print the JSON contract")
    p.add_argument(
        "--max-children",
        type=int,
        default=50,
        metavar="N",
        help="children shown per node before eliding (default 50)",
    )
    p.add_argument("--all", action="store_true", help="show every child")
    p.add_argument("--depth", type=int, default=None, metavar="N", help="levels to show")
    p.add_argument(
        "--fail-on-unsafe",
        action="store_true",
        help="exit 1 when the file would run code under torch.load",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _parser_why() -> argparse.ArgumentParser:
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


def _parser_export() -> argparse.ArgumentParser:
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


def _parser_diff() -> argparse.ArgumentParser:
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


def _version() -> str:
    from ckptui import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args_list
    try:
        if args_list and args_list[0] == "inspect":
            return _inspect(_parser_inspect().parse_args(args_list[1:]))
        if args_list and args_list[0] == "why":
            return _why(_parser_why().parse_args(args_list[1:]))
        if args_list and args_list[0] == "export":
            with _terminated_as_interrupt():
                return _export(_parser_export().parse_args(args_list[1:]))
        if args_list and args_list[0] == "diff":
            return _diff(_parser_diff().parse_args(args_list[1:]))
        return _main(_parser_main().parse_args(args_list))
    except CkptError as e:
        if debug:
            traceback.print_exc()
        print(f"ckptui: {e.path}: {e.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ckptui: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


@contextlib.contextmanager
def _terminated_as_interrupt() -> Iterator[None]:
    """SIGTERM, SIGHUP and SIGQUIT (a job scheduler's timeout, a closed SSH session, Ctrl-\\)
    raise KeyboardInterrupt while an export runs, so its temp file is removed as on Ctrl-C instead of
    being left beside the target."""
    import signal
    import threading

    def interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    wanted = [getattr(signal, n) for n in ("SIGTERM", "SIGHUP", "SIGQUIT") if hasattr(signal, n)]
    if threading.current_thread() is not threading.main_thread():
        wanted = []  # only the main thread may set handlers (an embedding caller's thread)
    old = {sig: signal.signal(sig, interrupt) for sig in wanted}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _main(args: argparse.Namespace) -> int:
    if args.demo:
        from ckptui.cli.demo import write_demo

        path = write_demo()
        print(f"ckptui: wrote the demo checkpoint to {path}", file=sys.stderr)
        args.path = str(path)
    if not args.path:
        _parser_main().print_usage(sys.stderr)
        print("ckptui: error: give a checkpoint PATH (or --demo)", file=sys.stderr)
        return 2
    from ckptui.formats import check_openable

    _suggest_subcommand(args.path)
    check_openable(args.path)  # before the terminal is taken over: a typo gets one line, at once
    if args.other:
        check_openable(args.other)
    from ckptui.app.app import CkptApp

    app = CkptApp(args.path, args.other)
    app.run()
    if app.error_message:
        print(printable(app.error_message), file=sys.stderr)
    return app.return_code or 0


def _suggest_subcommand(word: str) -> None:
    """`ckptui inpsect f.pth`: a word close to a subcommand that is no path is a typo of it.

    Raises:
        CkptError: with the one-line message naming the subcommand.
    """
    import difflib
    from pathlib import Path

    from ckptui.formats.source import is_url

    if is_url(word) or Path(word).exists():
        return
    close = difflib.get_close_matches(word, SUBCOMMANDS, n=1, cutoff=0.6)
    if close:
        raise CkptError(word, f"no such file or directory; did you mean 'ckptui {close[0]}'?")


def _inspect(args: argparse.Namespace) -> int:
    from ckptui.core.errors import CorruptFile
    from ckptui.formats import open_checkpoint

    damaged: CorruptFile | None = None
    try:
        ckpt = open_checkpoint(args.path)
    except CorruptFile as e:
        # Damaged after torch.load would already have run something dangerous: print what
        # was read with its danger findings; the damage is one of them and the exit code's
        # (2, or 1 with --fail-on-unsafe: for a scanner, unsafe outranks damaged).
        if e.partial is None:
            raise
        ckpt, damaged = e.partial, e
    if args.json:
        from ckptui.report.json.inspect import iter_json

        sys.stdout.writelines(iter_json(ckpt))
        sys.stdout.write("\n")
    else:
        _render(
            ckpt, max_children=None if args.all else max(1, args.max_children), depth=args.depth
        )
    if args.fail_on_unsafe and any(f.severity.value == "danger" for f in ckpt.findings):
        if damaged is not None:
            print(f"ckptui: {damaged.path}: {damaged.message}", file=sys.stderr)
        return 1
    if damaged is not None:
        raise damaged
    return 0


def _why(args: argparse.Namespace) -> int:
    from ckptui.analysis.sizes.folder import breakdown_of
    from ckptui.export.size import exported_size
    from ckptui.formats import open_checkpoint

    show_progress = not args.json and sys.stderr.isatty()
    ckpt = open_checkpoint(args.path)
    folder = ckpt.info.get("folder")
    if folder is not None and ckpt.format != "dcp":
        # each checkpoint file broken down on its own, and searched for duplicates on its own
        files: list[tuple[str, Any, Any]] = []
        b = breakdown_of(ckpt, lambda name, c, fb: files.append((name, c, fb)), exported_size)
        if not args.no_duplicates:
            found = []
            for name, c, fb in files:
                found += [
                    _prefixed(f, name) for f in _duplicates(c, fb, show_progress=show_progress)
                ]
            b.add_findings(found)
    else:
        b = breakdown_of(ckpt, weights_size=exported_size)
        if not args.no_duplicates and folder is None:
            b.add_findings(_duplicates(ckpt, b, show_progress=show_progress))
    if args.json:
        import json

        from ckptui.report.why import breakdown_json

        json.dump(breakdown_json(b), sys.stdout)
        sys.stdout.write("\n")
    else:
        from ckptui.report.why import render_breakdown

        render_breakdown(ckpt, b, top=max(1, args.top), depth=max(1, args.depth))
    return 0


def _prefixed(f: Any, name: str) -> Any:
    from ckptui.analysis.sizes.findings import SizeFinding

    paths = tuple((name, *p) for p in f.paths)
    return SizeFinding(f.kind, f.bytes, f.saving_bytes, paths, f"{name}: {f.message}")


def _export(args: argparse.Namespace) -> int:
    from ckptui.core.units import size, size_change
    from ckptui.export import export, make_plan, resolve_path
    from ckptui.formats import open_checkpoint
    from ckptui.formats.source import is_url

    ckpt = open_checkpoint(args.path)
    fmt = args.format or ("safetensors" if args.output.endswith(".safetensors") else "pth")
    keep = [resolve_path(ckpt, k) for k in args.keep] if args.keep else None
    plan = make_plan(ckpt, keep, args.strip_prefix, args.dtype, fmt)
    stitched = False
    if ckpt.format == "dcp":  # chunks saved by several ranks: torch's DCP reader stitches them
        from ckptui.export.dcp import chunked_kept

        stitched = bool(chunked_kept(plan))
    for path, why in [] if stitched else plan.skipped[:20]:
        print(printable(f"ckptui: skipped {'.'.join(map(str, path))}: {why}"), file=sys.stderr)
    _check_missing(args, plan)
    if args.max_shard_size:
        return _export_shards(args, ckpt, plan)
    if args.json or not sys.stderr.isatty():
        result = export(plan, args.output, force=args.force)
    else:
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
        import json

        json.dump(
            {
                "output": result.output,
                "bytes": result.bytes,
                "tensors": result.tensors,
                "predicted_bytes": result.predicted_bytes,
                "verified": result.verified,
                "kept_paths": [list(p) for p in result.kept_paths],
                "bytes_read": result.bytes_read,
                "missing": [list(p) for p, _ in plan.missing],
            },
            sys.stdout,
        )
        sys.stdout.write("\n")
    else:
        stripped = f", stripped {plan.strip_prefix!r}" if plan.strip_prefix else ""
        print(
            f"wrote {result.output}: {result.tensors:,} tensors, {size(result.bytes)} "
            f"({size_change(ckpt.file_bytes, result.bytes)}){stripped}; "
            + (
                f"fetched {size(result.bytes_read)} from the server; "
                if result.bytes_read is not None
                else ""
            )
            + "verified against the source"
            + (f"; {len(plan.missing):,} missing tensors not exported" if plan.missing else "")
        )
    return 0


def _diff(args: argparse.Namespace) -> int:
    from ckptui.analysis.diff.compare import diff_checkpoints
    from ckptui.formats import open_checkpoint

    a, b = open_checkpoint(args.a), open_checkpoint(args.b)
    options: dict[str, Any] = {"compare": args.compare, "strip_prefix": not args.keep_prefix}
    if not args.values or not sys.stderr.isatty():
        d = diff_checkpoints(a, b, values=args.values, **options)
    else:
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
        import json

        from ckptui.report.diff import diff_json

        json.dump(diff_json(d), sys.stdout)
        sys.stdout.write("\n")
    else:
        from ckptui.report.diff import render_diff

        render_diff(d, top=max(1, args.top))
    return 1 if d.differs else 0


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
            f"{n:,} tensors are {'; '.join(where)}; pass --allow-missing to export the "
            f"{present:,} present without them",
        )
    for path, why in plan.missing[:20]:
        print(printable(f"ckptui: not exported {'.'.join(map(str, path))}: {why}"), file=sys.stderr)
    if n > 20:
        print(f"ckptui: … and {n - 20:,} more not exported", file=sys.stderr)


def _export_shards(args: argparse.Namespace, ckpt: Any, plan: Any) -> int:
    """`export --max-shard-size`: shards of at most SIZE plus an index beside them."""
    from ckptui.core.units import size, size_change
    from ckptui.export.shards import export_sharded, parse_size

    try:
        limit = parse_size(args.max_shard_size)
    except ValueError as e:
        raise CkptError(args.output, str(e)) from None
    if limit <= 0:
        raise CkptError(args.output, "--max-shard-size must be positive")
    if args.json or not sys.stderr.isatty():
        results, index = export_sharded(plan, args.output, limit, force=args.force)
    else:
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
        import json

        json.dump(
            {
                "output": index,
                "bytes": written,
                "tensors": sum(r.tensors for r in results),
                "predicted_bytes": sum(r.predicted_bytes for r in results),
                "verified": all(r.verified for r in results),
                "kept_paths": [list(p) for p in plan.keep],
                "shards": [r.output for r in results],
            },
            sys.stdout,
        )
        sys.stdout.write("\n")
    else:
        print(
            f"wrote {len(results)} shards and {index}: {sum(r.tensors for r in results):,} "
            f"tensors, {size(written)} ({size_change(ckpt.file_bytes, written)}); "
            "each verified against the source"
        )
    return 0


def _duplicates(ckpt: Any, b: Any, show_progress: bool) -> list[Any]:
    """Look for identical tensors, with a progress bar on a terminal."""
    from ckptui.analysis.sizes.duplicates import find_duplicates, skip_reason

    skipped = skip_reason(ckpt)
    if skipped is not None:
        if show_progress:  # a human at a terminal: say why no duplicates are listed
            print(printable(f"duplicates {skipped}"), file=sys.stderr)
        return []
    try:
        if not show_progress:
            return find_duplicates(ckpt, b)
        from rich.progress import Progress

        with Progress(transient=True) as progress:
            task = progress.add_task("comparing same-shaped tensors", total=None)
            return find_duplicates(
                ckpt, b, lambda done, total: progress.update(task, completed=done, total=total)
            )
    except OSError as e:
        raise CkptError(ckpt.path, f"cannot read tensor data ({e.strerror or e})") from None


def _render(ckpt: Any, max_children: int | None, depth: int | None) -> None:
    from ckptui.report.text.inspect import render_checkpoint

    render_checkpoint(ckpt, max_children=max_children, depth=depth)


if __name__ == "__main__":
    raise SystemExit(main())
