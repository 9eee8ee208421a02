"""Provides the two shapes of progress callback the long operations take (export, value
comparison, the duplicate search), so the command line's bars and the browser's workers can
pass one function to any of them."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int, int], None]
"""Called with (units done, units in all); in all may be 0 while unknown."""

NamedProgress = Callable[[int, int, str], None]
"""Called with (bytes done, bytes in all, name of the item being worked on)."""
