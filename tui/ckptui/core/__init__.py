"""The bottom layer: the checkpoint tree (`tree`), key paths as text (`keypath`), errors,
dtypes (sizes, numel, strides) and units (sizes, shapes, escaping file text). Standard library
and humanize only; every other layer builds on these.
"""
