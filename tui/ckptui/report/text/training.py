"""Provides the training answers as rich renderables: the resume card, the optimizer card, the
`weights_only` verdict, and the line naming an optimizer entry's parameter.

Only presentation: the answers come from `training.training_facts` (core), as JSON-shaped dicts.
It lives beside the other text renderers (`render`, `why`), not in the app, because both the
browser's root panel and plain `ckptui inspect` print them; it imports rich, never Textual.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ckptui.core import units
from ckptui.core.keypath import describe_path
from ckptui.report.json.training import resume_json, weights_only_json


def _table() -> Table:
    t = Table.grid(padding=(0, 1))
    t.add_column(style="bold", no_wrap=True)
    t.add_column(overflow="fold")
    return t


def _where(path: list[Any]) -> str:
    return units.printable(describe_path(tuple(path)))


def _lines(text: str) -> str:
    """Text of several lines that ckptui wrote (the fix: an import line, then the load), its
    own newlines kept, every other control character from the names in it made visible."""
    return "\n".join(units.printable(line) for line in text.split("\n"))


def _plain(text: str) -> Text:
    """File text (names, keys, globals) as a Text, control characters made visible: a str
    given to `Table.add_row` would be read as markup, and printed raw it could move the cursor."""
    return Text(units.printable(text))


def parameter_line(entry: Any) -> tuple[str, Text]:
    """(`parameter`, text) for an optimizer entry: its name and how sure the mapping is."""
    if entry.param and entry.confidence != "ambiguous":
        text = _plain(entry.param)
        text.append(f"  ({entry.confidence})", style="dim")
        if entry.why:
            text.append(f"  {units.printable(entry.why)}", style="dim")
        return "parameter", text
    return "parameter", _plain(f"? ambiguous: {entry.why or 'no parameter could be named'}")


def resume_card(card: Any) -> RenderableType:
    """Can training resume from this file, and does its state agree."""
    j = resume_json(card)
    t = _table()
    verdict = "yes" if j["resumable"] else "no"
    t.add_row(
        "resumable",
        Text(f"{verdict}: {units.printable(j['reason'])}", style="bold" if j["resumable"] else ""),
    )
    w = j["weights"]
    t.add_row(
        "weights",
        _plain(
            f"{_where(w['path'])} · {w['tensors']:,} tensor{'' if w['tensors'] == 1 else 's'} · {units.size(w['bytes'])}"
        )
        if w
        else "none",
    )
    for o in j["optimizers"]:
        step = f", step {o['step']:g}" if isinstance(o["step"], int | float) else ""
        t.add_row("optimizer", _plain(f"{o['kind']} at {_where(o['path'])}{step}"))
    if not j["optimizers"]:
        t.add_row("optimizer", "none")
    for s in j["schedulers"]:
        last = "" if s["last_epoch"] is None else f", last_epoch {s['last_epoch']}"
        t.add_row("scheduler", _plain(f"{s['kind']} at {_where(s['path'])}{last}"))
    counters = " · ".join(f"{c['name']} {c['value']:,}" for c in j["counters"])
    t.add_row("counters", _plain(counters or "none"))
    scaler = j["scaler"]
    if scaler is not None:
        scale = "disabled (empty)" if scaler["empty"] else f"scale {scaler['scale']}"
        t.add_row("AMP scaler", _plain(f"{scale} at {_where(scaler['path'])}"))
    t.add_row("RNG", _plain(", ".join(r["kind"] for r in j["rng"]) or "none"))
    for v in j["versions"][:3]:
        t.add_row("version", _plain(f"{v['name']} {v['value']}"))
    parts: list[RenderableType] = [Text(""), Text("resume", style="bold underline"), t]
    parts += [Text(f"⚠ {units.printable(warning)}", style="bold") for warning in j["warnings"]]
    return Group(*parts)


def weights_only_verdict(report: Any) -> RenderableType:
    """Would `torch.load(weights_only=True)` take the file, and if not, what to do."""
    j = weights_only_json(report)
    head = Group(Text(""), Text("torch.load(weights_only=True)", style="bold underline"))
    if j["loads"]:
        return Group(head, Text("loads: nothing it would refuse"))
    t = _table()
    refused = j["refused_globals"]
    for g in refused[:8]:
        t.add_row("benign" if g["benign"] else "DANGER", _plain(g["global"]))
    if len(refused) > 8:
        t.add_row("", f"and {len(refused) - 8} more")
    parts: list[RenderableType] = [head, Text("refuses this file:"), t]
    parts += [_plain(b) for b in j.get("blockers", [])[:4]]  # the format, opcodes, damage
    if j.get("fix"):
        parts += [
            Text("all benign; this line makes it load:"),
            Text(_lines(j["fix"]), style="dim"),
        ]
    elif any(not g["benign"] for g in refused):
        parts.append(Text("do not load it with weights_only=False: that runs what it names"))
    if j.get("export_command"):
        parts += [Text("or write a copy that needs no such line:"), _plain(j["export_command"])]
    return Group(*parts)


HYPER = (
    ("lr", "lr"),
    ("momentum", "momentum"),
    ("betas", "betas"),
    ("alpha", "alpha"),
    ("eps", "eps"),
    ("weight_decay", "weight decay"),
)
"""The hyper-parameters a card shows for each param group, in this order, and their words."""
FLAGS = ("nesterov", "amsgrad", "maximize", "decoupled_weight_decay")
"""Boolean hyper-parameters named on the card only when they are on."""


def _number(v: Any) -> str:
    """`0.001`, `1e-08`, `0.9, 0.999`: the app's precision (`units.number`)."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int | float):
        return units.number(float(v))
    if isinstance(v, list | tuple):
        return ", ".join(_number(x) for x in v)
    return units.printable(str(v))


def hyper_text(hyper: dict[str, Any]) -> str:
    """`lr 0.001 · betas 0.9, 0.999 · eps 1e-08 · weight decay 0.0005 · amsgrad`."""
    parts = [f"{word} {_number(hyper[key])}" for key, word in HYPER if hyper.get(key) is not None]
    parts += [key.replace("_", " ") for key in FLAGS if hyper.get(key) is True]
    return " · ".join(parts) or "no hyper-parameters recorded"


def optimizer_card(
    mapping: dict[str, Any], named: int, state_bytes: int, state_keys: tuple[str, ...] = ()
) -> RenderableType:
    """What an optimizer state dict holds: its kind and step, how many parameters it keeps state
    for and how many bytes that state takes, and each param group's hyper-parameters.

    Args:
        mapping: a `report.json.training.param_group_json` (the `param_groups` item).
        named: how many of its entries the mapping named surely (not `ambiguous`).
        state_bytes: tensor bytes below its `state`.
        state_keys: the per-parameter state entries seen (`exp_avg`, `step`, ...).
    """
    t = _table()
    t.add_row("kind", _plain(mapping["kind"]))
    if isinstance(mapping["step"], int | float):
        t.add_row("step", f"{mapping['step']:,}")
    lines = mapping["lines"]
    params = sum(len(line["params"]) for line in lines)
    groups = sum(len(line["groups"]) for line in lines)
    text = f"{params:,} in {groups:,} {'group' if groups == 1 else 'groups'}"
    if params and mapping["weights_path"] is not None:
        text += f" · {named:,} named from {_where(mapping['weights_path'])}"
    t.add_row("parameters", _plain(text))  # it quotes the weights path
    keys = [k for k in state_keys if k != "step"]
    state = units.size(state_bytes) if state_bytes else "no tensors"
    t.add_row("state", _plain(state + (f" · {', '.join(keys)}" if keys else "")))
    for line in lines:
        ids = line["groups"]
        name = f"group {ids[0]}" if len(ids) == 1 else f"groups {', '.join(map(str, ids[:4]))}"
        if len(ids) > 4:
            name += " …"
        text = hyper_text(line["hyper"])
        if len(lines) > 1:
            text += f" · {len(line['params']):,} params"
        t.add_row(name, _plain(text))
    for note in mapping["notes"]:
        t.add_row("note", _plain(note))
    return Group(Text(""), Text("optimizer", style="bold underline"), t)
