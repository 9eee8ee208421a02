"""Regenerates `screenshots/*.svg` for the README from the demo checkpoint.

    python tests/make_screenshots.py

Uses the same scenes (keys, sizes) as the snapshot tests in tests/app/test_snapshots.py, so the
README shows what the tests check.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tui")]

from ckptui.app.app import CkptApp
from tests.app.test_snapshots import (
    COMPARE_SCENES,
    DEMO,
    DEMO_DIR,
    PENDING_SCENES,
    REMOTE_SCENES,
    SCENES,
    keys_then_settle,
    make_demo_pair,
    no_auto_compare,
    put_remote_demo,
)


async def shoot(
    name: str, keys: list[str], size: tuple[int, int], out: Path, paths: tuple[str, ...] = (DEMO,)
) -> Path:
    """Run one scene and save its SVG."""
    app = CkptApp(*paths)
    async with app.run_test(size=size) as pilot:
        await keys_then_settle(keys)(pilot)
        app.save_screenshot(filename=f"{name}.svg", path=str(out))
    return out / f"{name}.svg"


def main() -> None:
    out = ROOT / "screenshots"
    out.mkdir(exist_ok=True)
    os.chdir(DEMO_DIR)  # the header then shows the demo's bare file name
    for name, (keys, size) in SCENES.items():
        print(asyncio.run(shoot(name, keys, size, out)))
    with tempfile.TemporaryDirectory() as tmp:  # the compare screen: the demo and a variant
        pair = make_demo_pair(Path(tmp))
        os.chdir(tmp)
        for name, (keys, size) in COMPARE_SCENES.items():
            print(asyncio.run(shoot(name, keys, size, out, pair)))
        no_auto_compare()  # last: the pending scenes show `?` rows
        for name, (keys, size) in PENDING_SCENES.items():
            print(asyncio.run(shoot(name, keys, size, out, pair)))
    url = put_remote_demo()  # the demo at a URL (fsspec's in-memory file system)
    for name, (keys, size) in REMOTE_SCENES.items():
        print(asyncio.run(shoot(name, keys, size, out, (url,))))


if __name__ == "__main__":
    main()
