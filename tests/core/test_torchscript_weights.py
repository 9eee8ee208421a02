"""A TorchScript archive's weights are its scripted module's tensors (issue 19: export said
"use --keep"): `why`, the resume card and export find them under `data`."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ckptui.analysis.sizes.folder import breakdown_of
from ckptui.formats import open_checkpoint

from ..conftest import run_cli


class ConvNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


def test_torchscript_exports_its_module_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = ConvNet()
    src = tmp_path / "scripted.pt"
    torch.jit.script(net).save(src)
    out = tmp_path / "w.pth"
    r = run_cli("export", str(src), "-o", str(out))
    assert r.returncode == 0, r.stderr
    sd = torch.load(out, weights_only=True)
    ConvNet().load_state_dict(sd, strict=True)
    for k, v in net.state_dict().items():
        assert torch.equal(sd[k], v), k
    ckpt = open_checkpoint(src)
    assert ckpt.format == "torchscript"
    assert breakdown_of(ckpt).weights_path == ("data",)
    doc = json.loads(run_cli("inspect", str(src), "--json").stdout)
    assert doc["resume"]["weights"]["tensors"] == len(net.state_dict())
