"""Comparing two checkpoints: keys, shapes and dtypes (`compare`), and values (`values`)."""
