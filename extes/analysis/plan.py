"""Planning a pairwise study: how many conversations give the sign test enough power after correction.

A conversation gives one vote per cell (reference arm vs one opponent on one aspect): win, tie or loss
with probabilities (p_win, p_tie, p_loss). A cell's test is `extes analyze`'s: the two-sided exact sign
test of wins against losses, ties dropped, then corrected over the family of cells (Holm by default,
Benjamini-Hochberg, Bonferroni or none). Its power at n conversations is

- exact for a fixed per-test level (no correction, or Bonferroni's alpha / K):
  sum over m (decided votes, Binomial(n, 1 - p_tie)) of P(m) * P(sign test rejects | m), where wins given m
  are Binomial(m, p_win / (p_win + p_loss)) and the rejection region is {w : p(w, m) < alpha'};
- simulated for the whole family (what Holm and BH need, since their thresholds depend on the other
  p-values): ``n_sim`` studies, each drawing every cell's votes, computing the same p-values and the
  corrected decisions. With a fixed level the simulation estimates the exact number (a test checks it).

Finding the n that reaches the target by simulation has a Monte-Carlo error: near the crossing the power
grows by about 0.001 per conversation, while 2,000 simulated studies estimate it to +-0.009, so taking
the first n whose estimate crosses 0.80 tends to stop too early (it said 444 where the power is 0.790 and
about 452 are needed). So the grid and bisection only locate the crossing; then `refine_crossing`
simulates a window of n around it with ``n_refine`` studies each (10,000 by default), fits a straight
line to power against n there (weighted least squares: the power curve is smooth at that scale) and
takes the smallest n whose fitted power reaches the target. The result carries the fitted power at
that n, its Monte-Carlo standard error, and the error in conversations (standard error / slope).

A single scenario with ``tests = K`` is the cell of interest plus K - 1 cells without an effect (win =
loss): the conservative case, in which Holm is close to Bonferroni. Calibrating from a table of cells
(a pilot study's votes, or a published Table 9 typed in) uses every cell's own proportions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from scipy.stats import binom

from extes.analysis.corrections import adjust_p_values, check_correction
from extes.analysis.pairwise import win_tie_loss


@dataclass(frozen=True)
class Cell:
    """Expected vote shares of one comparison (they are normalised to sum to 1)."""

    name: str
    p_win: float
    p_tie: float
    p_loss: float

    def __post_init__(self) -> None:
        shares = (self.p_win, self.p_tie, self.p_loss)
        if min(shares) < 0 or sum(shares) <= 0:
            raise ValueError(f"{self.name}: win/tie/loss shares must be >= 0 and not all 0, got {shares}")
        total = sum(shares)
        object.__setattr__(self, "p_win", self.p_win / total)
        object.__setattr__(self, "p_tie", self.p_tie / total)
        object.__setattr__(self, "p_loss", self.p_loss / total)
        if self.p_tie >= 1.0:
            raise ValueError(f"{self.name}: every vote a tie: the sign test has nothing to test")

    @property
    def win_share(self) -> float:
        """Share of wins among decided (non-tie) votes."""
        return self.p_win / (self.p_win + self.p_loss)


@lru_cache(maxsize=16)
def sign_test_table(n: int) -> np.ndarray:
    """``table[m, w]``: two-sided exact sign-test p-value of w wins in m decided votes (NaN for w > m, 1
    for m = 0), equal to ``scipy.stats.binomtest(w, m, 0.5).pvalue``."""
    m = np.arange(n + 1)[:, None]
    w = np.arange(n + 1)[None, :]
    with np.errstate(invalid="ignore"):
        table = np.minimum(1.0, 2.0 * np.minimum(binom.cdf(w, m, 0.5), binom.sf(w - 1, m, 0.5)))
    table[w > m] = np.nan
    return table


def exact_power(cell: Cell, n: int, alpha: float) -> float:
    """Exact power of the sign test at per-test level ``alpha`` (reject when p < alpha) with n votes.

    Given m decided votes the two-sided test rejects w <= c or w >= m - c, with c the largest w whose
    lower tail P(W <= w | m, 1/2) is below alpha / 2; wins are Binomial(m, win share)."""
    m = np.arange(n + 1)
    c = binom.ppf(alpha / 2.0, m, 0.5) - 1.0
    c = np.where(binom.cdf(c + 1, m, 0.5) < alpha / 2.0, c + 1, c)  # guard ppf's rounding at the boundary
    q = cell.win_share
    reject = binom.cdf(c, m, q) + binom.sf(m - c - 1, m, q)
    # c < m / 2 because alpha / 2 < 1/2, so the two tails never overlap
    total = float(np.sum(binom.pmf(m, n, 1.0 - cell.p_tie) * np.where(c >= 0, reject, 0.0)))
    return min(1.0, max(0.0, total))  # summing rounds a power of 1 to 1 + 2e-16


def simulated_power(cells: Sequence[Cell], n: int, alpha: float, correction: str, n_sim: int = 2000,
                    seed: int = 0) -> np.ndarray:
    """Per-cell share of ``n_sim`` simulated studies (n conversations each) in which the cell's corrected
    sign test rejects at ``alpha``."""
    rng = np.random.default_rng(seed)
    table = sign_test_table(n)
    k = len(cells)
    decided = rng.binomial(n, [1.0 - c.p_tie for c in cells], size=(n_sim, k))
    wins = rng.binomial(decided, [c.win_share for c in cells])
    p = table[decided, wins]
    return (adjust_p_values(p, correction) < alpha).mean(axis=0)


def family(cell: Cell, tests: int) -> list[Cell]:
    """The cell of interest plus ``tests - 1`` cells without an effect (same tie rate, win = loss)."""
    if tests < 1:
        raise ValueError(f"tests must be >= 1, got {tests}")
    null = (1.0 - cell.p_tie) / 2.0
    return [cell] + [Cell(f"no effect {i}", null, cell.p_tie, null) for i in range(1, tests)]


def per_test_alpha(alpha: float, correction: str, tests: int) -> float:
    """The fixed per-test level for which exact power applies: Bonferroni's alpha / K (also Holm's and
    BH's strictest threshold), or alpha without correction."""
    return alpha if correction == "none" else alpha / tests


@dataclass(frozen=True)
class Crossing:
    """Where a cell's simulated power reaches the target, from a straight-line fit over a window of n.

    ``n``: smallest n whose fitted power >= target; ``power``: the fitted power there; ``se``: its
    Monte-Carlo standard error; ``n_se``: that error in conversations (se / slope); ``window``: the n
    simulated, each with ``studies`` simulated studies."""

    n: int
    power: float
    se: float
    n_se: float
    window: tuple[int, ...]
    studies: int


def refine_crossing(power_at, target: float, start: int, studies: int, max_n: int) -> Crossing:
    """Fit power against n on a window around ``start`` (a rough crossing) and solve for ``target``.

    ``power_at(n, studies)`` simulates. The window is +-max(8, 4% of n) with at most 17 points; when the
    fitted crossing falls outside it, the window moves there (at most three times)."""
    centre = start
    for _ in range(4):
        half = max(8, int(np.ceil(0.04 * centre)))
        lo, hi = max(2, centre - half), min(max_n, centre + half)
        window = np.unique(np.linspace(lo, hi, num=min(17, hi - lo + 1)).round().astype(int))
        power = np.array([power_at(int(n), studies) for n in window])
        var = np.clip(power * (1 - power), 1.0 / studies, None) / studies
        design = np.column_stack([np.ones(len(window)), window - centre])
        w = 1.0 / var
        cov = np.linalg.inv(design.T @ (design * w[:, None]))
        beta = cov @ (design.T @ (w * power))
        slope = beta[1]
        cross = centre + (target - beta[0]) / slope if slope > 0 else float(hi)
        n = int(np.ceil(cross - 1e-9))
        if lo <= n <= hi or n > max_n or n < 2:
            n = min(max(n, 2), max_n)
            x = np.array([1.0, n - centre])
            se = float(np.sqrt(x @ cov @ x))
            fitted = float(x @ beta)
            return Crossing(n, fitted, se, float(se / slope) if slope > 0 else float("inf"),
                            tuple(int(v) for v in window), studies)
        centre = n
    return Crossing(n, float("nan"), float("nan"), float("nan"), tuple(int(v) for v in window), studies)


@dataclass
class PlanResult:
    """Power curve and required conversations for each cell of interest."""

    cells: list[Cell]
    tests: int
    alpha: float
    correction: str
    target: float
    n_sim: int
    seed: int
    grid: list[int]
    power: np.ndarray  # (len(grid), len(cells)) simulated, with the correction over the family
    exact: np.ndarray  # (len(grid), len(cells)) exact at the fixed level per_test_alpha
    required: list[int | None]  # simulated: smallest n reaching target (grid, bisection, then a fitted window)
    required_exact: list[int | None]  # exact, fixed level: smallest n in 1..max_n with power >= target
    notes: list[str] = field(default_factory=list)
    crossings: list[Crossing | None] = field(default_factory=list)  # the refinement behind each required n
    n_refine: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha, "correction": self.correction, "tests": self.tests, "target_power": self.target,
            "n_sim": self.n_sim, "seed": self.seed,
            "per_test_alpha_exact": per_test_alpha(self.alpha, self.correction, self.tests),
            "n_refine": self.n_refine,
            "cells": [
                {"name": c.name, "win": c.p_win, "tie": c.p_tie, "loss": c.p_loss, "win_share": c.win_share,
                 "required_n": r, "required_n_exact": e,
                 "power_at_required_n": x.power if x else None, "power_mc_se": x.se if x else None,
                 "required_n_mc_se": x.n_se if x else None}
                for c, r, e, x in zip(self.cells, self.required, self.required_exact, self.crossings)
            ],
            "curve": [
                {"n": n, "power": [float(x) for x in self.power[i]], "exact": [float(x) for x in self.exact[i]]}
                for i, n in enumerate(self.grid)
            ],
            "notes": list(self.notes),
        }


def required_exact(cell: Cell, alpha: float, target: float, max_n: int) -> int | None:
    """Smallest n (1..max_n) whose exact power at per-test level ``alpha`` reaches ``target``."""
    lo = 1
    step = 8
    n = lo
    while n <= max_n and exact_power(cell, n, alpha) < target:
        n += step
        step = min(step * 2, 256)
    if n > max_n:
        return None
    start = max(1, n - step)  # the crossing lies in (previous n, n]; scan it (power is not monotone)
    for m in range(start, n + 1):
        if exact_power(cell, m, alpha) >= target:
            return m
    return n


def plan(cells: Sequence[Cell], tests: int | None = None, alpha: float = 0.05, correction: str = "holm",
         target: float = 0.8, n_sim: int = 2000, seed: int = 0, max_n: int = 3000,
         grid: Sequence[int] | None = None, n_refine: int = 10_000) -> PlanResult:
    """Conversations needed per cell. One cell with ``tests`` = K: that cell in a family with K - 1 null
    cells. Several cells: they are the family (``tests`` must be None or their number). The simulated n
    is located with ``n_sim`` studies per n and refined with ``n_refine`` (`refine_crossing`; 0: no
    refinement, the first n whose ``n_sim`` estimate crosses the target)."""
    check_correction(correction)
    if not 0 < alpha < 1 or not 0 < target < 1:
        raise ValueError("alpha and the target power must lie between 0 and 1")
    cells = list(cells)
    if len(cells) == 1:
        tests = tests or 1
        members = family(cells[0], tests)
    else:
        if tests not in (None, len(cells)):
            raise ValueError(f"{len(cells)} cells form the family; --tests {tests} does not match")
        tests = len(cells)
        members = cells
    level = per_test_alpha(alpha, correction, tests)
    req_exact = [required_exact(c, level, target, max_n) for c in cells]
    if grid is None:
        top = max([r for r in req_exact if r] or [max_n // 4])
        grid = sorted({max(2, int(round(top * f))) for f in
                       (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5)})
    grid = list(grid)
    def sim(n: int, studies: int = n_sim) -> np.ndarray:  # seeded by n: the same n gives the same estimate
        return simulated_power(members, n, alpha, correction, studies, seed + n + (studies != n_sim) * 7919)[
            : len(cells)]

    power = np.array([sim(n) for n in grid])
    exact = np.array([[exact_power(c, n, level) for c in cells] for n in grid])
    required: list[int | None] = []
    crossings: list[Crossing | None] = []
    for j in range(len(cells)):  # bisect between the grid points around the crossing
        above = [i for i, pw in enumerate(power[:, j]) if pw >= target]
        if not above:
            required.append(None)
            crossings.append(None)
            continue
        hi = grid[above[0]]
        lo = grid[above[0] - 1] if above[0] > 0 else 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if sim(mid)[j] >= target else (mid, hi)
        if n_refine:
            crossing = refine_crossing(lambda n, k, j=j: float(sim(n, k)[j]), target, hi, n_refine, max_n)
            crossings.append(crossing)
            required.append(crossing.n)
        else:
            crossings.append(None)
            required.append(hi)
    notes = []
    if len(cells) == 1 and tests > 1:
        notes.append(f"family: this cell plus {tests - 1} cell(s) without an effect (conservative for "
                     f"{correction})")
    for c, r in zip(cells, req_exact):
        if r is None:
            notes.append(f"{c.name}: power {target:.0%} not reached by {max_n} conversations"
                         + (" (no effect: win = loss)" if abs(c.win_share - 0.5) < 1e-12 else ""))
    return PlanResult(cells, tests, alpha, correction, target, n_sim, seed, grid, power, exact, required,
                      req_exact, notes, crossings, n_refine)


def cells_from_votes(votes, reference: str) -> list[Cell]:
    """Observed shares of every (opponent, aspect) cell of a votes table, from ``reference``'s side."""

    rows = win_tie_loss(votes, reference, n_boot=0).rows
    return [Cell(f"vs {r.opponent} / {r.aspect}", r.win, r.tie, r.loss) for r in rows.itertuples(index=False)
            if r.n > 0]  # a pair never compared has no shares to plan from


def plot_power(result: PlanResult):
    """Simulated power against conversations, one line per cell, the target dashed."""
    from extes.analysis.plots import new_figure  # lazy: matplotlib, only when a figure is drawn

    fig = new_figure(6.0, 4.0)
    ax = fig.subplots()
    for j, c in enumerate(result.cells):
        ax.plot(result.grid, result.power[:, j], marker="o", label=c.name)
    ax.axhline(result.target, color="#999999", linestyle="--", linewidth=0.8)
    ax.set_xlabel("conversations (votes per cell)")
    ax.set_ylabel(f"power ({result.correction}, alpha {result.alpha:g}, {result.tests} tests)")
    ax.set_ylim(0, 1)
    ax.set_title("Sign-test power")
    if len(result.cells) <= 15:
        ax.legend(fontsize="x-small")
    return fig
