"""The `format_overhead` finding: a file of many tiny tensors is mostly zip framing, and `why`
says so (in the breakdown, on the `w` screen in words, and in `why --json`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ckptui.analysis.sizes.breakdown import Breakdown
from ckptui.analysis.sizes.findings import OVERHEAD_SHARE
from ckptui.analysis.sizes.folder import breakdown_of
from ckptui.app.app import CkptApp
from ckptui.app.screens.why import FindingList
from ckptui.formats import open_checkpoint
from ckptui.report.why import breakdown_json
from tests.app.test_why import open_why
from tests.conftest import training_checkpoint


def why_of(path: Path) -> Breakdown:
    return breakdown_of(open_checkpoint(str(path)))


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("tiny") / "tiny.pth"
    torch.save({f"layer.{i}.weight": torch.zeros(1) for i in range(20_000)}, p)
    return p


def test_many_tiny_tensors_are_mostly_overhead(tiny_ckpt: Path) -> None:
    b = why_of(tiny_ckpt)
    framing = b.categories["overhead"] + b.categories["metadata"]
    assert framing / b.file_bytes > OVERHEAD_SHARE
    (f,) = [f for f in b.findings if f.kind == "format_overhead"]
    assert f.bytes == framing and f.saving_bytes == 0
    pct = round(100 * framing / b.file_bytes)
    assert f"format overhead is {pct} % of the file" in f.message
    assert "20,000 storages of 4 B on average" in f.message
    assert "zip local headers" in f.message
    assert "format_overhead" in [x["kind"] for x in breakdown_json(b)["findings"]]


def test_a_normal_training_checkpoint_has_no_overhead_finding(tmp_path: Path) -> None:
    p = tmp_path / "train.pth"
    ck = training_checkpoint()
    ck["model"]["big"] = torch.zeros(1 << 20)  # 4 MiB of data: framing is a sliver
    torch.save(ck, p)
    assert "format_overhead" not in [f.kind for f in why_of(p).findings]


async def test_why_screen_names_finding_kinds_in_words(tiny_ckpt: Path) -> None:
    app = CkptApp(str(tiny_ckpt))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_why(pilot)
        lst = screen.query_one(FindingList)
        texts = [lst.get_option_at_index(i).prompt.plain for i in range(lst.option_count)]
        overhead = next(t for t in texts if "format overhead is" in t)
        assert "format overhead\n" in overhead and "format_overhead" not in overhead
        assert any("float weights\n" in t for t in texts)
        assert "20,000 float32" in " ".join(texts)
