"""The confined C unpickler (`unpickler/confined.py`) against the inert loop it stands in for.

Every real checkpoint of the corpus is opened both ways and the whole `inspect --json` document
(tree, tensors, storages, findings, the weights-only verdict) must be identical; each must also
really have gone through the C path, so the comparison is not vacuous. Hand-built pickles cover
the patterns the C unpickler treats more leniently than the inert loop (a SETITEM on a list, an
empty SETITEMS, BUILD on a tuple, a huge memo index, ...): the outcome must again be the inert
loop's, never the C unpickler's.
"""

from __future__ import annotations

import collections
import pickle
import struct
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch

from ckptui.core.errors import CkptError
from ckptui.formats import open_checkpoint
from ckptui.report.json.inspect import checkpoint_json
from ckptui.unpickler import confined


class Pair(NamedTuple):  # pickled by reference: a placeholder in the tree
    a: int
    b: str


class Box:  # a user class torch.load would need the source of
    def __init__(self) -> None:
        self.w = torch.ones(2)
        self.tags = {"x", "y"}


def _outcome(path: Path, enabled: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Any]:
    monkeypatch.setattr(confined, "ENABLED", enabled)
    try:
        return "ok", checkpoint_json(open_checkpoint(str(path)))
    except CkptError as e:
        return "error", str(e)


def spy_confined(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record, per pickle, whether the confined path read it."""
    seen: list[bool] = []
    real = confined.ConfinedUnpickler._confined

    def spy(self: Any, pos: int, end: int) -> Any:
        got = real(self, pos, end)
        seen.append(got is not None)
        return got

    monkeypatch.setattr(confined.ConfinedUnpickler, "_confined", spy)
    return seen


def _both(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[bool]]:
    seen = spy_confined(monkeypatch)
    fast = _outcome(path, True, monkeypatch)
    used = list(seen)
    slow = _outcome(path, False, monkeypatch)
    assert fast == slow
    return fast, used


def _corpus(d: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(5, 4)).sum().backward()
    opt.step()
    tied = torch.nn.Linear(3, 3, bias=False)
    base = torch.arange(24.0)
    objs: dict[str, tuple[Any, dict[str, Any]]] = {
        "state_dict": (net.state_dict(), {}),
        "whole_module": (net, {}),
        "optimizer": (opt.state_dict(), {}),
        "lightning": (
            {
                "epoch": 3,
                "global_step": 120,
                "pytorch-lightning_version": "2.4.0",
                "state_dict": {f"model.{k}": v for k, v in net.state_dict().items()},
                "optimizer_states": [opt.state_dict()],
                "lr_schedulers": [{"last_epoch": 3, "_step_count": 4}],
                "hyper_parameters": {"lr": 1e-3, "layers": [4, 3, 2], "name": "run"},
                "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(0.5)}},
            },
            {},
        ),
        "legacy": (net.state_dict(), {"_use_new_zipfile_serialization": False}),
        "legacy_module": (net, {"_use_new_zipfile_serialization": False}),
        "numpy": (
            {
                "a": np.arange(6, dtype=np.float32).reshape(2, 3),
                "s": np.float64(2.5),
                "i": np.int64(7),
                "rng": np.random.RandomState(0).get_state(),
            },
            {},
        ),
        "tied": ({"a": tied.weight, "b": tied.weight, "m": torch.nn.Sequential(tied, tied)}, {}),
        "views": ({"base": base, "head": base[:10], "t": base.view(4, 6).t()}, {}),
        "ordered": (collections.OrderedDict((f"k{i}", torch.zeros(1)) for i in range(2000)), {}),
        "containers": (
            {
                "set": {1, 2, 3},
                "frozen": frozenset({"a"}),
                "bytes": b"\x00\x01" * 10,
                "long_bytes": b"x" * 500,
                "tuple": (1, (2.5, None), [True, "s"]),
                "list": list(range(3000)),
                "pair": Pair(1, "b"),
                "box": Box(),
                "big": 1 << 70,
                "dtype": torch.float16,
                "device": torch.device("cuda", 1),
            },
            {},
        ),
        "protocol4": (net.state_dict(), {"pickle_protocol": 4}),
        "param": (torch.nn.Parameter(torch.ones(3)), {}),
    }
    paths = {}
    for name, (obj, kw) in objs.items():
        paths[name] = d / f"{name}.pt"
        torch.save(obj, paths[name], **kw)
    paths["plain"] = d / "plain.pkl"
    with paths["plain"].open("wb") as f:
        pickle.dump({"lr": 0.1, "steps": list(range(2000)), "name": "x" * 300}, f, protocol=4)
    paths["plain_p2"] = d / "plain_p2.pkl"
    with paths["plain_p2"].open("wb") as f:
        pickle.dump({"lr": 0.1, "d": {str(i): i for i in range(1000)}}, f, protocol=2)
    return paths


def test_corpus_opens_the_same_both_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, path in _corpus(tmp_path).items():
        (kind, doc), used = _both(path, monkeypatch)
        assert kind == "ok", (name, doc)
        assert used and all(used), (name, used)
        assert doc["tree"], name


def test_weights_only_verdict_skips_the_replay_only_when_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _corpus(tmp_path)
    free = {}
    for name in ("state_dict", "optimizer", "legacy", "whole_module", "numpy", "protocol4"):
        ckpt = open_checkpoint(str(paths[name]))
        free[name] = ckpt.memo("weights_only_replay_free", lambda: False)
    # plain data that torch.load(weights_only=True) takes: no second pass
    assert free["state_dict"] and free["optimizer"] and free["legacy"]
    # a class torch refuses, numpy globals, opcodes past protocol 2: the replay decides
    assert not free["whole_module"] and not free["numpy"] and not free["protocol4"]


def _pickle_file(d: Path, body: bytes, name: str = "p.pkl") -> Path:
    p = d / name
    p.write_bytes(b"\x80\x02" + body)
    return p


_HOSTILE = {
    # SETITEM on a list: the C unpickler would call list.__setitem__ (and succeed)
    "setitem_on_list": b"]K\x00K\x00s.",
    # MARK SETITEMS with nothing between, on a tuple: C skips the empty batch unchecked
    "empty_setitems_on_tuple": b")(u.",
    "empty_appends_on_dict": b"}(e.",
    "empty_appends_on_list": b"](e.",
    "empty_setitems_on_dict": b"}(u.",
    # BUILD with a None state on a tuple: pickle's default BUILD does nothing
    "build_none_on_tuple": b")Nb.",
    "build_on_list": b"]}b.",
    # a LONG_BINPUT index of 2**28: the C memo would be 4 GiB
    "memo_bomb": b"N" + b"r" + struct.pack("<I", 1 << 28) + b".",
    # an args tuple memoized and used by two calls: the second is a ref to the first
    "shared_args": b"(cos\nsystem\nq\x00(X\x02\x00\x00\x00lsq\x01tq\x02Rh\x00h\x02Rl.",
    # a global called through NEWOBJ with args that are not a tuple
    "newobj_bad_args": b"cos\nsystem\nN\x81.",
    "reduce_of_a_result": b"cos\nsystem\n)R)R.",
    "unhashable_key": b"}]K\x01s.",
    "deep_key": b"}" + b"N" + b"\x85" * 100 + b"K\x01s.",
    "mark_then_proto": b"](\x80\x02e.",
    "ext_code": b"\x82\x01.",
    "dict_opcode": b"(K\x01K\x02d.",
    "setstate_after_build": (
        b"cbuiltins\nobject\n)\x81}X\x0c\x00\x00\x00__setstate__cos\nsystem\nsbX\x02\x00\x00\x00lsb."
    ),
}


@pytest.mark.parametrize("name", sorted(_HOSTILE))
def test_hostile_pickle_outcome_is_the_inert_loops(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _both(_pickle_file(tmp_path, _HOSTILE[name]), monkeypatch)


def test_memo_bomb_never_reaches_the_c_unpickler(tmp_path: Path) -> None:
    body = _HOSTILE["memo_bomb"]
    assert confined.rewrite(b"\x80\x02" + body, 0, len(body) + 2, 1 << 20) is None


def test_a_pickle_of_rewritten_opcodes_only_is_declined() -> None:
    data = b"\x80\x02]" + b"}a" * 100_000 + b"."  # a list of 100,000 empty dicts
    assert confined.rewrite(data, 0, len(data), 1 << 20) is None
    small = b"\x80\x02]" + b"}a" * 10 + b"."
    assert confined.rewrite(small, 0, len(small), 1 << 20) is not None


def test_a_frame_crossing_opcode_is_declined() -> None:
    # FRAME of 3 bytes, then a 5-byte BINUNICODE straddling its end
    data = b"\x80\x04\x95\x03\x00\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00a."
    assert confined.rewrite(data, 0, len(data), 1 << 20) is None
    framed = pickle.dumps(["a" * 10, {"k": 1}], protocol=4)
    got = confined.rewrite(framed, 0, len(framed), 1 << 20)
    assert got is not None and got.stop == len(framed) and not got.exact
