"""Provides `ckptui --demo`: copies the shipped sample training checkpoint to a temporary folder.

The sample (`data/demo_ckpt_0099999.pth`) was written by a real `torch.save` in
`tests/tools/make_demo.py` (which documents how to regenerate it) and ships with the package, so the
demo works in the base install, without torch. It is copied so that the user may do anything to
it, export included, without touching the installed package.
"""

from __future__ import annotations

import shutil
import tempfile
from importlib import resources
from pathlib import Path

DEMO_NAME = "demo_ckpt_0099999.pth"


def write_demo(folder: str | None = None) -> Path:
    """Copy the sample checkpoint into `folder` (a new temporary folder by default).

    Returns:
        The copy's path.
    """
    out = Path(folder or tempfile.mkdtemp(prefix="ckptui-demo-")) / DEMO_NAME
    with resources.as_file(resources.files("ckptui.data") / DEMO_NAME) as src:
        shutil.copyfile(src, out)
    return out
