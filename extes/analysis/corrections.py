"""Multiple-comparison corrections: the one implementation the analysis and the study planner use.

`adjust_p_values` corrects each family (the last axis) at once, vectorised over any leading axes, and
gives what ``statsmodels.stats.multitest.multipletests`` gives for the same family (tests pin this).
NaN entries are not tests: they stay NaN and do not count in the family's size.
"""

from __future__ import annotations

import numpy as np

# --correction -> what a table caption calls it
CORRECTIONS: dict[str, str] = {
    "holm": "Holm (1979) step-down, family-wise error",
    "bh": "Benjamini-Hochberg (1995), false discovery rate",
    "bonferroni": "Bonferroni, family-wise error",
    "none": "no correction",
}


def check_correction(correction: str) -> None:
    """Raise ValueError naming the choices when ``correction`` is not one of `CORRECTIONS`."""
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction {correction!r}; use one of {', '.join(CORRECTIONS)}")


def adjust_p_values(p_values: np.ndarray, correction: str) -> np.ndarray:
    """Adjusted p-values, one family per row of the last axis (a 1-D array is one family).

    ``correction``: "holm" (default everywhere), "bh" (Benjamini-Hochberg), "bonferroni" or "none".
    """
    check_correction(correction)
    p = np.asarray(p_values, dtype=float)
    if correction == "none" or p.size == 0:
        return p.copy()
    tested = ~np.isnan(p)
    k = tested.sum(axis=-1, keepdims=True)  # family size per row
    if correction == "bonferroni":
        return np.where(tested, np.minimum(1.0, p * k), np.nan)
    filled = np.where(tested, p, np.inf)  # untested entries sort last and never lower a neighbour
    order = np.argsort(filled, axis=-1, kind="stable")
    sorted_p = np.take_along_axis(filled, order, axis=-1)
    rank = np.arange(p.shape[-1])  # 0-based position in the sorted family
    with np.errstate(invalid="ignore"):  # inf * 0 in a row without tests: NaN, dropped below
        if correction == "holm":
            adj = np.maximum.accumulate(sorted_p * np.maximum(k - rank, 1), axis=-1)
        else:  # "bh"
            adj = np.minimum.accumulate((sorted_p * k / (rank + 1))[..., ::-1], axis=-1)[..., ::-1]
    out = np.empty_like(adj)
    np.put_along_axis(out, order, np.minimum(1.0, adj), axis=-1)
    return np.where(tested, out, np.nan)
