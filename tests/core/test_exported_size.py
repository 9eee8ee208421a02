"""The export's size is predicted without building its pickle (issue 16), and the prediction is
the written file's size to the byte: for every kind of source, both formats, casts, tied
weights, newer dtypes (`_rebuild_tensor_v3`) and names outside ASCII; a quantized model's
pickle (tuples, per-channel scales) is still built to be measured, and is exact too."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from ckptui.core.dtypes import DTYPES
from ckptui.export import export, make_plan
from ckptui.export.pickle_out import plain_pickle_size, state_dict_pickle
from ckptui.export.zipwriter import size_of, size_of_lengths
from ckptui.formats import open_checkpoint

from .test_weights_estimate import SOURCES


def _mixed(p: Path) -> Path:
    """Tied weights, a view of a larger storage, newer dtypes, 0-d, empty, non-ASCII names."""
    base = torch.randn(40, 8)
    sd = {
        "emb.weight": base,
        "head.weight": base,  # tied: one storage
        "view": base[3:5],  # a view: exported compact
        "bf": torch.randn(3, 5).to(torch.bfloat16),
        "f8": torch.randn(4, 4).to(torch.float8_e4m3fn),  # _rebuild_tensor_v3 + dtype global
        "u16": torch.arange(6).to(torch.uint16),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "ids": torch.arange(300, dtype=torch.int64),
        "mask": torch.ones(7, dtype=torch.bool),
        "größe.wert": torch.ones(2),
        "层.权重": torch.ones(2, 2, dtype=torch.float16),
    }
    torch.save({"model": sd, "epoch": 3}, p / "mixed.pth")
    return p / "mixed.pth"


def _quantized(p: Path) -> Path:
    from torch.ao.quantization import quantize_dynamic

    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    torch.save(quantize_dynamic(net, {torch.nn.Linear}, dtype=torch.qint8).state_dict(), p / "q.pt")
    return p / "q.pt"


MAKERS = [_mixed, *SOURCES, _quantized]
OPTIONS = [("pth", "keep"), ("pth", "bf16"), ("safetensors", "keep"), ("safetensors", "fp16")]


@pytest.mark.parametrize("make", MAKERS, ids=lambda f: f.__name__)
def test_predicted_size_is_the_written_size(tmp_path: Path, make) -> None:
    torch.manual_seed(0)
    ckpt = open_checkpoint(str(make(tmp_path)))
    tried = 0
    for fmt, dtype in OPTIONS:
        if make is _quantized and fmt == "safetensors":
            continue  # refused by name (test_quantized)
        plan = make_plan(ckpt, dtype=dtype, fmt=fmt)
        out = tmp_path / f"out-{fmt}-{dtype}.{fmt}"
        result = export(plan, out)
        assert result.verified
        assert plan.predicted_bytes == result.predicted_bytes == out.stat().st_size, (fmt, dtype)
        tried += 1
    assert tried >= 2


def _entries(n: int, seed: int) -> list[tuple[str, str, str, int, tuple[int, ...]]]:
    """Random plain entries: every exportable dtype, long and non-ASCII names, element counts
    and dims past one byte, two bytes and 2**31 (each `_int` form), tied keys."""
    rng = random.Random(seed)
    dtypes = [d for d in DTYPES if not d.startswith(("quint", "qint", "bits", "complex32"))]
    out = []
    for i in range(n):
        dtype = rng.choice(dtypes)
        shape = tuple(
            rng.choice([0, 1, 7, 255, 256, 70_000, 2**31 + 5]) for _ in range(rng.randrange(4))
        )
        elements = 1
        for d in shape:
            elements *= d
        name = rng.choice(["w", "layer.ä.weight", "x" * 300, "层", f"t{i}", "\udcff"])
        key = str(rng.randrange(i + 1))  # some keys repeat: tied storages
        out.append((f"{name}.{i}", dtype, key, elements, shape))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_plain_pickle_size_is_the_pickles_length(seed: int) -> None:
    entries = _entries(400, seed)
    assert plain_pickle_size(entries) == len(state_dict_pickle(entries))


def test_plain_pickle_size_of_nothing() -> None:
    assert plain_pickle_size([]) == len(state_dict_pickle([]))


def test_zip_size_by_name_lengths_matches_by_names() -> None:
    records = [("archive/data.pkl", 123), ("archive/data/0", 5), ("ä/ö", 70), ("x", 0)]
    records += [(f"archive/data/{i}", i * 37) for i in range(70_000)]  # past 65,535: zip64 end
    by_length = [(len(n.encode()), s) for n, s in records]
    assert size_of_lengths(by_length) == size_of(records)
    big = [("a/data/0", 2**32 + 1), ("a/data/1", 10), ("a/version", 2)]  # zip64 extras
    assert size_of_lengths([(len(n.encode()), s) for n, s in big]) == size_of(big)
