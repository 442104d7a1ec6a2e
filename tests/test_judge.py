"""LLM judges: strict parsing, the position swap, exact counts against a loopback server, no re-paying."""

import json
import re

import pandas as pd
import pytest

from extes.analysis.rater_agreement import agreement_with, cohen_kappa
from extes.judge import DEFAULT_ASPECTS, PairItem, combine_orders, judge_pairs, load_prompt, parse_verdict
from extes.llm.budget import Budget, Price
from extes.llm.client import LLMClient
from extes.study.records import PaneVote
from extes.testing.chat_server import FunctionChatServer

KEYS = tuple(a.key for a in DEFAULT_ASPECTS)


def verdict(**kw):
    return {k: kw.get(k, "tie") for k in KEYS}


@pytest.mark.parametrize("text, expected", [
    (json.dumps(verdict(fluency="A")), verdict(fluency="A")),
    ("```json\n" + json.dumps(verdict(overall="b")) + "\n```", verdict(overall="B")),
    (json.dumps({k: "TIE" for k in KEYS}), verdict()),
])
def test_parse_accepts_only_the_exact_answer_shape(text, expected):
    assert parse_verdict(text, KEYS) == (expected, "")


@pytest.mark.parametrize("text, reason", [
    ("", "empty answer"),
    ("I prefer A overall.", "not a JSON object"),
    ("[1, 2]", "not a JSON object (a list)"),
    (json.dumps({"fluency": "A"}), "keys: missing"),
    (json.dumps({**verdict(), "tone": "A"}), "unexpected ['tone']"),
    (json.dumps(verdict(fluency="A is better")), "fluency: 'A is better' is not A, B or tie"),
    (json.dumps(verdict(fluency=1)), "fluency: 1 is not A, B or tie"),
    ("Sure! " + json.dumps(verdict()), "not a JSON object"),
])
def test_parse_rejects_everything_else_with_a_reason(text, reason):
    parsed, why = parse_verdict(text, KEYS)
    assert parsed is None and reason in why


def test_orders_that_disagree_are_ties_and_counted():
    keys = ("fluency", "overall", "comforting", "suggestion")
    # xy: A = x; yx: A = y.
    out = combine_orders({"fluency": "A", "overall": "A", "comforting": "tie", "suggestion": "A"},
                         {"fluency": "B", "overall": "A", "comforting": "tie", "suggestion": "tie"}, keys)
    assert out == {"fluency": ("x", True), "overall": ("tie", False), "comforting": ("tie", True),
                   "suggestion": ("tie", False)}


def test_prompt_is_versioned_in_the_repo():
    text = load_prompt("pairwise-v1")
    assert "{conversation_a}" in text and "{keys}" in text
    with pytest.raises(ValueError, match="unknown judge prompt version"):
        load_prompt("nope-v0")


def items():
    good = (("user", "I lost my job."), ("assistant", "GOODBOT That sounds really hard."))
    bad = (("user", "I lost my job."), ("assistant", "ok"))
    return [
        PairItem("c1/base~lora", "base", "lora", bad, good, conversation_id="c1"),     # lora better
        PairItem("c2/base~lora", "base", "lora", good, bad, conversation_id="c2"),     # base better
        PairItem("c3/base~lora", "base", "lora", good, good, conversation_id="c3"),    # garbage answers
    ]


def sections(messages):
    text = messages[0]["content"]
    a = text.split("Conversation A:")[1].split("Conversation B:")[0]
    b = text.split("Conversation B:")[1].split("For every aspect")[0]
    return a, b


def smart_judge(messages):
    """Prefers GOODBOT on fluency and overall, position-biased (always A) on comforting; garbage where
    both sides are GOODBOT."""
    a, b = sections(messages)
    if "GOODBOT" in a and "GOODBOT" in b:
        return "Both are lovely!"
    best = "A" if "GOODBOT" in a else "B"
    return json.dumps(verdict(fluency=best, overall=best, comforting="A"))


def client(server, **kw):
    return LLMClient("judge-model", base_url=server.base_url, max_retries=0, seed=1, **kw)


def test_exact_counts_votes_flips_parse_failures_and_cost(tmp_path):
    price = Price(1.0, 2.0)  # per million tokens, in and out
    with FunctionChatServer(smart_judge, usage=(300, 20)) as server:
        result = judge_pairs(client(server), items(), tmp_path / "journal.jsonl",
                             budget=Budget(price, max_cost=1.0))
        # 3 pairs x 2 orders = 6 first answers; the 2 garbage orders are asked once more -> 8 requests.
        assert server.count() == 8
    assert result.requests == 8 and result.answers == 4 and result.parse_failures == 4
    assert result.unparsed_orders == 2 and result.judged_pairs == 2 and result.pairs == 3
    # comforting is always "A": it flips with the order on both judged pairs -> two ties, both inconsistent.
    assert result.inconsistent == {"comforting": 2}
    assert result.position_inconsistency()["comforting"] == 1.0
    assert result.position_inconsistency()["overall"] == 0.0
    assert result.cost == pytest.approx(8 * (300 * 1.0 + 20 * 2.0) / 1e6)
    votes = {(v["conversation_id"], v["aspect"]): v["outcome"] for v in result.votes}
    assert votes[("c1", "overall")] == "b" and votes[("c2", "overall")] == "a"
    assert votes[("c1", "comforting")] == "tie" and votes[("c1", "identification")] == "tie"
    assert not any(c == "c3" for c, _ in votes)
    assert {v["voter"] for v in result.votes} == {"llm"} and len(result.votes) == 2 * len(KEYS)


def test_a_rerun_never_pays_again(tmp_path):
    journal = tmp_path / "journal.jsonl"
    with FunctionChatServer(smart_judge) as server:
        first = judge_pairs(client(server), items(), journal)
        again = judge_pairs(client(server), items(), journal)
        assert server.count() == 8  # nothing asked the second time
    assert again.requests == 0 and again.reused == 8 and again.cost == 0
    assert again.votes and [(v["conversation_id"], v["aspect"], v["outcome"]) for v in again.votes] == \
        [(v["conversation_id"], v["aspect"], v["outcome"]) for v in first.votes]


def test_a_crash_between_answers_resumes_with_what_is_missing(tmp_path):
    journal = tmp_path / "journal.jsonl"
    with FunctionChatServer(smart_judge) as server:
        judge_pairs(client(server), items()[:1], journal)  # as if the run died after the first pair
        with open(journal, "a") as fh:
            fh.write('{"type": "answer", "key": "torn')  # and a torn last line
        result = judge_pairs(client(server), items(), journal)
        assert server.count() == 8
    assert result.reused == 2 and result.requests == 6 and result.judged_pairs == 2


def test_failed_requests_are_reported_not_fatal(tmp_path):
    with FunctionChatServer(lambda m: (500, "down")) as server:
        result = judge_pairs(client(server), items()[:1], tmp_path / "j.jsonl")
    assert result.request_failures == 2 and result.votes == [] and result.judged_pairs == 0


def test_budget_stops_before_overspending(tmp_path):
    with FunctionChatServer(smart_judge, usage=(300, 20)) as server:
        # worst case per request ~ (prompt estimate + 200 output tokens) at 1/2 per million: allow ~2 requests
        result = judge_pairs(client(server), items(), tmp_path / "j.jsonl", concurrency=1,
                             budget=Budget(Price(1000.0, 1000.0), max_cost=1.0))
    assert result.budget_stopped and result.cost <= 1.0 and server.count() < 6


def test_cohen_kappa_by_hand_and_against_statsmodels():
    from statsmodels.stats.inter_rater import cohens_kappa, to_table

    a = ["x", "x", "y", "tie", "x", "y"]
    b = ["x", "y", "y", "tie", "tie", "y"]
    # p_o = 4/6; shares a: x 3, y 2, tie 1; b: x 1, y 3, tie 2 -> p_e = (3+6+2)/36
    p_o, p_e = 4 / 6, 11 / 36
    assert cohen_kappa(a, b) == pytest.approx((p_o - p_e) / (1 - p_e))
    codes = {"x": 0, "y": 1, "tie": 2}
    table, _ = to_table(pd.DataFrame({"a": [codes[v] for v in a], "b": [codes[v] for v in b]}).to_numpy())
    assert cohen_kappa(a, b) == pytest.approx(cohens_kappa(table).kappa)
    assert cohen_kappa(["x", "x"], ["x", "x"]) is None


def test_agreement_matches_votes_whatever_the_pane_order():
    cols = ["session_id", "aspect", "arm_a", "arm_b", "outcome", "rater_id", "conversation_id"]
    participant = pd.DataFrame([
        ["c1", "overall", "base", "lora", "b", "p1", "c1"],   # lora
        ["c2", "overall", "lora", "base", "a", "p2", "c2"],   # lora
        ["c3", "overall", "base", "lora", "tie", "p3", "c3"],
    ], columns=cols)
    llm = pd.DataFrame([
        ["c1", "overall", "lora", "base", "a", "llm:m", "c1"],  # lora (shown the other way round): agrees
        ["c2", "overall", "base", "lora", "a", "llm:m", "c2"],  # base: disagrees
        ["c3", "overall", "base", "lora", "tie", "llm:m", "c3"],  # agrees
        ["c9", "overall", "base", "lora", "tie", "llm:m", "c9"],  # not rated by a participant: unmatched
    ], columns=cols)
    table = agreement_with(participant, llm).set_index("aspect")
    assert table.loc["overall", "n"] == 3 and table.loc["overall", "percent_agreement"] == pytest.approx(2 / 3)
    assert table.loc["overall", "cohen_kappa"] == pytest.approx(cohen_kappa(["y", "x", "tie"], ["y", "y", "tie"]))
    with pytest.raises(ValueError, match="more than one vote for conversation c1"):
        agreement_with(pd.concat([participant, participant.iloc[:1]]), llm)


def test_request_ids_do_not_leak_transcripts(tmp_path):
    seen = []

    def answer(messages):
        return json.dumps(verdict())

    with FunctionChatServer(answer) as server:
        judge_pairs(client(server), items()[:1], tmp_path / "j.jsonl")
        seen = [e["id"] for e in server.log]
    assert all(re.fullmatch(r"judge-[0-9a-f]{32}-\d", s) for s in seen)


def study_db(tmp_path):
    """Two rated conversations (arms base, lora, strat in panes A-C) with participant and judge votes."""
    from extes.study.store import Store

    db = tmp_path / "study.sqlite"
    store = Store(str(db))
    pid = store.create_participant().id
    convs = []
    for i, order in enumerate((["base", "lora", "strat"], ["strat", "base", "lora"])):
        conv = store.create_conversation(pid, "Job loss", "", lambda counts, o=order, i=i: (i, o))
        cid = conv.id
        for pane, arm in zip("ABC", order):
            store.add_message(cid, pane, arm, "user", "I lost my job today.")
            reply = "GOODBOT I'm so sorry, that is a lot." if arm == "lora" else f"{arm} says ok."
            store.add_message(cid, pane, arm, "assistant", reply)
        rows = []
        for (pa, a), (pb, b) in [((p1, a1), (p2, a2)) for i1, (p1, a1) in enumerate(zip("ABC", order))
                                 for (p2, a2) in list(zip("ABC", order))[i1 + 1:]]:
            for aspect in KEYS:
                outcome = "a" if a == "lora" else "b" if b == "lora" else "tie"
                rows.append({"aspect": aspect, "pane_a": pa, "pane_b": pb, "arm_a": a, "arm_b": b,
                             "outcome": outcome})
        store.submit_votes(cid, pid, [PaneVote(**r) for r in rows])
        convs.append(cid)
    store.close()
    return db, convs


def test_extes_judge_on_a_study_database(tmp_path, capsys):
    from extes.cli import main

    db, convs = study_db(tmp_path)

    def answer(messages):  # prefers GOODBOT on every aspect but comforting, where it always says "A"
        a, b = sections(messages)
        best = "A" if "GOODBOT" in a else "B" if "GOODBOT" in b else "tie"
        return json.dumps({**verdict(**{k: best for k in KEYS}), "comforting": "A"})

    with FunctionChatServer(answer) as server:
        arms = tmp_path / "arms.yaml"
        arms.write_text(f"arms:\n  - name: judge\n    backend: openai\n    base_url: {server.base_url}\n"
                        "    model: judge-model\n    max_retries: 0\n")
        out = tmp_path / "judge"
        code = main(["judge", "--db", str(db), "--arms", str(arms), "--arm", "judge", "--out", str(out)])
        assert code == 0 and server.count() == 2 * 3 * 2  # conversations x pairs x orders
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["judged_pairs"] == 6 and summary["votes"] == 6 * len(KEYS)
    assert summary["position_inconsistency"]["comforting"] == 1.0
    assert summary["position_inconsistency"]["overall"] == 0.0
    agree = {r["aspect"]: r for r in summary["agreement"]["llm_vs_participant"]}
    # The participant preferred lora everywhere and tied base vs strat: the LLM agrees on every aspect but
    # comforting, where every pair became a tie (position inconsistency): 2 of 6 pairs agree there (the ties).
    assert agree["overall"]["percent_agreement"] == 1.0 and agree["overall"]["n"] == 6
    assert agree["comforting"]["percent_agreement"] == pytest.approx(2 / 6)
    votes = pd.read_csv(out / "llm_votes.csv")
    assert set(votes["voter"]) == {"llm"} and len(votes) == 30
    assert "Position inconsistency" in printed and "LLM vs participant" in printed
    # analyze reads the LLM's votes like any Votes CSV
    assert main(["analyze", "--votes", str(out / "llm_votes.csv"), "--reference", "lora"]) == 0
    capsys.readouterr()
    # and `extes agreement --llm` gives the same agreement, with the position inconsistency
    assert main(["agreement", "--db", str(db), "--llm", str(out / "llm_votes.csv"), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["agreement"]["llm_vs_participant"] == summary["agreement"]["llm_vs_participant"]
    assert again["position_inconsistency"]["comforting"] == 1.0
    assert main(["agreement", "--db", str(db), "--llm", str(out / "llm_votes.csv")]) == 0
    assert "| comforting | 6 | 2 | 33.3 |" in capsys.readouterr().out
    # the votes are in the study database too, as voter type llm, next to the participants' own
    from extes.study.store import Store
    from extes.study.ui_research import win_tie_loss_view

    store = Store(str(db))
    frame = store.votes_frame("llm")
    assert len(frame) == 30 and set(frame["rater_id"]) == {"llm:judge-model"}
    assert len(store.votes_frame("participant")) == 2 * 3 * len(KEYS)  # untouched
    assert "lora" in win_tie_loss_view(store, "lora", "llm").table.to_string()
    store.close()
    capsys.readouterr()
    assert main(["analyze", "--db", str(db), "--voters", "llm", "--reference", "lora", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["reference"] == "lora" and payload["votes"] == 30
    # a rerun replaces this judge's votes instead of adding a second set
    with FunctionChatServer(answer) as server:
        arms.write_text(f"arms:\n  - name: judge\n    backend: openai\n    base_url: {server.base_url}\n"
                        "    model: judge-model\n    max_retries: 0\n")
        assert main(["judge", "--db", str(db), "--arms", str(arms), "--arm", "judge", "--out", str(out)]) == 0
        assert server.count() == 0  # everything came from the journal
    store = Store(str(db))
    assert len(store.votes_frame("llm")) == 30
    store.close()


@pytest.mark.slow
def test_extes_judge_against_extes_serve_on_the_embedded_model(tmp_path):
    """The small embedded model mostly cannot answer in the strict format: every answer is recorded,
    retried once, reported, and nothing crashes."""
    from test_build_serve import serving

    from extes.cli import main
    from extes.models.arms import Arm, GenerationSettings
    from extes.models.server import create_app

    db, _ = study_db(tmp_path)
    arm = Arm("smol", generation=GenerationSettings(max_new_tokens=48, temperature=0.0, seed=0))
    with serving(create_app([arm])) as url:
        arms = tmp_path / "arms.yaml"
        arms.write_text(f"arms:\n  - name: judge\n    backend: openai\n    base_url: {url}\n"
                        "    model: smol\n    max_retries: 0\n    timeout_s: 300\n")
        out = tmp_path / "judge"
        code = main(["judge", "--db", str(db), "--arms", str(arms), "--arm", "judge", "--out", str(out),
                     "--limit", "1", "--max-tokens", "48", "--concurrency", "2"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"] == 3 and summary["request_failures"] == 0
    # every pair order got an answer or was retried once and then given up on
    assert summary["answers"] + summary["parse_failures"] == summary["requests"]
    assert summary["answers"] + summary["unparsed_orders"] == 6
    assert summary["requests"] == 6 + summary["parse_failures"] - summary["unparsed_orders"]
    journal = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    assert all(r["text"] is not None for r in journal if r["type"] == "answer")
