"""Provides `weights_only_report`: would `torch.load(path, weights_only=True)` load this file, and
if not, why, and what makes it load.

Since PyTorch 2.6 `torch.load` defaults to `weights_only=True` and refuses any GLOBAL outside its
allow-list ("Weights only load failed ... Unsupported global: GLOBAL argparse.Namespace"); users
then reach for `weights_only=False`, which runs whatever the file says. This module answers the
question without importing torch: it replays the file's pickle(s) through a *symbolic* copy of
torch's weights-only unpickler (`weights_only_replay`, after `torch/_weights_only_unpickler.py`;
tables in `data/weights_only_allowlist.py`), where values are only type names, so nothing is
imported or called. Replaying, rather than listing GLOBAL opcodes as
`get_unsafe_globals_in_checkpoint` does, also finds what the list misses: BUILD on a numpy dtype
needs its `numpy.dtypes.*DType` class allowed although the file never names it, a non-empty
`defaultdict` or `deque` fails (torch fills only dicts and lists) whatever is allowed, and
opcodes beyond protocol 2 fail.

Each refused global is judged (`kind`): `data` and `torch`/`library` classes are benign;
`user` classes and functions are not, since allowing them imports that code and runs its
`__new__`/`__setstate__`/the call (harmless only if the user trusts that code, which ckptui
cannot know); `dangerous` ones run commands or load pickles. When every refused global is benign,
`fix` is the exact snippet (imports included: `safe_globals` needs the real objects) that makes
torch.load accept the file; `fix_if_trusted` is the same for files whose only non-benign globals
are user classes; neither is given when anything is dangerous. `export_command` writes a copy
that needs nothing allowed.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from ckptui.core.errors import CkptError
from ckptui.core.tree import Checkpoint, NodeKind, walk_matching
from ckptui.data import weights_only_allowlist as wo
from ckptui.formats.naming import output_stem
from ckptui.formats.opening import open_source
from ckptui.unpickler.safety import Safety, judge, looks_like_class
from ckptui.unpickler.weights_only_replay import Replay


@dataclass(frozen=True, slots=True)
class RefusedGlobal:
    """A global torch.load(weights_only=True) refuses, with ckptui's judgement."""

    name: str
    """`module.qualname` as torch names it."""
    benign: bool
    """Allowing it builds data and runs no code of the file's choosing."""
    kind: str
    """`data`, `torch`, `library` (benign); `user`, `function`, `dangerous` (not)."""
    why: str
    where: tuple[Any, ...] | None = None
    """The first tree path holding an object of this type, when one is shown."""


@dataclass(frozen=True, slots=True)
class WeightsOnlyReport:
    """The verdict for one checkpoint."""

    loads: bool
    """`torch.load(path, weights_only=True)` succeeds (torch 2.13's rules, nothing allowed)."""
    refused_globals: tuple[RefusedGlobal, ...] = ()
    """GLOBALs the pickle names that torch refuses (= `get_unsafe_globals_in_checkpoint`)."""
    also_needed: tuple[RefusedGlobal, ...] = ()
    """Types torch must also be allowed to build although no GLOBAL names them."""
    blockers: tuple[str, ...] = ()
    """Reasons it fails that no allow-list fixes (format, opcodes, containers, damage)."""
    fix: str | None = None
    fix_if_trusted: str | None = None
    export_command: str | None = None
    notes: tuple[str, ...] = ()
    allow_list: str = f"torch {wo.TORCH_VERSION}"


_MULTI_FILE = {
    "hf-sharded": "a sharded model",
    "folder": "a folder of checkpoints",
    "dcp": "a torch.distributed.checkpoint folder",
}
_ST_SUFFIX = (
    "a safetensors file without the .safetensors suffix: torch.load does not read it; "
    "use safetensors.torch.load_file"
)
_TORCHSCRIPT = (
    "a TorchScript archive: torch.load refuses weights_only=True for it; use torch.jit.load"
)
_DAMAGE = {"missing_storage", "short_storage", "out_of_bounds", "truncated"}


def weights_only_report(ckpt: Checkpoint) -> WeightsOnlyReport:
    """Judge whether `torch.load(ckpt.path, weights_only=True)` would load the checkpoint.

    Reads the file's pickle(s) again (metadata only; nothing is imported or run), unless the
    open found in the same pass that the replay would record nothing.

    Args:
        ckpt: an opened checkpoint (`open_checkpoint`).

    Returns:
        The report; `report.json.training.weights_only_json` gives the `inspect --json` field.
    """
    export = _export_command(ckpt)
    if ckpt.format in _MULTI_FILE:
        return WeightsOnlyReport(
            False,
            blockers=(f"{_MULTI_FILE[ckpt.format]}: torch.load reads one file",),
            export_command=export,
        )
    if ckpt.format == "safetensors":
        ok = ckpt.path.endswith(".safetensors")
        note = (
            "torch >= 2.13 hands *.safetensors paths to safetensors.torch.load_file (the "
            "safetensors package must be installed); older torch cannot torch.load it: "
            "use safetensors.torch.load_file"
        )
        block = () if ok else (_ST_SUFFIX,)
        return WeightsOnlyReport(ok, blockers=block, notes=(note,))
    if ckpt.format == "torchscript":
        return WeightsOnlyReport(False, blockers=(_TORCHSCRIPT,), export_command=export)
    if ckpt.format == "torch-legacy-tar":
        why = "a legacy .tar checkpoint: torch.load refuses weights_only=True on that format"
        return WeightsOnlyReport(False, blockers=(why,), export_command=export)
    if ckpt.format in _OTHER_ARCHIVES:  # torch.export / torch.package: no data.pkl at all
        return WeightsOnlyReport(
            False, blockers=(_OTHER_ARCHIVES[ckpt.format],), export_command=export
        )
    sim = Replay()
    # The open already went through every pickle at C speed and found nothing the replay could
    # record (`unpickler/confined.py`): the replay would come back empty, so it is not run.
    if not ckpt.memo("weights_only_replay_free", lambda: False):
        try:
            buf, count = _pickles(ckpt)
        except (OSError, CkptError) as e:  # changed or removed since it was opened
            return WeightsOnlyReport(False, blockers=(f"cannot read the file again: {e}",))
        pos = 0
        for _ in range(count):
            pos = sim.run(buf, pos, len(buf))
    blockers = list(sim.blockers)
    if ckpt.format == "pickle":
        blockers.insert(
            0,
            "not a torch.save file (a plain pickle): torch.load reads its first "
            "pickle, then fails with 'Invalid magic number'",
        )
    damage = sorted({f.kind for f in ckpt.findings if f.kind in _DAMAGE})
    if damage:
        blockers.append(
            f"the file is damaged ({', '.join(damage)}): torch.load fails whatever is allowed"
        )
    # where each refused type first appears: a walk of the whole tree, only when one is
    where = _where(ckpt) if sim.refused or sim.also_needed else {}
    refused = tuple(_judge(n, where.get(n)) for n in sim.refused)
    also = tuple(_judge(n, where.get(n)) for n in sim.also_needed if n not in sim.refused)
    notes = list(sim.notes)
    devices = sorted({s.location for s in ckpt.storages.values()} - {"cpu", "meta"})
    if devices:
        notes.append(f"storages were saved on {', '.join(devices[:3])}: on a machine without "
                     "that device, torch.load also needs map_location='cpu'")  # fmt: skip
    loads = not refused and not also and not blockers
    fix = trusted = None
    every = (*refused, *also)
    if every and not blockers and not any(g.kind == "dangerous" for g in every):
        line = _fix_line(ckpt.path, sim, every)
        if all(g.benign for g in every):
            fix = line
        else:
            trusted = line
    if any(g.kind == "dangerous" for g in every):
        notes.append("a dangerous global: never load this file with weights_only=False")
    return WeightsOnlyReport(
        loads, refused, also, tuple(blockers), fix, trusted, None if loads else export, tuple(notes)
    )


_OTHER_ARCHIVES = {
    "pt2": "a torch.export archive (.pt2): torch.load fails on it (no data.pkl); "
    "torch.export.load reads it",
    "torch-package": "a torch.package archive: torch.load fails on it (no data.pkl); "
    "torch.package.PackageImporter reads it, running the code it ships",
}


def _export_command(ckpt: Checkpoint) -> str | None:
    """`ckptui export` writes the detected weights to a file torch.load accepts as it is."""
    if not ckpt.storages:
        return None

    out = output_stem(ckpt.path) + ".weights.pth"
    return f"ckptui export {shlex.quote(ckpt.path)} -o {shlex.quote(out)}"


def _pickles(ckpt: Checkpoint) -> tuple[bytes, int]:
    """The bytes holding the pickle(s) torch.load would unpickle, and how many there are."""
    src = open_source(ckpt.path)
    try:
        if ckpt.format == "torch-zip":
            off, n = ckpt.memo("data_pkl_span", lambda: (None, 0))
            if off is not None and src.size == ckpt.file_bytes:  # as found when opened
                return src.read_at(off, n), 1
            # deferred: a safetensors folder's inspect never loads the zip reader
            from ckptui.formats.torchzip import ZipCheckpoint

            return bytes(ZipCheckpoint(src).read_pickle("data.pkl")[0]), 1
        if ckpt.format == "torch-legacy":
            # magic, protocol, sys_info, the object, storage keys; then each storage's bytes
            starts = [s.data_offset for s in ckpt.storages.values() if s.data_offset]
            return src.read_at(0, min(starts) - 8 if starts else src.size), 5
        return src.read_at(0, int(ckpt.info.get("pickle_bytes", src.size))), 1
    finally:
        src.close()


def _judge(name: str, where: Any = None) -> RefusedGlobal:
    """Benign or not, and why, for one refused global (see the module docstring)."""
    benign, kind, why = _verdict(name)
    return RefusedGlobal(name, benign, kind, why, where)


def _verdict(name: str) -> tuple[bool, str, str]:
    module, _, qual = name.rpartition(".")
    if module.split(".")[0] in wo.BLOCKED_MODULES:
        return False, "dangerous", f"from {module}, which torch refuses even when allow-listed"
    if name == "torch.storage._load_from_bytes":
        return False, "dangerous", "runs torch.load(weights_only=False) on bytes in the file"
    verdict = judge(module, qual)
    # Allowing a global lets the file call it: judge it as called (a reference that runs
    # nothing until called, such as getattr or a torch function, is judged by the call).
    verdict = verdict.if_called or verdict
    if verdict.safety is Safety.DANGER:
        return False, "dangerous", verdict.reason or "runs code, commands or touches files"
    if name in wo.NEEDS_IMPORT:
        return True, "torch", f"torch's own; accepted after `import {wo.NEEDS_IMPORT[name]}`"
    why = wo.BENIGN.get(name)
    if why is None and looks_like_class(name):
        why = next((w for p, w in wo.BENIGN_PREFIXES if name.startswith(p)), None)
    if why is not None:
        return True, "data", why
    if name.startswith("__torch__."):
        return False, "user", "a TorchScript class: not importable from Python"
    if verdict.safety is Safety.KNOWN and name.startswith("torch."):
        return True, "torch", "torch's own class or function: allowing it runs only torch code"
    if verdict.safety is Safety.KNOWN:
        lib = name.split(".")[0]
        return True, "library", f"a {lib} class: allowing it runs only that library's own code"
    if looks_like_class(name):
        return False, "user", (f"a class torch does not know: allowing it imports {module} and "
                               "runs its code; benign only if you trust that code")  # fmt: skip
    return False, "function", f"a function torch.load would call (imports {module})"


def _where(ckpt: Checkpoint) -> dict[str, tuple[Any, ...]]:
    """First tree path of each placeholder type (`argparse.Namespace`, `numpy.ndarray`)."""
    out: dict[str, tuple[Any, ...]] = {}
    obj = NodeKind.OBJECT
    # Refs are left out (`walk_matching`): each names an earlier node of its own type, so
    # setdefault keeps that one.
    for path, node in walk_matching(
        ckpt.root, lambda n: n.kind is obj or n.type == "numpy.ndarray"
    ):
        out.setdefault(node.type, path)
    return out


def _fix_line(path: str, sim: Replay, needed: tuple[RefusedGlobal, ...]) -> str:
    """Two lines of Python: the imports, then torch.load inside `safe_globals([...])`."""
    imports = {"torch"}
    items: list[str] = []
    for g in needed:
        if g.name in wo.NEEDS_IMPORT:
            imports.add(wo.NEEDS_IMPORT[g.name])  # importing it registers the class
            continue
        expr = sim.exprs.get(g.name)
        if expr is not None:  # a type met through BUILD: `type(numpy.dtype("f8"))`
            imports.add(expr[1])
            items.append(expr[0])
            continue
        module = sim.refused.get(g.name) or g.name.rpartition(".")[0]
        imports.add(module)
        stable = g.name in wo.STABLE_NAMES or (
            module == "builtins" and g.name in wo.LOWERCASE_CLASSES
        )
        items.append(g.name if stable else f'({g.name}, "{g.name}")')
    mods = sorted(m for m in imports if not any(o.startswith(m + ".") for o in imports))
    return (
        f"import {', '.join(mods)}\nwith torch.serialization.safe_globals([{', '.join(items)}"
        f"]): ck = torch.load({path!r}, weights_only=True)"
    )
