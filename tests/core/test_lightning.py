"""Lightning `.ckpt` files: recognised, their parts labelled, weights and optimizers found.

The real files come from a real `lightning.Trainer.fit` of a few CPU steps in tmp; the old
(1.x / 0.x) ones are hand-made with `torch.save`, since installing old Lightning releases to
write them is not possible here.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch

from ckptui.analysis.frameworks import detect
from ckptui.analysis.roles import find_optimizers, weights_path
from ckptui.formats import open_checkpoint
from ckptui.report.json.inspect import checkpoint_json
from tests.conftest import TinyNet, run_cli, training_checkpoint

L = pytest.importorskip("lightning")


class TwoOptimizerNet(L.LightningModule):
    """Linear + BatchNorm + Linear, Adam on the body and SGD with momentum on the head, a StepLR:
    several optimizer states, a scheduler and buffers, as real training has."""

    def __init__(self, hidden: int = 8, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.enc = torch.nn.Linear(4, hidden)
        self.bn = torch.nn.BatchNorm1d(hidden)
        self.head = torch.nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(self.enc(x)))

    def training_step(self, batch, batch_idx: int) -> None:
        body, head = self.optimizers()
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self(x), y)
        body.zero_grad()
        head.zero_grad()
        self.manual_backward(loss)
        body.step()
        head.step()
        self.lr_schedulers().step()
        self.log("train_loss", loss)

    def configure_optimizers(self):
        body = torch.optim.Adam([*self.enc.parameters(), *self.bn.parameters()], lr=self.hparams.lr)
        head = torch.optim.SGD(self.head.parameters(), lr=0.1, momentum=0.9)
        return [body, head], [torch.optim.lr_scheduler.StepLR(body, 1)]


def lightning_checkpoint(folder: Path) -> tuple[Path, TwoOptimizerNet]:
    """Train TwoOptimizerNet for 3 steps on CPU; return the `.ckpt` ModelCheckpoint wrote."""
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,)))
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=True,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=folder,
        callbacks=[L.pytorch.callbacks.EarlyStopping("train_loss", check_on_train_epoch_end=True)],
    )
    model = TwoOptimizerNet()
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=4))
    (ckpt,) = (folder / "checkpoints").glob("*.ckpt")
    return ckpt, model


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TwoOptimizerNet, dict]:
    """(file, trained module, the file as torch.load reads it: the oracle)."""
    path, model = lightning_checkpoint(tmp_path_factory.mktemp("lightning"))
    return path, model, torch.load(path, weights_only=False)


REAL_LABELS = {
    "epoch": "epoch at save time",
    "global_step": "optimizer steps at save time",
    "pytorch-lightning_version": "Lightning version",
    "state_dict": "model weights",
    "loops": "loop progress",
    "callbacks": "state of EarlyStopping, ModelCheckpoint",
    "optimizer_states": "optimizer states",
    "lr_schedulers": "LR schedulers",
    "hparams_name": "hyper-parameters argument name",
    "hyper_parameters": "hyper-parameters",
}


def test_real_file_is_recognised_with_its_version_and_progress(real) -> None:
    path, _, loaded = real
    fw = detect(open_checkpoint(str(path)))
    assert fw is not None and fw.name == "lightning"
    assert fw.version == loaded["pytorch-lightning_version"] == L.__version__
    assert dict(fw.progress) == {"epoch": loaded["epoch"], "step": loaded["global_step"]}
    assert loaded["global_step"] > 0  # two optimizers stepped: a real count, not a default
    assert fw.heading() == f"Lightning {L.__version__} · epoch 0, step {loaded['global_step']}"


def test_every_part_of_the_real_file_is_labelled(real) -> None:
    path, _, loaded = real
    fw = detect(open_checkpoint(str(path)))
    assert fw is not None
    labels = {p.path: p.label for p in fw.parts}
    # every top-level key Lightning wrote has a label, and these are the labels
    assert set(labels) == {(k,) for k in loaded}
    assert {k[0]: v for k, v in labels.items()} == REAL_LABELS
    assert [p.path for p in fw.parts] == [(k,) for k in loaded]  # in the file's order


def test_weights_are_the_state_dict_and_each_optimizer_is_found(real) -> None:
    path, _, loaded = real
    ckpt = open_checkpoint(str(path))
    assert weights_path(ckpt) == ("state_dict",)
    found = find_optimizers(ckpt.root)
    assert [o.path for o in found] == [
        ("optimizer_states", i) for i in range(len(loaded["optimizer_states"]))
    ]
    assert len(found) == 2
    assert [o.kind for o in found] == ["Adam-style", "SGD with momentum"]
    assert set(found[0].state_keys) == set(loaded["optimizer_states"][0]["state"][0])


def test_why_json_groups_the_parts(real) -> None:
    path, _, loaded = real
    r = run_cli("why", "--json", str(path))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    groups = {tuple(g["path"]): (g["role"], g["bytes"]) for g in doc["groups"]}
    assert doc["weights_path"] == ["state_dict"]

    def nbytes(obj) -> int:
        if isinstance(obj, torch.Tensor):
            return obj.untyped_storage().nbytes()
        if isinstance(obj, dict):
            return sum(nbytes(v) for v in obj.values())
        if isinstance(obj, list | tuple):
            return sum(nbytes(v) for v in obj)
        return 0

    assert groups[("state_dict",)] == ("weights", nbytes(loaded["state_dict"]))
    assert groups[("optimizer_states",)] == ("optimizer", nbytes(loaded["optimizer_states"]))
    assert groups[("lr_schedulers",)] == ("scheduler", 0)
    # ModelCheckpoint keeps a tensor (kth_value): the callbacks are one group, not split up
    assert groups[("callbacks",)] == ("other_tensors", nbytes(loaded["callbacks"]))
    assert not [p for p in groups if len(p) > 1]
    assert groups[("loops",)][0] == groups[("hyper_parameters",)][0] == "metadata"
    (opt,) = [f for f in doc["findings"] if f["kind"] == "optimizer_state"]
    assert opt["paths"] == [["optimizer_states"]]
    assert opt["saving_bytes"] == nbytes(loaded["optimizer_states"])


def test_default_export_loads_strictly_into_the_lightning_module(real, tmp_path: Path) -> None:
    path, trained, _ = real
    out = tmp_path / "w.pth"
    r = run_cli("export", str(path), "-o", str(out))
    assert r.returncode == 0, r.stderr
    weights = torch.load(out, weights_only=True)
    fresh = TwoOptimizerNet()
    fresh.load_state_dict(weights, strict=True)  # raises on a missing or unexpected key
    for name, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name


def test_inspect_shows_the_labels_and_the_framework(real) -> None:
    path, _, loaded = real
    r = run_cli("inspect", "--depth", "1", str(path))
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert "state_dict OrderedDict · 9 keys · 368 B — model weights" in text
    assert "optimizer_states list · 2 items" in text and "— optimizer states" in text
    assert f"Lightning {L.__version__} · epoch 0, step {loaded['global_step']}" in text
    r = run_cli("inspect", "--json", str(path))
    doc = json.loads(r.stdout)
    assert doc["framework"]["name"] == "lightning"
    assert doc["framework"]["version"] == L.__version__
    labels = {tuple(p["path"]): p["label"] for p in doc["framework"]["parts"]}
    assert labels[("callbacks",)] == REAL_LABELS["callbacks"]
    assert doc["framework"]["optimizers"] == [["optimizer_states", 0], ["optimizer_states", 1]]
    assert {
        "path",
        "format",
        "file_bytes",
        "tree",
        "tensors",
        "findings",
        "storages",
        "info",
    } < set(doc)


# -- old files, hand-made ----------------------------------------------------------------------


def _class_named(module: str, name: str, monkeypatch: pytest.MonkeyPatch) -> type:
    """A class pickled as `module.name`, the way Lightning < 1.5 keyed `callbacks` by type."""
    mod = types.ModuleType(module)
    cls = type(name, (), {"__module__": module})
    setattr(mod, name, cls)
    monkeypatch.setitem(sys.modules, module, mod)
    return cls


def old_lightning_checkpoint(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Hand-made: the layout Lightning 1.4 wrote (callbacks keyed by class, an AMP scaler state),
    built from a real model, optimizer and scheduler step."""
    early = _class_named("pytorch_lightning.callbacks.early_stopping", "EarlyStopping", monkeypatch)
    chk = _class_named(
        "pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint", monkeypatch
    )
    train = training_checkpoint("sgd")
    return {
        "epoch": 7,
        "global_step": 1200,
        "pytorch-lightning_version": "1.4.9",
        "state_dict": train["model"],
        "callbacks": {
            chk: {"best_model_score": torch.tensor(0.25), "best_model_path": "a.ckpt"},
            early: {"wait_count": 1, "patience": 3},
        },
        "optimizer_states": [train["optimizer"]],
        "lr_schedulers": [train["scheduler"]],
        "native_amp_scaling_state": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 3},
        "hparams_name": "hparams",
        "hyper_parameters": {"lr": 0.1},
    }


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
def test_old_lightning_file_is_recognised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, legacy: bool
) -> None:
    p = tmp_path / "old.ckpt"
    made = old_lightning_checkpoint(monkeypatch)
    torch.save(made, p, _use_new_zipfile_serialization=not legacy)
    ckpt = open_checkpoint(str(p))
    assert ckpt.format == ("torch-legacy" if legacy else "torch-zip")
    fw = detect(ckpt)
    assert fw is not None and fw.version == "1.4.9"
    assert fw.heading() == "Lightning 1.4.9 · epoch 7, step 1,200"
    labels = {p.path[0]: p.label for p in fw.parts}
    assert labels["callbacks"] == "state of ModelCheckpoint, EarlyStopping"
    assert labels["native_amp_scaling_state"] == "AMP grad scaler state"
    assert labels["state_dict"] == "model weights"
    assert set(labels) == set(made)  # every key
    assert weights_path(ckpt) == ("state_dict",)
    assert [(o.path, o.kind) for o in find_optimizers(ckpt.root)] == [
        (("optimizer_states", 0), "SGD with momentum")
    ]


def test_lightning_2_precision_state_and_pre_0_10_callback_keys(tmp_path: Path) -> None:
    """Hand-made: Lightning 2 keys the precision plugin's state by its class name; 0.9 kept
    ModelCheckpoint's score at the top level."""
    p = tmp_path / "mixed.ckpt"
    sd = TinyNet().state_dict()
    torch.save(
        {
            "pytorch-lightning_version": "2.6.0",
            "state_dict": sd,
            "MixedPrecision": {"scale": 1024.0, "growth_factor": 2.0, "_growth_tracker": 0},
            "HalfPrecision": {"something": 1},
            "checkpoint_callback_best_model_score": torch.tensor(0.5),
            "callbacks": {
                "ModelCheckpoint{'monitor': 'val/acc', 'mode': 'max'}": {"dirpath": "/x"},
                "EarlyStopping{'monitor': 'val/acc', 'mode': 'max'}": {"wait_count": 0},
                "mypkg.SWAState": {"n": 2},
            },
            "my_extra": 3,
        },
        p,
    )
    fw = detect(open_checkpoint(str(p)))
    assert fw is not None
    labels = {p.path[0]: p.label for p in fw.parts}
    assert labels["MixedPrecision"] == "AMP grad scaler state"
    assert labels["HalfPrecision"] == "precision plugin state"
    assert labels["checkpoint_callback_best_model_score"] == "ModelCheckpoint state (before 0.10)"
    assert labels["callbacks"] == "state of ModelCheckpoint, EarlyStopping, +1 more"
    assert "my_extra" not in labels  # the user's own keys stay unlabelled
    assert fw.heading() == "Lightning 2.6.0"  # no counters in the file: none shown


# -- no false positives ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: {"state_dict": TinyNet().state_dict(), "epoch": 3, "global_step": 10},
        lambda: {
            "state_dict": TinyNet().state_dict(),
            "optimizer_states": [training_checkpoint()["optimizer"]],
            "lr_schedulers": [],
            "callbacks": {},
        },
        lambda: training_checkpoint(),
        lambda: TinyNet().state_dict(),
        lambda: [{"pytorch-lightning_version": "2.0.0"}],
        lambda: {"meta": {"pytorch-lightning_version": "2.0.0"}, "state_dict": {}},
    ],
    ids=["state_dict-and-counters", "lightning-like-keys", "training", "flat", "list", "nested"],
)
def test_other_checkpoints_are_not_lightning(tmp_path: Path, make) -> None:
    p = tmp_path / "c.pt"
    torch.save(make(), p)
    ckpt = open_checkpoint(str(p))
    assert detect(ckpt) is None
    assert checkpoint_json(ckpt)["framework"] is None


def test_the_layout_beats_the_heuristics(tmp_path: Path) -> None:
    """Hand-made: a module with extra state (`get_extra_state`) puts plain values among the
    weights, too many for a state dict by shape alone, and an optimizer whose state dict is not
    torch's `state`/`param_groups`: Lightning's layout still says what each is."""
    p = tmp_path / "extra.ckpt"
    torch.save(
        {
            "pytorch-lightning_version": "2.6.6",
            "state_dict": {
                "fc.weight": torch.ones(2, 2),
                "fc.bias": torch.ones(2),
                "fc._extra_state": {"fp8_meta": "v1"},
                "norm._extra_state": "calibrated",
            },
            "optimizer_states": [{"flat_state": torch.zeros(6), "loss_scale": 1.0}],
            "ema": {"fc.weight": torch.ones(2, 2), "fc.bias": torch.ones(2)},
        },
        p,
    )
    ckpt = open_checkpoint(str(p))
    assert weights_path(ckpt) == ("state_dict",)
    assert [(o.path, o.kind) for o in find_optimizers(ckpt.root)] == [
        (("optimizer_states", 0), "unknown optimizer")
    ]
