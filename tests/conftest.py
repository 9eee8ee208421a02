"""Shared fixtures: real checkpoints written by real `torch.save` calls into tmp_path."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]

_TAG = {"location": None}


def _tagger(obj):  # pragma: no cover - called by torch.save
    return _TAG["location"]


def _deserializer(obj, location):  # pragma: no cover - never loaded with this tag here
    return None


torch.serialization.register_package(0, _tagger, _deserializer)


def save_with_location(obj, path: Path, location: str) -> None:
    """torch.save `obj` recording `location` (e.g. cuda:0) as every storage's device."""
    _TAG["location"] = location
    try:
        torch.save(obj, path)
    finally:
        _TAG["location"] = None


class TinyNet(torch.nn.Module):
    """conv + bn + linear: parameters and buffers, like a real model."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.bn1(self.conv1(x)).mean((2, 3)))


def training_checkpoint(optim: str = "adam", parallel: bool = False) -> dict:
    """{'model', 'optimizer', 'scheduler', 'epoch', 'iteration'} after one real step."""
    torch.manual_seed(0)
    net = TinyNet()
    model = torch.nn.DataParallel(net) if parallel else net
    opt = (
        torch.optim.Adam(model.parameters(), lr=1e-3)
        if optim == "adam"
        else torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    )
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[3, 6])
    loss = model(torch.randn(2, 3, 8, 8)).sum()
    loss.backward()
    opt.step()
    sched.step()
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "epoch": 3,
        "iteration": 99999,
    }


@pytest.fixture
def train_ckpt(tmp_path: Path) -> Path:
    p = tmp_path / "ckpt_0099999.pth"
    torch.save(training_checkpoint(), p)
    return p


@pytest.fixture
def dp_ckpt(tmp_path: Path) -> tuple[Path, dict]:
    """A DataParallel training checkpoint (model keys `module.`-prefixed, optimizer, epoch)
    saved as train.pth, and the dict that was saved."""
    ck = training_checkpoint(parallel=True)
    p = tmp_path / "train.pth"
    torch.save(ck, p)
    return p, ck


def digest(p: Path) -> str:
    """sha256 of a file, to show it was not written to."""
    return hashlib.sha256(p.read_bytes()).hexdigest()


def child_env(*first: Path) -> dict[str, str]:
    """This process's environment with this checkout's `tui/` (after `first`, when given) at
    the front of PYTHONPATH: what a child needs to import the ckptui under test."""
    env = dict(os.environ)
    paths = [str(p) for p in (*first, ROOT / "tui")]
    env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `python -m ckptui ARGS` in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "ckptui", *args],
        capture_output=True,
        check=False,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=child_env(),
    )


def run_python(
    code: str,
    *args: str,
    cwd: Path | None = None,
    timeout: float = 120,
    flags: tuple[str, ...] = (),
    first: tuple[Path, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """Run `python [FLAGS] -c CODE ARGS` in a fresh interpreter that imports this checkout's
    ckptui (what a test of imports, exit codes or a clean process needs; `first`: folders put
    before it on PYTHONPATH), output captured as text, the exit code not checked."""
    return subprocess.run(
        [sys.executable, *flags, "-c", code, *args],
        capture_output=True,
        check=False,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=child_env(*first),
    )


def holed_checkpoint(folder: Path) -> Path:
    """{'a': ones(4), 'b': zeros(8)} saved by torch, then rewritten without b's record (data/1)."""
    src = folder / "full.pt"
    torch.save({"a": torch.ones(4), "b": torch.zeros(8)}, src)
    out = folder / "holed.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            if not info.filename.endswith("data/1"):
                zout.writestr(info, zin.read(info))
    return out
