"""Provides `ckptui PATH` (the browser), `ckptui A B` (compare) and `ckptui --demo`."""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from ckptui import __version__
from ckptui.cli.args import PATH_HELP, SUBCOMMAND_HELP, SUBCOMMANDS
from ckptui.cli.demo import write_demo
from ckptui.cli.ending import keep_for_exit
from ckptui.core.errors import CkptError
from ckptui.core.units import printable
from ckptui.formats import check_openable
from ckptui.formats.source import is_url


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ckptui",
        usage="ckptui [-h] [--demo] [--debug] [--version] [PATH [OTHER]]\n"
        "       ckptui {inspect,why,export,diff} ...",
        description="Look inside a PyTorch checkpoint without running it: the browser for\n"
        "PATH (or compare PATH with OTHER), or one of the subcommands below.",
        epilog=SUBCOMMAND_HELP,
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


def run(args: argparse.Namespace) -> int:
    if args.demo:
        path = write_demo()
        print(f"ckptui: wrote the demo checkpoint to {path}", file=sys.stderr)
        args.path = str(path)
    if not args.path:
        parser().print_usage(sys.stderr)
        print("ckptui: error: give a checkpoint PATH (or --demo)", file=sys.stderr)
        return 2
    _suggest_subcommand(args.path)
    check_openable(args.path)  # before the terminal is taken over: a typo gets one line, at once
    if args.other:
        check_openable(args.other)
    # deferred: Textual loads only once the paths are known to open (a typo gets its line at once)
    from ckptui.app.app import CkptApp

    app = CkptApp(args.path, args.other)
    app.run()
    if app.error_message:
        print(printable(app.error_message), file=sys.stderr)
    # The terminal is back and asyncio.run has joined the workers' executor: what is left is
    # freeing the tree and its widgets and the interpreter's final collection of them, which
    # kept a 100,000-tensor file's `q` waiting for about a second (`cli.ending`)
    keep_for_exit(app)
    return app.return_code or 0


def _suggest_subcommand(word: str) -> None:
    """`ckptui inpsect f.pth`: a word close to a subcommand that is no path is a typo of it.

    Raises:
        CkptError: with the one-line message naming the subcommand.
    """
    if is_url(word) or Path(word).exists():
        return
    close = difflib.get_close_matches(word, SUBCOMMANDS, n=1, cutoff=0.6)
    if close:
        raise CkptError(word, f"no such file or directory; did you mean 'ckptui {close[0]}'?")


def _version() -> str:
    return __version__
