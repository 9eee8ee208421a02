"""torch.save's tensors fused in the confined rewrite (`unpickler.fast_pattern`, issue 16) read
exactly as unfused and as the inert loop reads them.

Real `torch.save` files of many shapes are opened three ways (fused, the confined path without
fusing, the inert loop alone) and must give the same JSON, findings included; hand-made near
misses (a dropped memo slot read back, a foreign callable where the pattern has torch's, a
protocol 4 opcode after fused tensors) must decline or take the general calls, never differ.
"""

from __future__ import annotations

import collections
import struct
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from ckptui.core.errors import CkptError
from ckptui.formats import open_checkpoint
from ckptui.report.json.inspect import checkpoint_json
from ckptui.unpickler import confined, fast_pattern, rewrite
from tests.core.test_confined import spy_confined


def _json(path: Path) -> Any:
    try:
        return "ok", checkpoint_json(open_checkpoint(str(path)))
    except CkptError as e:
        return "error", str(e)


def _three_ways(
    path: Path, monkeypatch: pytest.MonkeyPatch, small: bool = True
) -> tuple[Any, int, list[bool]]:
    """(the JSON, fused tensors, whether the confined path read each pickle), after checking
    that fused, unfused and the inert loop agree; `small`: fuse from the first tensor on,
    not after `FUSE_AFTER` calls."""
    calls = [0]
    real = confined.ConfinedUnpickler.confined_fused

    def counting(self: Any, func: Any, args: Any) -> Any:
        calls[0] += 1
        return real(self, func, args)

    monkeypatch.setattr(confined.ConfinedUnpickler, "confined_fused", counting)
    monkeypatch.setattr(rewrite, "FUSE_AFTER", 0 if small else rewrite.FUSE_AFTER)
    seen = spy_confined(monkeypatch)
    fused = _json(path)
    used = list(seen)
    n = calls[0]
    monkeypatch.setattr(rewrite, "FUSE", False)
    unfused = _json(path)
    monkeypatch.setattr(confined, "ENABLED", False)
    inert = _json(path)
    assert fused == unfused
    assert fused == inert
    return fused, n, used


def _many(n: int) -> dict[str, torch.Tensor]:
    return {f"layers.{i}.w": torch.full((3,), float(i)) for i in range(n)}


def _views() -> dict[str, Any]:
    base = torch.arange(60, dtype=torch.float32)
    return {
        "whole": base,
        "slice": base[10:20],  # an offset into a shared storage
        "strided": base[::3],  # a non-contiguous stride
        "grid": base.view(6, 10)[1:4, 2:7],  # 2-D, offset and strides
        "cube": base.view(3, 4, 5).transpose(0, 2),
        "four_d": base.view(1, 3, 4, 5),  # 4 dims: MARK ... TUPLE, not the fused shape
        "scalar": torch.tensor(3.5),  # size () and stride ()
        "empty": torch.zeros(0),
    }


def _dtypes() -> dict[str, torch.Tensor]:
    kinds = [torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.uint8]
    kinds += [torch.int16, torch.int32, torch.int64, torch.bool, torch.complex64]
    return {str(k): torch.ones(4, dtype=k) for k in kinds}


def _training() -> dict[str, Any]:
    model = torch.nn.Sequential(*(torch.nn.Linear(4, 4) for _ in range(40)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}


def _grads() -> dict[str, Any]:
    out: dict[str, Any] = {f"p{i}": torch.nn.Parameter(torch.ones(2) * i) for i in range(300)}
    out.update({f"g{i}": torch.ones(3, requires_grad=True) for i in range(300)})
    out["frozen"] = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    return out


def _nested() -> dict[str, Any]:
    shared = torch.arange(10.0)
    return {
        "list": [torch.ones(i + 1) for i in range(300)],
        "tuple": tuple(torch.zeros(2) for _ in range(300)),
        "od": collections.OrderedDict((f"k{i}", torch.ones(1)) for i in range(300)),
        "tied": {"a": shared, "b": shared, "c": shared[2:]},  # the same tensor twice
        "mixed": {"n": 1, "s": "text", "f": 0.5, "t": torch.ones(2), "none": None},
    }


CASES = {
    "1,000 plain": lambda: _many(1000),
    "2,500 plain (SETITEMS batches)": lambda: _many(2500),
    "views": lambda: {**_many(300), **_views()},
    "dtypes": lambda: {**_many(300), **_dtypes()},
    "training": _training,
    "requires_grad": _grads,
    "nested": _nested,
}


@pytest.mark.parametrize("name", list(CASES))
def test_real_files_read_the_same_three_ways(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    path = tmp_path / "ckpt.pt"
    torch.save(CASES[name](), path)
    (status, _), fused, used = _three_ways(path, monkeypatch)
    assert status == "ok"
    assert used == [True]  # the confined path read it, fused
    assert fused > 0  # ...and fused some tensors (those after the first ~30)


def test_the_whole_module_pickle_reads_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "model.pt"
    torch.save(torch.nn.Sequential(*(torch.nn.Linear(2, 2) for _ in range(200))), path)
    (status, got), _, used = _three_ways(path, monkeypatch)
    assert (status, used) == ("ok", [True])
    assert any(f["kind"] == "whole_module" for f in got["findings"])


def test_a_big_file_is_fused_nearly_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.pt"
    torch.save(_many(5000), path)
    _, fused, used = _three_ways(path, monkeypatch, small=False)
    assert used == [True]
    assert fused == 4000  # all after the first 1,000 (`FUSE_AFTER` calls)


def test_a_small_file_is_not_fused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Compiling the patterns costs more than fusing a few hundred tensors saves.
    path = tmp_path / "small.pt"
    torch.save(_many(900), path)
    _, fused, used = _three_ways(path, monkeypatch, small=False)
    assert (fused, used) == (0, [True])


# -- hand-made near misses ---------------------------------------------------------------------


def _text(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _put(i: int) -> bytes:
    return b"r" + struct.pack("<I", i)


def _get(i: int) -> bytes:
    return b"j" + struct.pack("<I", i)


def _span(f: int, cls: int, hooks: int, d: int, e: int) -> bytes:
    """One tensor exactly as the pattern takes it (F and the globals by LONG_BINGET)."""
    return (
        _get(f) + b"((" + _text("storage") + _get(cls) + _text("0") + _text("cpu") + b"K\x03t"
        + b"Q" + b"K\x00" + b"K\x03\x85" + b"K\x01\x85" + b"\x89" + _get(hooks) + b")R"
        + _put(d) + b"t" + _put(e) + b"R"
    )  # fmt: skip


def _globals(f: str = "torch._utils\n_rebuild_tensor_v2") -> bytes:
    """F at memo 0, the storage class at 1, OrderedDict at 2 (left on the root tuple)."""
    return (
        b"c" + f.encode() + b"\n" + _put(0) + b"ctorch\nFloatStorage\n" + _put(1)
        + b"ccollections\nOrderedDict\n" + _put(2)
    )  # fmt: skip


def _zip_with(tmp_path: Path, body: bytes) -> Path:
    """A torch.save zip of one 3-float tensor, its data.pkl replaced by `PROTO 2 ( body t .`."""
    real = tmp_path / "real.pt"
    torch.save({"w": torch.ones(3)}, real)
    path = tmp_path / "made.pt"
    with zipfile.ZipFile(real) as src, zipfile.ZipFile(path, "w") as dst:
        for zi in src.infolist():
            data = src.read(zi)
            if zi.filename.endswith("/data.pkl"):
                data = b"\x80\x02(" + body + b"t."
            dst.writestr(zi.filename, data)
    return path


def test_the_hand_made_span_is_fused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _zip_with(tmp_path, _globals() + _span(0, 1, 2, 300, 301))
    (status, got), fused, used = _three_ways(path, monkeypatch)
    assert (status, fused, used) == ("ok", 1, [True])
    tensor = got["tree"]["children"][-1]
    assert tensor["shape"] == [3]


def test_a_dropped_slot_read_back_declines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # memo 300 holds "old" before the span reuses it for the hooks dict; the GET after it must
    # give the hooks (an OrderedDict), as the inert loop does, never "old".
    body = _globals() + _text("old") + _put(300) + _span(0, 1, 2, 300, 301) + _get(300)
    path = _zip_with(tmp_path, body)
    (status, got), _, used = _three_ways(path, monkeypatch)
    assert status == "ok"
    assert used == [False]  # the fused attempt declined at STOP
    last = got["tree"]["children"][-1]
    assert last["type"] == "collections.OrderedDict"


def test_the_read_back_check_is_what_keeps_it_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same file with the STOP check blinded: the fused read differs. (So the test above
    # fails without the check.)
    body = _globals() + _text("old") + _put(300) + _span(0, 1, 2, 300, 301) + _get(300)
    path = _zip_with(tmp_path, body)
    inert = _json(path)
    monkeypatch.setattr(rewrite, "FUSE_AFTER", 0)
    monkeypatch.setattr(rewrite, "LONG_GET", fast_pattern.re.compile(rb"(?!)(.)"))
    assert _json(path) != inert


def test_a_slot_a_binget_can_name_is_never_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A LONG_BINPUT of index 7 can be read back by the 1-byte BINGET 7, which the STOP check
    # does not look for: such a span is not fused at all.
    body = _globals() + _text("old") + _put(7) + _span(0, 1, 2, 7, 301) + b"h\x07"
    path = _zip_with(tmp_path, body)
    (status, got), fused, used = _three_ways(path, monkeypatch)
    assert (status, fused, used) == ("ok", 0, [True])
    assert got["tree"]["children"][-1]["type"] == "collections.OrderedDict"


def test_a_false_alarm_in_a_string_is_told_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `j` and a dropped slot's bytes inside a string (or among an optimizer's parameter
    # indices) read nothing: the slot is PUT only where it was dropped, so the file stays on
    # the confined path (it once declined, sending a 30,000-parameter training file to the
    # inert loop at 4x the cost).
    body = _globals() + _span(0, 1, 2, 300, 301) + _text("j" + "\x2d\x01\x00\x00")
    path = _zip_with(tmp_path, body)
    (status, _), fused, used = _three_ways(path, monkeypatch)
    assert (status, fused, used) == ("ok", 1, [True])


def test_a_real_read_of_a_slot_put_once_goes_to_the_inert_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real LONG_BINGET of the dropped hooks slot, never PUT elsewhere: the rewritten stream
    # never fills it, the C unpickler raises, and the inert loop reads the file (exactly).
    body = _globals() + _span(0, 1, 2, 300, 301) + _get(300)
    path = _zip_with(tmp_path, body)
    (status, got), _, used = _three_ways(path, monkeypatch)
    assert (status, used) == ("ok", [False])
    assert got["tree"]["children"][-1]["type"] == "collections.OrderedDict"


@pytest.mark.parametrize("f", ["os\nsystem", "torch._utils\n_rebuild_parameter", "builtins\neval"])
def test_another_callable_as_f_takes_the_general_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, f: str
) -> None:
    path = _zip_with(tmp_path, _globals(f) + _span(0, 1, 2, 300, 301))
    (status, got), fused, _ = _three_ways(path, monkeypatch)
    assert fused == 1  # fused, and the same outcome as the two REDUCEs give
    if f == "torch._utils\n_rebuild_parameter":  # a recorder refusing 6 arguments
        assert status == "error"
        assert "_rebuild_parameter needs a tensor" in got
    else:
        assert status == "ok"
        assert any(f.replace("\n", ".") in x["message"] for x in got["findings"])


def test_other_hooks_take_the_general_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = (
        b"ctorch._utils\n_rebuild_tensor_v2\n" + _put(0) + b"ctorch\nFloatStorage\n" + _put(1)
        + b"cos\nsystem\n" + _put(2) + _span(0, 1, 2, 300, 301)
    )  # fmt: skip
    path = _zip_with(tmp_path, body)
    (status, got), fused, _ = _three_ways(path, monkeypatch)
    assert (status, fused) == ("ok", 1)
    assert any("os.system" in x["message"] for x in got["findings"])


def test_a_plain_tensor_first_does_not_let_other_names_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plain pair is remembered (`confined_fused`): a later tensor naming other hooks or
    another F, with the same storage class, still takes the general calls and is reported."""
    body = (
        _globals() + b"cos\nsystem\n" + _put(3) + b"cbuiltins\neval\n" + _put(4)
        + _span(0, 1, 2, 300, 301) + _span(0, 1, 3, 302, 303) + _span(4, 1, 2, 304, 305)
    )  # fmt: skip
    path = _zip_with(tmp_path, body)
    (status, got), fused, _ = _three_ways(path, monkeypatch)
    assert (status, fused) == ("ok", 3)
    messages = " ".join(x["message"] for x in got["findings"])
    assert "os.system" in messages and "builtins.eval" in messages


def test_a_protocol_4_opcode_after_a_fused_tensor_declines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MEMOIZE numbers its slot by how many are filled, which the dropped PUTs change.
    body = _globals() + _span(0, 1, 2, 300, 301) + _text("x") + b"\x94" + b"h\x03"
    path = _zip_with(tmp_path, body)
    _, _, used = _three_ways(path, monkeypatch)
    assert used == [False]


def test_a_fused_call_cannot_be_forged() -> None:
    # The file's own NONE NONE TUPLE3 TUPLE1 REDUCE is rewritten like any REDUCE: only the
    # rewrite makes a call of three.
    body = b"\x80\x02cos\nsystem\n" + fast_pattern.FUSED_CALL[1:] + b"."
    done = rewrite.Progress()
    stream = b"".join(rewrite.pieces(body, 0, len(body), 1 << 20, b"n" * 24, done))
    assert stream.endswith(b"NN\x87\x85\x85\x85R.")


@pytest.mark.parametrize("name", ["1,000 plain", "views", "nested"])
def test_legacy_files_read_the_same_three_ways(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    # The legacy format's persistent ids carry a sixth field (None): the same pattern.
    path = tmp_path / "legacy.pt"
    torch.save(CASES[name](), path, _use_new_zipfile_serialization=False)
    (status, _), fused, used = _three_ways(path, monkeypatch)
    assert status == "ok"
    assert True in used  # the main pickle went the confined way
    assert fused > 0
