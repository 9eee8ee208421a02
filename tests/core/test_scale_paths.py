"""The shortcuts issue 16 and 21 took for big files give what the long way gives.

A streamed rewrite that declines late is undone as a whole; the ASCII record lookup agrees with
miniz's byte rule; the central directory's `sizes` agree with its records; the shared empty
`PDict` containers cannot be written behind `set`; the collector pause nests and leaves what
it made to the full collections;
walks over a list of references neither make a path per reference nor miss a tensor reached
through one; a legacy file's storage counts read from the mapping are what a `pread` each reads.
"""

from __future__ import annotations

import dataclasses
import gc
import inspect
import struct
import weakref
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from ckptui.analysis import roles
from ckptui.analysis.training import resume
from ckptui.core.bulk import gc_paused
from ckptui.core.slotinit import fast_init
from ckptui.core.tree import Node, NodeKind, TensorInfo, walk
from ckptui.formats import open_checkpoint
from ckptui.formats.source import Source
from ckptui.formats.torchzip import ZipCheckpoint
from ckptui.formats.zipdir import CentralDirectory
from ckptui.formats.ziplookup import ZipLookup
from ckptui.report.json.inspect import checkpoint_json
from ckptui.unpickler import confined
from ckptui.unpickler.inert import PDict
from ckptui.unpickler.rewrite import PieceReader, Progress, pieces
from tests.core.test_confined import spy_confined


def _text(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def test_a_decline_past_the_first_chunk_is_undone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 300 KB of plain opcodes (more than one 128 KiB prefetch), a global named on the way,
    # then a DICT opcode, which the confined path declines: the inert loop reads it all.
    body = b"](" + _text("x" * 10) * 20_000 + b"cos\nsystem\n" + b"e(K\x01K\x02da."
    path = tmp_path / "late.pkl"
    path.write_bytes(b"\x80\x02" + body)
    seen = spy_confined(monkeypatch)
    fast = checkpoint_json(open_checkpoint(str(path)))
    assert seen == [False]  # it really declined, after the C unpickler had started
    monkeypatch.setattr(confined, "ENABLED", False)
    slow = checkpoint_json(open_checkpoint(str(path)))
    assert fast == slow
    assert any("os.system" in f["message"] for f in fast["findings"])
    assert len(fast["tree"]["children"]) == 20_002


def test_streamed_rewrite_is_the_whole_rewrite() -> None:
    data = b"\x80\x02]q\x00(" + _text("abc") * 50_000 + b"}q\x01e."
    whole = confined.rewrite(data, 0, len(data), 1 << 20)
    assert whole is not None and whole.stop == len(data)
    # the same pieces through the reader, read as the C unpickler reads (peek, then reads)
    done = Progress()
    reader = PieceReader(pieces(data, 0, len(data), 1 << 20, whole.nonce.encode(), done))
    assert reader.peek(7) == whole.stream[:7]
    got = reader.read(3) + reader.read(1 << 17) + reader.readline() + reader.read()
    assert got == whole.stream and reader.read() == b""
    assert done.stop == len(data) and done.exact == whole.exact


@pytest.mark.parametrize(
    ("names", "query", "found"),
    [
        (["a/data.pkl", "a/data/0", "a/DATA/1"], "a/data/1", 2),
        (["a/data.pkl", "a/data/0"], "A/Data.PKL", 0),
        (["a/data.pkl"], "a/data", None),
        (["a/k"], "a/\u212a", None),  # KELVIN SIGN lower-cases to k in str, not in miniz
        (["a/\u212a", "a/k"], "a/\u212a", 0),  # a non-ASCII name: the byte rule
        (["a/\u212a", "a/k"], "A/K", 1),
    ],
)
def test_record_lookup_folds_ascii_only(names: list[str], query: str, found: int | None) -> None:
    assert ZipLookup(names).locate(query) == found
    assert ZipLookup(names, [n.encode() for n in names]).locate(query) == found


def test_central_directory_sizes_are_the_records(tmp_path: Path) -> None:
    path = tmp_path / "sd.pt"
    torch.save({f"w{i}": torch.arange(i + 1, dtype=torch.float32) for i in range(40)}, path)
    z = ZipCheckpoint(Source.open(str(path)))
    assert isinstance(z.infos, CentralDirectory) and z.infos.raw_names is None
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        fallback = CentralDirectory.of_zipfile(infos, zf.start_dir)
        for i, zi in enumerate(infos):
            want = (zi.compress_type, zi.compress_size, zi.file_size, zi.header_offset)
            assert z.infos.sizes(i) == want == fallback.sizes(i)
    ckpt = open_checkpoint(str(path))
    st = ckpt.storages["39"]
    with path.open("rb") as f:
        f.seek(st.data_offset)
        assert f.read(st.nbytes) == torch.arange(40, dtype=torch.float32).numpy().tobytes()
    assert st.record_nbytes == st.nbytes == 40 * 4


def test_empty_pdict_containers_are_shared_and_read_only() -> None:
    a, b = PDict(), PDict()
    assert a.index is b.index and not a.attrs
    with pytest.raises(TypeError):
        a.attrs["x"] = 1  # type: ignore[index]
    a.set("k", 1)
    a.set_attr("_metadata", 2)
    assert a.get("k") == 1 and dict(a.attrs) == {"_metadata": 2}
    assert b.get("k") is None and not b.attrs and not b.index


def test_gc_paused_restores_what_it_found() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner pause found it off: leaves it off
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_gc_paused_leaves_its_objects_to_the_full_collections() -> None:
    """What the block made goes to the oldest generation, so no young collection walks it
    right after, and a cycle made there is still collected (by a full collection)."""
    with gc_paused():
        made = [[] for _ in range(10_000)]
    assert gc.get_count()[0] < 100  # the block's allocations no longer count as young
    young = {id(o) for o in gc.get_objects(generation=0)}
    assert id(made) not in young and id(made[0]) not in young
    assert any(o is made for o in gc.get_objects(generation=2))
    gone: list[Any] = []

    class Box(list):  # type: ignore[type-arg]
        pass

    with gc_paused():
        box = Box()
        box.append(box)
        ref = weakref.ref(box, gone.append)
    del box
    assert ref() is not None  # a cycle: reference counting alone cannot free it
    gc.collect()
    assert ref() is None and gone


def _refs_pickle(path: Path, n: int) -> None:
    """`{"backbone_weights": {"w": w}, "shared": {"lr": 0.1}, "refs": [shared] * n,
    "tied": [w] * 3}`: the weights under a name no list knows, so the search walks the tree."""
    w = torch.ones(3)
    shared = {"lr": 0.1}
    torch.save(
        {"backbone_weights": {"w": w}, "shared": shared, "refs": [shared] * n, "tied": [w] * 3},
        path,
    )


def test_walks_skip_refs_without_losing_a_tensor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "refs.pt"
    _refs_pickle(path, 20_000)
    ckpt = open_checkpoint(str(path))
    every = list(walk(ckpt.root))
    no_refs = list(walk(ckpt.root, refs=False))
    assert len(every) - len(no_refs) == 20_003
    assert all(n.kind is not NodeKind.REF for _, n in no_refs)
    # tensors() still yields the tied weight under each of its paths
    assert [p for p, _ in ckpt.tensors()] == [
        ("backbone_weights", "w"),
        ("tied", 0),
        ("tied", 1),
        ("tied", 2),
    ]
    # the weights search and the resume scan never look at the 20,000 references one by one
    calls = {"state_dict": 0, "rng": 0}
    real_sd, real_rng = roles.is_state_dict, resume._rng_kind

    def count_sd(node: Any) -> bool:
        calls["state_dict"] += 1
        return real_sd(node)

    def count_rng(path: Any, node: Any) -> Any:
        calls["rng"] += 1
        return real_rng(path, node)

    monkeypatch.setattr(roles, "is_state_dict", count_sd)
    monkeypatch.setattr(resume, "_rng_kind", count_rng)
    card = resume.resume_card(open_checkpoint(str(path)))
    assert card.weights is not None and card.weights["path"] == ["backbone_weights"]
    assert card.weights["tensors"] == 1
    assert calls["state_dict"] < 50 and calls["rng"] < 50


def test_fast_init_builds_what_the_dataclass_init_builds() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Plain:
        a: int
        b: str = "x"
        c: tuple[int, ...] = ()
        d: Any = dataclasses.field(default=None, init=False, compare=False)

    @fast_init
    @dataclasses.dataclass(frozen=True, slots=True)
    class Fast:
        a: int
        b: str = "x"
        c: tuple[int, ...] = ()
        d: Any = dataclasses.field(default=None, init=False, compare=False)

    def params(cls: type) -> list[tuple[str, Any]]:
        return [(p.name, p.default) for p in inspect.signature(cls.__init__).parameters.values()]

    assert params(Fast) == params(Plain)
    for args, kwargs in (((1,), {}), ((1, "y"), {"c": (2,)}), ((), {"a": 3, "b": "z"})):
        plain, fast = Plain(*args, **kwargs), Fast(*args, **kwargs)
        assert dataclasses.astuple(plain) == dataclasses.astuple(fast) and fast.d is None
    f = Fast(1)
    assert dataclasses.replace(f, b="q") == Fast(1, "q") and hash(f) == hash(Fast(1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.a = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        Fast()  # type: ignore[call-arg]
    # the model's classes: positional and keyword calls give equal objects
    t = TensorInfo((3,), "float32", (1,), "0", itemsize=4)
    assert t == TensorInfo(shape=(3,), dtype="float32", stride=(1,), storage_key="0")
    assert Node(NodeKind.REF, "dict", 1, (), ("a",))._index is None

    @dataclasses.dataclass(frozen=True, slots=True)
    class Factory:
        a: list[int] = dataclasses.field(default_factory=list)

    with pytest.raises(TypeError):
        fast_init(Factory)


def _pread_count(src: Source, pos: int, count: int, end: int) -> int:
    """`Source.expect_count` as it was: one `pread` of the 8 bytes."""
    raw = src.read_at(pos, 8)
    return struct.unpack("<q", raw)[0] if len(raw) == 8 else -1


@pytest.mark.parametrize("cut", [0, 3, 8, 20, 47, 48])
def test_legacy_counts_from_the_mapping_are_the_preads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cut: int
) -> None:
    """The legacy reader's storage table, from the mapped counts, is what a `pread` per
    count gives, whole or cut anywhere in its storages, and a count that disagrees with the
    pickle is refused the same way."""
    path = tmp_path / "legacy.pt"
    sd = {"a": torch.arange(4.0), "b": torch.ones(2, dtype=torch.int64), "c": torch.zeros(3)}
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    tail = 8 * 3 + 16 + 16 + 12  # the three counts and their bytes end the file
    variants = {"cut": data[: len(data) - cut]}
    bad = bytearray(data)
    bad[len(data) - tail : len(data) - tail + 8] = struct.pack("<q", 5)  # a wrong first count
    variants["bad"] = bytes(bad)
    for name, blob in variants.items():
        p = tmp_path / f"{name}.pt"
        p.write_bytes(blob)

        def table(path: Path = p) -> Any:
            try:
                ckpt = open_checkpoint(str(path))
            except Exception as e:  # noqa: BLE001  # the message is what is compared
                return type(e).__name__, str(e)
            kinds = [f.kind for f in ckpt.findings]
            return dict(ckpt.storages), kinds

        mapped = table()
        with monkeypatch.context() as m:
            m.setattr(Source, "expect_count", _pread_count)
            assert table() == mapped
        if name == "bad":
            assert mapped[0] == "CorruptFile" and "holds 5 elements" in mapped[1]
        elif cut:
            assert "truncated" in mapped[1]
            assert any(s.data_offset is None for s in mapped[0].values())
        else:
            assert all(s.data_offset is not None for s in mapped[0].values())
