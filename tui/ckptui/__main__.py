"""Run the CLI with `python -m ckptui`."""

from ckptui.cli import main

raise SystemExit(main())
