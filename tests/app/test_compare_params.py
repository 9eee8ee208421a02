"""The compare panel's parameter counts: tensor elements below a row in A and in B, tied
weights counted once, as `model.parameters()` counts them (issue 18)."""

from __future__ import annotations

from pathlib import Path

import torch

from ckptui.analysis.params import count
from ckptui.app.app import CkptApp
from tests.app.test_browse import text_of
from tests.app.test_compare import SIZE, opened, save, settle, state_dict


async def test_root_and_module_rows_show_parameters_of_each_side(tmp_path: Path) -> None:
    a = state_dict()
    b = dict(a)
    b["head.weight"] = torch.zeros(100, 8)  # B has 800 more elements
    emb = torch.zeros(50, 8)
    a["emb.weight"], a["lm_head.weight"] = emb, emb  # tied in A: counted once
    b["emb.weight"] = emb.clone()
    pa, pb = save(a, tmp_path / "a.pth"), save(b, tmp_path / "b.pth")
    n_a = sum(v.numel() for k, v in a.items() if k != "lm_head.weight")
    n_b = sum(v.numel() for v in b.values())
    app = CkptApp(pa, pb)
    async with app.run_test(size=SIZE) as pilot:
        await opened(pilot)
        await settle(pilot)
        facts = " ".join(text_of(app, "#cmp-facts").split())
        assert f"parameters {count(n_a)} {count(n_b)}" in facts
