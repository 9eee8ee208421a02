"""torch.ao quantized models (issue 19): their state dicts and whole-module pickles, made by real
`quantize_dynamic` and static `prepare`/`convert`, are recognised as weights and exported as
`torch.load(weights_only=True)` loads them and `load_state_dict(strict=True)` takes them on a
freshly quantized model of the same architecture.

What torch writes (read with `pickletools.dis`): a quantized Linear's state dict holds
`_packed_params._packed_params` as a `(qtensor, bias)` tuple and `_packed_params.dtype` as a
`torch.qint8` global; per-channel tensors carry their scales and zero points as tensors of their
own inside `_rebuild_qtensor`; `_metadata` holds the versions `load_state_dict` needs. A whole
module keeps a Linear's weights in a `torch.ScriptObject` (NEWOBJ, then BUILD with `((w, b),
'__torch__.torch.classes.quantized.LinearPackedParamsBase')`) and a conv's in its `__getstate__`
tuple, with `scale`/`zero_point` as plain numbers.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from ckptui.analysis.params import params_at
from ckptui.analysis.roles import weights_path
from ckptui.export import make_plan
from ckptui.formats import open_checkpoint

from ..conftest import run_cli

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]


class ConvNet(nn.Module):
    """Quant stub, conv, relu, linear, dequant stub: eager-mode static quantization's shape."""

    def __init__(self) -> None:
        super().__init__()
        from torch.ao.quantization import DeQuantStub, QuantStub

        self.quant = QuantStub()
        self.conv = nn.Conv2d(3, 4, 3)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 6 * 6, 5)
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv(self.quant(x)))
        return self.dequant(self.fc(x.flatten(1)))


class Wide(nn.Module):
    """The other statically quantized modules: a conv without bias, BatchNorm, ConvTranspose,
    FloatFunctional (QFunctional once converted) and a Linear."""

    def __init__(self) -> None:
        super().__init__()
        from torch.ao.quantization import DeQuantStub, QuantStub

        self.quant = QuantStub()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.up = nn.ConvTranspose2d(4, 2, 2)
        self.add = nn.quantized.FloatFunctional()
        self.fc = nn.Linear(5, 3)
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(self.bn(self.conv(self.quant(x))))
        return self.dequant(self.fc(self.add.add(y, y)))


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 6)
        self.fc2 = nn.Linear(6, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class WithLstm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)
        self.lstm = nn.LSTM(4, 3)


def static_model(seed: int = 0, cls: type[nn.Module] = ConvNet) -> nn.Module:
    """`cls` through `prepare` (calibrated on random data) and `convert`, fbgemm qconfig (per
    tensor for ConvTranspose, which has no per-channel observer)."""
    from torch.ao.quantization import convert, default_qconfig, get_default_qconfig, prepare

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = cls().eval()
        m.qconfig = get_default_qconfig("fbgemm")
        if isinstance(m, Wide):
            m.up.qconfig = default_qconfig
        p = prepare(m)
        p(torch.randn(4, 3, 8, 8) if cls is ConvNet else torch.randn(4, 3, 6, 6))
        return convert(p)


def wide_model(seed: int = 0) -> nn.Module:
    return static_model(seed, Wide)


def dynamic_model(cls: type[nn.Module] = Mlp, seed: int = 0) -> nn.Module:
    from torch.ao.quantization import quantize_dynamic

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(cls(), {nn.Linear, nn.LSTM}, dtype=torch.qint8)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Each producer's file: state dicts and whole modules, static and dynamic."""
    d = tmp_path_factory.mktemp("quantized")
    s, dyn, lstm, wide = static_model(), dynamic_model(), dynamic_model(WithLstm), wide_model()
    out = {}
    for name, obj in {
        "static_sd": s.state_dict(),
        "static_whole": s,
        "wide_sd": wide.state_dict(),
        "wide_whole": wide,
        "dynamic_sd": dyn.state_dict(),
        "dynamic_whole": dyn,
        "lstm_sd": lstm.state_dict(),
        "lstm_whole": lstm,
    }.items():
        out[name] = d / f"{name}.pth"
        torch.save(obj, out[name])
    return out


def _same(a: object, b: object) -> bool:
    """Equal as torch would use them: a quantized tensor's integers, scheme and parameters."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.is_quantized != b.is_quantized or a.dtype != b.dtype or a.shape != b.shape:
            return False
        if not a.is_quantized:
            return torch.equal(a, b)
        if a.qscheme() != b.qscheme() or not torch.equal(a.int_repr(), b.int_repr()):
            return False
        if a.qscheme() == torch.per_tensor_affine:
            return a.q_scale() == b.q_scale() and a.q_zero_point() == b.q_zero_point()
        return (
            torch.equal(a.q_per_channel_scales(), b.q_per_channel_scales())
            and torch.equal(a.q_per_channel_zero_points(), b.q_per_channel_zero_points())
            and a.q_per_channel_axis() == b.q_per_channel_axis()
        )
    return a == b


@pytest.mark.parametrize("name", ["static_sd", "static_whole", "dynamic_sd", "dynamic_whole"])
def test_quantized_weights_are_the_weights_with_float_model_counts(files, name) -> None:
    ckpt = open_checkpoint(files[name])
    assert weights_path(ckpt) == ()
    p = params_at(ckpt.root, ())
    assert p is not None
    # the float models' parameter counts: conv 108 + 4, fc 720 + 5; fc1 48 + 6, fc2 18
    assert p.weights == (837 if name.startswith("static") else 72)
    assert "qint8" in dict(p.dtypes)


def test_the_tree_shows_each_tensors_quantization(files) -> None:
    r = run_cli("inspect", str(files["static_sd"]), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    by_key = {c["key"]: c for c in doc["tree"]["children"]}
    w = by_key["conv.weight"]
    assert w["dtype"] == "qint8" and w["shape"] == [4, 3, 3, 3]
    parts = {c["key"]: c for c in w["children"]}
    assert parts["qscheme"]["value"] == "per_channel_affine" and parts["axis"]["value"] == 0
    assert parts["scale"]["kind"] == "tensor" and parts["scale"]["dtype"] == "float64"
    packed = by_key["fc._packed_params._packed_params"]
    assert [c["kind"] for c in packed["children"]] == ["tensor", "tensor"]
    assert doc["resume"]["weights"]["path"] == []
    dyn = run_cli("inspect", str(files["dynamic_sd"]), "--json")
    qw = json.loads(dyn.stdout)["tree"]["children"][3]["children"][0]
    assert {c["key"]: c["value"] for c in qw["children"]} == {
        "qscheme": "per_tensor_affine",
        "scale": pytest.approx(qw["children"][1]["value"]),
        "zero_point": 0,
    }


@pytest.mark.parametrize("name", sorted(["static_sd", "static_whole", "dynamic_sd",
                                          "dynamic_whole", "lstm_sd", "lstm_whole"]))  # fmt: skip
def test_benign_quantized_files_pass_fail_on_unsafe(files, name) -> None:
    r = run_cli("inspect", str(files[name]), "--fail-on-unsafe")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "unknown_callable" not in r.stdout  # torch.ScriptObject is recorded, not called


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("static_sd", static_model),
        ("static_whole", static_model),
        ("dynamic_sd", dynamic_model),
        ("dynamic_whole", dynamic_model),
        ("wide_sd", wide_model),
        ("wide_whole", wide_model),
    ],
)
def test_export_loads_strictly_into_a_freshly_quantized_model(files, tmp_path, name, make) -> None:
    out = tmp_path / "o.pth"
    r = run_cli("export", str(files[name]), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "verified" in r.stdout and "skipped" not in r.stderr
    got = torch.load(out, weights_only=True)
    truth = make().state_dict()
    assert sorted(got) == sorted(truth)
    for k, v in truth.items():
        assert _same(got[k], v), k
    fresh = make(seed=1)  # other weights, same architecture
    fresh.load_state_dict(got, strict=True)
    x = {"static": torch.randn(2, 3, 8, 8), "wide": torch.randn(2, 3, 6, 6)}.get(
        name.split("_")[0], torch.randn(2, 8)
    )
    assert torch.equal(fresh(x), make()(x))
    # "weights alone would be" is the export's exact size
    why = run_cli("why", str(files[name]), "--json")
    assert json.loads(why.stdout)["weights_only_bytes"] == out.stat().st_size


def test_a_cast_leaves_the_quantized_parts_alone(files, tmp_path) -> None:
    out = tmp_path / "bf16.pth"
    r = run_cli("export", str(files["static_sd"]), "-o", str(out), "--dtype", "bf16")
    assert r.returncode == 0, r.stderr
    got = torch.load(out, weights_only=True)
    assert got["conv.bias"].dtype == torch.float32 and got["fc.scale"].dtype == torch.float32
    static_model(seed=1).load_state_dict(got, strict=True)


def test_safetensors_is_refused_naming_pth(files, tmp_path) -> None:
    out = tmp_path / "o.safetensors"
    r = run_cli("export", str(files["static_sd"]), "-o", str(out))
    assert r.returncode == 2 and not out.exists()
    line = r.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "conv.weight is a quantized tensor" in line and "safetensors cannot hold" in line
    assert "-o NAME.pth" in line


@pytest.mark.parametrize("name", ["lstm_sd", "lstm_whole"])
def test_a_dynamic_lstm_is_shown_and_refused_by_name(files, tmp_path, name) -> None:
    """Its cell params are a C++ object that torch.load(weights_only=True) refuses even in
    torch's own state dict: shown with the tensors it holds, skipped by name on export."""
    ckpt = open_checkpoint(files[name])
    cell = next(n for _, n in _walk(ckpt.root) if n.type == "torch.classes.rnn.CellParamsBase")
    assert cell.safety == "safe"
    plan = make_plan(ckpt)
    assert [p[-1] for p, _ in plan.skipped] == ["param" if name == "lstm_whole" else
                                                 "lstm._all_weight_values.0.param"]  # fmt: skip
    assert not any("__state__" in it.name for it in plan.items)  # no invented keys
    r = run_cli("export", str(files[name]), "-o", str(tmp_path / "o.pth"))
    assert r.returncode == 0, r.stderr
    assert "CellParamsBase" in r.stderr and "weights_only=True" in r.stderr
    got = torch.load(tmp_path / "o.pth", weights_only=True)
    assert "fc._packed_params._packed_params" in got


def test_a_script_object_of_a_class_outside_torch_is_not_called_safe(tmp_path) -> None:
    """Hand-built: `torch.ScriptObject` BUILD with a class torch does not register."""
    pkl = (
        b"\x80\x02}X\x01\x00\x00\x00x"
        b"ctorch\nScriptObject\n)\x81"
        b"K\x01X\x0d\x00\x00\x00__torch__.Evt\x86b"
        b"s."
    )
    path = tmp_path / "so.pkl"
    path.write_bytes(pkl)
    ckpt = open_checkpoint(path)
    node = ckpt.root.child("x")
    assert node is not None and node.type == "Evt" and node.safety == "unknown"
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"\x80\x02ctorch\nScriptObject\n)\x81K\x01b.")
    r = run_cli("inspect", str(bad))
    assert r.returncode == 2 and "ScriptObject state" in r.stderr and "Traceback" not in r.stderr


def test_plain_non_dense_rules_hold_with_quantized_tensors_beside(tmp_path) -> None:
    """A plain dict with a per-tensor and a per-channel qtensor exports both as torch loads them."""
    q = torch.quantize_per_tensor(torch.randn(4), 0.1, 2, torch.quint8)
    qc = torch.quantize_per_channel(
        torch.randn(2, 3), torch.tensor([0.1, 0.2]), torch.tensor([0, 1]), 0, torch.qint8
    )
    src = tmp_path / "q.pt"
    torch.save({"q": q, "qc": qc, "w": torch.ones(2)}, src)
    out = tmp_path / "o.pth"
    r = run_cli("export", str(src), "-o", str(out), "--keep", ".")
    assert r.returncode == 0, r.stderr
    got = torch.load(out, weights_only=True)
    assert list(got) == ["q", "qc", "w"]
    assert _same(got["q"], q) and _same(got["qc"], qc)


def _walk(node, path=()):
    yield path, node
    for c in node.children:
        yield from _walk(c, (*path, c.key))


def test_why_offers_no_cast_of_a_quantized_models_scales(files) -> None:
    """Its float tensors are biases and (per-channel) scales, which `--dtype` leaves alone."""
    doc = json.loads(run_cli("why", str(files["static_sd"]), "--json").stdout)
    assert "float_weights" not in {f["kind"] for f in doc["findings"]}


class Emb(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)


def embedding_model(seed: int = 0) -> nn.Module:
    """A weight-only quantized Embedding (quint8, per-channel float qparams)."""
    from torch.ao.quantization import convert, float_qparams_weight_only_qconfig, prepare

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = Emb().eval()
        m.emb.qconfig = float_qparams_weight_only_qconfig
        return convert(prepare(m))


def test_a_quantized_embedding_state_dict_exports_and_its_whole_module_is_refused(
    tmp_path,
) -> None:
    m = embedding_model()
    sd, whole = tmp_path / "e_sd.pth", tmp_path / "e_whole.pth"
    torch.save(m.state_dict(), sd)
    torch.save(m, whole)
    out = tmp_path / "o.pth"
    r = run_cli("export", str(sd), "-o", str(out))
    assert r.returncode == 0, r.stderr
    got = torch.load(out, weights_only=True)
    w = got["emb._packed_params._packed_weight"]
    assert w.qscheme() == torch.per_channel_affine_float_qparams
    fresh = embedding_model(seed=1)
    fresh.load_state_dict(got, strict=True)
    ids = torch.tensor([1, 2, 3])
    assert torch.equal(fresh.emb(ids), m.emb(ids))
    # a whole module keeps them packed by C++ (EmbeddingPackedParamsBase): refused by name
    r = run_cli("export", str(whole), "-o", str(tmp_path / "w.pth"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "EmbeddingPackedParamsBase" in r.stderr and "state_dict()" in r.stderr
