"""Percentages of counts, rounded so that equal counts always print equal percentages.

Largest remainder (Hamilton): floor every share to the printed precision, then hand the missing units
(0.1 points) to the largest remainders, so a column or cell adds up to 100. Its usual tie rule (earlier
entry first) prints equal counts differently: 4/4/4 as 33.4/33.3/33.3. Here equal counts are one group:
the units go to whole groups, largest remainder first; a group with more members than units left gets
none and the next group is tried. Equal counts then always print equal percentages, every percentage
is its exact value rounded down or up, and a total can fall short of 100 by a few tenths where no group
fits the units left (4/4/4 prints 33.3/33.3/33.3 = 99.9). `RULE` says this in one sentence for notes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

RULE = ("percentages by largest remainder with equal counts always equal (where the last 0.1s cannot go to "
        "every one of a group of equal counts, none of them gets one, so a total can fall short of 100 by a few "
        "tenths)")


def percentages(counts: Sequence[float], decimals: int = 1, total: float = 100.0) -> list[float]:
    """Shares of ``counts`` scaled to ``total`` and rounded to ``decimals`` by the module's rule."""
    s = float(sum(counts))
    if s <= 0:
        return [0.0 for _ in counts]
    unit = 10.0 ** -decimals
    n_units = round(total / unit)
    exact = [c / s * n_units for c in counts]
    floors = [math.floor(x + 1e-9) for x in exact]
    missing = n_units - sum(floors)
    groups: dict[float, list[int]] = {}
    for i, c in enumerate(counts):
        groups.setdefault(c, []).append(i)
    order = sorted(groups.values(), key=lambda g: (-(exact[g[0]] - floors[g[0]]), g[0]))
    for group in order:
        if exact[group[0]] - floors[group[0]] <= 1e-9:
            break
        if len(group) > missing:
            continue  # not enough units for every one of these equal counts: none of them gets one
        for i in group:
            floors[i] += 1
        missing -= len(group)
    return [round(f * unit, decimals) for f in floors]
