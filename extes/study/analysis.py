"""Statistics for the human study: results as objects, rendering elsewhere.

Pairwise votes (ExTES paper Table 9 and beyond):
- `win_tie_loss`: per opponent and aspect, from the reference arm's side: win/tie/loss fractions, a
  two-sided sign test on wins vs losses (ties dropped), a session-bootstrap CI of win minus loss.
- `win_rate_matrix`: every arm against every other arm for one aspect, ties counted as half a win.
- `bradley_terry`: Bradley-Terry ratings per aspect (Elo scale) with session-bootstrap CIs.

Ratings (Table 4 and agreement):
- `agreement`: Fleiss' kappa, Krippendorff's alpha (nominal; ordinal for numeric labels), percent
  agreement, overall and per aspect. `dataset_quality`: mean score per metric per source.

The bootstraps resample *sessions* (a participant's votes are not independent of each other) and are
vectorised: one integer draw per (replicate, session), bincount into a weight matrix, and one sparse
product with per-session sums gives every replicate's statistic; no Python loop per resample.
Formulas and citations: docs/analysis.md.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.special import expit
from scipy.stats import binomtest

from extes.study.analysis_io import ASPECTS, VALIDATED, AnalysisInputError, load_ratings, load_votes

__all__ = [
    "ASPECTS",
    "FLEISS_1971",
    "FLEISS_GENERALIZED",
    "AgreementResult",
    "AnalysisInputError",
    "BradleyTerryResult",
    "WinRateMatrix",
    "WinTieLossResult",
    "agreement",
    "bradley_terry",
    "dataset_quality",
    "fleiss_kappa",
    "krippendorff_alpha",
    "load_ratings",
    "load_votes",
    "percent_agreement",
    "plot_bradley_terry",
    "plot_win_rate_heatmap",
    "plot_win_tie_loss",
    "rating_counts",
    "win_rate_matrix",
    "win_tie_loss",
]

ELO_SCALE = 400.0 / math.log(10.0)  # rating points per unit of log-strength
ELO_BASE = 1000.0
_CHUNK_CELLS = 500_000  # replicate x session weights held in memory at once


def _none_if_nan(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _records(frame: pd.DataFrame, columns: list[str]) -> list[dict[str, Any]]:
    return [
        {c: _none_if_nan(v) for c, v in zip(columns, row)} for row in frame[columns].itertuples(index=False)
    ]


def _as_votes(votes: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    # Frames from load_votes carry a marker, so chained calls do not validate 100k rows again.
    if isinstance(votes, pd.DataFrame) and votes.attrs.get(VALIDATED) == "votes":
        return votes
    return load_votes(votes)


def _as_ratings(ratings: pd.DataFrame | str, require_pairs: bool = True) -> pd.DataFrame:
    if isinstance(ratings, pd.DataFrame) and ratings.attrs.get(VALIDATED) == "ratings":
        return ratings
    return load_ratings(ratings, require_pairs=require_pairs)


def _aspect_order(values: pd.Series | list[str]) -> list[str]:
    present = set(values)
    return [a for a in ASPECTS if a in present] + sorted(present - set(ASPECTS))


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
    p_value (two-sided sign test, wins vs losses; NaN when every vote is a tie), ci_low, ci_high
    (percentile bootstrap CI of win - loss, sessions resampled). Ordered by opponent, then aspect.
    """

    reference: str
    rows: pd.DataFrame
    n_boot: int
    seed: int
    confidence: float
    sessions: int

    JSON_COLUMNS = ["opponent", "aspect", "win", "tie", "loss", "n", "p_value", "ci_low", "ci_high"]

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` shape: ``{"reference": ..., "rows": [{opponent, aspect, win, ...}, ...]}``."""
        return {"reference": self.reference, "rows": _records(self.rows, self.JSON_COLUMNS)}

    def table(self, significance: float = 0.05) -> pd.DataFrame:
        """Paper layout (Table 9): one row per opponent, one ``W / T / L`` percent column per aspect.

        A ``*`` marks p < ``significance``.
        """
        aspects = _aspect_order(self.rows["aspect"])
        opponents = list(dict.fromkeys(self.rows["opponent"]))
        cells = {(r.opponent, r.aspect): r for r in self.rows.itertuples(index=False)}
        out = []
        for opp in opponents:
            line: dict[str, str] = {"comparison": f"{self.reference} vs {opp}"}
            for aspect in aspects:
                r = cells.get((opp, aspect))
                if r is None:
                    line[aspect] = "-"
                    continue
                star = "*" if (r.p_value == r.p_value and r.p_value < significance) else ""
                line[aspect] = f"{100 * r.win:.1f} / {100 * r.tie:.1f} / {100 * r.loss:.1f}{star}"
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


def win_tie_loss(
    votes: pd.DataFrame | str | os.PathLike,
    reference: str,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> WinTieLossResult:
    """Win/tie/loss of ``reference`` against every other arm, per aspect (see `WinTieLossResult`)."""
    _check_boot(n_boot, confidence)
    votes = _as_votes(votes)
    side = _reference_side(votes, reference)
    aspects = _aspect_order(side["aspect"])
    side["aspect"] = pd.Categorical(side["aspect"], categories=aspects)
    cell_keys = side[["opponent", "aspect"]].drop_duplicates().sort_values(["opponent", "aspect"])
    cell_index = pd.MultiIndex.from_frame(cell_keys)
    cell = cell_index.get_indexer(pd.MultiIndex.from_frame(side[["opponent", "aspect"]]))
    n_cells = len(cell_index)
    score = side["score"].to_numpy()

    n_win = np.bincount(cell, weights=score == 1, minlength=n_cells).astype(int)
    n_tie = np.bincount(cell, weights=score == 0, minlength=n_cells).astype(int)
    n_loss = np.bincount(cell, weights=score == -1, minlength=n_cells).astype(int)
    n = n_win + n_tie + n_loss
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

    rows = cell_keys.reset_index(drop=True).assign(aspect=lambda f: f["aspect"].astype(str))
    rows = rows.assign(
        win=n_win / n,
        tie=n_tie / n,
        loss=n_loss / n,
        n=n,
        n_win=n_win,
        n_tie=n_tie,
        n_loss=n_loss,
        p_value=p_values,
        ci_low=ci_low,
        ci_high=ci_high,
    )
    return WinTieLossResult(reference, rows, n_boot, seed, confidence, int(session.max()) + 1)


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
            "rates": [[_none_if_nan(v) for v in row] for row in self.rates.to_numpy()],
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
    votes = _as_votes(votes)
    arms = sorted(set(votes["arm_a"]) | set(votes["arm_b"]))
    sub = votes[votes["aspect"] == aspect]
    if sub.empty:
        present = ", ".join(_aspect_order(votes["aspect"]))
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
    arm in that aspect). Arms never seen in an aspect are absent from that aspect's rows.
    """

    ratings: pd.DataFrame
    n_boot: int
    seed: int
    confidence: float
    prior: float

    JSON_COLUMNS = ["rank", "arm", "rating", "ci_low", "ci_high", "n"]

    def to_dict(self) -> dict[str, Any]:
        """``{aspect: [{rank, arm, rating, ci_low, ci_high, n}, ...]}``, best arm first."""
        return {
            aspect: _records(group, self.JSON_COLUMNS)
            for aspect, group in self.ratings.groupby("aspect", sort=False)
        }


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
    prior: float = 1.0,
) -> BradleyTerryResult:
    """Bradley-Terry ratings per aspect with session-bootstrap percentile CIs.

    Ties count as half a win each way. ``prior`` (> 0) adds that many virtual tied comparisons to every
    pair of arms seen in an aspect; with hundreds of votes per pair its effect is negligible.
    """
    _check_boot(n_boot, confidence)
    if not prior > 0:
        raise ValueError(f"prior must be > 0 (virtual tied comparisons per pair), got {prior}")
    votes = _as_votes(votes)
    arms = sorted(set(votes["arm_a"]) | set(votes["arm_b"]))
    aspects = _aspect_order(votes["aspect"])
    k, n_asp = len(arms), len(aspects)
    idx, weight = _pair_wins(votes, arms, aspects)
    wins = np.bincount(idx, weights=weight, minlength=n_asp * k * k).reshape(n_asp, k, k)
    games = wins + np.swapaxes(wins, -1, -2)
    n_votes = games.sum(-1).round().astype(int)
    present = n_votes > 0
    theta = _fit_bradley_terry(wins, present, prior)

    lo = hi = np.full((n_asp, k), np.nan)
    if n_boot:
        # Vote i contributes to flat cell idx[i]; the session of each contribution follows the vote.
        session = pd.factorize(votes["session_id"], sort=True)[0]
        tie = votes["outcome"].to_numpy() == "tie"
        contrib_session = np.concatenate([session, session[tie]])
        boot_wins = _bootstrap_session_sums(contrib_session, idx, weight, n_asp * k * k, n_boot, seed)
        boot_wins = boot_wins.reshape(n_boot, n_asp, k, k)
        boot_theta = _fit_bradley_terry(boot_wins, np.broadcast_to(present, boot_wins.shape[:-1]), prior)
        lo, hi = _percentile_ci(ELO_BASE + ELO_SCALE * boot_theta, confidence)

    rating = ELO_BASE + ELO_SCALE * theta
    rows = []
    for ai, aspect in enumerate(aspects):
        order = [
            i for i in np.argsort(-np.nan_to_num(rating[ai], nan=-np.inf), kind="stable") if present[ai, i]
        ]
        for rank, i in enumerate(order, start=1):
            rows.append((aspect, rank, arms[i], rating[ai, i], lo[ai, i], hi[ai, i], int(n_votes[ai, i])))
    frame = pd.DataFrame(rows, columns=["aspect", "rank", "arm", "rating", "ci_low", "ci_high", "n"])
    return BradleyTerryResult(frame, n_boot, seed, confidence, prior)


# ------------------------------------------------------------------------------------ agreement


def rating_counts(ratings: pd.DataFrame) -> tuple[np.ndarray, list[Any]]:
    """Units x categories count table from validated ratings.

    A unit is (source, item_id, aspect). Labels that all parse as numbers become floats (so "3" and
    "3.0" are one category) and categories are sorted numerically; otherwise labels stay text.
    """
    labels = ratings["label"]
    numeric = pd.to_numeric(labels, errors="coerce")
    values = numeric if numeric.notna().all() else labels
    categories = sorted(pd.unique(values))
    unit = (
        pd.MultiIndex.from_frame(ratings[["source", "item_id", "aspect"]]).factorize()[0]
        if len(ratings)
        else []
    )
    col = pd.Index(categories).get_indexer(values)
    n_units = int(np.max(unit)) + 1 if len(ratings) else 0
    counts = np.zeros((n_units, len(categories)))
    np.add.at(counts, (np.asarray(unit), col), 1.0)
    return counts, list(categories)


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa from a units x categories count table (units with < 2 ratings are ignored).

    With the same number of ratings per unit this is Fleiss (1971). With differing numbers it is the
    generalisation in Gwet (2014): observed agreement averages each unit's pairwise agreement
    sum_k r_ik (r_ik - 1) / (r_i (r_i - 1)); chance agreement uses pi_k, the mean over units of r_ik / r_i.
    Both reduce to Fleiss (1971) for equal counts. NaN when chance agreement is 1 (one category only).
    """
    counts = np.asarray(counts, dtype=float)
    r = counts.sum(1)
    counts, r = counts[r >= 2], r[r >= 2]
    if len(r) == 0:
        return float("nan")
    p_a = float(np.mean((counts * (counts - 1)).sum(1) / (r * (r - 1))))
    pi = (counts / r[:, None]).mean(0)
    p_e = float((pi**2).sum())
    if np.isclose(p_e, 1.0):
        return float("nan")
    return (p_a - p_e) / (1.0 - p_e)


def percent_agreement(counts: np.ndarray) -> float:
    """Mean over units (with >= 2 ratings) of the share of rater pairs that agree."""
    counts = np.asarray(counts, dtype=float)
    r = counts.sum(1)
    counts, r = counts[r >= 2], r[r >= 2]
    if len(r) == 0:
        return float("nan")
    return float(np.mean((counts * (counts - 1)).sum(1) / (r * (r - 1))))


def krippendorff_alpha(
    counts: np.ndarray, level: str = "nominal", values: list[float] | None = None
) -> float:
    """Krippendorff's alpha from a units x values count table (missing ratings simply absent).

    ``level``: "nominal", "ordinal" (columns must be in scale order) or "interval" (needs ``values``).
    Built from the coincidence matrix o_ck = sum_u n_uc (n_uk - [c == k]) / (m_u - 1) over units with
    m_u >= 2 values: alpha = 1 - (n - 1) * sum o_ck d_ck / sum n_c n_k d_ck (Krippendorff 2011).
    """
    counts = np.asarray(counts, dtype=float)
    m = counts.sum(1)
    counts, m = counts[m >= 2], m[m >= 2]
    if len(m) == 0:
        return float("nan")
    scaled = counts / (m - 1)[:, None]
    coincidence = counts.T @ scaled - np.diag(scaled.sum(0))
    n_c = coincidence.sum(1)
    n = n_c.sum()
    k = len(n_c)
    if level == "nominal":
        delta = 1.0 - np.eye(k)
    elif level == "ordinal":
        cum = np.concatenate([[0.0], np.cumsum(n_c)])
        lo, hi = np.minimum.outer(np.arange(k), np.arange(k)), np.maximum.outer(np.arange(k), np.arange(k))
        # sum of n_g for g from c to k, minus half of n_c and n_k, squared
        delta = (cum[hi + 1] - cum[lo] - (n_c[:, None] + n_c[None, :]) / 2.0) ** 2
    elif level == "interval":
        if values is None or len(values) != k:
            raise ValueError("interval alpha needs one numeric value per column")
        v = np.asarray(values, dtype=float)
        delta = (v[:, None] - v[None, :]) ** 2
    else:
        raise ValueError(f"unknown level of measurement {level!r}; use nominal, ordinal or interval")
    expected = (np.outer(n_c, n_c) * delta).sum()
    if expected == 0:
        return float("nan")
    return float(1.0 - (n - 1.0) * (coincidence * delta).sum() / expected)


@dataclass
class AgreementResult:
    """Agreement among raters. ``krippendorff_alpha`` maps "nominal" (always) and "ordinal" (numeric
    labels only, else None) to alpha. ``items`` counts units with >= 2 ratings (the ones used);
    ``dropped_items`` those with a single rating. ``fleiss_variant`` names the formula used."""

    fleiss_kappa: float
    fleiss_variant: str
    krippendorff_alpha: dict[str, float | None]
    percent_agreement: float
    items: int
    raters: int
    ratings: int
    dropped_items: int
    categories: list[Any]
    notes: list[str] = field(default_factory=list)
    per_aspect: dict[str, AgreementResult] = field(default_factory=dict)
    per_source: dict[str, AgreementResult] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` shape: fleiss_kappa, krippendorff_alpha, percent_agreement, items, raters,
        per_aspect, plus fleiss_variant, ratings, dropped_items, categories, notes and (with several
        sources) per_source. Empty per_aspect / per_source are left out."""
        out: dict[str, Any] = {
            "fleiss_kappa": _none_if_nan(self.fleiss_kappa),
            "fleiss_variant": self.fleiss_variant,
            "krippendorff_alpha": {
                k: _none_if_nan(v) if v is not None else None for k, v in self.krippendorff_alpha.items()
            },
            "percent_agreement": _none_if_nan(self.percent_agreement),
            "items": self.items,
            "raters": self.raters,
            "ratings": self.ratings,
            "dropped_items": self.dropped_items,
            "categories": [_none_if_nan(c) for c in self.categories],
            "notes": list(self.notes),
            "per_aspect": {a: r.to_dict() for a, r in self.per_aspect.items()},
            "per_source": {a: r.to_dict() for a, r in self.per_source.items()},
        }
        for key in ("per_aspect", "per_source"):
            if not out[key]:
                del out[key]
        return out


FLEISS_1971 = "Fleiss (1971): equal number of ratings per item"
FLEISS_GENERALIZED = "Fleiss' kappa generalised to unequal numbers of ratings per item (Gwet 2014)"


def _agreement_one(ratings: pd.DataFrame, scope: str) -> AgreementResult:
    counts, categories = rating_counts(ratings)
    r = counts.sum(1)
    used = r >= 2
    notes: list[str] = []
    dropped = int((~used).sum())
    if dropped:
        notes.append(f"{scope}: {dropped} item(s) with a single rating left out (nothing to agree with)")
    used_r = r[used]
    if len(used_r) and used_r.min() != used_r.max():
        variant = FLEISS_GENERALIZED
        values, freq = np.unique(used_r.astype(int), return_counts=True)
        spread = ", ".join(f"{c} item(s) x {v} ratings" for v, c in zip(values, freq))
        notes.append(f"{scope}: items have different numbers of ratings ({spread}); using {variant}")
    else:
        variant = FLEISS_1971
    numeric = bool(len(categories)) and all(isinstance(c, float | int | np.number) for c in categories)
    kappa = fleiss_kappa(counts)
    if math.isnan(kappa) and used.any():
        notes.append(f"{scope}: all ratings fall in one category, so kappa and alpha are undefined")
    raters_used = ratings.loc[_used_rows(ratings, used), "rater_id"].nunique()
    return AgreementResult(
        fleiss_kappa=kappa,
        fleiss_variant=variant,
        krippendorff_alpha={
            "nominal": krippendorff_alpha(counts, "nominal"),
            "ordinal": krippendorff_alpha(counts, "ordinal") if numeric else None,
        },
        percent_agreement=percent_agreement(counts),
        items=int(used.sum()),
        raters=int(raters_used),
        ratings=int(r[used].sum()),
        dropped_items=dropped,
        categories=[float(c) if numeric else c for c in categories],
        notes=notes,
    )


def _used_rows(ratings: pd.DataFrame, used_units: np.ndarray) -> np.ndarray:
    unit = pd.MultiIndex.from_frame(ratings[["source", "item_id", "aspect"]]).factorize()[0]
    return used_units[unit]


def agreement(ratings: pd.DataFrame | str | os.PathLike) -> AgreementResult:
    """Inter-rater agreement overall and, when an ``aspect`` column is filled, per aspect.

    For the pooled figures each (source, item, aspect) is one unit. With several sources (e.g. the
    study store's Likert ratings of each dataset and its "pairwise" ratings, whose labels are on different scales) each source
    also gets its own result in ``per_source``; the pooled figures then mix scales, and a note says so.
    """
    ratings = _as_ratings(ratings)
    result = _agreement_scoped(ratings, "all ratings")
    sources = [s for s in dict.fromkeys(ratings["source"]) if s]
    if len(sources) > 1:
        for source in sorted(sources):
            result.per_source[source] = _agreement_scoped(
                ratings[ratings["source"] == source], f"source {source}"
            )
        kinds = {src: _is_numeric(ratings.loc[ratings["source"] == src, "label"]) for src in sources}
        if len(set(kinds.values())) > 1:
            result.notes.append(
                "all ratings: sources mix numeric and text labels ("
                + ", ".join(f"{s}: {'numeric' if k else 'text'}" for s, k in sorted(kinds.items()))
                + "); read the per-source results"
            )
    return result


def _is_numeric(labels: pd.Series) -> bool:
    return bool(pd.to_numeric(labels, errors="coerce").notna().all())


def _agreement_scoped(ratings: pd.DataFrame, scope: str) -> AgreementResult:
    result = _agreement_one(ratings, scope)
    if ratings["aspect"].ne("").any():
        for aspect in _aspect_order(ratings["aspect"]):
            sub = ratings[ratings["aspect"] == aspect]
            prefix = "" if scope == "all ratings" else f"{scope}, "
            result.per_aspect[aspect] = _agreement_one(sub, f"{prefix}aspect {aspect}")
    return result


def dataset_quality(ratings: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """Mean score per metric (aspect) per source, as ExTES paper Table 4.

    Needs numeric labels and a filled ``source`` column. Columns: source, aspect (``score`` when the
    ratings have no aspect), mean, std (sample), n_items, n_ratings. Every rating counts, including
    items with a single rating.
    """
    ratings = _as_ratings(ratings, require_pairs=False)
    if ratings["source"].eq("").all():
        raise AnalysisInputError("dataset quality needs a 'source' column (e.g. extes vs seed)")
    score = pd.to_numeric(ratings["label"], errors="coerce")
    if score.isna().any():
        bad = ratings.loc[score.isna(), "label"].unique()[:5]
        raise AnalysisInputError(f"dataset quality needs numeric labels; found {', '.join(map(repr, bad))}")
    frame = ratings.assign(score=score, aspect=ratings["aspect"].replace("", "score"))
    grouped = frame.groupby(["source", "aspect"], sort=False)
    out = grouped.agg(
        mean=("score", "mean"),
        std=("score", "std"),
        n_items=("item_id", "nunique"),
        n_ratings=("score", "size"),
    ).reset_index()
    aspects = _aspect_order(out["aspect"])
    out["aspect"] = pd.Categorical(out["aspect"], categories=aspects)
    out = out.sort_values(["source", "aspect"]).reset_index(drop=True)
    out["aspect"] = out["aspect"].astype(str)
    return out


# ------------------------------------------------------------------------------------- plotting


def _figure(width: float, height: float):
    # Figure objects straight from matplotlib.figure: no pyplot global state, Agg canvas for savefig.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_win_tie_loss(result: WinTieLossResult):
    """Stacked horizontal win/tie/loss bars, one panel per aspect; returns a matplotlib Figure."""
    rows = result.rows
    aspects = _aspect_order(rows["aspect"])
    opponents = list(dict.fromkeys(rows["opponent"]))
    fig = _figure(3.2 * len(aspects) + 1.5, 0.5 * len(opponents) + 1.6)
    axes = fig.subplots(1, len(aspects), sharey=True, squeeze=False)[0]
    colors = {"win": "#4c9a5b", "tie": "#b8b8b8", "loss": "#c8553d"}
    for ax, aspect in zip(axes, aspects):
        sub = rows[rows["aspect"] == aspect].set_index("opponent").reindex(opponents)
        left = np.zeros(len(opponents))
        for part in ("win", "tie", "loss"):
            width = (100 * sub[part]).fillna(0).to_numpy()
            ax.barh(opponents, width, left=left, color=colors[part], label=part)
            left += width
        ax.set_title(aspect)
        ax.set_xlim(0, 100)
        ax.set_xlabel("%")
    axes[0].invert_yaxis()  # shared y axis: first opponent on top
    axes[0].set_ylabel(f"{result.reference} vs")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize="small")
    return fig


def plot_win_rate_heatmap(matrix: WinRateMatrix):
    """Heatmap of a `WinRateMatrix` (row arm's win rate against column arm); returns a Figure."""
    rates = matrix.rates
    k = len(rates)
    fig = _figure(1.0 * k + 2.5, 0.8 * k + 1.5)
    ax = fig.subplots()
    image = ax.imshow(rates.to_numpy(dtype=float), vmin=0, vmax=1, cmap="RdYlGn")
    ax.set_xticks(range(k), rates.columns, rotation=45, ha="right")
    ax.set_yticks(range(k), rates.index)
    for i in range(k):
        for j in range(k):
            value = rates.iat[i, j]
            if value == value:
                ax.text(
                    j, i, f"{value:.2f}\n(n={matrix.counts.iat[i, j]})", ha="center", va="center", fontsize=7
                )
    ax.set_title(f"win rate, row vs column ({matrix.aspect})")
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def plot_bradley_terry(result: BradleyTerryResult):
    """Bradley-Terry ratings with CI error bars, one panel per aspect; returns a Figure."""
    frame = result.ratings
    aspects = _aspect_order(frame["aspect"])
    k = frame["arm"].nunique()
    fig = _figure(3.2 * len(aspects) + 1.0, 0.45 * k + 1.6)
    axes = fig.subplots(1, len(aspects), squeeze=False)[0]
    for ax, aspect in zip(axes, aspects):
        sub = frame[frame["aspect"] == aspect]
        y = np.arange(len(sub))
        lower = (sub["rating"] - sub["ci_low"]).fillna(0).clip(lower=0)
        upper = (sub["ci_high"] - sub["rating"]).fillna(0).clip(lower=0)
        ax.errorbar(sub["rating"], y, xerr=[lower, upper], fmt="o", capsize=3)
        ax.set_yticks(y, sub["arm"])
        ax.invert_yaxis()
        ax.axvline(ELO_BASE, color="#999999", linewidth=0.8)
        ax.set_title(aspect)
        ax.set_xlabel("rating")
    return fig
