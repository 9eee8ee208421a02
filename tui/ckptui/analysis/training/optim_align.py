"""Provides `align_shapes`: the banded dynamic programme that places optimizer entries on
parameters by order, checked by shape, and says where a placement breaks.

`optim_map` names each optimizer entry by assuming the entries follow the parameters'
registration order; this module checks that assumption. It knows only shapes (an entry's state
shape, or None when it has no state) and the candidate parameters, nothing about checkpoints or
optimizers, so the counting can be read and tested on its own; `optim_map` turns its answers
into entries with a confidence and a reason.
"""

from __future__ import annotations

Shape = tuple[int, ...]

ALIGN_BUDGET = 1_000_000
"""Cells of the alignment table past which a subset is not aligned (a second of Python, measured:
1,000 of 2,000 parameters); entries then say so rather than keep the UI waiting."""


def align_shapes(seq: list[Shape | None], cands: list[Shape]) -> tuple[int, list[list[int]]] | None:
    """Count order-preserving placements of `seq` on `cands` (capped at 2) and, per entry, the
    candidate positions used by at least one placement (up to 3). None past `ALIGN_BUDGET`.

    Entry i can only sit at positions i .. i + (n - m), so the tables are a band of that width:
    when the counts match (the usual case) the band is one wide and this is a plain zip.
    """
    m, n = len(seq), len(cands)
    width = n - m + 1
    if m == 0:
        return 1, []
    if m * width > ALIGN_BUDGET:
        return None
    if width == 1:  # the tables below, one wide: every entry fits its position, or none is placed
        if all(s is None or s == c for s, c in zip(seq, cands, strict=True)):
            return 1, [[i] for i in range(m)]
        return 0, [[] for _ in range(m)]

    def fits(i: int, j: int) -> bool:
        return seq[i] is None or seq[i] == cands[j]

    # fwd[i][d]: placements of seq[:i+1] with entry i at position i+d; bwd likewise for seq[i:].
    fwd = [[0] * width for _ in range(m)]
    for i in range(m):
        run = 1 if i == 0 else 0  # placements of seq[:i] ending strictly before position i+d
        for d in range(width):
            if i > 0:
                run = min(2, run + fwd[i - 1][d])
            fwd[i][d] = run if fits(i, i + d) else 0
    bwd = [[0] * width for _ in range(m)]
    for i in range(m - 1, -1, -1):
        run = 1 if i == m - 1 else 0
        for d in range(width - 1, -1, -1):
            if i < m - 1:
                run = min(2, run + bwd[i + 1][d])
            bwd[i][d] = run if fits(i, i + d) else 0
    total = min(2, sum(fwd[m - 1]))
    options = [[i + d for d in range(width) if fwd[i][d] and bwd[i][d]][:3] for i in range(m)]
    return total, options


def align_groups(
    listed: list[tuple[int, int | str]], shapes: list[Shape | None], cands: list[Shape]
) -> list[list[int]] | None:
    """Each group aligned on its own; None unless every group fits and no two claim one
    parameter. Entries keep all their options, so ambiguity inside a group still shows."""
    options: list[list[int]] = [[] for _ in listed]
    claimed: dict[int, int] = {}
    for g in dict.fromkeys(gi for gi, _ in listed):
        idx = [i for i, (gi, _) in enumerate(listed) if gi == g]
        placed = align_shapes([shapes[i] for i in idx], cands)
        if placed is None or placed[0] == 0:
            return None
        for i, opts in zip(idx, placed[1], strict=True):
            options[i] = opts
            if len(opts) == 1 and claimed.setdefault(opts[0], g) != g:
                return None
    return options


def describe_break(
    shapes: list[Shape | None],
    params: list[tuple[str, Shape]],
    listed: list[tuple[int, int | str]],
    where: str,
) -> str:
    """Where the order-and-shape check failed, in words."""
    m, n = len(shapes), len(params)
    if m == n:
        for i, s in enumerate(shapes):
            if s is not None and s != params[i][1]:
                name, ps = params[i]
                return (f"index {listed[i][1]}: state shape {list(s)} vs parameter {name} "
                        f"{list(ps)}")  # fmt: skip
    # Greedy earliest placement goes as far as any placement can: where it stops is the break.
    j = 0
    for i, s in enumerate(shapes):
        while j < n and s is not None and params[j][1] != s:
            j += 1
        if j >= n:
            after = f" after {params[-1][0]}" if params else ""
            return (f"count mismatch: {m} params in groups vs {n} {where}; index "
                    f"{listed[i][1]} (state shape {list(s or ())}) fits no parameter{after} "
                    "in order")  # fmt: skip
        j += 1
    return f"{m} params in groups do not line up with {n} {where}"
