"""torch's archives that torch.load does not read (issue 19): `torch.export.save`'s `.pt2` and
`torch.package`. Each is named, its tensors shown under their names and exported, its manifest
listed, and the weights-only verdict says plainly that torch.load fails on it."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from ..conftest import run_cli


@pytest.fixture(scope="module")
def pt2(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A real `torch.export.save` of Linear + ReLU, and the module's state dict."""
    p = tmp_path_factory.mktemp("pt2") / "m.pt2"
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(m, (torch.randn(2, 4),)), p)
    return p, {k: v.detach().clone() for k, v in m.state_dict().items()}


_MODULE = """
import torch
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)
"""


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """(a package of a plain nn.Linear, a package interning its model's source, the state
    dict of the interned model)."""
    import torch.package as tp

    d = tmp_path_factory.mktemp("package")
    plain = d / "linear.pt"
    torch.manual_seed(0)
    lin = nn.Linear(2, 2)
    with tp.PackageExporter(plain) as e:
        e.extern("torch.**")
        e.save_pickle("model", "model.pkl", lin)
    (d / "ckptui_pkg_net.py").write_text(_MODULE)
    sys.path.insert(0, str(d))
    try:
        import ckptui_pkg_net

        net = ckptui_pkg_net.Net()
        code = d / "net.pt"
        with tp.PackageExporter(code) as e:
            e.extern("torch.**")
            e.intern("ckptui_pkg_net")
            e.save_pickle("model", "model.pkl", net)
    finally:
        sys.path.remove(str(d))
        sys.modules.pop("ckptui_pkg_net", None)
    truth = {k: v.detach().clone() for k, v in lin.state_dict().items()}
    return plain, code, truth


def test_pt2_is_named_and_its_weights_shown(pt2) -> None:
    path, truth = pt2
    r = run_cli("inspect", str(path), "--json", "--fail-on-unsafe")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["format"] == "pt2"
    weights = next(c for c in doc["tree"]["children"] if c["key"] == "weights")
    shapes = {c["key"]: c["shape"] for c in weights["children"]}
    assert shapes == {k: list(v.shape) for k, v in truth.items()}
    archive = next(c for c in doc["tree"]["children"] if c["key"] == "archive")
    assert any(c["value"].startswith("models/model.json · ") for c in archive["children"])
    kinds = {f["kind"] for f in doc["findings"]}
    assert "not_a_torch_load_checkpoint" in kinds
    blockers = doc["weights_only"]["blockers"]
    assert blockers and "torch.export.load" in blockers[0]
    text = run_cli("inspect", str(path))
    assert "torch.export archive (.pt2)" in text.stdout


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_pt2_weights_export_and_load_strictly(pt2, tmp_path, fmt) -> None:
    path, truth = pt2
    out = tmp_path / f"o.{fmt}"
    r = run_cli("export", str(path), "-o", str(out))
    assert r.returncode == 0, r.stderr
    got = torch.load(out, weights_only=True) if fmt == "pth" else load_file(out)
    nn.Sequential(nn.Linear(4, 3), nn.ReLU()).load_state_dict(got, strict=True)
    for k, v in truth.items():
        assert torch.equal(got[k], v), k


def test_pt2_bytes_are_all_attributed(pt2) -> None:
    path, _ = pt2
    doc = json.loads(run_cli("why", str(path), "--json").stdout)
    assert sum(doc["categories"].values()) == doc["file_bytes"] == path.stat().st_size
    assert doc["categories"]["tensor_data"] == (3 * 4 + 3) * 4


def test_a_package_is_named_with_its_externs_and_weights(package, tmp_path) -> None:
    plain, _, truth = package
    r = run_cli("inspect", str(plain), "--json", "--fail-on-unsafe")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["format"] == "torch-package"
    keys = [c["key"] for c in doc["tree"]["children"]]
    assert keys == ["model/model.pkl", "extern_modules", "archive"]
    externs = next(c for c in doc["tree"]["children"] if c["key"] == "extern_modules")
    assert "torch.nn.modules.linear" in [c["value"] for c in externs["children"]]
    assert "torch.package" in doc["weights_only"]["blockers"][0]
    out = tmp_path / "o.pth"
    e = run_cli("export", str(plain), "-o", str(out))
    assert e.returncode == 0, e.stderr
    got = torch.load(out, weights_only=True)
    nn.Linear(2, 2).load_state_dict(got, strict=True)
    assert all(torch.equal(got[k], v) for k, v in truth.items())


def test_a_package_shipping_code_says_so(package) -> None:
    _, code, _ = package
    r = run_cli("inspect", str(code), "--json")
    assert r.returncode == 0, r.stderr
    found = [f for f in json.loads(r.stdout)["findings"] if f["kind"] == "package_code"]
    assert len(found) == 1 and "ckptui_pkg_net.py" in found[0]["message"]
    assert "did not run it" in found[0]["message"]


def _pt2_zip(path: Path, config: bytes, weight: bytes = b"\0" * 8) -> Path:
    """A hand-built .pt2: `archive_format`, a weights config and one weight record."""
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("m/archive_format", "pt2")
        z.writestr("m/data/weights/model_weights_config.json", config)
        z.writestr("m/data/weights/weight_0", weight)
    return path


_META = (
    '{"config": {"w": {"path_name": "weight_0", "is_param": true, "use_pickle": false, '
    '"tensor_meta": {"dtype": 7, "sizes": [%s], "strides": [{"as_int": 1}], '
    '"storage_offset": {"as_int": 0}, "device": {"type": "cpu", "index": null}}}}}'
)


@pytest.mark.parametrize(
    ("config", "what"),
    [
        (b"{not json", "is not JSON"),
        (b"[" * 200_000 + b"]" * 200_000, "nests too deep"),
        (b'{"config": []}', "no config mapping"),
        ((_META % '{"as_int": -1}').encode(), "malformed tensor_meta"),
        ((_META % '{"as_int": 1}, {"as_int": 2}').encode(), "sizes and strides differ"),
    ],
    ids=["not-json", "deep", "no-mapping", "negative-size", "rank-mismatch"],  # short env
)
def test_a_damaged_pt2_is_one_line(tmp_path, config: bytes, what: str) -> None:
    path = _pt2_zip(tmp_path / "bad.pt2", config)
    r = run_cli("inspect", str(path))
    assert r.returncode == 2, r.stdout + r.stderr
    assert what in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_a_pt2_weight_larger_than_its_record_is_not_exported(tmp_path) -> None:
    path = _pt2_zip(tmp_path / "short.pt2", (_META % '{"as_int": 4}').encode())  # 16 B in 8
    r = run_cli("export", str(path), "-o", str(tmp_path / "o.pth"))
    assert r.returncode == 2 and "runs past its storage" in r.stderr
