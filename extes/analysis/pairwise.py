"""Pairwise votes (ExTES paper Table 9 and beyond): results as objects, rendering elsewhere.

- `win_tie_loss`: per opponent and aspect, from the reference arm's side: win/tie/loss fractions, a
  two-sided sign test on wins vs losses (ties dropped), a session-bootstrap CI of win minus loss.
- `win_rate_matrix`: every arm against every other arm for one aspect, ties counted as half a win.
- `bradley_terry`: Bradley-Terry ratings per aspect (Elo scale) with session-bootstrap CIs.

The bootstraps resample *sessions* (a participant's votes are not independent of each other) and are
vectorised: one integer draw per (replicate, session), bincount into a weight matrix, and one sparse
product with per-session sums gives every replicate's statistic; no Python loop per resample.
Formulas and citations: docs/analysis.md.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.special import expit
from scipy.stats import binomtest, norm

from extes.analysis.corrections import CORRECTIONS, adjust_p_values, check_correction
from extes.analysis.io import (
    ASPECTS,
    AnalysisInputError,
    as_votes,
    aspect_order,
    duplicates_note,
    none_if_nan,
    records,
)
from extes.shares import percentages

ELO_SCALE = 400.0 / math.log(10.0)  # rating points per unit of log-strength
ELO_BASE = 1000.0
_CHUNK_CELLS = 500_000  # replicate x session weights held in memory at once
MIN_SESSIONS = 10  # below this many sessions the session bootstrap is not trusted: CIs are left out
DEFAULT_PRIOR = 1.0  # Bradley-Terry: virtual tied comparisons per pair of arms


def session_note(sessions: int, min_sessions: int) -> str | None:
    """Why bootstrap intervals were left out, or None when there are enough sessions."""
    if sessions >= min_sessions:
        return None
    return (
        f"bootstrap CIs left out: {sessions} session(s), fewer than {min_sessions} (--min-sessions); "
        "resampling so few sessions gives intervals that are too narrow (one session: zero width)"
    )


# ------------------------------------------------------------------------------- session bootstrap


def _bootstrap_session_sums(
    session: np.ndarray, col: np.ndarray, value: np.ndarray, n_cols: int, n_boot: int, seed: int
) -> np.ndarray:
    """Per replicate, sum ``value`` into ``n_cols`` columns over sessions drawn with replacement.

    ``session[i]``, ``col[i]``, ``value[i]`` describe one contribution. Returns ``(n_boot, n_cols)``.
    Replicate b draws S session indices uniformly (S = number of sessions); the multiplicity of each
    session becomes a weight, and weights @ per-session sums gives all replicates at once.
    """
    n_sessions = int(session.max()) + 1 if len(session) else 0
    out = np.zeros((n_boot, n_cols))
    if n_boot == 0 or n_sessions == 0:
        return out
    per_session = sparse.csr_matrix((value, (col, session)), shape=(n_cols, n_sessions))
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, _CHUNK_CELLS // n_sessions))
    for start in range(0, n_boot, chunk):  # chunks bound memory (and stay in cache); many replicates each
        b = min(chunk, n_boot - start)
        draws = rng.integers(0, n_sessions, size=(b, n_sessions))
        # weights[s, r]: how often replicate r drew session s, laid out so the product below reads
        # contiguous rows.
        draws *= b
        draws += np.arange(b)[:, None]
        weights = np.bincount(draws.ravel(), minlength=b * n_sessions).reshape(n_sessions, b)
        out[start : start + b] = (per_session @ weights).T
    return out


def _percentile_ci(samples: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    alpha = 1.0 - confidence
    finite = np.isfinite(samples)
    lo = np.full(samples.shape[1:], np.nan)
    hi = np.full(samples.shape[1:], np.nan)
    ok = finite.any(axis=0)
    if ok.any():
        q = np.nanquantile(samples[:, ok], [alpha / 2, 1 - alpha / 2], axis=0)
        lo[ok], hi[ok] = q[0], q[1]
    return lo, hi


def _check_boot(n_boot: int, confidence: float) -> None:
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")


# ---------------------------------------------------------------------------------- win/tie/loss


@dataclass
class WinTieLossResult:
    """Win/tie/loss of ``reference`` against each opponent per aspect.

    ``rows`` columns: opponent, aspect, win, tie, loss (fractions of n), n, n_win, n_tie, n_loss,
    p_value (two-sided sign test, wins vs losses; NaN when every vote is a tie), p_adjusted (p_value
    corrected over every test in the table by ``correction``), ci_low, ci_high (percentile bootstrap CI
    of win - loss, sessions resampled; NaN when fewer than ``min_sessions`` sessions, see ``notes``),
    status ("compared"; "never compared": the aspect has votes but none of this pair, n = 0 and the
    statistics NaN; "no votes": the aspect has no vote at all). One row per opponent (every other arm in
    the votes) and aspect, ordered by opponent, then aspect. ``votes`` is the number of votes in the input
    (all arms); ``rows["n"].sum()`` those involving ``reference``.
    """

    reference: str
    rows: pd.DataFrame
    n_boot: int
    seed: int
    confidence: float
    sessions: int
    correction: str = "holm"
    min_sessions: int = MIN_SESSIONS
    votes: int = 0
    notes: list[str] = field(default_factory=list)

    JSON_COLUMNS = ["opponent", "aspect", "win", "tie", "loss", "n", "p_value", "p_adjusted", "ci_low", "ci_high",
                    "status"]

    @property
    def votes_with_reference(self) -> int:
        return int(self.rows["n"].sum())

    @property
    def tests(self) -> int:
        """Number of sign tests in the family the correction is applied to."""
        return int(self.rows["p_value"].notna().sum())

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` shape: ``{"reference", "correction", "tests", "rows": [{opponent, aspect, win,
        ..., p_value, p_adjusted, ...}], "notes"}``."""
        return {
            "reference": self.reference,
            "correction": self.correction,
            "correction_name": CORRECTIONS[self.correction],
            "tests": self.tests,
            "min_sessions": self.min_sessions,
            "notes": list(self.notes),
            "rows": records(self.rows, self.JSON_COLUMNS),
        }

    def percent(self, row: Any) -> tuple[float, float, float]:
        """Win/tie/loss of one row in percent, 1 decimal, by `extes.shares.percentages` (largest
        remainder; equal counts print equal, so 4/4/4 is 33.3/33.3/33.3)."""
        w, t, lo = percentages([row.n_win, row.n_tie, row.n_loss], decimals=1)
        return w, t, lo

    def omissions(self) -> list[str]:
        """The pairs and aspects the table has no votes for, in words (empty when every cell has votes)."""
        rows = self.rows
        out = []
        silent = sorted(set(rows.loc[rows["status"] == "no votes", "aspect"]), key=list(rows["aspect"]).index)
        if silent:
            out.append(f"no votes at all on {', '.join(silent)}")
        never = rows[rows["status"] == "never compared"]
        voted = [a for a in dict.fromkeys(rows["aspect"]) if a not in silent]
        for opp, group in never.groupby("opponent", sort=False):
            where = "any aspect" if len(group) == len(voted) else ", ".join(group["aspect"])
            out.append(f"{self.reference} never compared with {opp} on {where}")
        return out

    def mark(self, row: Any, significance: float = 0.05) -> str:
        """"*" when the corrected p-value is below ``significance``, else ""."""
        p = row.p_adjusted
        return "*" if (p == p and p < significance) else ""

    def table(self, significance: float = 0.05) -> pd.DataFrame:
        """Paper layout (Table 9): one row per opponent, one ``W / T / L`` percent column per aspect.

        A ``*`` marks a corrected p-value (``correction``) < ``significance``. Percentages are rounded
        by largest remainder, so each cell's three numbers add up to 100.0. A pair without votes reads
        "never compared" (or "no votes" where the aspect has none at all).
        """
        aspects = aspect_order(self.rows["aspect"])
        opponents = list(dict.fromkeys(self.rows["opponent"]))
        cells = {(r.opponent, r.aspect): r for r in self.rows.itertuples(index=False)}
        out = []
        for opp in opponents:
            line: dict[str, str] = {"comparison": f"{self.reference} vs {opp}"}
            for aspect in aspects:
                r = cells.get((opp, aspect))
                if r is None or r.n == 0:
                    line[aspect] = r.status if r is not None else "never compared"
                    continue
                w, t, lo = self.percent(r)
                line[aspect] = f"{w:.1f} / {t:.1f} / {lo:.1f}{self.mark(r, significance)}"
            out.append(line)
        return pd.DataFrame(out, columns=["comparison", *aspects])


def _reference_side(votes: pd.DataFrame, reference: str) -> pd.DataFrame:
    arms = sorted(set(votes["arm_a"]) | set(votes["arm_b"]))
    if reference not in arms:
        raise AnalysisInputError(f"unknown reference arm {reference!r}; arms in the votes: {', '.join(arms)}")
    as_a = votes["arm_a"].eq(reference).to_numpy()
    as_b = votes["arm_b"].eq(reference).to_numpy()
    keep = as_a | as_b
    sub = votes.loc[keep, ["session_id", "aspect", "arm_a", "arm_b", "outcome"]]
    as_a = as_a[keep]
    outcome = sub["outcome"].to_numpy()
    # +1 win, 0 tie, -1 loss, from the reference arm's side whichever column it sits in.
    score = np.where(outcome == "tie", 0, np.where(outcome == "a", 1, -1))
    score = np.where(as_a, score, -score)
    return pd.DataFrame(
        {
            "session_id": sub["session_id"].to_numpy(),
            "aspect": sub["aspect"].to_numpy(),
            "opponent": np.where(as_a, sub["arm_b"].to_numpy(), sub["arm_a"].to_numpy()),
            "score": score,
        }
    )


def study_aspects(votes: pd.DataFrame, aspects: Sequence[str] | None = None) -> list[str]:
    """The aspects a table reports: ``aspects`` if given, else the five of the paper, plus any other in the
    votes, in the paper's order; an aspect without votes is reported as such, not left out."""
    listed = list(aspects) if aspects is not None else list(ASPECTS)
    return aspect_order(list(dict.fromkeys(listed + list(votes["aspect"].unique()))))


def cell_status(n: int, aspect_has_votes: bool) -> str:
    """"compared", "never compared" (the aspect has votes, none of this pair) or "no votes" (none at all)."""
    if n > 0:
        return "compared"
    return "never compared" if aspect_has_votes else "no votes"


def win_tie_loss(
    votes: pd.DataFrame | str | os.PathLike,
    reference: str,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    correction: str = "holm",
    min_sessions: int = MIN_SESSIONS,
    aspects: Sequence[str] | None = None,
) -> WinTieLossResult:
    """Win/tie/loss of ``reference`` against every other arm, per aspect (see `WinTieLossResult`).

    Every other arm in the votes and every aspect (`study_aspects`) gets a row, also where the pair was
    never compared (``n`` = 0, ``status`` says which, the statistics are NaN): an incomplete design (k arms
    shown two or three at a time) leaves some pairs rare or absent, and a table must show that.
    """
    _check_boot(n_boot, confidence)
    check_correction(correction)
    votes = as_votes(votes)
    side = _reference_side(votes, reference)
    aspects = study_aspects(votes, aspects)
    opponents = sorted((set(votes["arm_a"]) | set(votes["arm_b"])) - {reference})
    cell_keys = pd.DataFrame(
        [(o, a) for o in opponents for a in aspects], columns=["opponent", "aspect"]
    )
    cell_index = pd.MultiIndex.from_frame(cell_keys)
    cell = cell_index.get_indexer(pd.MultiIndex.from_frame(side[["opponent", "aspect"]]))
    n_cells = len(cell_index)
    score = side["score"].to_numpy()

    n_win = np.bincount(cell, weights=score == 1, minlength=n_cells).astype(int)
    n_tie = np.bincount(cell, weights=score == 0, minlength=n_cells).astype(int)
    n_loss = np.bincount(cell, weights=score == -1, minlength=n_cells).astype(int)
    n = n_win + n_tie + n_loss
    voted = set(votes["aspect"])
    status = [cell_status(int(k), a in voted) for k, a in zip(n, cell_keys["aspect"])]
    p_values = np.array(
        [
            binomtest(int(w), int(w + lo), 0.5, alternative="two-sided").pvalue if w + lo > 0 else np.nan
            for w, lo in zip(n_win, n_loss)  # one test per table cell, not per vote
        ]
    )

    session = pd.factorize(side["session_id"], sort=True)[0]
    # Columns 0..C-1 sum win-minus-loss, columns C..2C-1 count votes, per (replicate, cell).
    sums = _bootstrap_session_sums(
        np.concatenate([session, session]),
        np.concatenate([cell, cell + n_cells]),
        np.concatenate([score.astype(float), np.ones(len(score))]),
        2 * n_cells,
        n_boot,
        seed,
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = sums[:, :n_cells] / sums[:, n_cells:]
    ci_low, ci_high = _percentile_ci(diff, confidence) if n_boot else (np.full(n_cells, np.nan),) * 2
    n_sessions = int(session.max()) + 1
    notes = [note for note in [duplicates_note(votes)] if note]
    if n_boot and (why := session_note(n_sessions, min_sessions)):
        ci_low, ci_high = np.full(n_cells, np.nan), np.full(n_cells, np.nan)
        notes.append(why)

    rows = cell_keys.reset_index(drop=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = {part: k / n for part, k in (("win", n_win), ("tie", n_tie), ("loss", n_loss))}
    rows = rows.assign(
        **shares,
        n=n,
        n_win=n_win,
        n_tie=n_tie,
        n_loss=n_loss,
        p_value=p_values,
        p_adjusted=adjust_p_values(p_values, correction),
        ci_low=ci_low,
        ci_high=ci_high,
        status=status,
    )
    return WinTieLossResult(
        reference, rows, n_boot, seed, confidence, n_sessions, correction, min_sessions, len(votes), notes
    )


# ------------------------------------------------------------------------------------ win rates


@dataclass
class WinRateMatrix:
    """``rates.loc[i, j]``: share of i-vs-j votes that i won, ties counted as half (NaN: never met).

    ``counts.loc[i, j]``: number of votes between i and j (symmetric). Rows/columns: all arms in the
    votes, sorted, so matrices for different aspects line up.
    """

    aspect: str
    rates: pd.DataFrame
    counts: pd.DataFrame

    def to_dict(self) -> dict[str, Any]:
        return {
            "aspect": self.aspect,
            "arms": list(self.rates.index),
            "rates": [[none_if_nan(v) for v in row] for row in self.rates.to_numpy()],
            "counts": self.counts.to_numpy().astype(int).tolist(),
        }


def _pair_wins(votes: pd.DataFrame, arms: list[str], aspects: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per vote: flat index into (aspect, winner, loser) cells and weight; a tie adds 0.5 each way."""
    k = len(arms)
    a = pd.Index(arms).get_indexer(votes["arm_a"])
    b = pd.Index(arms).get_indexer(votes["arm_b"])
    asp = pd.Index(aspects).get_indexer(votes["aspect"])
    outcome = votes["outcome"].to_numpy()
    winner = np.where(outcome == "b", b, a)
    loser = np.where(outcome == "b", a, b)
    tie = outcome == "tie"
    base = asp * k * k
    idx = np.concatenate([base + winner * k + loser, base[tie] + loser[tie] * k + winner[tie]])
    weight = np.concatenate([np.where(tie, 0.5, 1.0), np.full(int(tie.sum()), 0.5)])
    return idx, weight


def win_rate_matrix(votes: pd.DataFrame | str | os.PathLike, aspect: str) -> WinRateMatrix:
    """Pairwise win-rate matrix of all arms for one aspect (see `WinRateMatrix`)."""
    votes = as_votes(votes)
    arms = sorted(set(votes["arm_a"]) | set(votes["arm_b"]))
    sub = votes[votes["aspect"] == aspect]
    if sub.empty:
        present = ", ".join(aspect_order(votes["aspect"]))
        raise AnalysisInputError(f"no votes for aspect {aspect!r}; aspects in the votes: {present}")
    k = len(arms)
    idx, weight = _pair_wins(sub, arms, [aspect])
    wins = np.bincount(idx, weights=weight, minlength=k * k).reshape(k, k)
    games = wins + wins.T
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(games > 0, wins / games, np.nan)
    return WinRateMatrix(
        aspect,
        pd.DataFrame(rates, index=arms, columns=arms),
        pd.DataFrame(games.round().astype(int), index=arms, columns=arms),
    )


# -------------------------------------------------------------------------------- Bradley-Terry


@dataclass
class BradleyTerryResult:
    """Bradley-Terry ratings per aspect on the Elo scale.

    P(i beats j) = 1 / (1 + 10 ** ((R_j - R_i) / 400)); ratings of the arms seen in an aspect average
    1000. ``ratings`` columns: aspect, rank (1 = best), arm, rating, ci_low, ci_high, n (votes with the
    arm in that aspect). An arm never judged on an aspect (or an aspect without votes) has a row with
    n = 0, no rank (<NA>) and NaN ratings, after the ranked arms.

    The fit is maximum a-posteriori with ``prior`` virtual ties per pair of arms. ``ml_exists[aspect]``
    says whether the maximum-likelihood estimate exists there (it does not under separation: some arms
    never lose to the rest, e.g. one session with one vote per pair; then the ratings are finite only
    because of the prior, and ``notes`` warns). ``prior_shift[aspect]``: the largest change of any rating
    between the prior's fit and the maximum-likelihood fit (NaN where ML does not exist).
    """

    ratings: pd.DataFrame
    n_boot: int
    seed: int
    confidence: float
    prior: float
    ml_exists: dict[str, bool] = field(default_factory=dict)
    prior_shift: dict[str, float] = field(default_factory=dict)
    sessions: int = 0
    min_sessions: int = MIN_SESSIONS
    notes: list[str] = field(default_factory=list)

    JSON_COLUMNS = ["rank", "arm", "rating", "ci_low", "ci_high", "n"]

    def to_dict(self) -> dict[str, Any]:
        """``{aspect: [{rank, arm, rating, ci_low, ci_high, n}, ...]}``, best arm first."""
        return {
            aspect: records(group, self.JSON_COLUMNS)
            for aspect, group in self.ratings.groupby("aspect", sort=False)
        }

    def fit_info(self) -> dict[str, Any]:
        """How the ratings were fitted: prior, per-aspect ML existence and prior shift, notes."""
        return {
            "prior": self.prior,
            "ml_exists": dict(self.ml_exists),
            "prior_shift_elo": {a: none_if_nan(v) for a, v in self.prior_shift.items()},
            "sessions": self.sessions,
            "notes": list(self.notes),
        }


def ml_exists(wins: np.ndarray, present: np.ndarray) -> bool:
    """Whether the Bradley-Terry maximum-likelihood estimate exists for one win matrix.

    It exists iff the directed graph "i beat j at least once" (a tie counts both ways) on the present arms
    is strongly connected (Zermelo 1929; Ford 1957). Otherwise some group of arms never lost to the rest
    and the likelihood keeps growing as their ratings go to infinity.
    """
    from scipy.sparse.csgraph import connected_components

    idx = np.flatnonzero(present)
    if len(idx) < 2:
        return True
    beat = wins[np.ix_(idx, idx)] > 0
    n_comp, _ = connected_components(sparse.csr_matrix(beat), directed=True, connection="strong")
    return n_comp == 1


def _fit_bradley_terry(
    wins: np.ndarray, present: np.ndarray, prior: float, max_iter: int = 100
) -> np.ndarray:
    """Maximum a-posteriori log-strengths for a batch of win matrices, by Newton's method.

    ``wins[..., i, j]``: (possibly fractional) wins of i over j; ``present[..., i]``: arm i takes part.
    ``prior`` virtual comparisons per pair of present arms, counted as ties, keep the estimate finite
    when an arm never wins or never loses (and connect pairs that never met). Log-strengths of present
    arms sum to zero; absent arms get NaN.
    """
    k = wins.shape[-1]
    pair = present[..., :, None] & present[..., None, :] & ~np.eye(k, dtype=bool)
    w = np.where(pair, wins + prior / 2.0, 0.0)
    games = w + np.swapaxes(w, -1, -2)
    total_wins = w.sum(-1)
    gauge = present[..., :, None] & present[..., None, :]
    fill = np.eye(k) * ~present[..., None, :]  # keeps the system solvable for absent arms (step 0)
    theta = np.zeros(wins.shape[:-1])
    for _ in range(max_iter):  # Newton iterations, each over the whole batch of replicates
        p = expit(theta[..., :, None] - theta[..., None, :])
        grad = total_wins - (games * p).sum(-1)
        curv = games * p * (1.0 - p)
        hess = -curv + np.eye(k) * curv.sum(-1)[..., None, :]  # graph Laplacian = minus the Hessian
        step = np.linalg.solve(hess + gauge + fill, grad[..., None])[..., 0]
        size = np.abs(step).max(axis=-1, keepdims=True)
        step = step * np.minimum(1.0, 3.0 / np.maximum(size, 1e-300))  # cap the step: safe far from optimum
        theta = theta + step
        if float(size.max()) < 1e-10:
            break
    n_present = np.maximum(present.sum(-1, keepdims=True), 1)
    theta = theta - (theta * present).sum(-1, keepdims=True) / n_present
    return np.where(present, theta, np.nan)


def bradley_terry(
    votes: pd.DataFrame | str | os.PathLike,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    prior: float = DEFAULT_PRIOR,
    min_sessions: int = MIN_SESSIONS,
    aspects: Sequence[str] | None = None,
) -> BradleyTerryResult:
    """Bradley-Terry ratings per aspect with session-bootstrap percentile CIs.

    Every arm of the votes gets a row in every aspect (`study_aspects`): one never judged there has n = 0,
    no rank and NaN rating. When an aspect's comparisons leave groups of arms never compared with each
    other (an incomplete design), ``notes`` says which, since ratings across them come from the prior.

    Ties count as half a win each way. ``prior`` (> 0, default 1) adds that many virtual tied comparisons
    to every pair of arms seen in an aspect: a maximum a-posteriori estimate that pulls ratings toward
    1000 (about 3.6 Elo at 65 votes per pair); ``prior_shift`` reports by how much. A tiny prior (1e-6)
    gives maximum likelihood where it exists. CIs are left out below ``min_sessions`` sessions.
    """
    _check_boot(n_boot, confidence)
    if not prior > 0:
        raise ValueError(f"prior must be > 0 (virtual tied comparisons per pair), got {prior}")
    votes = as_votes(votes)
    report_aspects = aspects
    arms = sorted(set(votes["arm_a"]) | set(votes["arm_b"]))
    aspects = aspect_order(votes["aspect"])
    k, n_asp = len(arms), len(aspects)
    idx, weight = _pair_wins(votes, arms, aspects)
    wins = np.bincount(idx, weights=weight, minlength=n_asp * k * k).reshape(n_asp, k, k)
    games = wins + np.swapaxes(wins, -1, -2)
    n_votes = games.sum(-1).round().astype(int)
    present = n_votes > 0
    theta = _fit_bradley_terry(wins, present, prior)
    exists = {aspect: ml_exists(wins[ai], present[ai]) for ai, aspect in enumerate(aspects)}
    ml_theta = _fit_bradley_terry(wins, present, 1e-9)
    shift = {
        aspect: float(np.nanmax(np.abs(ELO_SCALE * (theta[ai] - ml_theta[ai])))) if exists[aspect] else float("nan")
        for ai, aspect in enumerate(aspects)
    }
    notes = [
        f"aspect {aspect}: the maximum-likelihood ratings do not exist (separation: some arm(s) never lost "
        f"to the others, or never won); the ratings shown are finite only because of the prior "
        f"({prior:g} virtual tie(s) per pair) and mostly reflect it"
        for aspect in aspects
        if not exists[aspect]
    ]
    n_sessions = int(votes["session_id"].nunique())

    lo = hi = np.full((n_asp, k), np.nan)
    if n_boot and (why := session_note(n_sessions, min_sessions)):
        notes.append(why)
    elif n_boot:
        # Vote i contributes to flat cell idx[i]; the session of each contribution follows the vote.
        session = pd.factorize(votes["session_id"], sort=True)[0]
        tie = votes["outcome"].to_numpy() == "tie"
        contrib_session = np.concatenate([session, session[tie]])
        boot_wins = _bootstrap_session_sums(contrib_session, idx, weight, n_asp * k * k, n_boot, seed)
        boot_wins = boot_wins.reshape(n_boot, n_asp, k, k)
        boot_theta = _fit_bradley_terry(boot_wins, np.broadcast_to(present, boot_wins.shape[:-1]), prior)
        lo, hi = _percentile_ci(ELO_BASE + ELO_SCALE * boot_theta, confidence)

    rating = ELO_BASE + ELO_SCALE * theta
    notes += [_disconnected_note(aspect, arms, games[ai], prior) for ai, aspect in enumerate(aspects)
              if _groups(games[ai], present[ai]) > 1]
    rows = []
    for aspect in study_aspects(votes, report_aspects):
        if aspect not in aspects:  # no vote at all on this aspect
            rows += [(aspect, pd.NA, arm, np.nan, np.nan, np.nan, 0) for arm in arms]
            continue
        ai = aspects.index(aspect)
        order = [
            i for i in np.argsort(-np.nan_to_num(rating[ai], nan=-np.inf), kind="stable") if present[ai, i]
        ]
        for rank, i in enumerate(order, start=1):
            rows.append((aspect, rank, arms[i], rating[ai, i], lo[ai, i], hi[ai, i], int(n_votes[ai, i])))
        rows += [(aspect, pd.NA, arms[i], np.nan, np.nan, np.nan, 0) for i in range(k) if not present[ai, i]]
    frame = pd.DataFrame(rows, columns=["aspect", "rank", "arm", "rating", "ci_low", "ci_high", "n"])
    frame["rank"] = frame["rank"].astype("Int64")
    return BradleyTerryResult(frame, n_boot, seed, confidence, prior, exists, shift, n_sessions, min_sessions, notes)


def pair_interval_widths(
    votes: pd.DataFrame, arms: Sequence[str], confidence: float = 0.95, prior: float = DEFAULT_PRIOR
) -> dict[tuple[str, str], float]:
    """Width (Elo points) of the Wald interval of each pair's rating difference, from one Bradley-Terry
    fit of `votes` (all rows pooled; ties half a win each way) over `arms`.

    The covariance is the inverse Fisher information at the maximum a-posteriori fit (``prior`` virtual
    ties per pair), so it is cheap enough to compute before every conversation: Chatbot Arena's adaptive
    sampling shows next the pair whose interval is widest. A pair with no vote of its own is infinitely
    wide (it must be compared before its difference is estimated from others). Keys: (arm, arm) in the
    order of `arms`.
    """
    arms = list(arms)
    k = len(arms)
    pos = {a: i for i, a in enumerate(arms)}
    mine = votes[votes["arm_a"].isin(pos) & votes["arm_b"].isin(pos)]
    wins = np.zeros((k, k))
    for a, b, outcome in zip(mine["arm_a"], mine["arm_b"], mine["outcome"]):
        i, j = pos[a], pos[b]
        if outcome == "a":
            wins[i, j] += 1
        elif outcome == "b":
            wins[j, i] += 1
        else:
            wins[i, j] += 0.5
            wins[j, i] += 0.5
    present = np.ones(k, dtype=bool)
    theta = _fit_bradley_terry(wins, present, prior)
    games = np.where(~np.eye(k, dtype=bool), wins + wins.T + prior, 0.0)
    p = expit(theta[:, None] - theta[None, :])
    curv = games * p * (1.0 - p)
    info = np.diag(curv.sum(-1)) - curv  # the Fisher information: a graph Laplacian (rank k - 1)
    cov = np.linalg.pinv(info)
    z = float(norm.ppf(0.5 + confidence / 2.0))
    out = {}
    for i, j in itertools.combinations(range(k), 2):
        if wins[i, j] + wins[j, i] == 0:
            out[(arms[i], arms[j])] = math.inf
            continue
        var = max(cov[i, i] + cov[j, j] - 2.0 * cov[i, j], 0.0)
        out[(arms[i], arms[j])] = 2.0 * z * ELO_SCALE * math.sqrt(var)
    return out


def _groups(games: np.ndarray, present: np.ndarray) -> int:
    """Number of groups of arms (of those present) linked by chains of comparisons."""
    from scipy.sparse.csgraph import connected_components

    idx = np.flatnonzero(present)
    if len(idx) < 2:
        return 1
    return connected_components(sparse.csr_matrix(games[np.ix_(idx, idx)] > 0), directed=False)[0]


def _disconnected_note(aspect: str, arms: list[str], games: np.ndarray, prior: float) -> str:
    from scipy.sparse.csgraph import connected_components

    idx = np.flatnonzero(games.sum(-1) > 0)
    _, label = connected_components(sparse.csr_matrix(games[np.ix_(idx, idx)] > 0), directed=False)
    parts = [" ".join(arms[i] for i, g in zip(idx, label) if g == c) for c in range(label.max() + 1)]
    return (
        f"aspect {aspect}: the arms fall into {len(parts)} groups never compared with each other "
        f"({' | '.join('{' + p + '}' for p in parts)}); ratings across groups rest on the prior alone "
        f"({prior:g} virtual tie(s) per pair), not on any vote"
    )


# ------------------------------------------------------------------------------------ agreement
