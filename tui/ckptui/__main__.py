"""Run the CLI with `python -m ckptui`."""

from ckptui.cli.main import main

raise SystemExit(main())
