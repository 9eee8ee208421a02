"""Presenting results: `json/` holds the `--json` contracts (no rich), `text/` the rich renderings
for the terminal; `diff` and `why` hold both for their subcommand. Imports `export` and below.
"""
