"""The `--json` contracts of `inspect` (`inspect`, `training`); imports no rich."""
