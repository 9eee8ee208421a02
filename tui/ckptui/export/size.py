"""Provides `exported_size`: the exact size of the file `ckptui export` writes by default.

The size breakdown's "weights alone would be" promises this number (the detected weights,
`module.` stripped when every name has it, dtypes kept, `.pth`); the analysis layer cannot plan an
export, so `ckptui why` and the browser hand this function to `breakdown_of`.
"""

from __future__ import annotations

from ckptui.core.errors import CkptError
from ckptui.core.tree import Checkpoint
from ckptui.export.plan import make_plan


def exported_size(ckpt: Checkpoint) -> int | None:
    """The default export's exact size, or None when that export has nothing to write."""
    try:
        return make_plan(ckpt).predicted_bytes
    except CkptError:
        return None
