"""Provides `attribute`: each byte of a file to the innermost of the regions covering it.

The size breakdown's accounting (`breakdown._tally`) rests on this sweep: a file's regions
(`formats.layout`: headers, records, storages, the pickle) nest and sit side by side, and every
byte must go to exactly one of them, or to none (`unaccounted`).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator

from ckptui.core.tree import Region


def attribute(regions: list[Region], total: int) -> Iterator[tuple[Region | None, int]]:
    """(innermost region or None, byte count) for every run of bytes in `[0, total)`.

    Regions are clipped to the file. Among the regions covering a byte, the one starting last
    wins (the shorter on a tie): for nested regions, the innermost.
    """
    # a list, and the clipping as conditionals: 300,000 regions, 2 builtin calls each saved;
    # the offset needs no max(0, ...) once 0 <= offset is a condition
    spans = [
        (r.offset, -(end if (end := r.offset + r.nbytes) < total else total), i)
        for i, r in enumerate(regions)
        if r.nbytes > 0 and 0 <= r.offset < total
    ]
    spans.sort()
    if _disjoint(spans):
        # the usual case (a torch zip: headers, records, storages side by side): in start
        # order with the gaps between, what the heap below yields, without a sorted set of
        # every edge and a heap operation per region (400,000 regions: issue 16)
        at = 0
        for start, neg_end, i in spans:
            if start > at:
                yield None, start - at
            yield regions[i], -neg_end - start
            at = -neg_end
        if total > at:
            yield None, total - at
        return
    points = sorted({0, total, *(s[0] for s in spans), *(-s[1] for s in spans)})
    # A max-heap on start: once ended regions are popped off the top, the top is the live
    # region starting last. Ended regions deeper down wait until they surface.
    active: list[tuple[int, int, int]] = []  # (-start, end, index)
    j = 0
    for a, b in itertools.pairwise(points):
        while j < len(spans) and spans[j][0] <= a:
            start, neg_end, i = spans[j]
            heapq.heappush(active, (-start, -neg_end, i))
            j += 1
        while active and active[0][1] <= a:
            heapq.heappop(active)
        yield (regions[active[0][2]] if active else None), b - a


def _disjoint(spans: list[tuple[int, int, int]]) -> bool:
    """Sorted (start, -end, index) spans that neither overlap nor nest."""
    at = 0
    for start, neg_end, _ in spans:
        if start < at:
            return False
        at = -neg_end
    return True
