"""Win/tie/loss, sign tests, session bootstrap, win-rate matrix and Bradley-Terry on hand-made votes."""

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from extes import analysis
from extes.analysis import (
    AnalysisInputError,
    bradley_terry,
    load_votes,
    pairwise,
    win_rate_matrix,
    win_tie_loss,
)

COLUMNS = ["session_id", "aspect", "arm_a", "arm_b", "outcome"]


def votes(rows, one_rater_per_vote: bool = True) -> pd.DataFrame:
    """Votes from (session, aspect, arm_a, arm_b, outcome) rows. The synthetic sessions below hold many votes
    of one pair on one aspect, which one rater may not give (`load_votes` refuses a repeated comparison), so
    by default each vote gets its own rater."""
    frame = pd.DataFrame(rows, columns=COLUMNS)
    if one_rater_per_vote:
        frame["rater_id"] = [f"r{i}" for i in range(len(frame))]
    return frame


# Hand-counted from lora's side (lora appears as arm_a and as arm_b):
#   vs base, overall:   s1 win, s4 loss (lora is b, a won), s2 win (lora is b, b won), s3 tie  -> 2/1/1
#   vs base, fluency:   s2 tie                                                                  -> 0/1/0
#   vs gpt, overall:    s1 win (lora b), s3 loss (lora a, b won)                                -> 1/0/1
#   base vs gpt never involves lora and is ignored.
HAND = votes(
    one_rater_per_vote=False,
    rows=[
        ("s1", "overall", "lora", "base", "a"),
        ("s4", "overall", "base", "lora", "a"),
        ("s2", "overall", "base", "lora", "b"),
        ("s3", "overall", "lora", "base", "tie"),
        ("s2", "fluency", "base", "lora", "tie"),
        ("s1", "overall", "gpt", "lora", "b"),
        ("s3", "overall", "lora", "gpt", "b"),
        ("s3", "overall", "base", "gpt", "a"),
    ]
)


def test_win_tie_loss_matches_hand_counts_with_reference_on_either_side():
    result = win_tie_loss(HAND, "lora", n_boot=0)
    got = {(r.opponent, r.aspect): (r.n_win, r.n_tie, r.n_loss, r.n) for r in result.rows.itertuples() if r.n}
    assert got == {
        ("base", "fluency"): (0, 1, 0, 1),
        ("base", "overall"): (2, 1, 1, 4),
        ("gpt", "overall"): (1, 0, 1, 2),
    }
    row = result.rows.set_index(["opponent", "aspect"]).loc[("base", "overall")]
    assert (row.win, row.tie, row.loss) == (0.5, 0.25, 0.25)
    # Every opponent x the paper's five aspects, in the paper's order, opponents sorted; empty cells say why.
    assert list(result.rows["aspect"]) == [*analysis.ASPECTS, *analysis.ASPECTS]
    status = {(r.opponent, r.aspect): r.status for r in result.rows.itertuples()}
    assert status[("gpt", "fluency")] == "never compared"  # fluency has votes, none of lora vs gpt
    assert status[("base", "comforting")] == status[("gpt", "suggestion")] == "no votes"
    assert status[("base", "overall")] == "compared"


def test_from_the_other_side_wins_and_losses_swap():
    lora = win_tie_loss(HAND, "lora", n_boot=0).rows.set_index(["opponent", "aspect"])
    base = win_tie_loss(HAND, "base", n_boot=0).rows.set_index(["opponent", "aspect"])
    mine, theirs = lora.loc[("base", "overall")], base.loc[("lora", "overall")]
    assert (mine.n_win, mine.n_tie, mine.n_loss) == (theirs.n_loss, theirs.n_tie, theirs.n_win)


def test_sign_test_equals_scipy_binomtest_and_ignores_ties():
    rng = np.random.default_rng(3)
    outcome = rng.choice(["a", "b", "tie"], size=200, p=[0.45, 0.3, 0.25])
    frame = votes([(f"s{i // 4}", "overall", "x", "y", o) for i, o in enumerate(outcome)])
    row = win_tie_loss(frame, "x", n_boot=0).rows.query("n > 0").iloc[0]
    wins, losses = int((outcome == "a").sum()), int((outcome == "b").sum())
    assert row.p_value == binomtest(wins, wins + losses, 0.5).pvalue
    only_ties = win_tie_loss(votes([("s1", "overall", "x", "y", "tie")]), "x", n_boot=0)
    assert np.isnan(only_ties.rows.query("n > 0").iloc[0].p_value)
    assert only_ties.to_dict()["rows"][0]["p_value"] is None


def test_bootstrap_resamples_whole_sessions():
    # Session A: 10 wins; session B: 10 losses. Resampling sessions can only give -1, 0 or +1;
    # resampling single votes would give many other values.
    rows = [("A", "overall", "x", "y", "a")] * 10 + [("B", "overall", "y", "x", "a")] * 10
    result = win_tie_loss(votes(rows), "x", n_boot=400, seed=1, min_sessions=2)
    sums = pairwise._bootstrap_session_sums(
        np.array([0] * 10 + [1] * 10), np.zeros(20, dtype=int), np.array([1.0] * 10 + [-1.0] * 10), 1, 400, 1
    )
    assert set(np.unique(sums[:, 0])) <= {-20.0, 0.0, 20.0}
    assert (result.rows.query("n > 0").iloc[0].ci_low, result.rows.query("n > 0").iloc[0].ci_high) == (-1.0, 1.0)


def test_bootstrap_is_seeded_chunk_independent_and_brackets_the_estimate(monkeypatch):
    rng = np.random.default_rng(5)
    rows = [(f"s{i // 5}", "overall", "x", "y", o) for i, o in enumerate(rng.choice(["a", "b", "tie"], 500))]
    frame = votes(rows)
    first = win_tie_loss(frame, "x", n_boot=300, seed=9).rows.query("n > 0").iloc[0]
    again = win_tie_loss(frame, "x", n_boot=300, seed=9).rows.query("n > 0").iloc[0]
    assert (first.ci_low, first.ci_high) == (again.ci_low, again.ci_high)
    monkeypatch.setattr(pairwise, "_CHUNK_CELLS", 250)  # 2 replicates per chunk for 100 sessions
    chunked = win_tie_loss(frame, "x", n_boot=300, seed=9).rows.query("n > 0").iloc[0]
    assert (chunked.ci_low, chunked.ci_high) == pytest.approx((first.ci_low, first.ci_high), abs=1e-12)
    assert first.ci_low < first.win - first.loss < first.ci_high
    other_seed = win_tie_loss(frame, "x", n_boot=300, seed=10).rows.query("n > 0").iloc[0]
    assert (other_seed.ci_low, other_seed.ci_high) != (first.ci_low, first.ci_high)


@pytest.mark.slow  # over 10 s: in `make test`, not in `make test-fast`
def test_bootstrap_ci_covers_truth_about_95_percent_of_the_time():
    # 60 simulated studies with a known win - loss of 0.2; a 95% CI should miss rarely.
    rng = np.random.default_rng(0)
    misses = 0
    for trial in range(60):
        outcome = rng.choice(["a", "b", "tie"], size=300, p=[0.5, 0.3, 0.2])
        frame = votes([(f"s{i // 3}", "overall", "x", "y", o) for i, o in enumerate(outcome)])
        row = win_tie_loss(frame, "x", n_boot=300, seed=trial).rows.query("n > 0").iloc[0]
        misses += not (row.ci_low <= 0.2 <= row.ci_high)
    assert misses <= 9  # expected ~3; P(>9 | 5%) is far below 0.1%


def test_to_dict_has_the_json_shape():
    payload = win_tie_loss(HAND, "lora", n_boot=50).to_dict()
    assert payload["reference"] == "lora"
    assert set(payload["rows"][0]) == {
        "opponent",
        "aspect",
        "win",
        "tie",
        "loss",
        "n",
        "p_value",
        "p_adjusted",
        "ci_low",
        "ci_high",
        "status",
    }
    assert payload["correction"] == "holm" and payload["tests"] == 2


def test_paper_layout_table():
    result = win_tie_loss(HAND, "lora", n_boot=0)
    table = result.table()
    assert list(table.columns) == ["comparison", *analysis.ASPECTS]
    assert table.iloc[0].tolist() == ["lora vs base", "0.0 / 100.0 / 0.0", "no votes", "no votes", "no votes",
                                      "50.0 / 25.0 / 25.0"]
    assert table.iloc[1]["fluency"] == "never compared"  # was "-", and aspects without votes were left out
    assert result.omissions() == ["no votes at all on identification, comforting, suggestion",
                                  "lora never compared with gpt on fluency"]


def test_unknown_reference_lists_the_arms():
    with pytest.raises(AnalysisInputError, match=r"unknown reference arm 'nope'.*base, gpt, lora"):
        win_tie_loss(HAND, "nope")


def test_win_rate_matrix_counts_ties_as_half():
    matrix = win_rate_matrix(HAND, "overall")
    assert list(matrix.rates.index) == ["base", "gpt", "lora"]
    # lora vs base overall: 2 wins, 1 tie, 1 loss -> (2 + 0.5) / 4
    assert matrix.rates.loc["lora", "base"] == 0.625
    assert matrix.rates.loc["base", "lora"] == 0.375
    assert matrix.counts.loc["lora", "base"] == 4 and matrix.counts.loc["base", "gpt"] == 1
    assert matrix.rates.loc["base", "gpt"] == 1.0
    assert np.isnan(matrix.rates.loc["lora", "lora"])
    fluency = win_rate_matrix(HAND, "fluency")
    assert np.isnan(fluency.rates.loc["gpt", "lora"]) and fluency.counts.loc["gpt", "lora"] == 0
    with pytest.raises(AnalysisInputError, match="no votes for aspect 'suggestion'"):
        win_rate_matrix(HAND, "suggestion")


def test_bradley_terry_matches_logistic_regression_mle():
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(1)
    arms = ["a0", "a1", "a2", "a3"]
    truth = np.array([0.6, 0.1, -0.2, -0.5])
    rows, design, y = [], [], []
    for s in range(400):
        i, j = rng.choice(4, 2, replace=False)
        win = rng.random() < 1 / (1 + np.exp(truth[j] - truth[i]))
        rows.append((f"s{s}", "overall", arms[i], arms[j], "a" if win else "b"))
        x = np.zeros(4)
        x[i], x[j] = 1, -1
        design.append(x[1:])  # a0 is the baseline (log-strength 0)
        y.append(float(win))
    fit = sm.Logit(np.array(y), np.array(design)).fit(disp=0, method="newton", tol=1e-12)
    theta = np.concatenate([[0.0], fit.params])
    expected = 1000 + 400 / np.log(10) * (theta - theta.mean())
    result = bradley_terry(votes(rows), n_boot=0, prior=1e-9).ratings.query("aspect == 'overall'").set_index("arm")
    assert result.loc[arms, "rating"].to_numpy() == pytest.approx(expected, abs=1e-4)
    assert result.loc[arms, "rank"].tolist() == [1, 2, 3, 4]


def test_bradley_terry_ties_are_half_wins_and_cis_bracket_the_rating():
    even = votes([(f"s{i}", "overall", "x", "y", "tie") for i in range(10)])
    flat = bradley_terry(even, n_boot=0).ratings.query("n > 0")
    assert flat["rating"].to_numpy() == pytest.approx([1000.0, 1000.0])
    rng = np.random.default_rng(2)
    outcome = rng.choice(["a", "b", "tie"], size=300, p=[0.55, 0.25, 0.2])
    frame = votes([(f"s{i // 3}", asp, "x", "y", o) for i, o in enumerate(outcome) for asp in ["overall"]])
    frame = pd.concat([frame, votes([("t1", "fluency", "y", "z", "a")])], ignore_index=True)
    result = bradley_terry(frame, n_boot=200, seed=0)
    fluency = result.ratings[result.ratings.aspect == "fluency"]
    assert fluency["arm"].tolist() == ["y", "z", "x"]  # x never judged on fluency: last, n = 0, no rank
    assert fluency["n"].tolist()[-1] == 0 and fluency["rank"].isna().tolist() == [False, False, True]
    top = result.ratings[(result.ratings.aspect == "overall") & (result.ratings["rank"] == 1)].iloc[0]
    assert top.arm == "x" and top.ci_low < top.rating < top.ci_high
    assert set(result.to_dict()) == set(analysis.ASPECTS)
    assert result.to_dict()["fluency"][-1] == {"rank": None, "arm": "x", "rating": None, "ci_low": None,
                                               "ci_high": None, "n": 0}
    assert set(result.to_dict()["overall"][0]) == {"rank", "arm", "rating", "ci_low", "ci_high", "n"}


def test_bradley_terry_stays_finite_when_an_arm_never_wins():
    frame = votes([(f"s{i}", "overall", "x", "y", "a") for i in range(20)])
    result = bradley_terry(frame, n_boot=50)
    ratings = result.ratings.query("n > 0")
    assert result.ml_exists == {"overall": False} and result.notes
    assert np.isfinite(ratings[["rating", "ci_low", "ci_high"]].to_numpy()).all()
    assert ratings.iloc[0].arm == "x" and ratings.iloc[0].rating > 1200
    with pytest.raises(ValueError, match="prior"):
        bradley_terry(frame, prior=0)


def test_plots_show_the_numbers_they_are_given():
    from matplotlib.figure import Figure

    wtl = win_tie_loss(HAND, "lora", n_boot=20, min_sessions=1)
    fig = analysis.plot_win_tie_loss(wtl)
    assert isinstance(fig, Figure)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == list(analysis.ASPECTS)
    # bars per panel: win, tie, loss for each of the 2 opponents; widths are the percentages
    overall = axes[4]
    assert len(overall.patches) == 6
    assert sorted(round(b.get_width(), 6) for b in overall.patches) == sorted(
        [50.0, 25.0, 25.0, 50.0, 0.0, 50.0])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["win", "tie", "loss"]
    assert [t.get_text() for t in axes[0].get_yticklabels()] == ["base", "gpt"]
    assert axes[0].get_ylabel() == "lora vs"

    heat = analysis.plot_win_rate_heatmap(win_rate_matrix(HAND, "overall"))
    ax = heat.axes[0]
    assert ax.get_title() == "win rate, row vs column (overall)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["base", "gpt", "lora"]
    texts = {t.get_text() for t in ax.texts}
    assert "0.62\n(n=4)" in texts  # lora vs base: 2 wins + 1 tie of 4 votes (ties half)

    bt = bradley_terry(HAND, n_boot=20, min_sessions=1)
    fig = analysis.plot_bradley_terry(bt)
    overall = [a for a in fig.axes if a.get_title() == "overall"][0]
    rows = bt.ratings[bt.ratings.aspect == "overall"]
    assert rows["n"].gt(0).all()
    assert [t.get_text() for t in overall.get_yticklabels()] == list(rows["arm"])
    points = overall.lines[0].get_xdata()
    assert np.allclose(points, rows["rating"].to_numpy())


def test_holm_and_bh_match_statsmodels_in_the_table_and_json():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(4)
    rows = []
    for opp, p_win in [("a", 0.7), ("b", 0.6), ("c", 0.5)]:
        for aspect in ["fluency", "comforting", "overall"]:
            for i in range(40):
                o = rng.choice(["a", "b", "tie"], p=[p_win * 0.8, (1 - p_win) * 0.8, 0.2])
                rows.append((f"s{i}", aspect, "ref", opp, o))
    frame = votes(rows)
    for correction, method in [("holm", "holm"), ("bh", "fdr_bh")]:
        result = win_tie_loss(frame, "ref", n_boot=0, correction=correction, aspects=["fluency", "comforting",
                                                                                           "overall"])
        raw = result.rows["p_value"].to_numpy()
        assert result.rows["p_adjusted"].to_numpy() == pytest.approx(multipletests(raw, method=method)[1])
        payload = result.to_dict()
        assert payload["correction"] == correction and payload["tests"] == 9
        assert [r["p_adjusted"] for r in payload["rows"]] == pytest.approx(list(result.rows["p_adjusted"]))
        table = result.table()
        for r in result.rows.itertuples():
            cell = table.set_index("comparison").loc[f"ref vs {r.opponent}", r.aspect]
            assert cell.endswith("*") == (r.p_adjusted < 0.05)
    none = win_tie_loss(frame, "ref", n_boot=0, correction="none").rows.query("n > 0")
    assert none["p_adjusted"].tolist() == none["p_value"].tolist()
    holm = win_tie_loss(frame, "ref", n_boot=0).rows
    assert ((holm.p_value < 0.05) & (holm.p_adjusted >= 0.05)).any()  # a mark that correction removes
    with pytest.raises(ValueError, match="correction"):
        win_tie_loss(frame, "ref", correction="bonferroni-ish")


def test_table_percentages_sum_to_100_and_equal_counts_print_equal():
    frame = votes([("s1", "overall", "x", "y", "a"), ("s2", "overall", "x", "y", "a"), ("s3", "overall", "x", "y", "b"),
                   ("s4", "overall", "x", "y", "tie")])
    assert win_tie_loss(frame, "x", n_boot=0).table().iloc[0]["overall"] == "50.0 / 25.0 / 25.0"
    frame = votes([("s1", "overall", "x", "y", "a"), ("s2", "overall", "x", "y", "b"),
                   ("s3", "overall", "x", "y", "tie")])
    result = win_tie_loss(frame, "x", n_boot=0)
    # 1/1/1 printed 33.4 / 33.3 / 33.3 (the first of a tie took the last 0.1): equal counts now print equal
    assert result.table().iloc[0]["overall"] == "33.3 / 33.3 / 33.3"
    from extes.analysis.report import wtl_caption
    assert "equal counts always equal" in wtl_caption(result)


def test_one_session_gives_no_interval_but_a_reason():
    rows = [("only", "overall", "x", "y", "a")] * 5 + [("only", "overall", "x", "z", "a")] * 5
    result = win_tie_loss(votes(rows), "x", n_boot=200)
    assert result.rows[["ci_low", "ci_high"]].isna().all().all()  # was [1.000, 1.000]
    assert any("1 session(s), fewer than 10" in n for n in result.notes)
    assert result.to_dict()["notes"] == result.notes
    nine = [(f"s{i}", "overall", "x", "y", o) for i, o in enumerate(["a", "a", "b", "a", "b", "tie", "a", "b", "b"])]
    assert win_tie_loss(votes(nine), "x", n_boot=100).rows["ci_low"].isna().all()
    assert win_tie_loss(votes(nine), "x", n_boot=100, min_sessions=9).rows.query("n > 0")["ci_low"].notna().all()
    bt = bradley_terry(votes(rows), n_boot=100)
    assert bt.ratings[["ci_low", "ci_high"]].isna().all().all()
    assert any("fewer than 10" in n for n in bt.notes)


def test_bradley_terry_warns_when_maximum_likelihood_does_not_exist():
    # one session, one vote per pair, x > y > z: separation, the MLE runs off to infinity
    one = votes([("s1", "overall", "x", "y", "a"), ("s1", "overall", "y", "z", "a"),
                 ("s1", "overall", "x", "z", "a")])
    result = bradley_terry(one, n_boot=0)
    assert result.ml_exists == {"overall": False}
    assert any("maximum-likelihood ratings do not exist" in n for n in result.notes)
    assert np.isnan(result.prior_shift["overall"])
    # a cycle (every arm won and lost) has an MLE; the prior's pull on it is reported
    cycle = pd.concat([one, votes([("s2", "overall", "z", "x", "a")])], ignore_index=True)
    fit = bradley_terry(cycle, n_boot=0)
    assert fit.ml_exists == {"overall": True} and fit.notes == []
    ml = bradley_terry(cycle, n_boot=0, prior=1e-9).ratings.set_index("arm")["rating"]
    shift = (fit.ratings.set_index("arm")["rating"] - ml).abs().max()
    assert fit.prior_shift["overall"] == pytest.approx(shift, abs=1e-6) and shift > 1
    assert bradley_terry(cycle, n_boot=0, prior=5.0).prior_shift["overall"] > shift


def test_functions_accept_a_csv_path(tmp_path):
    path = tmp_path / "votes.csv"
    HAND.to_csv(path, index=False)
    assert win_tie_loss(path, "lora", n_boot=0).rows["n"].sum() == 7
    assert load_votes(path)["rater_id"].eq("").all()  # optional columns filled in
