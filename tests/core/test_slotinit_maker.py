"""`core.slotinit.maker` builds the very objects the tree's classes build, at half the cost.

Readers make a `Node`, a `TensorInfo` and a `Storage` per tensor through makers (issue 16), so
everything else sees them: equality, hashing, repr, `replace`, freezing and the defaults must be
the class's own, and a class the trick cannot cover must get its constructor back.
"""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass, field

import pytest

from ckptui.core.slotinit import maker
from ckptui.core.tree import Node, NodeKind, Storage, TensorInfo


def test_storage_is_the_constructors_object() -> None:
    make = maker(Storage)
    assert make is not Storage
    args = ("f:k", "bfloat16", 64, "cpu", "f", None, 128, 64)
    made, built = make(*args), Storage(*args)
    assert type(made) is Storage
    assert made == built and hash(made) == hash(built) and repr(made) == repr(built)
    assert make("k", "float32", 4, "cpu") == Storage("k", "float32", 4, "cpu")  # defaults
    assert make(key="k", dtype="f", nbytes=1, location="cpu").record_nbytes is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.nbytes = 1  # type: ignore[misc]
    assert dataclasses.replace(made, nbytes=1) == Storage(*args[:2], 1, *args[3:])
    assert pickle.loads(pickle.dumps(made)) == built


def test_tensor_info_and_node() -> None:
    info = maker(TensorInfo)((8, 4), "bfloat16", (4, 1), "k", 0, 2, "cpu")
    assert info == TensorInfo((8, 4), "bfloat16", (4, 1), "k", 0, 2, "cpu")
    assert (info.requires_grad, info.layout, info.state_dict_key) == (False, "strided", None)
    assert info.numel == 32 and info.nbytes == 64 and info.is_contiguous
    node = maker(Node)(NodeKind.TENSOR, "torch.Tensor", "w", (), info, None)
    assert type(node) is Node and node == Node.make(
        NodeKind.TENSOR, "torch.Tensor", "w", tensor=info
    )
    assert node.tensor is info and node._index is None  # the non-init cache slot is set too
    many = maker(Node)(NodeKind.MAPPING, "dict", None, tuple(
        Node.make(NodeKind.VALUE, "int", i, value=i) for i in range(100)
    ))  # fmt: skip
    assert many.child(42).value == 42  # the lookup index (a frozen object's cache) still works


def test_a_class_it_cannot_cover_gets_its_constructor() -> None:
    @dataclass(frozen=True, slots=True)
    class WithFactory:
        items: list = field(default_factory=list)

    @dataclass(frozen=True)
    class NoSlots:
        x: int

    @dataclass(frozen=True, slots=True)
    class Base:
        x: int

    @dataclass(frozen=True, slots=True)
    class Derived(Base):
        y: int

    @dataclass(frozen=True, slots=True)
    class Clashing:
        self: int

    for cls in (WithFactory, NoSlots, Derived, Clashing):
        assert maker(cls) is cls, cls
    assert maker(Base)(1) == Base(1)
