"""Agreement between raters (Table 4 and the study's pairwise votes): results as objects.

- `agreement`: Fleiss' kappa, Krippendorff's alpha (nominal; ordinal for numeric labels), percent
  agreement, overall and per aspect.
- `dataset_quality`: mean score per metric per source (Table 4).
- `pairwise_rating_rows`: how pairwise votes become rating items, so raters who saw the panes in
  different orders label the same item the same way.
Formulas and citations: docs/analysis.md.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from extes.analysis.io import AnalysisInputError, as_ratings, aspect_order, none_if_nan


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


def fleiss_components(counts: np.ndarray) -> tuple[float, float, float]:
    """(observed agreement p_a, chance agreement p_e, kappa) exactly as Gwet's irrCAC ``fleiss.kappa.raw``.

    p_a averages each item's pairwise agreement sum_k r_ik (r_ik - 1) / (r_i (r_i - 1)) over the items
    with >= 2 ratings; p_e = sum_k pi_k^2 where pi_k is the mean of r_ik / r_i over *every* rated item,
    including items rated once (they carry no agreement, but they do tell which categories raters use).
    Items with no rating at all are left out. With the same number of ratings on every item this is
    Fleiss (1971). Kappa is NaN when no item has two ratings or p_e is 1 (one category only).
    """
    counts = np.asarray(counts, dtype=float)
    r = counts.sum(1)
    rated = r >= 1
    counts, r = counts[rated], r[rated]
    pair = r >= 2
    if not pair.any():
        return float("nan"), float("nan"), float("nan")
    p_a = float(np.mean((counts[pair] * (counts[pair] - 1)).sum(1) / (r[pair] * (r[pair] - 1))))
    pi = (counts / r[:, None]).mean(0)
    p_e = float((pi**2).sum())
    if np.isclose(p_e, 1.0):
        return p_a, p_e, float("nan")
    return p_a, p_e, (p_a - p_e) / (1.0 - p_e)


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa from a units x categories count table, as irrCAC ``fleiss.kappa.raw`` (see
    `fleiss_components`): items rated once count toward the category shares, not the observed agreement."""
    return fleiss_components(counts)[2]


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
    labels only, else None) to alpha. ``items`` counts units with >= 2 ratings (the ones that carry
    agreement); ``dropped_items`` those with a single rating (still in Fleiss' category shares);
    ``items_all``, ``raters_all``, ``ratings_all`` count every rated item, single ratings included.
    ``fleiss_variant`` names the formula used; ``fleiss_pa``/``fleiss_pe`` are its observed and chance
    agreement."""

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
    fleiss_pa: float = float("nan")
    fleiss_pe: float = float("nan")
    per_aspect: dict[str, AgreementResult] = field(default_factory=dict)
    per_source: dict[str, AgreementResult] = field(default_factory=dict)
    raters_all: int = 0  # raters of every rated item, single ratings included (what Fleiss' shares use)

    @property
    def items_all(self) -> int:
        """Every rated item: the ones Fleiss' kappa uses (single ratings in its category shares)."""
        return self.items + self.dropped_items

    @property
    def ratings_all(self) -> int:
        return self.ratings + self.dropped_items

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` shape: fleiss_kappa, krippendorff_alpha, percent_agreement, items, raters,
        per_aspect, plus fleiss_variant, ratings, dropped_items, categories, notes and (with several
        sources) per_source. Empty per_aspect / per_source are left out."""
        out: dict[str, Any] = {
            "fleiss_kappa": none_if_nan(self.fleiss_kappa),
            "fleiss_variant": self.fleiss_variant,
            "fleiss_pa": none_if_nan(self.fleiss_pa),
            "fleiss_pe": none_if_nan(self.fleiss_pe),
            "krippendorff_alpha": {
                k: none_if_nan(v) if v is not None else None for k, v in self.krippendorff_alpha.items()
            },
            "percent_agreement": none_if_nan(self.percent_agreement),
            "items": self.items,
            "raters": self.raters,
            "ratings": self.ratings,
            "dropped_items": self.dropped_items,
            "items_all": self.items_all,
            "raters_all": self.raters_all,
            "ratings_all": self.ratings_all,
            "categories": [none_if_nan(c) for c in self.categories],
            "notes": list(self.notes),
            "per_aspect": {a: r.to_dict() for a, r in self.per_aspect.items()},
            "per_source": {a: r.to_dict() for a, r in self.per_source.items()},
        }
        for key in ("per_aspect", "per_source"):
            if not out[key]:
                del out[key]
        return out


FLEISS_1971 = "Fleiss (1971): every item has the same number of ratings"
FLEISS_GENERALIZED = (
    "Fleiss' kappa generalised to unequal numbers of ratings per item (Gwet 2014; as irrCAC "
    "fleiss.kappa.raw: observed agreement over items with >= 2 ratings, category shares over every rated item)"
)


def _agreement_one(ratings: pd.DataFrame, scope: str) -> AgreementResult:
    counts, categories = rating_counts(ratings)
    r = counts.sum(1)
    used = r >= 2
    notes: list[str] = []
    dropped = int((~used).sum())
    if dropped:
        notes.append(
            f"{scope}: {dropped} item(s) with a single rating: they count in Fleiss' category shares "
            "(chance agreement, as irrCAC), not in observed agreement, percent agreement or "
            "Krippendorff's alpha (nothing to agree with)"
        )
    if len(r) and r.min() != r.max():
        variant = FLEISS_GENERALIZED
        values, freq = np.unique(r.astype(int), return_counts=True)
        spread = ", ".join(f"{c} item(s) x {v} rating{'s' if v != 1 else ''}" for v, c in zip(values, freq))
        notes.append(f"{scope}: items have different numbers of ratings ({spread}); using {variant}")
    else:
        variant = FLEISS_1971
    numeric = bool(len(categories)) and all(isinstance(c, float | int | np.number) for c in categories)
    p_a, p_e, kappa = fleiss_components(counts)
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
        fleiss_pa=p_a,
        fleiss_pe=p_e,
        raters_all=int(ratings["rater_id"].nunique()),
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
    ratings = as_ratings(ratings)
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
        for aspect in aspect_order(ratings["aspect"]):
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
    ratings = as_ratings(ratings, require_pairs=False)
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
    aspects = aspect_order(out["aspect"])
    out["aspect"] = pd.Categorical(out["aspect"], categories=aspects)
    out = out.sort_values(["source", "aspect"]).reset_index(drop=True)
    out["aspect"] = out["aspect"].astype(str)
    return out


def pairwise_rating_rows(
    votes: list[tuple[str, str, str, str, str, str]],
) -> list[dict[str, str]]:
    """Pairwise votes as rating rows, one item per conversation and arm pair.

    Each vote is ``(conversation_id, rater_id, aspect, arm_a, arm_b, outcome)``. The item is
    ``"<conversation>/<arm x>~<arm y>"`` with the two arms sorted, and the label is ``"x"`` (the first
    arm better), ``"y"`` or ``"tie"``, so raters who saw the panes in different orders label the same
    item the same way.
    """
    out: list[dict[str, str]] = []
    for conv, rater, aspect, arm_a, arm_b, outcome in votes:
        x, y = sorted((arm_a, arm_b))
        if outcome == "tie":
            label = "tie"
        else:
            winner = arm_a if outcome == "a" else arm_b
            label = "x" if winner == x else "y"
        out.append({"item_id": f"{conv}/{x}~{y}", "rater_id": rater, "label": label,
                    "aspect": aspect, "source": "pairwise"})
    return out
