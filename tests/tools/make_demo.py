"""Writes `demo_ckpt_0099999.pth`, the sample checkpoint `ckptui --demo` opens.

Run it (needs torch) from the repository root to regenerate the shipped file:

    python tests/tools/make_demo.py

It is a real training checkpoint written by a real `torch.save`: a small ResNet-style CNN under
DataParallel `module.` keys, Adam state after real steps, a MultiStepLR scheduler, epoch and
iteration counters, the run's `argparse.Namespace`, a numpy scalar, and a view that drags its
whole storage along (`class_centroids`). ckptui ships the file so the demo needs no torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convs with batch norm and a shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout else None
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class TinyResNet(nn.Module):
    """conv1/bn1, three stages of blocks, a classifier: ResNet's key layout, small."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(BasicBlock(8, 8, 1), BasicBlock(8, 8, 1))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2), BasicBlock(16, 16, 1))
        self.layer3 = nn.Sequential(BasicBlock(16, 32, 2), BasicBlock(32, 32, 1))
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean((2, 3)))


def make(out: Path) -> Path:
    """Train a few steps and save a checkpoint the way training scripts do."""
    torch.manual_seed(0)
    model = nn.DataParallel(TinyResNet())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[30, 60, 90], gamma=0.1)
    for _ in range(3):
        x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    sched.step()
    centroids = torch.randn(1000, 32)
    ckpt = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "epoch": 42,
        "iteration": 99999,
        "best_acc": np.float64(0.9137),
        "args": argparse.Namespace(
            arch="tiny_resnet",
            lr=1e-3,
            batch_size=256,
            epochs=120,
            amp=True,
            data="/datasets/cifar10",
        ),
        "class_centroids": centroids[:10],  # a view: torch.save writes all 1000 rows
    }
    torch.save(ckpt, out)
    return out


if __name__ == "__main__":
    print(make(Path(__file__).parents[2] / "tui" / "ckptui" / "data" / "demo_ckpt_0099999.pth"))
