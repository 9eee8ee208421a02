"""Provides what each part of a checkpoint is for: weights, optimizer state, scheduler, copies.

Training scripts name things freely, so detection combines names (`model`, `state_dict`,
`optimizer`, `ema`) with structure (an optimizer's `state` + `param_groups`, a scheduler's
`last_epoch`, a mapping whose leaves are tensors). The size breakdown and the exporter both start
from `weights_path`: the subtree a weights-only file would keep.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from ckptui.analysis.frameworks import Framework, detect_root
from ckptui.analysis.index import bytes_below
from ckptui.core.tree import Checkpoint, KeyPath, Node, NodeKind


class Role(str, enum.Enum):
    """What a subtree of a checkpoint holds."""

    WEIGHTS = "weights"
    OPTIMIZER = "optimizer"
    SCHEDULER = "scheduler"
    WEIGHTS_COPY = "weights_copy"
    """EMA / SWA / teacher copies and other state-dict-shaped mappings besides the weights."""
    OTHER_TENSORS = "other_tensors"
    METADATA = "metadata"
    """Everything without tensors: epoch, args, config, RNG state..."""


ROLE_LABELS = {
    Role.WEIGHTS: "model weights",
    Role.OPTIMIZER: "optimizer state",
    Role.SCHEDULER: "scheduler",
    Role.WEIGHTS_COPY: "EMA / weight copies",
    Role.OTHER_TENSORS: "other tensors",
    Role.METADATA: "metadata",
}

WEIGHT_KEYS = (
    "state_dict", "model_state_dict", "model_state", "model", "module", "net", "network",
    "weights", "params", "generator", "model_ema", "state_dict_ema", "ema_model", "ema",
)  # fmt: skip
"""Keys that hold a model's weights, most likely first; EMA copies only when nothing else is."""

_COPY_NAME = re.compile(
    r"(^|[_\-.])(ema|swa|averaged?|teacher|shadow|target)([_\-.]|$)|ema$", re.IGNORECASE
)
_OPTIM_NAME = re.compile(r"optim", re.IGNORECASE)
_SCHED_NAME = re.compile(r"sched", re.IGNORECASE)

OPTIMIZER_KINDS = (
    # (state keys that must all be present, name); the first match wins
    (("exp_avg", "exp_avg_sq", "max_exp_avg_sq"), "Adam-style (AMSGrad)"),
    (("exp_avg", "exp_avg_sq"), "Adam-style"),
    (("exp_avg", "exp_inf"), "Adamax"),
    (("square_avg", "acc_delta"), "Adadelta"),
    (("square_avg",), "RMSprop"),
    (("momentum_buffer",), "SGD with momentum"),
    (("sum",), "Adagrad"),
    (("exp_avg",), "Lion-style"),
    (("ax", "eta", "mu"), "ASGD"),
    (("prev", "step_size"), "Rprop"),
)


@dataclass(frozen=True, slots=True)
class OptimizerInfo:
    """An optimizer's state dict found in the checkpoint."""

    path: KeyPath
    kind: str
    """`Adam-style`, `SGD with momentum`, ... or `unknown optimizer`."""
    state_keys: tuple[str, ...]
    """Per-parameter state entries seen (`exp_avg`, `exp_avg_sq`, `step`)."""


def tensor_leaves(node: Node) -> tuple[int, int]:
    """(tensors, other leaves) below a node, through containers."""
    tensors = others = 0
    stack = [node]
    while stack:
        n = stack.pop()
        if n.kind is NodeKind.TENSOR:
            tensors += 1
        elif n.children:
            stack.extend(n.children)
        elif n.kind is not NodeKind.REF:
            others += 1
    return tensors, others


def is_state_dict(node: Node) -> bool:
    """A mapping of tensors: its entries are tensors (or mappings of tensors), bar a few values.

    Up to one entry in ten may be a plain value (a `version` counter; safetensors'
    `__metadata__` is ignored), so a training checkpoint's root (weights + optimizer + epoch) is not one.
    """
    if node.kind is not NodeKind.MAPPING or not node.children:
        return False
    if is_optimizer(node) or is_scheduler(node):
        return False
    tensors = others = missing = 0
    tensor, ref = NodeKind.TENSOR, NodeKind.REF  # locals: this runs per child of 100,000
    for c in node.children:
        kind = c.kind
        if kind is tensor or kind is ref:
            tensors += kind is tensor
        elif c.key == "__metadata__" or c.type == "torch.dtype":
            continue  # safetensors' string metadata; a quantized Linear's `_packed_params.dtype`
        elif is_packed_params(c):
            tensors += 1  # torch.ao's `_packed_params` (weight, bias) pair, or a packed object
        elif c.kind is NodeKind.VALUE and c.type == "missing":
            missing += 1  # a tensor in a deleted shard: still one of the weights
        elif c.kind is NodeKind.VALUE:
            others += 1
        elif is_state_dict(c):
            tensors += 1
        else:
            return False
    return tensors > 0 and others * 9 <= tensors + missing


def is_packed_params(node: Node) -> bool:
    """A quantized module's packed weights as its state dict holds them: the `(weight, bias)`
    tuple of `_packed_params` (bias may be None), or a torch C++ object holding tensors (a
    dynamic LSTM's `CellParamsBase`)."""
    if node.kind is NodeKind.SEQUENCE:
        kids = node.children
        return (
            isinstance(node.key, str)
            and node.key.endswith("_packed_params")
            and 0 < len(kids) <= 2
            and kids[0].kind is NodeKind.TENSOR
            and all(c.kind in (NodeKind.TENSOR, NodeKind.REF) or c.type == "NoneType" for c in kids)
        )
    return (
        node.kind is NodeKind.OBJECT
        and node.type.startswith("torch.classes.")
        and _has_tensors(node)
    )


def is_module(node: Node) -> bool:
    """A placeholder nn.Module from a whole-module pickle (it has `_parameters` and `_modules`)."""
    return (
        node.kind is NodeKind.OBJECT
        and node.child("_parameters") is not None
        and node.child("_modules") is not None
    )


def is_optimizer(node: Node) -> bool:
    """An `Optimizer.state_dict()`: a mapping with `state` and `param_groups`."""
    return (
        node.kind is NodeKind.MAPPING
        and node.child("state") is not None
        and node.child("param_groups") is not None
    )


def is_scheduler(node: Node) -> bool:
    """An LR scheduler's state dict: `last_epoch` with `base_lrs` or `_last_lr`."""
    return (
        node.kind in (NodeKind.MAPPING, NodeKind.OBJECT)
        and node.child("last_epoch") is not None
        and (node.child("base_lrs") is not None or node.child("_last_lr") is not None)
    )


def is_scheduler_state(name: str, node: Node) -> bool:
    """A scheduler state to read a position from: `is_scheduler`'s structure, or a key naming a
    scheduler (`lr_sched`, `scheduler`) that holds a `last_epoch`, as custom schedulers keep it.

    `role_of` is looser on purpose: a key naming a scheduler labels its bytes even when it holds
    no `last_epoch` (a scheduler's config), but the resume card needs a position to check."""
    return is_scheduler(node) or (
        _SCHED_NAME.search(name) is not None and node.child("last_epoch") is not None
    )


def optimizer_info(path: KeyPath, node: Node) -> OptimizerInfo:
    """Name the optimizer kind from its per-parameter state keys."""
    keys: list[str] = []
    state = node.child("state")
    for entry in (state.children if state is not None else ())[:50]:
        for c in entry.children:
            if isinstance(c.key, str) and c.key not in keys:
                keys.append(c.key)
    present = set(keys)
    kind = "unknown optimizer" if present else "optimizer without state"
    for needed, name in OPTIMIZER_KINDS:
        if present.issuperset(needed):
            kind = name
            break
    return OptimizerInfo(path, kind, tuple(keys))


def find_optimizers(root: Node, limit: int = 64) -> list[OptimizerInfo]:
    """Every optimizer state dict in the tree, in tree order.

    A framework's own list comes first and whole (each entry of Lightning's `optimizer_states`,
    even one without the usual `state`/`param_groups`); the rest of the tree is searched by
    structure, skipping the framework's weights and optimizer parts.
    """
    out: list[OptimizerInfo] = []
    skip: set[KeyPath] = set()
    framework = detect_root(root)
    if framework is not None:
        for path in framework.optimizers[:limit]:
            node = _at(root, path)
            if node is not None:
                out.append(_framework_optimizer(path, node))
        skip = {p.path for p in framework.parts if p.kind in ("weights", "optimizers")}
    stack: list[tuple[KeyPath, Node]] = [((), root)]
    while stack and len(out) < limit:
        path, node = stack.pop()
        if path in skip:
            continue
        if is_optimizer(node):
            out.append(optimizer_info(path, node))
            continue
        if node.kind in (NodeKind.MAPPING, NodeKind.SEQUENCE, NodeKind.OBJECT) and len(path) < 4:
            # a childless node is no optimizer and holds none: not stacked (a state dict's
            # 100,000 tensors, issue 16)
            stack.extend(((*path, c.key), c) for c in reversed(node.children) if c.children)
    return out


def optimizers_of(ckpt: Checkpoint) -> list[OptimizerInfo]:
    """`find_optimizers(ckpt.root)`, computed once per checkpoint (sizes, the resume card and
    the optimizer map all ask)."""
    return list(ckpt.memo("optimizers", lambda: tuple(find_optimizers(ckpt.root))))


def weights_path(ckpt: Checkpoint) -> KeyPath | None:
    """The subtree holding the model's weights, or None when the checkpoint has no tensors.
    Computed once per checkpoint (`Checkpoint.memo`).

    In order: the root when it is a module placeholder; the weights part of a recognised
    framework (Lightning's `state_dict`, even with plain values among its tensors); a top-level
    key from `WEIGHT_KEYS` holding a state dict or a module; the root when it is a state dict
    itself; a whole-module pickle found deeper; else the largest state-dict-shaped subtree.
    """
    return ckpt.memo("weights_path", lambda: _weights_path(ckpt))


_WEIGHT_KEY_MAX = max(map(len, WEIGHT_KEYS))


def _weights_path(ckpt: Checkpoint) -> KeyPath | None:
    root = ckpt.root
    if root.kind is NodeKind.TENSOR or is_module(root):
        return ()
    if ckpt.format == "torchscript":  # the scripted module: its tensor attributes, by name
        data = root.child("data")
        if data is not None and _has_tensors(data):
            return ("data",)
    framework = detect_root(root)
    if framework is not None and framework.weights is not None:
        node = _at(root, framework.weights)
        if node is not None and _has_tensors(node):
            return framework.weights
    # only names as short as the longest of WEIGHT_KEYS are looked up: not lower-casing a
    # state dict's 100,000 long keys (the last child of a name still wins)
    by_name = {
        c.key.lower(): c
        for c in root.children
        if isinstance(c.key, str) and len(c.key) <= _WEIGHT_KEY_MAX
    }
    for name in WEIGHT_KEYS:
        c = by_name.get(name)
        if c is not None and (is_module(c) or is_state_dict(c)):
            return (c.key,)
    if is_state_dict(root):
        return ()
    for f in ckpt.findings:
        if f.kind == "whole_module" and f.path is not None:
            return f.path
    best: tuple[int, KeyPath] | None = None
    stack: list[tuple[KeyPath, Node]] = [((), root)]
    while stack:
        path, node = stack.pop()
        if path and (is_state_dict(node) or is_module(node)):
            size = bytes_below(node)
            if best is None or size > best[0]:
                best = (size, path)
            continue
        if node.kind is not NodeKind.TENSOR and len(path) < 6 and not is_optimizer(node):
            # a childless node (a tensor, a value, one of a million refs, issue 21) is neither
            # a state dict nor a module and holds none: not stacked, no path made
            stack.extend(((*path, c.key), c) for c in node.children if c.children)
    return best[1] if best else None


def role_of(path: KeyPath, node: Node, weights: KeyPath | None) -> Role | None:
    """The role of a subtree, or None when it is a plain container to look inside."""
    if weights is not None and path == weights:
        return Role.WEIGHTS
    key = path[-1] if path else ""
    name = key if isinstance(key, str) else ""
    if is_optimizer(node) or (_OPTIM_NAME.search(name) and _has_tensors(node)):
        return Role.OPTIMIZER
    if is_scheduler(node) or _SCHED_NAME.search(name):
        return Role.SCHEDULER
    if not _has_tensors(node):
        return Role.METADATA
    if _COPY_NAME.search(name) or is_state_dict(node) or is_module(node):
        return Role.WEIGHTS_COPY
    if node.kind is NodeKind.TENSOR or not node.children:
        return Role.OTHER_TENSORS
    return None


def role_groups(
    ckpt: Checkpoint, weights: KeyPath | None, max_depth: int = 3
) -> list[tuple[KeyPath, Role]]:
    """Subtrees with a role, in tree order, covering every tensor of the checkpoint.

    Containers without a role of their own (`{"state": {"model": ..., "optim": ...}}`) are
    looked inside, down to `max_depth`; below that a container counts as other tensors.
    """
    root = ckpt.root
    if weights == () or root.kind is NodeKind.TENSOR:
        return [((), Role.WEIGHTS)]
    out: list[tuple[KeyPath, Role]] = []
    framework = detect_root(root)
    known = _framework_roles(framework, root, weights) if framework is not None else {}

    def visit(path: KeyPath, node: Node) -> None:
        for c in node.children:
            p = (*path, c.key)
            if c.kind is NodeKind.REF:
                continue
            role = known.get(p) or role_of(p, c, weights)
            if weights is not None and weights[: len(p)] == p and p != weights:
                role = None  # the weights lie below: look inside
            if role is None and len(p) >= max_depth:
                role = Role.OTHER_TENSORS
            if role is None:
                visit(p, c)
            else:
                out.append((p, role))

    visit((), root)
    return out


def _framework_roles(
    framework: Framework, root: Node, weights: KeyPath | None
) -> dict[KeyPath, Role]:
    """The role of each part a framework names: its callbacks or loops are one group each,
    not split into their entries as an unknown container would be."""
    out: dict[KeyPath, Role] = {}
    for part in framework.parts:
        node = _at(root, part.path)
        if node is None or part.path == weights:
            continue
        if part.kind == "optimizers":
            out[part.path] = Role.OPTIMIZER
        elif part.kind == "schedulers":
            out[part.path] = Role.SCHEDULER
        else:
            out[part.path] = Role.OTHER_TENSORS if _has_tensors(node) else Role.METADATA
    return out


def _framework_optimizer(path: KeyPath, node: Node) -> OptimizerInfo:
    if is_optimizer(node):
        return optimizer_info(path, node)
    return OptimizerInfo(path, "unknown optimizer", ())


def _at(root: Node, path: KeyPath) -> Node | None:
    node: Node | None = root
    for key in path:
        node = node.child(key) if node is not None else None
    return node


def _has_tensors(node: Node) -> bool:
    stack = [node]
    while stack:
        n = stack.pop()
        if n.kind is NodeKind.TENSOR:
            return True
        stack.extend(n.children)
    return False
