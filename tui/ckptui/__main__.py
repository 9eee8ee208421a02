"""Run the CLI with `python -m ckptui`."""

from ckptui.cli.main import console

console()
