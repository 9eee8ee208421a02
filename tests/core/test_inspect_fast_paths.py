"""The short cuts `inspect --json` takes at 100,000 tensors (issue 16) give what the long way
gives: the JSON text (batch boundaries included), the weights' totals and tensors, a scalar
tensor's value without numpy, the one-wide alignment, and a start-up without rich or numpy.

Every checkpoint is a real `torch.save` in tmp_path."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from ckptui.analysis.index import bytes_below, tensor_totals
from ckptui.analysis.training.optim_align import align_shapes
from ckptui.analysis.training.optim_map import map_optimizers, scalar_value
from ckptui.core import tree
from ckptui.core.tree import Checkpoint, NodeKind, walk
from ckptui.formats import open_checkpoint
from ckptui.report.json import inspect as jsonview
from ckptui.report.json.training import optimizer_params_json
from ckptui.tensors.values import tensor_stats
from tests.conftest import TinyNet, run_python, training_checkpoint


def _mixed(tmp_path: Path) -> Checkpoint:
    """Tied weights, a view and a second view of one storage, a sparse tensor (a tensor row
    with parts), nested containers, values and a whole module."""
    w = torch.randn(5, 4)
    sd = {
        "a.weight": w,
        "b.weight": w,  # the same tensor: a REF
        "view": w[1:3],  # another view of w's storage
        "view2": w[1:3].clone()[0:1],
        "sparse": torch.eye(3).to_sparse(),
        "nested": {"x": torch.ones(2), "n": 3, "l": [torch.zeros(1), {"y": w}]},
        "net": TinyNet(),
        "epoch": 4,
        "ünï": torch.zeros(2, dtype=torch.float16),
    }
    p = tmp_path / "mixed.pt"
    torch.save(sd, p)
    return open_checkpoint(p)


def test_weights_totals_are_the_walks_they_replace(tmp_path: Path) -> None:
    ckpt = _mixed(tmp_path)
    for path, node in [((), ckpt.root), *walk(ckpt.root)]:
        below = [p for p, _ in ckpt.tensors() if p[: len(path)] == path and p != path]
        nbytes, count, missing = tensor_totals(ckpt, node)
        assert nbytes == bytes_below(node)
        if node.kind is NodeKind.TENSOR:
            assert count == 1
        else:
            assert count == len(below), path
        assert missing == 0
    # the tied pair and the repeated view are counted once: w, w[1:3], the clone, the rest
    top = tensor_totals(ckpt, ckpt.root)[0]
    again = sum(t.nbytes for p, t in ckpt.tensors() if p not in (("b.weight",),))
    assert top < again


@pytest.mark.parametrize(
    "extra",
    [
        {},  # every leaf on its own storage: counted in bulk
        {"tied": "w0"},  # a leaf saved twice (a REF): the walk takes the ref
        {"nested": {"deep": "w1"}},  # a storage of a leaf viewed again deeper down
        {"view": "w2[1:]"},  # two leaves viewing one storage: not bulk, the walk decides
        {"meta": "meta"},  # a meta leaf: not bulk
        {"empty": "empty", "empty2": "empty"},  # zero-byte leaves claim no storage
    ],
)
def test_bulk_leaf_totals_are_the_walks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: dict
) -> None:
    """`_totals` counts a big mapping's childless tensors in bulk; every total is the walk's."""
    from ckptui.analysis import index

    sd: dict = {f"w{i}": torch.randn(3, i % 5 + 1) for i in range(index._BULK + 10)}
    make = {
        "w0": lambda: sd["w0"],
        "w1": lambda: sd["w1"][1:],
        "w2[1:]": lambda: sd["w2"][1:],
        "meta": lambda: torch.empty(4, 4, device="meta"),
        "empty": lambda: torch.zeros(0),
    }
    for key, what in extra.items():
        sd[key] = (
            {k: make[v]() for k, v in what.items()} if isinstance(what, dict) else make[what]()
        )
    p = tmp_path / "flat.pt"
    torch.save(sd, p)
    ckpt = open_checkpoint(p)
    bulk = tensor_totals(ckpt, ckpt.root), bytes_below(ckpt.root)
    monkeypatch.setattr(index, "_BULK", 10**9)
    assert (tensor_totals(ckpt, ckpt.root), bytes_below(ckpt.root)) == bulk
    assert bulk[0][1] == len(list(ckpt.tensors()))


@pytest.mark.parametrize(
    "extra",
    [
        {},  # a flat state dict: its children, without the walk
        {"meta": {"epoch": 3, "names": ["a", "b"]}},  # containers of no tensor beside it
        {"tied": "w0"},  # a REF: the walk
        {"nested": {"x": "w1"}},  # a tensor deeper down: the walk
        {"sparse": "sparse"},  # a tensor with parts: the walk
    ],
)
def test_json_tensor_pairs_are_the_walks(tmp_path: Path, extra: dict) -> None:
    sd: dict = {f"w{i}": torch.randn(2, i % 3 + 1) for i in range(tree._FLAT + 5)}
    make = {"w0": lambda: sd["w0"], "w1": lambda: torch.ones(4), "sparse": torch.eye(2).to_sparse}
    for key, what in extra.items():
        if isinstance(what, dict):
            sd[key] = {k: make[v]() if isinstance(v, str) else v for k, v in what.items()}
        else:
            sd[key] = make[what]()
    p = tmp_path / "flat.pt"
    torch.save(sd, p)
    ckpt = open_checkpoint(p)
    assert list(ckpt.tensors()) == list(ckpt._walk_tensors(None))
    rows = jsonview.checkpoint_json(ckpt)["tensors"]
    assert [r["path"] for r in rows] == [list(p) for p, _ in ckpt.tensors()]


def test_tensors_below_a_path_is_the_whole_walk_cut_to_the_subtree(tmp_path: Path) -> None:
    ckpt = _mixed(tmp_path)
    every = list(ckpt.tensors())
    for path, node in [((), ckpt.root), *walk(ckpt.root)]:
        if not node.children:
            continue
        want = [(p, t) for p, t in every if p[: len(path)] == path and len(p) > len(path)]
        assert list(ckpt.tensors(below=path)) == want, path
    # a REF inside the subtree to a tensor saved before it, outside: still yielded
    assert [p for p, _ in ckpt.tensors(below=("nested",))] == [
        ("nested", "x"),
        ("nested", "l", 0),
        ("nested", "l", 1, "y"),
    ]
    assert list(ckpt.tensors(below=("no such key",))) == []


def test_tensor_rows_are_tensor_json(tmp_path: Path) -> None:
    ckpt = _mixed(tmp_path)
    rows = list(jsonview._tensor_rows(ckpt))
    assert rows == [jsonview.tensor_json(ckpt, p, t) for p, t in ckpt.tensors()]
    assert any("state_dict_key" in r for r in rows)  # the whole module's tensors
    # the tree's childless tensor rows are `_tensor_leaf`'s
    tree = jsonview.checkpoint_json(ckpt)["tree"]
    written = {}
    stack = [((), tree)]
    while stack:
        path, entry = stack.pop()
        for child in entry.get("children", ()):
            stack.append(((*path, child["key"]), child))
            if child["kind"] == "tensor" and "children" not in child:
                written[(*path, child["key"])] = child
    leaves = [(p, n) for p, n in walk(ckpt.root) if n.kind is NodeKind.TENSOR and not n.children]
    assert len(written) == len(leaves) > 15
    for path, node in leaves:
        want = jsonview._tensor_leaf(node)
        assert written[path] == {**want, "shape": list(want["shape"])}, path


def _reference_children(children: list, batch: int) -> str:
    """How `inspect --json` has always joined a container's children: a run of childless
    tensors in batches of `batch`, compact inside a batch (orjson), `", "` everywhere else."""
    out, run, first = [], [], True

    def flush() -> None:
        nonlocal first, run
        if run:
            out.append(("" if first else ", ") + ",".join(run))
            first, run = False, []

    for text, is_leaf in children:
        if is_leaf:
            run.append(text)
            if len(run) == batch:
                flush()
            continue
        flush()
        out.append(("" if first else ", ") + text)
        first = False
    flush()
    return "".join(out)


@pytest.mark.parametrize("batch", [1, 2, 3, 2000])
def test_tree_text_keeps_its_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    sd: dict = {f"t{i}": torch.zeros(i % 3 + 1) for i in range(5)}
    sd["v"] = 1
    sd.update({f"u{i}": torch.zeros(1) for i in range(4)})
    sd["empty"] = {}
    sd["state"] = {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(2)}}
    p = tmp_path / "runs.pt"
    torch.save(sd, p)
    ckpt = open_checkpoint(p)
    monkeypatch.setattr(jsonview, "_BATCH", batch)

    def leaf(key: str, shape: list[int], nbytes: int) -> str:
        return (
            f'{{"key":"{key}","kind":"tensor","type":"torch.Tensor","shape":{json.dumps(shape)},'
            f'"dtype":"float32","device":"cpu","nbytes":{nbytes}}}'.replace(" ", "")
        )

    kids = [(leaf(f"t{i}", [i % 3 + 1], 4 * (i % 3 + 1)), True) for i in range(5)]
    kids.append(('{"key": "v", "kind": "value", "type": "int", "value": 1}', False))
    kids += [(leaf(f"u{i}", [1], 4), True) for i in range(4)]
    kids.append(('{"key": "empty", "kind": "mapping", "type": "dict", "children": []}', False))
    entry = _reference_children(
        [(leaf("step", [], 4), True), (leaf("exp_avg", [2], 8), True)], batch
    )
    state = '{"key": 0, "kind": "mapping", "type": "dict", "children": [' + entry + "]}"
    kids.append(
        ('{"key": "state", "kind": "mapping", "type": "dict", "children": [' + state + "]}", False)
    )
    want = '{"key": null, "kind": "mapping", "type": "dict", "children": ['
    want += _reference_children(kids, batch) + "]}"
    assert b"".join(jsonview._node(ckpt.root)).decode() == want


def test_optimizer_params_rows_are_the_entries_fields(tmp_path: Path) -> None:
    p = tmp_path / "train.pt"
    torch.save(training_checkpoint(), p)
    mappings = map_optimizers(open_checkpoint(p))
    rows = optimizer_params_json(mappings)
    fields = ("index", "key", "group", "param", "confidence", "why")
    assert rows == [
        {"optimizer_path": list(m.optimizer_path), **{f: getattr(e, f) for f in fields}}
        for m in mappings
        for e in m.entries
    ]
    assert len(rows) == 6 and all(r["confidence"] == "by-shape" for r in rows)


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.int64, torch.int32, torch.bfloat16, torch.uint8]
)
def test_a_scalar_tensor_reads_as_tensor_stats_reads_it(tmp_path: Path, dtype: torch.dtype) -> None:
    big = torch.arange(10, dtype=torch.float64).mul(1.7).to(dtype)
    sd = {"zero_d": big[3].clone(), "one": big[4:5].clone(), "view": big[6:7], "big": big}
    p = tmp_path / "scalars.pt"
    torch.save(sd, p)
    ckpt = open_checkpoint(p)
    for key in ("zero_d", "one", "view"):
        node = ckpt.find((key,))
        assert node is not None
        head = tensor_stats(ckpt, node.value).head[0]
        head = int(head) if isinstance(head, float) and head.is_integer() else head
        assert scalar_value(ckpt, node) == head == sd[key].item(), key


def test_a_scalar_past_its_file_is_not_read(tmp_path: Path) -> None:
    p = tmp_path / "step.pt"
    torch.save({"step": torch.tensor(7.0)}, p)
    ckpt = open_checkpoint(p)
    node = ckpt.find(("step",))
    assert node is not None and scalar_value(ckpt, node) == 7
    st = ckpt.storages[node.value.storage_key]
    assert st.data_offset is not None
    p.write_bytes(p.read_bytes()[: st.data_offset + 2])  # cut inside the value since opened
    assert scalar_value(ckpt, node) is None


def test_inspect_json_of_a_training_checkpoint_imports_no_numpy_or_rich(tmp_path: Path) -> None:
    p = tmp_path / "train.pt"
    torch.save(training_checkpoint(), p)
    code = (
        "import io, sys, contextlib\n"
        "from ckptui.cli.main import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        f"    assert main(['inspect', '--json', {str(p)!r}]) == 0\n"
        "bad = [m for m in ('numpy', 'rich', 'textual', 'torch') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print(out.getvalue())\n"
    )
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["param_groups"][0]["step"] == 1  # Adam's step tensor, read without numpy
    assert doc["resume"]["optimizers"][0]["step"] == 1


def _placements(seq: list, cands: list) -> list[tuple[int, ...]]:
    """Every order-preserving placement of `seq` on `cands`, by brute force."""
    return [
        pos
        for pos in itertools.combinations(range(len(cands)), len(seq))
        if all(s is None or s == cands[j] for s, j in zip(seq, pos, strict=True))
    ]


def test_alignment_counts_what_brute_force_counts() -> None:
    shapes = [(2,), (3,), None]
    for n in range(5):
        for cands in itertools.product([(2,), (3,)], repeat=n):
            for m in range(n + 1):
                for seq in itertools.product(shapes, repeat=m):
                    got = align_shapes(list(seq), list(cands))
                    assert got is not None
                    found = _placements(list(seq), list(cands))
                    assert got[0] == min(2, len(found)), (seq, cands)
                    used = [sorted({pos[i] for pos in found})[:3] for i in range(m)]
                    assert got[1] == used, (seq, cands)
