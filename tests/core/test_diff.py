"""`ckptui diff`: real torch.save / safetensors pairs, compared against truth computed with torch."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console
from safetensors.torch import save_file

from ckptui.analysis.diff import values as diff_values
from ckptui.analysis.diff.compare import diff_checkpoints
from ckptui.cli.main import main
from ckptui.formats import open_checkpoint
from ckptui.report.diff import diff_json, render_diff
from ckptui.tensors import reader as source_mod
from tests.conftest import run_python

from ..conftest import TinyNet, holed_checkpoint, run_cli, training_checkpoint

REQUIRED = {
    "a",
    "b",
    "prefix",
    "only_a",
    "only_b",
    "shape_mismatch",
    "dtype_mismatch",
    "value_diff",
    "equal",
}


def _strict(name: str) -> None:
    raise AssertionError(f"invalid JSON constant {name}")


def core(a: Path, b: Path, **options: Any) -> tuple[int, dict]:
    """Compare with the core: (the exit code the command gives, the JSON as a strict parser reads it)."""
    d = diff_checkpoints(open_checkpoint(a), open_checkpoint(b), **options)
    return int(d.differs), json.loads(json.dumps(diff_json(d)), parse_constant=_strict)


def rendered(a: Path, b: Path, **options: Any) -> str:
    """The human output, as an 80-column terminal shows it."""
    out, top = io.StringIO(), options.pop("top", 20)
    d = diff_checkpoints(open_checkpoint(a), open_checkpoint(b), **options)
    render_diff(d, Console(file=out, width=80), top=top)
    return out.getvalue()


def cli_json(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, dict]:
    """Run `ckptui diff ARGS --json` in-process: (exit code, parsed strict JSON)."""
    code = main(["diff", *map(str, args), "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out, parse_constant=_strict)


def save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return TinyNet().state_dict()


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    """The truth, by torch: max |a - b| in float64."""
    return (a.double() - b.double()).abs().max().item()


def by_path(entries: list[dict]) -> dict[tuple, dict]:
    return {tuple(e["path"]): e for e in entries}


# --- prefixes -------------------------------------------------------------------------------


def test_module_prefix_is_normalised_and_reported(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dp = torch.nn.DataParallel(TinyNet()).state_dict()
    assert all(k.startswith("module.") for k in dp)
    plain = {k.removeprefix("module."): v.clone() for k, v in dp.items()}
    a, b = save(dp, tmp_path / "ddp.pth"), save(plain, tmp_path / "plain.pth")
    code, doc = core(a, b, values=True)
    assert code == 0
    assert doc["prefix"] == {"a": "module.", "b": ""}
    assert doc["only_a"] == doc["only_b"] == [] == doc["shape_mismatch"] == doc["dtype_mismatch"]
    assert doc["equal"] == len(plain)
    # value_diff lists differing tensors only; the equal ones are counted
    assert doc["value_diff"] == [] and doc["values_equal"] == len(plain)
    # the other way round, and torch.compile's prefix
    code, doc = core(b, a)
    assert (code, doc["prefix"]) == (0, {"a": "", "b": "module."})
    compiled = torch.compile(TinyNet()).state_dict()
    assert all(k.startswith("_orig_mod.") for k in compiled)
    c = save(compiled, tmp_path / "compiled.pth")
    code, doc = core(a, c)
    assert doc["prefix"] == {"a": "module.", "b": "_orig_mod."}
    assert doc["only_a"] == [] and doc["equal"] == len(plain)


def test_keep_prefix_shows_what_load_state_dict_sees(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dp = torch.nn.DataParallel(TinyNet()).state_dict()
    plain = {k.removeprefix("module."): v for k, v in dp.items()}
    a, b = save(dp, tmp_path / "ddp.pth"), save(plain, tmp_path / "plain.pth")
    code, doc = core(a, b, strip_prefix=False)
    assert code == 1
    assert doc["prefix"] == {"a": "", "b": ""}
    assert doc["only_a"] == [[k] for k in dp] and doc["only_b"] == [[k] for k in plain]
    # the real loader agrees (BatchNorm fills a missing num_batches_tracked itself)
    result = TinyNet().load_state_dict(dp, strict=False)
    assert sorted(result.missing_keys) == sorted(
        k for [k] in doc["only_b"] if k != "bn1.num_batches_tracked"
    )
    assert sorted(result.unexpected_keys) == sorted(k for [k] in doc["only_a"])


def test_a_prefix_both_sides_share_is_kept(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dp = torch.nn.DataParallel(TinyNet()).state_dict()
    a, b = save(dp, tmp_path / "a.pth"), save(dp, tmp_path / "b.pth")
    code, doc = core(a, b)
    assert code == 0 and doc["prefix"] == {"a": "", "b": ""}
    assert doc["equal"] == len(dp)


# --- keys, shapes, dtypes, values -----------------------------------------------------------


def test_missing_and_extra_keys(tmp_path: Path) -> None:
    sd = state_dict()
    other = dict(sd)
    del other["fc.bias"]
    other["head.weight"] = torch.zeros(2, 8)
    a, b = save(sd, tmp_path / "a.pth"), save(other, tmp_path / "b.pth")
    code, doc = core(a, b)
    assert code == 1
    assert doc["only_a"] == [["fc.bias"]]
    assert doc["only_b"] == [["head.weight"]]
    assert doc["equal"] == len(sd) - 1
    result = TinyNet().load_state_dict(other, strict=False)
    assert result.missing_keys == ["fc.bias"] and result.unexpected_keys == ["head.weight"]


def test_shape_mismatch(tmp_path: Path) -> None:
    sd = state_dict()
    other = dict(sd)
    bigger = torch.nn.Linear(8, 5).state_dict()
    other["fc.weight"], other["fc.bias"] = bigger["weight"], bigger["bias"]
    a, b = save(sd, tmp_path / "a.pth"), save(other, tmp_path / "b.pth")
    code, doc = core(a, b, values=True)
    assert code == 1
    assert doc["shape_mismatch"] == [
        {"path": ["fc.weight"], "a": list(sd["fc.weight"].shape), "b": [5, 8]},
        {"path": ["fc.bias"], "a": list(sd["fc.bias"].shape), "b": [5]},
    ]
    assert doc["dtype_mismatch"] == []
    assert doc["equal"] == len(sd) - 2
    # shapes that differ have no values to compare; the others are equal
    assert doc["value_diff"] == [] and doc["values_equal"] == len(sd) - 2
    with pytest.raises(RuntimeError, match="size mismatch"):
        TinyNet().load_state_dict(other)


def test_dtype_mismatch_and_the_cast_error(tmp_path: Path) -> None:
    sd = state_dict()
    half = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    a, b = save(sd, tmp_path / "a.pth"), save(half, tmp_path / "b.pth")
    code, doc = core(a, b)
    assert code == 1
    floats = [k for k, v in sd.items() if v.is_floating_point()]
    assert doc["dtype_mismatch"] == [{"path": [k], "a": "float32", "b": "float16"} for k in floats]
    assert doc["value_diff"] == []
    assert doc["equal"] == len(sd) - len(floats) == 1  # num_batches_tracked
    code, doc = core(a, b, values=True)
    got = by_path(doc["value_diff"])
    truth = {(k,): max_abs(sd[k], half[k]) for k in floats}
    assert {p: e["max_abs"] for p, e in got.items()} == {p: m for p, m in truth.items() if m}
    assert got  # fp16 rounding is seen
    assert doc["values_equal"] == len(sd) - len(got)
    assert doc["equal"] == 1


def test_a_value_change_is_reported_only_with_values(tmp_path: Path) -> None:
    sd = state_dict()
    other = {k: v.clone() for k, v in sd.items()}
    other["conv1.weight"] += 1e-3 * torch.randn_like(other["conv1.weight"])
    other["bn1.running_var"][3] = 7.5
    other["bn1.num_batches_tracked"] += 5
    a, b = save(sd, tmp_path / "a.pth"), save(other, tmp_path / "b.pth")
    code, doc = core(a, b)
    assert (code, doc["equal"], doc["value_diff"]) == (0, len(sd), [])
    code, doc = core(a, b, values=True)
    assert code == 1
    got = {p: e["max_abs"] for p, e in by_path(doc["value_diff"]).items()}
    assert got == {(k,): m for k in sd if (m := max_abs(sd[k], other[k]))}
    assert len(got) == 3 and doc["values_equal"] == len(sd) - 3
    assert got[("conv1.weight",)] > 0 and got[("bn1.running_var",)] == pytest.approx(6.5)
    assert got[("bn1.num_batches_tracked",)] == 5
    assert doc["equal"] == len(sd) - 3


# --- what is compared -----------------------------------------------------------------------


def test_training_checkpoint_against_bare_state_dict(tmp_path: Path) -> None:
    ck = training_checkpoint()
    a = save(ck, tmp_path / "train.pth")
    b = save(ck["model"], tmp_path / "weights.pth")
    code, doc = core(a, b, values=True)
    assert code == 0
    assert doc["mode"] == "weights" and doc["a_root"] == ["model"] and doc["b_root"] == []
    assert doc["equal"] == len(ck["model"]) and doc["only_a"] == []
    assert doc["value_diff"] == [] and doc["values_equal"] == len(ck["model"])
    # a DataParallel training checkpoint against the bare weights: root and prefix at once
    dp = save(training_checkpoint(parallel=True), tmp_path / "dp.pth")
    code, doc = core(dp, b, values=True)
    assert code == 0 and doc["prefix"] == {"a": "module.", "b": ""}
    assert doc["a_root"] == ["model"] and doc["equal"] == len(ck["model"])
    out = " ".join(rendered(a, b).split())  # the 80-column wrap point moves with tmp_path's length
    assert "weights: model" in out and "weights: the root" in out


def test_two_training_checkpoints_compare_whole_trees(tmp_path: Path) -> None:
    ck = training_checkpoint()
    later = training_checkpoint()
    later["epoch"] = 4
    later["optimizer"]["state"][0]["exp_avg"] += 0.25
    a, b = save(ck, tmp_path / "a.pth"), save(later, tmp_path / "b.pth")
    code, doc = core(a, b)
    assert code == 0  # plain values are informative only
    assert doc["mode"] == "whole" and doc["a_root"] == doc["b_root"] == []
    assert doc["other_diff"] == [{"path": ["epoch"], "a": "3", "b": "4"}]
    n_tensors = len(ck["model"]) + sum(len(s) for s in ck["optimizer"]["state"].values())
    assert doc["equal"] == n_tensors
    code, doc = core(a, b, values=True)
    assert code == 1
    changed = [(e["path"], e["max_abs"]) for e in doc["value_diff"] if e["max_abs"]]
    truth = max_abs(
        ck["optimizer"]["state"][0]["exp_avg"], later["optimizer"]["state"][0]["exp_avg"]
    )
    assert changed == [(["optimizer", "state", 0, "exp_avg"], truth)]
    code, doc = core(a, b, values=True, compare="weights")
    assert code == 0 and doc["a_root"] == ["model"] and doc["equal"] == len(ck["model"])


def test_safetensors_against_pth_of_the_same_weights(tmp_path: Path) -> None:
    sd = state_dict()
    a = save(sd, tmp_path / "w.pth")
    b = tmp_path / "w.safetensors"
    save_file(sd, b, metadata={"format": "pt"})
    code, doc = core(a, b, values=True)
    assert code == 0 and doc["equal"] == len(sd) and doc["other_diff"] == []
    bf = {k: v.bfloat16() if v.is_floating_point() else v for k, v in sd.items()}
    c = tmp_path / "bf16.safetensors"
    save_file(bf, c)
    code, doc = core(a, c, values=True)
    assert code == 1
    assert {tuple(e["path"]) for e in doc["dtype_mismatch"]} == {
        (k,) for k, v in sd.items() if v.is_floating_point()
    }
    got = {p: e["max_abs"] for p, e in by_path(doc["value_diff"]).items()}
    assert got == {(k,): m for k in sd if (m := max_abs(sd[k], bf[k]))}
    assert doc["values_equal"] == len(sd) - len(got)


def test_whole_module_pickle_against_its_state_dict(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = TinyNet()
    a = save(net, tmp_path / "module.pt")
    b = save(net.state_dict(), tmp_path / "sd.pt")
    code, doc = core(a, b, values=True)
    assert code == 0
    assert doc["equal"] == len(net.state_dict())
    assert doc["value_diff"] == [] and doc["values_equal"] == len(net.state_dict())


# --- value rules ----------------------------------------------------------------------------


def test_nan_and_inf_rules_and_strict_json(tmp_path: Path) -> None:
    nan, inf = math.nan, math.inf
    neg_nan = -torch.tensor([nan])  # another NaN bit pattern: bytes differ, both NaN
    a = {
        "same_nan": torch.tensor([nan, 1.0, nan]),
        "signed_nan": torch.tensor([nan]),
        "same_inf": torch.tensor([inf, -inf, 2.0]),
        "neg_zero": torch.tensor([-0.0, 1.0]),
        "nan_vs_number": torch.tensor([nan, 1.0, inf]),
        "inf_vs_number": torch.tensor([inf, 1.0]),
        "inf_vs_neg_inf": torch.tensor([inf]),
    }
    b = {
        "same_nan": torch.tensor([nan, 1.0, nan]),
        "signed_nan": neg_nan,
        "same_inf": torch.tensor([inf, -inf, 2.0]),
        "neg_zero": torch.tensor([0.0, 1.0]),
        "nan_vs_number": torch.tensor([0.0, 1.0, 5.0]),  # NaN wins over the inf difference
        "inf_vs_number": torch.tensor([5.0, 1.0]),
        "inf_vs_neg_inf": torch.tensor([-inf]),
    }
    assert a["signed_nan"].numpy().tobytes() != b["signed_nan"].numpy().tobytes()
    pa, pb = save(a, tmp_path / "a.pth"), save(b, tmp_path / "b.pth")
    code, doc = core(pa, pb, values=True)
    assert code == 1
    got = {p[0]: e["max_abs"] for p, e in by_path(doc["value_diff"]).items()}
    assert got == {  # same_nan, signed_nan, same_inf, neg_zero are equal: counted, not listed
        "nan_vs_number": "nan",
        "inf_vs_number": "inf",
        "inf_vs_neg_inf": "inf",
    }
    assert doc["equal"] == 4 == doc["values_equal"]


def test_integer_and_bool_values_are_exact(tmp_path: Path) -> None:
    big = 2**62
    a = {
        "ids": torch.tensor([big, -big, 5]),
        "extremes": torch.tensor([2**63 - 1, 0]),
        "mask": torch.tensor([True, False, True]),
        "small": torch.tensor([1, 2, 3], dtype=torch.int32),
        "widened": torch.tensor([1, 2, 3], dtype=torch.int32),
    }
    b = {
        "ids": torch.tensor([big + 1, -big, 5]),  # float64 would see no difference
        "extremes": torch.tensor([-(2**63), 0]),
        "mask": torch.tensor([False, False, True]),
        "small": torch.tensor([1, -2, 3], dtype=torch.int32),
        "widened": torch.tensor([1, 2, 3], dtype=torch.int64),
    }
    assert float(big) == float(big + 1)
    pa, pb = save(a, tmp_path / "a.pth"), save(b, tmp_path / "b.pth")
    code, doc = core(pa, pb, values=True)
    got = {p[0]: e["max_abs"] for p, e in by_path(doc["value_diff"]).items()}
    truth = {
        k: float(max(abs(x - y) for x, y in zip(a[k].tolist(), b[k].tolist(), strict=True)))
        for k in a
    }
    assert got == {k: m for k, m in truth.items() if m}
    assert got["ids"] == 1 and got["extremes"] == float(2**64 - 1) and truth["widened"] == 0
    assert doc["values_equal"] == 1  # widened
    assert doc["dtype_mismatch"] == [{"path": ["widened"], "a": "int32", "b": "int64"}]
    assert (code, doc["equal"]) == (1, 0)


def test_values_stream_in_chunks_across_layouts(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(source_mod, "CHUNK", 4096)  # bytes per read: many chunks per tensor
    monkeypatch.setattr(diff_values, "PIECE", 100)  # elements per float64 piece
    torch.manual_seed(1)
    base = torch.randn(200, 300)
    a = {"w": base.t(), "v": base[::2, 5:], "h": torch.randn(5000).bfloat16()}
    b = {"w": base.t().contiguous(), "v": base[::2, 5:].contiguous(), "h": a["h"].float()}
    b["w"][250, 7] += 0.125
    b["v"][99, 10] = -3.0
    assert not a["w"].is_contiguous() and not a["v"].is_contiguous()
    pa, pb = save(a, tmp_path / "a.pth"), save(b, tmp_path / "b.pth")
    calls: list[tuple[int, int]] = []
    d = diff_checkpoints(
        open_checkpoint(pa), open_checkpoint(pb), values=True, progress=lambda *c: calls.append(c)
    )
    assert dict(d.value_diff) == {(k,): max_abs(a[k], b[k]) for k in a}
    assert dict(d.value_diff)[("h",)] == 0  # bf16 -> f32 is exact
    total = sum(a[k].nbytes + b[k].nbytes for k in a)
    assert calls[-1] == (total, total) and len(calls) > 3 * len(a)
    done = [c[0] for c in calls]
    assert done == sorted(done) and all(c[1] == total for c in calls)


def test_values_that_cannot_be_read_are_not_counted_equal(tmp_path: Path) -> None:
    holed = holed_checkpoint(tmp_path)  # b's storage record removed
    full = tmp_path / "full.pt"
    code, doc = core(holed, full)
    assert (code, doc["equal"]) == (0, 2)  # metadata alone cannot tell
    code, doc = core(holed, full, values=True)
    assert code == 1
    assert [e["path"] for e in doc["not_compared"]] == [["b"]]
    assert doc["not_compared"][0]["reason"].startswith("A: ")
    assert doc["value_diff"] == [] and doc["values_equal"] == 1 and doc["equal"] == 1


# --- the command ----------------------------------------------------------------------------


def test_json_has_exactly_the_contract_keys(tmp_path: Path, capsys) -> None:
    sd = state_dict()
    a, b = save(sd, tmp_path / "a.pth"), save(sd, tmp_path / "b.pth")
    code, doc = cli_json(capsys, a, b)
    assert code == 0
    assert set(doc) >= REQUIRED
    assert set(doc) - REQUIRED == {
        "mode",
        "a_root",
        "b_root",
        "values_compared",
        "values_equal",
        "not_compared",
        "other_diff",
    }
    assert doc["a"] == str(a) and doc["b"] == str(b)
    assert set(doc["prefix"]) == {"a", "b"} and isinstance(doc["equal"], int)
    assert diff_json(diff_checkpoints(open_checkpoint(a), open_checkpoint(b))) == doc


def test_options_reach_the_core(tmp_path: Path, capsys) -> None:
    ck = training_checkpoint(parallel=True)
    later = training_checkpoint(parallel=True)
    later["optimizer"]["state"][1]["exp_avg_sq"] *= 3
    a, b = save(ck, tmp_path / "a.pth"), save(later, tmp_path / "b.pth")
    w = save({k.removeprefix("module."): v for k, v in ck["model"].items()}, tmp_path / "w.pth")
    assert cli_json(capsys, a, b) == core(a, b)
    assert cli_json(capsys, a, b, "--values") == core(a, b, values=True)
    code, doc = cli_json(capsys, a, b, "--values", "--compare", "weights")
    assert (code, doc) == core(a, b, values=True, compare="weights") and code == 0
    assert cli_json(capsys, a, w, "--keep-prefix") == core(a, w, strip_prefix=False)
    code, doc = cli_json(capsys, a, w, "--compare", "whole")
    assert code == 1 and ["optimizer", "state", 0, "step"] in doc["only_a"]


def test_exit_codes_as_a_user_sees_them(tmp_path: Path) -> None:
    sd, other = state_dict(), state_dict(seed=1)
    a, b = save(sd, tmp_path / "a.pth"), save(other, tmp_path / "b.pth")
    same = run_cli("diff", str(a), str(a), "--values")
    assert same.returncode == 0, same.stderr
    assert same.stderr == ""  # no progress bar when stderr is not a terminal
    assert "match" in same.stdout
    assert run_cli("diff", str(a), str(b)).returncode == 0
    differ = run_cli("diff", str(a), str(b), "--values", "--json")
    unchanged = sum(torch.equal(sd[k], other[k]) for k in sd)  # BatchNorm's initial buffers
    assert differ.returncode == 1 and json.loads(differ.stdout)["equal"] == unchanged < len(sd)
    missing = tmp_path / "nope.pth"
    r = run_cli("diff", str(a), str(missing))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == f"ckptui: {missing}: no such file or directory"
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    r = run_cli("diff", str(text), str(a), "--json")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith(f"ckptui: {text}: ")
    assert run_cli("diff", str(a)).returncode == 2  # usage


def test_human_output_fits_80_columns_and_truncates(tmp_path: Path, capsys, monkeypatch) -> None:
    from rich.console import Console

    # On an 80-column terminal (piped output is never wrapped: see test_plain_cli.py).
    monkeypatch.setattr(
        "ckptui.report.text.inspect.stdout_console", lambda: Console(highlight=False, width=80)
    )
    sd = state_dict()
    many = {f"encoder.layers.{i}.attention.output.dense.weight": torch.zeros(2) for i in range(30)}
    a = save({**sd, **many}, tmp_path / "a.pth")
    other = {k: v.clone() for k, v in sd.items()}
    other["fc.weight"] = torch.zeros(5, 8)
    other["conv1.bias"] += 1
    b = save(other, tmp_path / "b.pth")
    code = main(["diff", str(a), str(b), "--values", "--top", "5"])
    out = capsys.readouterr().out
    assert code == 1
    assert all(len(line) <= 80 for line in out.splitlines())
    assert f"differ: {len(sd) - 2} equal · 30 only in A · 1 shape · 1 value differs" in out
    assert "… and 25 more" in out
    assert "[4, 8]" in out and "[5, 8]" in out
    assert f"{max_abs(sd['conv1.bias'], other['conv1.bias']):.4g}" in out


def test_the_core_imports_neither_torch_nor_rich(tmp_path: Path) -> None:
    sd = state_dict()
    a, b = save(sd, tmp_path / "a.pth"), save(sd, tmp_path / "b.pth")
    code = (
        "import sys\n"
        "from ckptui.analysis.diff.compare import diff_checkpoints\n"
        "from ckptui.formats import open_checkpoint\n"
        f"d = diff_checkpoints(open_checkpoint({str(a)!r}), open_checkpoint({str(b)!r}))\n"
        "assert not d.differs\n"
        "bad = [m for m in ('torch', 'numpy', 'textual', 'rich') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    r = run_python(code)
    assert r.returncode == 0, r.stderr


def test_value_diff_lists_only_the_differing_tensors(tmp_path: Path, capsys) -> None:
    torch.manual_seed(0)
    a = {f"layer{i}.weight": torch.randn(4, 4) for i in range(90)}
    b = {k: v.clone() for k, v in a.items()}
    changed = sorted(a)[::6]  # 15 of 90
    for k in changed:
        b[k][0, 0] += 0.5
    pa, pb = save(a, tmp_path / "a.pth"), save(b, tmp_path / "b.pth")
    code, doc = cli_json(capsys, pa, pb, "--values")
    assert code == 1
    truth = {k: max_abs(a[k], b[k]) for k in a}
    assert {e["path"][0]: e["max_abs"] for e in doc["value_diff"]} == {
        k: m for k, m in truth.items() if m
    }
    assert len(doc["value_diff"]) == len(changed) == 15 and doc["values_equal"] == 75
    assert main(["diff", str(pa), str(pb), "--values"]) == 1
    assert "15 values differ" in capsys.readouterr().out
