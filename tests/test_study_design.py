"""k arms in 2 or 3 panes: the balanced and adaptive designs (extes.study.design), the protocol keys that
choose them, and a five-arm two-pane study end to end in Python: start, send, rate, judge, export, analyze.
(The browser run is tests/test_study_panes_browser.py.)"""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pandas as pd
import pytest
from study_helpers import FakePool, full_answers, make_protocol, protocol_dict

from extes.analysis.pairwise import ELO_SCALE, pair_interval_widths
from extes.study.assignment import ORDERS, balanced_chooser
from extes.study.design import Design, chooser, pair
from extes.study.protocol import ProtocolError, protocol_from_dict
from extes.study.session import Study, StudyRefusal
from extes.study.store import Store

FIVE = ("arm-one", "arm-two", "arm-three", "arm-four", "arm-five")


def simulate(k: int, panes: int, n: int, seed: int) -> tuple[Design, list[int]]:
    design, counts = Design(k, panes), None
    counts = [0] * design.size
    rng = random.Random(seed)
    for _ in range(n):
        counts[design.choose_balanced(counts, rng)] += 1
    return design, counts


def spreads(design: Design, counts: list[int]) -> dict[str, int]:
    """max - min of the arm, unordered pair and (arm, pane) counts."""
    use = design.usage(counts)
    k, p = design.k, design.panes
    groups = {"arms": [use.arms[a] for a in range(k)],
              "pairs": [use.pairs[x] for x in itertools.combinations(range(k), 2)],
              "places": [use.places[(a, q)] for a in range(k) for q in range(p)]}
    return {name: max(v) - min(v) for name, v in groups.items()}


def test_three_arms_in_three_panes_is_the_papers_six_orders_and_choice():
    design = Design(3, 3)
    assert design.selections == ORDERS  # same orders, same indices
    names = ("x", "y", "z")
    today, new = balanced_chooser(names, random.Random(7)), chooser(design, names, random.Random(7))
    counts_a, counts_b = [0] * 6, [0] * 6
    for _ in range(60):  # the same random draws give the same conversations
        (ia, arms_a), (ib, arms_b) = today(list(counts_a)), new(list(counts_b))
        assert (ia, arms_a) == (ib, arms_b)
        counts_a[ia] += 1
        counts_b[ib] += 1


@pytest.mark.parametrize("k, panes", [(5, 2), (5, 3), (4, 3), (3, 3)])
def test_300_conversations_use_every_arm_pair_and_position_within_one(k, panes):
    for seed in range(4):
        design, counts = simulate(k, panes, 300, seed)
        assert sum(counts) == 300
        assert all(v <= 1 for v in spreads(design, counts).values()), (k, panes, seed, spreads(design, counts))


def test_random_designs_stay_balanced():
    """A sweep over k and panes: at 300 conversations everything is within one (k <= 6), and after every
    full round of the design's selections every count is exactly equal."""
    rng = random.Random(0)
    for _ in range(12):
        k = rng.randint(2, 6)
        panes = rng.choice([p for p in (2, 3) if p <= k])
        seed = rng.randrange(1000)
        design, counts = simulate(k, panes, 300, seed)
        assert all(v <= 1 for v in spreads(design, counts).values()), (k, panes, seed)
        rounds = 2 * design.size
        design, counts = simulate(k, panes, rounds, seed)
        assert set(counts) == {2} and set(spreads(design, counts).values()) == {0}, (k, panes, seed)


def test_balance_holds_mid_round_too():
    """Between rounds the counts stay close (the tie-break), not only at the end of a round."""
    for k, panes in [(5, 2), (5, 3), (4, 3)]:
        design = Design(k, panes)
        counts, rng = [0] * design.size, random.Random(3)
        for _ in range(150):
            counts[design.choose_balanced(counts, rng)] += 1
            assert all(v <= 2 for v in spreads(design, counts).values())


def test_adaptive_shows_the_widest_interval_pair_in_balanced_panes():
    design = Design(4, 2)
    widths = {pair(a, b): 100.0 for a, b in itertools.combinations(range(4), 2)}
    widths[(1, 3)] = 250.0
    counts, rng = [0] * design.size, random.Random(0)
    first = []
    for _ in range(6):
        i = design.choose_adaptive(counts, widths, rng)
        assert set(design.selections[i]) == {1, 3}
        first.append(design.selections[i][0])
        counts[i] += 1
    assert sorted(first) == [1, 1, 1, 3, 3, 3]  # both panes equally
    widths[(0, 2)] = math.inf  # never compared: shown first
    assert set(design.selections[design.choose_adaptive(counts, widths, rng)]) == {0, 2}
    # three panes: the widest pair plus the third arm that widens the set most
    d3 = Design(4, 3)
    w3 = {pair(a, b): 10.0 for a, b in itertools.combinations(range(4), 2)} | {(0, 1): 90.0, (1, 2): 50.0}
    assert set(d3.selections[d3.choose_adaptive([0] * d3.size, w3, rng)]) == {0, 1, 2}
    # no votes yet: balanced
    assert design.choose_adaptive([1] * 11 + [0], {}, rng) == 11


def test_pair_interval_widths_match_a_statsmodels_logit():
    import statsmodels.api as sm

    rng = np.random.default_rng(0)
    arms = ["a", "b", "c", "d"]
    strength = {"a": 0.8, "b": 0.3, "c": 0.0, "d": -0.5}
    rows = []
    for _ in range(600):
        x, y = rng.choice(arms, 2, replace=False)
        p = 1 / (1 + math.exp(-(strength[x] - strength[y])))
        rows.append(("s", "overall", x, y, "a" if rng.random() < p else "b"))
    votes = pd.DataFrame(rows, columns=["session_id", "aspect", "arm_a", "arm_b", "outcome"])
    widths = pair_interval_widths(votes, arms, prior=1e-9)
    # Bradley-Terry is a logit on +1/-1 arm indicators (arm a as the reference, no intercept)
    design = np.zeros((len(votes), 3))
    for r, (x, y) in enumerate(zip(votes["arm_a"], votes["arm_b"])):
        for arm, sign in ((x, 1.0), (y, -1.0)):
            if arm != "a":
                design[r, arms.index(arm) - 1] = sign
    fit = sm.Logit((votes["outcome"] == "a").astype(float).to_numpy(), design).fit(disp=0)
    cov = fit.cov_params()
    z = 1.959963984540054
    assert widths[("a", "c")] == pytest.approx(2 * z * ELO_SCALE * math.sqrt(cov[1, 1]), rel=1e-4)
    var_bd = cov[0, 0] + cov[2, 2] - 2 * cov[0, 2]
    assert widths[("b", "d")] == pytest.approx(2 * z * ELO_SCALE * math.sqrt(var_bd), rel=1e-4)
    assert pair_interval_widths(votes[~votes[["arm_a", "arm_b"]].isin(["d"]).any(axis=1)], arms)[("a", "d")] == math.inf


@pytest.mark.parametrize("change, expected", [
    ({"panes": 4}, "study.yaml: panes: 4 is not one of 2, 3"),
    ({"panes": 3, "arms": [{"name": "a"}, {"name": "b"}]}, "study.yaml: panes: 3 panes need at least 3 arms, got 2"),
    ({"arms": [{"name": "a"}, {"name": "b"}]}, "study.yaml: panes: 3 panes need at least 3 arms"),
    ({"assignment": "greedy"}, "study.yaml: assignment: 'greedy' is not one of balanced, adaptive"),
    ({"arms": [{"name": "a"}]}, "study.yaml: arms: needs at least 2 items"),
])
def test_protocol_errors_name_the_key(change, expected):
    data = protocol_dict()
    data.update(change)
    with pytest.raises(ProtocolError) as err:
        protocol_from_dict(data, where="study.yaml", build_arms=False)
    assert expected in str(err.value)


def test_default_protocol_keeps_three_panes_balanced(repo_root):
    from extes.study.protocol import load_protocol

    p = load_protocol(repo_root / "eval_protocol" / "default.yaml", build_arms=False)
    assert (p.panes, p.assignment, p.pane_names, p.design.size) == (3, "balanced", ("A", "B", "C"), 6)


def five_arm_study(tmp_path, **extra) -> Study:
    protocol = make_protocol(tmp_path, arms=[{"name": n} for n in FIVE], min_turns=1, conversations=1,
                             panes=2, **extra)
    return Study(protocol, Store(tmp_path / "study.sqlite"), FakePool(FIVE), rng=random.Random(0))


def run_conversation(study: Study, choice: str = "left") -> str:
    code = study.consent().code
    view = study.start_conversation(code, "Academic Stress")
    assert [ps.pane for ps in view.panes] == ["A", "B"]
    *_, view = study.send(code, view.conversation_id, "AB", "I feel stressed about exams")
    assert view.can_rate and [ps.turns for ps in view.panes] == [1, 1]
    conv = view.conversation_id
    with pytest.raises(StudyRefusal):
        list(study.send(code, conv, "C", "hello"))  # no third pane
    with pytest.raises(StudyRefusal):
        study.report(code, conv, "C", 1)
    study.submit_rating(code, conv, full_answers(study, choice))
    return conv


def test_a_five_arm_two_pane_study_runs_and_analyzes(tmp_path, capsys):
    study = five_arm_study(tmp_path)
    assert [q.pair for q in study.questions()] == [("A", "B")] * len(study.protocol.aspects)
    convs = [run_conversation(study, ["left", "right", "tie"][i % 3]) for i in range(20)]
    store = study.store
    arm_orders = [store.conversation(c).arm_order for c in convs]
    assert all(len(o) == 2 for o in arm_orders)
    pairs = {frozenset(o) for o in arm_orders}
    assert len(pairs) == 10  # 20 conversations: every pair of the five arms, each in both orders
    assert sorted(store.order_counts(20)) == [1] * 20
    votes = store.votes_frame()
    assert len(votes) == 20 * len(study.protocol.aspects) and set(votes["arm_a"]) | set(votes["arm_b"]) == set(FIVE)
    store.close()

    from extes.cli import main

    db = tmp_path / "study.sqlite"
    out_csv = tmp_path / "votes.csv"
    assert main(["export", "--db", str(db), "--votes", str(out_csv)]) == 0
    assert main(["analyze", "--votes", str(out_csv), "--reference", "arm-one", "--n-boot", "20",
                 "--out", str(tmp_path / "an")]) == 0
    out = capsys.readouterr().out
    table = out.split("\nDetails")[0]
    for other in FIVE[1:]:
        assert f"arm-one vs {other}" in table
    assert main(["report", "--votes", str(out_csv), "--reference", "arm-one", "--n-boot", "20",
                 "--out", str(tmp_path / "rep")]) == 0
    report = (tmp_path / "rep" / "report.md").read_text()
    assert all(arm in report for arm in FIVE)


def test_pairs_never_compared_are_reported(tmp_path, capsys):
    """Six conversations of a five-arm two-pane study leave pairs unseen: analyze names them."""
    study = five_arm_study(tmp_path)
    convs = [run_conversation(study) for _ in range(6)]
    seen = {frozenset(study.store.conversation(c).arm_order) for c in convs}
    never = [p for p in itertools.combinations(FIVE, 2) if frozenset(p) not in seen]
    ref = next(a for a in FIVE if any(a in p for p in never))
    from extes.study.ui_research import win_tie_loss_view

    dash = win_tie_loss_view(study.store, ref, n_boot=0)  # the dashboard's table
    unseen = [b if a == ref else a for a, b in never if ref in (a, b)]
    table = dash.table.set_index("comparison")
    for other in unseen:
        assert set(table.loc[f"{ref} vs {other}"]) == {"never compared"}
    study.store.close()
    from extes.cli import main

    out_csv = tmp_path / "votes.csv"
    assert main(["export", "--db", str(tmp_path / "study.sqlite"), "--votes", str(out_csv)]) == 0
    capsys.readouterr()
    assert main(["analyze", "--votes", str(out_csv), "--reference", ref, "--n-boot", "0"]) == 0
    out = capsys.readouterr().out
    for a, b in never:
        if ref in (a, b):
            other = b if a == ref else a
            assert f"{ref} never compared with {other}" in out


def test_adaptive_study_shows_the_pair_the_votes_know_least(tmp_path):
    study = five_arm_study(tmp_path, assignment="adaptive")
    for _ in range(10):  # no votes yet: balanced, so every pair once
        run_conversation(study)
    before = {frozenset(study.store.conversation(c.id).arm_order) for c in study.store.all_conversations()}
    assert len(before) == 10
    votes = study.store.votes_frame()
    widths = pair_interval_widths(votes, list(FIVE))
    widest = max(widths, key=widths.get)
    conv = run_conversation(study)
    assert set(study.store.conversation(conv).arm_order) == set(widest)


def test_two_pane_conversations_can_be_judged(tmp_path):
    from extes.study import annotation as ann

    study = five_arm_study(tmp_path, annotation={"judges_see_conversations": True, "judges_per_item": 1})
    conv_id = run_conversation(study)
    store, protocol = study.store, study.protocol
    ann.sync_items(store, protocol)
    judge = ann.new_judge(store, protocol).id
    a = ann.next_assignment(store, protocol, judge, rng=random.Random(3))
    view = ann.item_view(store, judge, a.id)
    assert len(view.panes) == 2 and ann.pair_labels(protocol.panes) == [("A", "B")]
    form = {(asp.key, 0): "left" for asp in protocol.aspects}
    assert ann.submit_pairwise(store, protocol, judge, a.id, form) == len(protocol.aspects)
    frame = store.votes_frame("judge")
    conv = store.conversation(conv_id)
    assert {frozenset((r.arm_a, r.arm_b)) for r in frame.itertuples()} == {frozenset(conv.arm_order)}
    store.close()
