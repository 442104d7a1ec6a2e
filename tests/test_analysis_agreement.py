"""Agreement statistics against published worked examples and reference implementations."""

import krippendorff
import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss_kappa

from extes.analysis import (
    FLEISS_1971,
    FLEISS_GENERALIZED,
    agreement,
    dataset_quality,
    fleiss_kappa,
    krippendorff_alpha,
    load_ratings,
    percent_agreement,
    rating_counts,
)

# Fleiss (1971) as tabulated in Wikipedia's "Fleiss' kappa": 10 subjects, 14 raters, 5 categories.
FLEISS_TABLE = np.array(
    [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
)

# Krippendorff, "Computing Krippendorff's Alpha-Reliability" (2011): 4 observers x 12 units, gaps.
N = np.nan
KRIPP = np.array(
    [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
        [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N],
    ]
)


def long_ratings(matrix: np.ndarray, aspect: str = "") -> pd.DataFrame:
    rows = [
        {"item_id": f"u{u}", "rater_id": f"r{r}", "label": str(int(matrix[r, u]))}
        for r in range(matrix.shape[0])
        for u in range(matrix.shape[1])
        if not np.isnan(matrix[r, u])
    ]
    return pd.DataFrame(rows).assign(aspect=aspect) if aspect else pd.DataFrame(rows)


def counts_to_reliability(counts: np.ndarray) -> np.ndarray:
    """Raters x units matrix (NaN = no rating) holding the same ratings as a count table."""
    width = int(counts.sum(1).max())
    data = np.full((width, len(counts)), np.nan)
    for u, row in enumerate(counts):
        labels = np.repeat(np.arange(len(row)), row.astype(int))
        data[: len(labels), u] = labels
    return data


def test_fleiss_1971_classic_table_gives_0_210():
    assert fleiss_kappa(FLEISS_TABLE) == pytest.approx(0.20993, abs=5e-5)
    assert round(fleiss_kappa(FLEISS_TABLE), 3) == 0.210


def test_fleiss_matches_statsmodels_on_random_tables():
    rng = np.random.default_rng(7)
    for _ in range(20):
        n_items, n_raters, n_cat = rng.integers(2, 30), rng.integers(2, 9), rng.integers(2, 6)
        probs = rng.dirichlet(np.ones(n_cat))
        table = np.stack([rng.multinomial(n_raters, probs) for _ in range(n_items)])
        if len(np.unique(table.argmax(1))) == 1 and (table.max(1) == n_raters).all():
            continue  # a single category everywhere: kappa undefined in both
        assert fleiss_kappa(table) == pytest.approx(sm_fleiss_kappa(table), abs=1e-12)


def test_generalised_fleiss_on_unequal_counts_matches_hand_computation():
    table = np.array([[2, 1, 0], [0, 2, 0], [1, 1, 2], [3, 0, 0]], dtype=float)
    r = table.sum(1)  # 3, 2, 4, 3 ratings
    p_a = np.mean([(2 * 1) / (3 * 2), (2 * 1) / (2 * 1), (2 * 1) / (4 * 3), (3 * 2) / (3 * 2)])
    pi = np.array(
        [np.mean([2 / 3, 0 / 2, 1 / 4, 3 / 3]), np.mean([1 / 3, 2 / 2, 1 / 4, 0]), np.mean([0, 0, 2 / 4, 0])]
    )
    p_e = (pi**2).sum()
    assert r.tolist() == [3, 2, 4, 3]
    assert fleiss_kappa(table) == pytest.approx((p_a - p_e) / (1 - p_e), abs=1e-12)
    assert percent_agreement(table) == pytest.approx(p_a, abs=1e-12)


# Gwet's irrCAC (CRAN package irrCAC 1.0, data set `cac.raw4raters`, inst/extdata/cac.raw4raters.csv) and
# its published output in the package vignette "overview" (inst/doc/overview.html):
#   fleiss.kappa.raw(cac.raw4raters)$est  ->  pa 0.8181818, pe 0.2387153, coeff.val 0.76117
# Units x raters, NaN = not rated; unit 12 has a single rating.
CAC_RAW4RATERS = np.array(
    [
        [1, 1, N, 1], [2, 2, 3, 2], [3, 3, 3, 3], [3, 3, 3, 3], [2, 2, 2, 2], [1, 2, 3, 4],
        [4, 4, 4, 4], [1, 1, 2, 1], [2, 2, 2, 2], [N, 5, 5, 5], [N, N, 1, 1], [N, N, 3, N],
    ]
)
# The same vignette, data set `distrib.6raters` (15 subjects x 6 raters as category counts):
#   fleiss.kappa.dist(distrib.6raters)  ->  coeff 0.4139265, pa 0.5511111, pe 0.2340741
DISTRIB_6RATERS = np.array(
    [
        [0, 0, 0, 6, 0], [0, 3, 0, 0, 3], [0, 1, 4, 0, 1], [0, 0, 0, 0, 6], [0, 3, 0, 3, 0],
        [2, 0, 4, 0, 0], [0, 0, 4, 0, 2], [2, 0, 3, 1, 0], [2, 0, 0, 4, 0], [0, 0, 0, 0, 6],
        [1, 0, 0, 5, 0], [1, 1, 0, 4, 0], [0, 3, 3, 0, 0], [1, 0, 0, 5, 0], [0, 2, 0, 3, 1],
    ]
)


def _gwet_reference(units_by_raters: np.ndarray) -> tuple[float, float, float]:
    """A line-by-line transcription of irrCAC's R ``fleiss.kappa.raw`` (unweighted) on a units x raters
    matrix, with plain loops: an independent check of the vectorised count-table code."""
    categories = sorted({v for v in units_by_raters.ravel() if not np.isnan(v)})
    rows = [row[~np.isnan(row)] for row in units_by_raters]
    rows = [row for row in rows if len(row)]  # "Exclude all subjects that are not rated by any rater"
    n = len(rows)
    agree = [[float(np.sum(row == c)) for c in categories] for row in rows]
    ri = [sum(a) for a in agree]
    n2more = sum(1 for x in ri if x >= 2)
    pa = sum(sum(a_k * (a_k - 1) for a_k in a) / (x * (x - 1)) for a, x in zip(agree, ri) if x >= 2) / n2more
    pi = [sum(a[k] / x for a, x in zip(agree, ri)) / n for k in range(len(categories))]
    pe = sum(p * p for p in pi)
    return pa, pe, (pa - pe) / (1 - pe)


def test_fleiss_matches_irrcac_published_4rater_example_with_a_single_rated_item():
    counts, _ = rating_counts(load_ratings(long_ratings(CAC_RAW4RATERS.T)))
    result = agreement(long_ratings(CAC_RAW4RATERS.T))
    assert round(result.fleiss_kappa, 5) == 0.76117  # irrCAC; dropping unit 12 first gave 0.762
    assert result.fleiss_pa == pytest.approx(0.8181818, abs=5e-8)
    assert result.fleiss_pe == pytest.approx(0.2387153, abs=5e-8)
    assert result.fleiss_variant == FLEISS_GENERALIZED and "irrCAC" in result.fleiss_variant
    assert fleiss_kappa(counts) == pytest.approx(_gwet_reference(CAC_RAW4RATERS)[2], abs=1e-12)


def test_fleiss_matches_irrcac_published_6rater_example():
    assert fleiss_kappa(DISTRIB_6RATERS) == pytest.approx(0.4139265, abs=5e-8)
    result = agreement(_ratings_from_counts(DISTRIB_6RATERS))
    assert result.fleiss_variant == FLEISS_1971
    assert (round(result.fleiss_pa, 7), round(result.fleiss_pe, 7)) == (0.5511111, 0.2340741)


def test_fleiss_with_many_single_rated_items_follows_gwet_not_the_rated_twice_subset():
    # 10 items, 6 of them rated once: the category shares come from all 10 (irrCAC), so chance agreement
    # differs from the subset of 4 items rated twice or more. Reference: the transcription above.
    data = np.array(
        [
            [1, 1, N], [2, 2, 1], [1, 2, 2], [2, 2, N],
            [1, N, N], [1, N, N], [1, N, N], [1, N, N], [1, N, N], [2, N, N],
        ]
    )
    pa, pe, kappa = _gwet_reference(data)
    result = agreement(long_ratings(data.T))
    assert result.fleiss_kappa == pytest.approx(kappa, abs=1e-12)
    assert (result.fleiss_pa, result.fleiss_pe) == (pytest.approx(pa), pytest.approx(pe))
    subset_only = _gwet_reference(data[:4])[2]
    assert abs(result.fleiss_kappa - subset_only) > 0.05  # the old code's answer
    assert result.dropped_items == 6 and result.items == 4
    assert any("6 item(s) with a single rating" in n and "category shares" in n for n in result.notes)
    assert result.fleiss_variant != FLEISS_1971  # counts 1, 2 and 3: not "equal numbers of ratings"


def test_fleiss_matches_gwet_transcription_on_random_data_with_gaps():
    rng = np.random.default_rng(5)
    for _ in range(20):
        data = rng.integers(1, 5, size=(rng.integers(3, 30), rng.integers(2, 6))).astype(float)
        data[rng.random(data.shape) < 0.4] = np.nan
        rated_twice = (~np.isnan(data)).sum(1) >= 2
        if not rated_twice.any() or len(np.unique(data[~np.isnan(data)])) < 2:
            continue
        counts, _ = rating_counts(load_ratings(long_ratings(data.T)))
        assert fleiss_kappa(counts) == pytest.approx(_gwet_reference(data)[2], abs=1e-12)


def test_fleiss_is_nan_for_one_category():
    assert np.isnan(fleiss_kappa(np.array([[3, 0], [3, 0]])))


@pytest.mark.parametrize(("level", "expected"), [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)])
def test_krippendorff_worked_example(level, expected):
    counts, categories = rating_counts(load_ratings(long_ratings(KRIPP)))
    assert categories == [1.0, 2.0, 3.0, 4.0, 5.0]
    alpha = krippendorff_alpha(counts, level, values=categories)
    assert round(alpha, 3) == expected
    assert alpha == pytest.approx(krippendorff.alpha(KRIPP, level_of_measurement=level), abs=1e-12)


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval"])
def test_krippendorff_matches_package_on_random_data_with_gaps(level):
    rng = np.random.default_rng(11)
    for _ in range(15):
        n_raters, n_units, n_values = rng.integers(2, 7), rng.integers(3, 40), rng.integers(2, 7)
        data = rng.integers(1, n_values + 1, size=(n_raters, n_units)).astype(float)
        data[rng.random(data.shape) < 0.3] = np.nan
        if np.sum((~np.isnan(data)).sum(0) >= 2) < 2 or len(np.unique(data[~np.isnan(data)])) < 2:
            continue
        frame = long_ratings(data)
        counts, categories = rating_counts(load_ratings(frame))
        mine = krippendorff_alpha(counts, level, values=categories)
        theirs = krippendorff.alpha(data, level_of_measurement=level)
        assert mine == pytest.approx(theirs, abs=1e-9)


def test_agreement_on_classic_fleiss_data_reports_fleiss_1971_and_matches_packages():
    result = agreement(load_ratings(_ratings_from_counts(FLEISS_TABLE)))
    assert result.fleiss_variant == FLEISS_1971
    assert round(result.fleiss_kappa, 3) == 0.210
    assert result.items == 10 and result.ratings == 140 and result.dropped_items == 0
    reliability = counts_to_reliability(FLEISS_TABLE)
    assert result.krippendorff_alpha["nominal"] == pytest.approx(
        krippendorff.alpha(reliability, level_of_measurement="nominal"), abs=1e-12
    )
    assert result.krippendorff_alpha["ordinal"] == pytest.approx(
        krippendorff.alpha(reliability, level_of_measurement="ordinal"), abs=1e-12
    )
    assert result.notes == []


def _ratings_from_counts(table: np.ndarray) -> pd.DataFrame:
    rows = []
    for u, row in enumerate(table):
        labels = np.repeat(np.arange(1, len(row) + 1), row)
        rows += [{"item_id": f"s{u}", "rater_id": f"r{i}", "label": str(lab)} for i, lab in enumerate(labels)]
    return pd.DataFrame(rows)


def test_agreement_with_unequal_counts_says_so_and_drops_single_ratings():
    result = agreement(long_ratings(KRIPP))
    assert result.fleiss_variant == FLEISS_GENERALIZED
    assert result.dropped_items == 1 and result.items == 11 and result.raters == 4
    assert any("different numbers of ratings" in n and "Gwet 2014" in n for n in result.notes)
    assert any("single rating" in n for n in result.notes)
    assert round(result.krippendorff_alpha["nominal"], 3) == 0.743
    payload = result.to_dict()
    assert {"fleiss_kappa", "krippendorff_alpha", "percent_agreement", "items", "raters"} <= payload.keys()


def test_agreement_per_aspect_and_text_labels():
    a = long_ratings(KRIPP, aspect="fluency")
    b = _ratings_from_counts(FLEISS_TABLE).assign(aspect="overall")
    result = agreement(pd.concat([a, b], ignore_index=True))
    assert list(result.per_aspect) == ["fluency", "overall"]
    assert round(result.per_aspect["overall"].fleiss_kappa, 3) == 0.210
    assert round(result.per_aspect["fluency"].krippendorff_alpha["nominal"], 3) == 0.743
    assert result.items == 21  # units are (item, aspect) overall
    text = pd.DataFrame(
        {
            "item_id": ["1", "1", "1", "2", "2", "2"],
            "rater_id": list("abcabc"),
            "label": ["yes", "yes", "no", "no", "no", "no"],
        }
    )
    nominal_only = agreement(text)
    assert nominal_only.krippendorff_alpha["ordinal"] is None
    assert nominal_only.percent_agreement == pytest.approx((1 / 3 + 1) / 2)
    assert "per_aspect" not in nominal_only.to_dict()


def test_dataset_quality_means_per_source_and_metric():
    frame = pd.DataFrame(
        {
            "item_id": ["d1", "d1", "d2", "d2", "e1", "e1", "d1", "d1"],
            "rater_id": ["a", "b", "a", "b", "a", "b", "a", "b"],
            "label": ["4", "5", "3", "4", "2", "3", "5", "5"],
            "aspect": ["empathy"] * 6 + ["coherence"] * 2,
            "source": ["extes"] * 4 + ["seed"] * 2 + ["extes"] * 2,
        }
    )
    quality = dataset_quality(frame)
    got = {(r.source, r.aspect): (r.mean, r.n_items, r.n_ratings) for r in quality.itertuples()}
    assert got == {
        ("extes", "empathy"): (4.0, 2, 4),
        ("extes", "coherence"): (5.0, 1, 2),
        ("seed", "empathy"): (2.5, 1, 2),
    }
    with pytest.raises(ValueError, match="source"):
        dataset_quality(frame.drop(columns="source"))
    with pytest.raises(ValueError, match="numeric labels"):
        dataset_quality(frame.assign(label="good"))
