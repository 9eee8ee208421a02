"""Provides `resume_card`: can training resume from this checkpoint, and does its state agree?

Resuming needs more than weights: the optimizer's state (Adam's moments, momentum), the LR
scheduler's position, the loop counters, the AMP grad scaler and, for exact reproducibility, the
RNG states. Training scripts name these freely, so each is found by structure first (an
optimizer's `state` + `param_groups`, a scheduler's `last_epoch`, a GradScaler's `scale` +
`growth_factor`, `random.getstate()`'s 625-int tuple) and by a short list of common names second.
The card then cross-checks what it found: above all a scheduler whose `last_epoch` matches none of
the stored counters (epoch, iteration, global step, the optimizer's step, each +-1) -- the classic
sign of a scheduler re-created on resume without its state (`resume_checks`).

Its JSON form is `report.json.training.resume_json`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ckptui.analysis.frameworks import detect_root
from ckptui.analysis.index import tensor_totals
from ckptui.analysis.roles import (
    is_module,
    is_optimizer,
    is_scheduler_state,
    optimizers_of,
    weights_path,
)
from ckptui.analysis.training.optim_map import scalar_value
from ckptui.analysis.training.resume_checks import disagreements
from ckptui.core.tree import Checkpoint, KeyPath, Node, NodeKind

COUNTER_NAMES = {
    "epoch": "epoch", "epochs": "epoch", "cur_epoch": "epoch", "current_epoch": "epoch",
    "iteration": "iteration", "iter": "iteration", "iters": "iteration", "it": "iteration",
    "cur_iter": "iteration", "iterations": "iteration", "step": "step", "steps": "step",
    "global_step": "global_step", "num_updates": "global_step", "total_steps": "global_step",
    "_batches_that_stepped": "batches_that_stepped",
}  # fmt: skip
"""Counter keys (lower-cased) and the counter each one is; `iter` and `it` are iterations."""

COUNTER_HOMES = ("meta", "state", "train_state", "trainer_state", "training_state", "progress")
"""Containers (top level) that hold counters in common layouts (mmcv's `meta`: epoch, iter)."""

SCALER_NAMES = ("scaler", "grad_scaler", "amp_scaler", "scaler_state", "amp",
                "native_amp_scaling_state", "amp_scaling_state")  # fmt: skip

SCHEDULER_KINDS = (
    # (state keys that must all be present, kind); the first match wins
    (("_schedulers", "_milestones"), "SequentialLR"),
    (("_schedulers",), "ChainedScheduler"),
    (("mode", "best", "num_bad_epochs"), "ReduceLROnPlateau"),
    (("total_steps", "_schedule_phases"), "OneCycleLR"),
    (("total_size", "step_ratio"), "CyclicLR"),
    (("T_0", "T_mult"), "CosineAnnealingWarmRestarts"),
    (("T_max", "eta_min"), "CosineAnnealingLR"),
    (("milestones", "gamma"), "MultiStepLR"),
    (("step_size", "gamma"), "StepLR"),
    (("start_factor", "end_factor"), "LinearLR"),
    (("power", "total_iters"), "PolynomialLR"),
    (("factor", "total_iters"), "ConstantLR"),
    (("lr_lambdas",), "LambdaLR / MultiplicativeLR"),
    (("gamma",), "ExponentialLR"),
)
"""Schedulers told apart by the attributes their `state_dict()` keeps (torch.optim.lr_scheduler)."""

_VERSION = re.compile(r"(^|[_\-])version$", re.IGNORECASE)
_SKIP_DEPTH = 4


@dataclass(frozen=True, slots=True)
class Found:
    """One thing the card found: where it is, what it is, and a value worth showing."""

    path: KeyPath
    kind: str
    value: Any = None


@dataclass(frozen=True, slots=True)
class ResumeCard:
    """Everything training needs to resume, as found in one checkpoint."""

    resumable: bool
    reason: str
    weights: dict[str, Any] | None
    optimizers: tuple[dict[str, Any], ...]
    schedulers: tuple[Found, ...]
    """`value` is the scheduler's `last_epoch`."""
    counters: tuple[Found, ...]
    """`kind` is the counter (`epoch`, `iteration`, `global_step`, ...); `value` an int."""
    scaler: Found | None
    """`value` is the current loss scale; `kind` is `empty` for a disabled scaler's `{}`."""
    rng: tuple[Found, ...]
    versions: tuple[Found, ...]
    """`kind` is the key (`pytorch-lightning_version`), `value` the version string."""
    warnings: tuple[str, ...]


def resume_card(ckpt: Checkpoint) -> ResumeCard:
    """What `ckpt` holds for resuming training, and where its parts disagree.

    Returns:
        A `ResumeCard`; `resumable` needs model weights and an optimizer state.
    """
    root = ckpt.root
    wpath = weights_path(ckpt)
    weights = _weights(ckpt, wpath)
    optimizers = []
    opt_paths: list[KeyPath] = []
    for info in optimizers_of(ckpt):
        node = ckpt.find(info.path)
        groups = node.child("param_groups") if node is not None else None
        state = node.child("state") if node is not None else None
        step = None
        for entry in state.children if state is not None else ():
            if entry.child("step") is not None:
                step = scalar_value(ckpt, entry.child("step"))  # type: ignore[arg-type]
                break
        n_groups = len(groups.children) if groups is not None else 0
        opt_paths.append(info.path)
        optimizers.append(
            {"path": list(info.path), "kind": info.kind, "step": step, "param_groups": n_groups}
        )
    skip = {p for p in (wpath, *opt_paths) if p is not None}
    schedulers, scaler, rng = _scan(root, skip)
    counters = _counters(root)
    versions = tuple(
        Found(p, p[-1], v)
        for p, n in _version_keys(root, 2, skip)
        if (v := _version(n)) is not None
    )
    warnings = disagreements(ckpt, schedulers, counters, optimizers, opt_paths)
    if weights is None:
        resumable, reason = False, "no model weights found"
    elif not optimizers:
        resumable = False
        reason = (
            "weights only: no optimizer state, so training would restart its optimizer "
            "(momentum, Adam moments) from scratch; fine for inference or fine-tuning"
        )
    else:
        resumable = True
        missing = [n for n, have in (("scheduler", schedulers), ("epoch/iteration counter",
                                     counters)) if not have]  # fmt: skip
        reason = "model weights and optimizer state present"
        if missing:
            reason += f" (no {' or '.join(missing)} found)"
    return ResumeCard(
        resumable, reason, weights, tuple(optimizers), schedulers, counters, scaler, rng,
        versions, tuple(warnings),
    )  # fmt: skip


def _weights(ckpt: Checkpoint, wpath: KeyPath | None) -> dict[str, Any] | None:
    if wpath is None:
        return None
    node = ckpt.find(wpath)
    if node is None:
        return None
    nbytes, count, gone = tensor_totals(ckpt, node)
    kind = (
        "module" if is_module(node) else "tensor" if node.kind is NodeKind.TENSOR else "state_dict"
    )
    out = {"path": list(wpath), "kind": kind, "tensors": count, "bytes": nbytes}
    if gone:  # a deleted shard's tensors: the weights are still the weights, less these
        out["missing"] = gone
    return out


_VERSION_ENDS = frozenset("nN\n")
"""The last characters a `_VERSION` key can have: `n`, `N` (no other character matches them
ignoring case) or the newline `$` may stand before. Asked before the regex, for the 100,000
keys of a flat state dict."""


def _version(node: Node) -> str | int | None:
    """A version string, also when pickled as an object (`torch.__version__` is a TorchVersion,
    a str subclass: its placeholder keeps the string as its one argument)."""
    if node.kind is NodeKind.OBJECT:
        args = node.child("__args__")
        node = args.children[0] if args is not None and len(args.children) == 1 else node
    v = node.value if node.kind is NodeKind.VALUE else None
    return v if isinstance(v, str | int) and not isinstance(v, bool) else None


def _version_keys(root: Node, depth: int, skip: set[KeyPath]) -> list[tuple[KeyPath, Node]]:
    """(path, node) down to `depth` whose key names a version (`_VERSION`), not entering
    `skip`ped subtrees."""
    out: list[tuple[KeyPath, Node]] = []
    stack: list[tuple[KeyPath, Node]] = [((), root)]
    mapping, obj = NodeKind.MAPPING, NodeKind.OBJECT
    ends, search = _VERSION_ENDS, _VERSION.search
    while stack:
        path, node = stack.pop()
        deeper = len(path) + 1 < depth
        # the children worth a look, by a comprehension: a 100,000-key root keeps only a few
        # (the test below, asked again of those; the key first)
        few = [
            c
            for c in node.children
            if (isinstance(c.key, str) and c.key[-1:] in ends and search(c.key) is not None)
            or (deeper and (c.kind is mapping or c.kind is obj))
        ]
        for c in reversed(few):
            key = c.key
            wanted = isinstance(key, str) and key[-1:] in ends and search(key) is not None
            enter = deeper and (c.kind is mapping or c.kind is obj)
            p = (*path, key)
            if p in skip:
                continue
            if wanted:
                out.append((p, c))
            if enter:
                stack.append((p, c))
    out.sort(key=lambda pn: len(pn[0]))  # top-level facts first
    return out


def _counters(root: Node) -> tuple[Found, ...]:
    """Loop counters at the top level, in a `COUNTER_HOMES` container, and Lightning's loops."""
    places: list[tuple[KeyPath, Node]] = [((), root)]
    places += [
        ((c.key,), c)
        for c in root.children
        if c.children and isinstance(c.key, str) and c.key.lower() in COUNTER_HOMES
    ]
    if detect_root(root) is not None:  # Lightning: batches the scheduler could have stepped on
        loop = ("loops", "fit_loop", "epoch_loop.state_dict")
        node: Node | None = root
        for k in loop:
            node = node.child(k) if node is not None else None
        if node is not None:
            places.append((loop, node))
    out = []
    value = NodeKind.VALUE
    for base, node in places:
        for c in node.children:
            if c.kind is not value or type(c.value) is not int:
                continue  # asked first: a state dict's 100,000 tensors are not counters
            name = COUNTER_NAMES.get(c.key.lower()) if isinstance(c.key, str) else None
            if name:
                out.append(Found((*base, c.key), name, c.value))
    return tuple(out)


def _scan(
    root: Node, skip: set[KeyPath]
) -> tuple[tuple[Found, ...], Found | None, tuple[Found, ...]]:
    """Schedulers, the grad scaler and RNG states, outside the weights and optimizers."""
    schedulers: list[Found] = []
    scaler: Found | None = None
    rng: list[Found] = []
    stack: list[tuple[KeyPath, Node]] = [((), root)]
    value, ref, tensor = NodeKind.VALUE, NodeKind.REF, NodeKind.TENSOR
    while stack:
        path, node = stack.pop()
        name = str(path[-1]).lower() if path else ""
        if path and is_scheduler_state(name, node):
            last = node.child("last_epoch")
            epoch = last.value if last is not None and type(last.value) is int else None
            schedulers.append(Found(path, _scheduler_kind(node), epoch))
            continue
        if path and scaler is None and _is_scaler(name, node):
            scale = node.child("scale") or node.child("loss_scale")
            v = scale.value if scale is not None and isinstance(scale.value, float | int) else None
            empty = node.kind is NodeKind.MAPPING and not node.children
            scaler = Found(path, "empty" if empty else "scaler", v)
            continue
        kind = _rng_kind(path, node) if path else None
        if kind is not None:
            rng.append(Found(path, kind))
            continue
        if len(path) < _SKIP_DEPTH and not is_optimizer(node):
            for c in reversed(node.children):
                # A childless value or non-byte tensor is none of the three and holds nothing:
                # left out before its path is made (a 100,000-tensor state dict, issue 16).
                # A childless REF (issue 21: a list of a million) is none of them either: a
                # scheduler or scaler is a mapping or object, an RNG state a sequence or tensor.
                # (`_byte_tensor` inlined: this runs per child of a 100,000-key root.)
                kind, t = c.kind, c.value
                if not c.children and (
                    kind is value
                    or kind is ref
                    or (kind is tensor and (t is None or t.dtype != "uint8" or len(t.shape) != 1))
                ):
                    continue
                p = (*path, c.key)
                if p not in skip:
                    stack.append((p, c))
    return tuple(schedulers), scaler, tuple(rng)


def _scheduler_kind(node: Node) -> str:
    keys = {c.key for c in node.children}
    return next((k for need, k in SCHEDULER_KINDS if keys.issuperset(need)), "LR scheduler")


def _is_scaler(name: str, node: Node) -> bool:
    """torch.amp.GradScaler's state (`scale`, `growth_factor`, ...; `{}` when disabled), apex's
    `loss_scaler0`, or Lightning 2's `MixedPrecision` plugin state."""
    if node.kind is not NodeKind.MAPPING:
        return False
    if node.child("scale") is not None and node.child("growth_factor") is not None:
        return True
    return name in (s.lower() for s in SCALER_NAMES) or (
        name.endswith("precision") and node.child("scale") is not None
    )


def _rng_kind(path: KeyPath, node: Node) -> str | None:
    """python / numpy / torch / cuda, from the RNG state's own shape (names only break ties)."""
    kind = node.kind
    if kind is NodeKind.VALUE or (kind is NodeKind.TENSOR and not _byte_tensor(node)):
        return None  # the common leaves, decided before the path is joined into a name
    name = " ".join(str(k) for k in path).lower()
    ch = node.children
    if node.kind is NodeKind.SEQUENCE:
        # random.getstate(): (3, (625 ints), gauss_next)
        if len(ch) == 3 and ch[0].value == 3 and len(ch[1].children) == 625:
            return "python"
        # numpy.random.get_state(): ('MT19937', keys, pos, has_gauss, cached_gaussian)
        if len(ch) == 5 and ch[0].value == "MT19937":
            return "numpy"
        # torch.cuda.get_rng_state_all(): one uint8 tensor per device
        if ch and "cuda" in name and all(_byte_tensor(c) or c.kind is NodeKind.REF for c in ch):
            return "cuda"
    if node.kind is NodeKind.MAPPING and node.child("bit_generator") is not None:
        return "numpy"  # Generator.bit_generator.state / get_state(legacy=False)
    if _byte_tensor(node) and ("rng" in name or "random" in name or "seed" in name
                               or name.endswith(("cpu", "cuda"))):  # fmt: skip
        return "cuda" if "cuda" in name or "gpu" in name else "torch"
    return None


def _byte_tensor(node: Node) -> bool:
    t = node.tensor
    return t is not None and t.dtype == "uint8" and len(t.shape) == 1
