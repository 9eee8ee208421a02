"""Provides the fast ways to build a frozen slots dataclass: `fast_init` (the class's own
`__init__`, made faster) and `maker` (a separate constructor function, faster still).

The `__init__` that `dataclasses` writes for a frozen class sets each field with
`object.__setattr__(self, "name", value)`, a lookup by name per field. The tree model makes
one `Node`, `TensorInfo` and `Storage` per tensor (and one `Node` per reference: a million in
issue 21's pickle), and that was half of each object's cost.

`fast_init` replaces `__init__` by one calling each slot's own descriptor instead: same
signature, defaults and result (`replace`, equality, hashing, `repr` and the frozen
`__setattr__` are the dataclass's own, untouched), about twice as fast; every `cls(...)` call
gains.

`maker(cls)` is for the readers' hot loops, which can call a function instead of the class:
`fast_init` already sets each slot through its descriptor, but every such set is a
call (`member_descriptor.__set__` through a method wrapper), and a frozen class has its own
`__setattr__`, so CPython cannot turn `self.x = v` into its fast slot store. Readers that make
three objects per tensor (`Node`, `TensorInfo`, `Storage`) at 90,000 tensors spent half of a
160-shard folder's open there (issue 16). A maker fills a *layout twin* instead: a plain class
with the same `__slots__`, whose attribute stores are the fast kind; it then makes the object an
instance of the real class by assigning `__class__`, which CPython allows exactly when the two
layouts are the same (same slots, same base). The result is the real class's object, field for
field: equality, hashing, `repr`, `replace` and the frozen `__setattr__` are the class's own.
Measured with valgrind on CPython 3.11: 7,800 instructions per `Storage(...)`, 3,500 per maker
call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import Any


def fast_init(cls: type) -> type:
    """Replace `cls.__init__` (a frozen `slots=True` dataclass without default factories or
    `__post_init__`) by one setting the slots through their descriptors; returns `cls`."""
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has a __post_init__: fast_init would skip it")
    ns: dict[str, Any] = {f"set_{f.name}": cls.__dict__[f.name].__set__ for f in fields(cls)}
    code = _fields_code(cls, ns, lambda name, value: f"set_{name}(self, {value})")
    if code is None:
        name = next(f.name for f in fields(cls) if f.default_factory is not MISSING)
        raise TypeError(f"{cls.__name__}.{name} has a default factory")
    params, body = code
    src = f"def __init__(self, {', '.join(params)}):\n" + "\n".join(body) + "\n"
    exec(src, ns)  # noqa: S102  # our own field names, as dataclasses itself does
    init = ns["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[misc]
    return cls


def _fields_code(
    cls: type, ns: dict[str, Any], store: Callable[[str, str], str]
) -> tuple[list[str], list[str]] | None:
    """(parameters, body lines) of a function setting each of `cls`'s fields, as the
    dataclass's own `__init__` takes them (names, order, defaults, `init=False` fields set to
    their default), `store(name, value)` writing one line's statement; the defaults go into
    `ns`. None when a field has a default factory (neither function supports one)."""
    params: list[str] = []
    body: list[str] = []
    for f in fields(cls):
        if f.default_factory is not MISSING:
            return None
        if f.default is not MISSING:
            ns[f"default_{f.name}"] = f.default
        if not f.init:
            body.append("    " + store(f.name, f"default_{f.name}"))
            continue
        params.append(f.name if f.default is MISSING else f"{f.name}=default_{f.name}")
        body.append("    " + store(f.name, f.name))
    return params, body


def maker(cls: type) -> Callable[..., Any]:
    """A function taking `cls.__init__`'s parameters (same names, order and defaults) and
    returning the `cls` instance that `cls(...)` would, built through a layout twin.

    Args:
        cls: a frozen `slots=True` dataclass without `__post_init__`, default factories or
            slots inherited from a base class.

    Returns:
        The maker, or `cls` itself when CPython refuses the twin's `__class__` assignment
        (a layout this trick does not cover): callers then pay the usual cost, nothing else.
    """
    if hasattr(cls, "__post_init__") or cls.__bases__ != (object,):
        return cls
    slots = cls.__dict__.get("__slots__")
    names = [f.name for f in fields(cls)]
    if not isinstance(slots, tuple) or sorted(slots) != sorted(names) or _OURS & set(names):
        return cls
    twin = type(f"{cls.__name__}Twin", (), {"__slots__": slots})
    try:
        probe = object.__new__(twin)
        probe.__class__ = cls
    except TypeError:  # pragma: no cover - layouts differ on some other interpreter
        return cls
    ns: dict[str, Any] = {"_sm_new": object.__new__, "_sm_twin": twin, "_sm_cls": cls}
    code = _fields_code(cls, ns, lambda name, value: f"self.{name} = {value}")
    if code is None:
        return cls
    params, stores = code
    body = [
        "    self = _sm_new(_sm_twin)",
        *stores,
        "    self.__class__ = _sm_cls",
        "    return self",
    ]
    src = f"def make({', '.join(params)}):\n" + "\n".join(body) + "\n"
    exec(src, ns)  # noqa: S102  # our own field names, as dataclasses itself does
    make = ns["make"]
    make.__qualname__ = f"maker({cls.__qualname__})"
    make.__doc__ = (
        f"`{cls.__qualname__}(...)`, built through its layout twin (`core.slotinit.maker`)."
    )
    return make


_OURS = {"self", "_sm_new", "_sm_twin", "_sm_cls"}
"""Names the maker's own code uses: a field of one of them would shadow it (no class here has)."""
