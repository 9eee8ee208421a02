"""Provides `ckptui --demo`: writes a realistic training checkpoint to a temporary folder.

The sample has what real training checkpoints have: a small CNN's state dict (conv, batch norm,
linear), Adam state after a real step, a MultiStepLR scheduler, epoch/iteration counters, the
argparse Namespace of the run, and a view that drags a larger storage along. It is written with
torch (the `ckptui[torch]` extra) because only torch.save makes a file exactly as users have.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from .errors import CkptError


def write_demo(folder: str | None = None) -> Path:
    """Write `demo_ckpt_0099999.pth` and return its path.

    Raises:
        CkptError: when torch is not installed (with the install command).
    """
    try:
        import torch
    except ImportError:
        raise CkptError(
            "--demo", "writing the demo needs torch: pip install 'ckptui[torch]'"
        ) from None
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10),
    )  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=3e-4, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[30, 60], gamma=0.1)
    loss = model(torch.randn(4, 3, 16, 16)).logsumexp(1).mean()
    loss.backward()
    opt.step()
    sched.step()
    embeddings = torch.randn(1000, 64)
    ckpt = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "epoch": 42,
        "iteration": 99999,
        "best_acc": 0.9137,
        "args": argparse.Namespace(lr=3e-4, batch_size=256, arch="smallcnn", amp=True),
        "class_centroids": embeddings[:10],  # a view: saves all 1000 rows
    }
    out = Path(folder or tempfile.mkdtemp(prefix="ckptui-demo-")) / "demo_ckpt_0099999.pth"
    torch.save(ckpt, out)
    return out
