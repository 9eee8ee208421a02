"""The package's plan holds (issue 15): no module imports another module's private name, and
every import of a ckptui module inside a function says why it is deferred. The layers and the
cycles are checked by `lint-imports` (pyproject.toml), which `.ci/run` runs; this runs it too, so
the README's test command alone proves the contracts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.tools.import_counts import counts

ROOT = Path(__file__).resolve().parents[2]


def test_no_private_name_crosses_modules() -> None:
    assert counts(ROOT / "tui" / "ckptui")["private"] == []


def test_every_deferred_import_says_why() -> None:
    assert counts(ROOT / "tui" / "ckptui")["uncommented"] == []


def test_the_counter_sees_what_it_counts(tmp_path: Path) -> None:
    """The checks above can fail: a private import and a bare deferred import are found."""
    pkg = tmp_path / "ckptui"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def _hidden():\n    pass\n")
    (pkg / "b.py").write_text(
        "from ckptui.a import _hidden\n\n\ndef f():\n    from ckptui import a\n    return a\n"
    )
    found = counts(pkg)
    assert found["private"] == ["ckptui.b <- ckptui.a._hidden"]
    assert [d.split(" -> ")[0] for d in found["uncommented"]] == ["ckptui.b:5"]


def test_import_contracts_hold() -> None:
    """import-linter is in the test extra: a missing install fails here rather than skipping."""
    assert shutil.which("lint-imports"), "install the test extra: pip install -e '.[test]'"
    r = subprocess.run(
        ["lint-imports"], check=False, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout[-3000:]
    assert "Contracts: 6 kept, 0 broken." in r.stdout
