"""Provides `detect`: which training framework wrote a checkpoint, and what its parts are for.

Frameworks save their own fixed layout around the model's weights: Lightning's `.ckpt` is a dict
with `pytorch-lightning_version`, `state_dict`, `optimizer_states`, `lr_schedulers`, `callbacks`,
`loops`, ... Knowing the layout lets the browser label each part, the header name the framework
and its version, and the size breakdown and the exporter go straight to the weights and the
optimizers instead of guessing from names. Detection looks only at the root's children (and one
level into a few of them), so it costs next to nothing on every open.

Each framework is one `_detect_*` function in `_DETECTORS`; a DeepSpeed or Hugging Face one can
join them without touching the callers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ckptui.core.tree import Checkpoint, KeyPath, Node, NodeKind

PartKind = Literal["weights", "optimizers", "schedulers", "state"]
"""What a part holds, as far as the size breakdown and the exporter care: the model's weights, a
list of optimizer state dicts, a list of scheduler state dicts, or other framework state."""


@dataclass(frozen=True, slots=True)
class FrameworkPart:
    """One labelled part of a framework's checkpoint."""

    path: KeyPath
    label: str
    """What it is for, for people: `model weights`, `state of ModelCheckpoint`."""
    kind: PartKind = "state"


@dataclass(frozen=True, slots=True)
class Framework:
    """A framework recognised in a checkpoint."""

    name: str
    """Stable identifier: `lightning`."""
    title: str
    """Human name: `Lightning`."""
    version: str | None
    """The framework's version recorded in the file, when it records one."""
    parts: tuple[FrameworkPart, ...]
    """Labelled parts, in tree order."""
    optimizers: tuple[KeyPath, ...] = ()
    """Each optimizer state dict the framework saved (entries of Lightning's `optimizer_states`)."""
    progress: tuple[tuple[str, int], ...] = ()
    """Training counters worth a glance: (`epoch`, 3), (`step`, 12000)."""

    @property
    def weights(self) -> KeyPath | None:
        """The part holding the model's weights, if the file has one."""
        return next((p.path for p in self.parts if p.kind == "weights"), None)

    def label(self, path: KeyPath) -> str | None:
        """The label of the part at `path`, or None."""
        return next((p.label for p in self.parts if p.path == path), None)

    def heading(self) -> str:
        """`Lightning 2.6.6 · epoch 3, step 12,000`."""
        out = self.title + (f" {self.version}" if self.version else "")
        if self.progress:
            out += " · " + ", ".join(f"{name} {value:,}" for name, value in self.progress)
        return out


def detect(ckpt: Checkpoint) -> Framework | None:
    """The framework that wrote `ckpt`, or None for a plain checkpoint."""
    return detect_root(ckpt.root)


def detect_root(root: Node) -> Framework | None:
    """The framework whose layout the tree below `root` has, or None."""
    if root.kind is not NodeKind.MAPPING:
        return None
    for detector in _DETECTORS:
        found = detector(root)
        if found is not None:
            return found
    return None


# -- Lightning ---------------------------------------------------------------------------------

LIGHTNING_VERSION_KEY = "pytorch-lightning_version"

_LIGHTNING_LABELS: dict[str, tuple[str, PartKind]] = {
    "state_dict": ("model weights", "weights"),
    "optimizer_states": ("optimizer states", "optimizers"),
    "lr_schedulers": ("LR schedulers", "schedulers"),
    "hyper_parameters": ("hyper-parameters", "state"),
    "hparams_name": ("hyper-parameters argument name", "state"),
    "hparams_type": ("type of the hyper-parameters", "state"),
    "hparams": ("hyper-parameters (before 0.8)", "state"),
    "datamodule_hyper_parameters": ("datamodule hyper-parameters", "state"),
    "datamodule_hparams_name": ("datamodule hyper-parameters argument name", "state"),
    "datamodule_hparams_type": ("type of the datamodule hyper-parameters", "state"),
    "loops": ("loop progress", "state"),
    "epoch": ("epoch at save time", "state"),
    "global_step": ("optimizer steps at save time", "state"),
    LIGHTNING_VERSION_KEY: ("Lightning version", "state"),
    "legacy_pytorch-lightning_version": ("Lightning version before migration", "state"),
    "native_amp_scaling_state": ("AMP grad scaler state", "state"),
    "amp_scaling_state": ("AMP grad scaler state (apex)", "state"),
    # Before 0.10 the two built-in callbacks kept their state at the top level.
    "checkpoint_callback_best_model_score": ("ModelCheckpoint state (before 0.10)", "state"),
    "checkpoint_callback_best_model_path": ("ModelCheckpoint state (before 0.10)", "state"),
    "checkpoint_callback_best": ("ModelCheckpoint state (before 0.10)", "state"),
    "early_stop_callback_wait": ("EarlyStopping state (before 0.10)", "state"),
    "early_stop_callback_patience": ("EarlyStopping state (before 0.10)", "state"),
}
"""Lightning's top-level keys (see its `_CheckpointConnector.dump_checkpoint` and migrations)."""

CALLBACK_NAMES_SHOWN = 2
"""Callback class names a `callbacks` label lists before `+N more`."""


def _detect_lightning(root: Node) -> Framework | None:
    version_node = root.child(LIGHTNING_VERSION_KEY)
    if version_node is None:
        return None
    version = version_node.value if isinstance(version_node.value, str) else version_node.text
    parts: list[FrameworkPart] = []
    optimizers: tuple[KeyPath, ...] = ()
    progress: list[tuple[str, int]] = []
    for c in root.children:
        key = c.key
        if not isinstance(key, str):
            continue
        path = (key,)
        known = _LIGHTNING_LABELS.get(key)
        if key == "callbacks" and c.children:
            parts.append(FrameworkPart(path, _callbacks_label(c)))
        elif key == "callbacks":
            parts.append(FrameworkPart(path, "callback states"))
        elif key == "state_dict" and c.kind not in (NodeKind.MAPPING, NodeKind.OBJECT):
            continue  # not a module's state dict: leave it unlabelled
        elif known is not None:
            parts.append(FrameworkPart(path, *known))
            if known[1] == "optimizers" and c.kind is NodeKind.SEQUENCE:
                optimizers = tuple((key, e.key) for e in c.children if e.kind is NodeKind.MAPPING)
        elif key.endswith("Precision") and c.kind is NodeKind.MAPPING:
            # Lightning 2 keys the precision plugin's state by its class name (`MixedPrecision`).
            scaler = c.child("scale") is not None
            parts.append(
                FrameworkPart(path, "AMP grad scaler state" if scaler else "precision plugin state")
            )
        if key in ("epoch", "global_step") and type(c.value) is int:
            progress.append(("epoch" if key == "epoch" else "step", c.value))
    return Framework("lightning", "Lightning", version, tuple(parts), optimizers, tuple(progress))


def _callbacks_label(node: Node) -> str:
    """`state of ModelCheckpoint, EarlyStopping`, from the keys Lightning uses (short: the
    row reads `callbacks  dict · 2 keys · 8 B — state of ...` and must fit 80 columns).

    Lightning 1.5+ keys each callback by `ClassName{'monitor': ..., ...}`; earlier versions by
    the class itself (a global such as `pytorch_lightning.callbacks.ModelCheckpoint`).
    """
    names: list[str] = []
    for c in node.children:
        if not isinstance(c.key, str):
            continue
        name = c.key.split("{", 1)[0].rsplit(".", 1)[-1].strip()
        if name and name not in names:
            names.append(name)
    if not names:
        return "callback states"
    shown = ", ".join(names[:CALLBACK_NAMES_SHOWN])
    more = len(names) - CALLBACK_NAMES_SHOWN
    return f"state of {shown}{f', +{more} more' if more > 0 else ''}"


_DETECTORS = (_detect_lightning,)
"""Tried in order; the first that recognises the root wins."""
