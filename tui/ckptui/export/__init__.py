"""Provides exporting a slimmed copy of a checkpoint: plan it, write it, verify it.

`make_plan` decides what to keep and how (no I/O); `export` writes the plan's output through a
verified temporary file. No torch: the `.pth` is written in torch's own zip layout directly.
"""

from ckptui.core.errors import ExportError
from ckptui.export.atomic import check_target
from ckptui.export.plan import Item, Plan, Result, default_target, make_plan, resolve_path
from ckptui.export.run import export

__all__ = [
    "ExportError",
    "Item",
    "Plan",
    "Result",
    "check_target",
    "default_target",
    "export",
    "make_plan",
    "resolve_path",
]
