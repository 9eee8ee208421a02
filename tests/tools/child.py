"""Runs a test script as a child process under an address-space cap.

The fuzzers (`tests/core/test_fuzz.py`, `test_fuzz_folders.py`) run their mutation loops in a
child so that a runaway allocation or a crash fails one test instead of taking pytest down; this
is the one home of that child's launcher, which each of them used to define for itself.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

ADDRESS_SPACE_LIMIT = 2 << 30
"""Default RLIMIT_AS for the child: room for Python and the readers, not for a 4 GB bomb."""


def run_in_child(
    script: Path, args: list[str], timeout: float, address_space: int = ADDRESS_SPACE_LIMIT
) -> subprocess.CompletedProcess[str]:
    """Run `python script *args` with RLIMIT_AS = address_space, capturing its text output.

    Args:
        script: the Python file to run (the fuzzers pass their own `__file__`).
        args: its command-line arguments.
        timeout: seconds before subprocess.TimeoutExpired is raised.
        address_space: the child's address-space cap in bytes.

    Returns:
        The finished process; its exit code is not checked (the caller reads it).
    """

    def limit() -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    return subprocess.run(
        [sys.executable, str(Path(script).resolve()), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        preexec_fn=limit,
    )
