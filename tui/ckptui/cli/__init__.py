"""The `ckptui` command: `main` parses the first word and runs that subcommand's module
(`browse_cmd`, `inspect_cmd`, `why_cmd`, `export_cmd`, `diff_cmd`); one-line errors, exit codes.
"""
