import json

import pytest

from extes.cli import main
from extes.data_cli import parse_ratios, split_dialogues
from extes.dialogue import Dialogue, Turn, load_dialogues
from extes.stats import compute_stats


def _d(i, scene, strategies, n_user_words=3):
    turns = []
    for s in strategies:
        turns.append(Turn("user", " ".join(["w"] * n_user_words)))
        turns.append(Turn("assistant", "a b", s))
    return Dialogue(f"d{i}", "extes", scene, "desc", turns)


def test_stats_hand_counted():
    ds = [_d(1, "A", ["EV", "EV", "RS", "SO"]), _d(2, "B", ["RS", "SO"])]
    for d in ds:
        for t in d.turns:
            if t.strategy:
                t.strategy = {"EV": "Emotional Validation", "RS": "Reflective Statements", "SO": "Suggest Options"}[t.strategy]
    st = compute_stats(ds)
    assert (st.dialogues, st.utterances) == (2, 12)
    assert st.avg_utterances == 6.0
    assert st.avg_words == pytest.approx((6 * 3 + 6 * 2) / 12)
    assert st.strategies == {"Reflective Statements": 2, "Suggest Options": 2, "Emotional Validation": 2}
    assert st.scenes == {"A": 1, "B": 1}
    # dialogue 1 has 8 utterances: assistant turns at k=2,4,6,8 -> phases 1,2,3,4
    # dialogue 2 has 4 utterances: assistant turns at k=2,4 -> phases 2,4
    assert st.phases["1"] == {"Emotional Validation": 1.0}
    assert st.phases["2"] == {"Emotional Validation": 0.5, "Reflective Statements": 0.5}
    # merged sequence of dialogue 1: EV RS SO (2 moves) -> no 3-hop transition
    assert st.transitions["3-hop"] == []
    ds.append(_d(3, "A", ["Emotional Validation", "Reflective Statements", "Suggest Options", "Reflective Statements"]))
    st = compute_stats(ds)
    assert st.transitions["3-hop"] == [{"path": "EV -> RS -> SO -> RS", "count": 1,
                                        "strategies": ["Emotional Validation", "Reflective Statements",
                                                       "Suggest Options", "Reflective Statements"]}]


def test_stats_cli_json_and_plots(shared_data, tmp_path, capsys):
    rc = main(["stats", str(shared_data / "esconv" / "FailedESConv.sample.json"), "--json", "--plots", str(tmp_path)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dialogues"] == 98
    assert set(out) >= {"dialogues", "utterances", "scenes", "strategies", "phases", "transitions"}
    assert sum(out["scenes"].values()) == 98 and len(out["strategies"]) == 8
    assert {p.name for p in tmp_path.glob("*.png")} == {"scenes.png", "strategies.png", "phases.png"}


def test_cli_error_is_clear(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("[{]")
    assert main(["stats", str(bad)]) == 2
    assert "bad.json" in capsys.readouterr().err


def test_split_is_deterministic_stratified_and_disjoint():
    ds = [Dialogue(f"s{s}-{i}", "extes", f"scene{s}", "", [Turn("user", "x")]) for s in range(5) for i in range(20)]
    a = split_dialogues(ds, (0.8, 0.1, 0.1), seed=7)
    b = split_dialogues(list(reversed(ds)), (0.8, 0.1, 0.1), seed=7)
    assert [d.id for d in a.train] == [d.id for d in b.train] and [d.id for d in a.test] == [d.id for d in b.test]
    assert (len(a.train), len(a.valid), len(a.test)) == (80, 10, 10)
    ids = [d.id for part in a.parts().values() for d in part]
    assert len(ids) == len(set(ids)) == 100
    for s in range(5):  # every scene is represented in train with about its share
        assert 14 <= sum(d.scene == f"scene{s}" for d in a.train) <= 18
    c = split_dialogues(ds, (0.8, 0.1, 0.1), seed=8)
    assert [d.id for d in c.test] != [d.id for d in a.test]


def test_split_cli_writes_jsonl_and_manifest(shared_data, tmp_path):
    src = shared_data / "esconv" / "FailedESConv.sample.json"
    assert main(["split", str(src), "--out", str(tmp_path), "--seed", "3"]) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["counts"] == {"train": 78, "valid": 10, "test": 10}
    assert manifest["seed"] == 3 and len(manifest["sources"][0]["sha256"]) == 64
    parts = {n: load_dialogues(tmp_path / f"{n}.jsonl") for n in ("train", "valid", "test")}
    assert sum(len(v) for v in parts.values()) == 98
    assert manifest["ids"]["test"] == [d.id for d in parts["test"]]


def test_parse_ratios():
    assert parse_ratios("8:1:1") == pytest.approx((0.8, 0.1, 0.1))
    with pytest.raises(ValueError, match="--ratios"):
        parse_ratios("8:1")


def test_convert_cli(shared_data, tmp_path):
    out = tmp_path / "esconv.extes.json"
    assert main(["convert", str(shared_data / "esconv" / "FailedESConv.sample.json"), "--to", "extes",
                 "--out", str(out), "--merge-consecutive"]) == 0
    assert len(load_dialogues(out)) == 98


def _esconv_file(tmp_path, dialogs):
    path = tmp_path / "esconv.json"
    path.write_text(json.dumps([
        {"problem_type": "job crisis", "situation": "s", "dialog": [
            {"speaker": sp, "content": text, "annotation": {"strategy": lab} if lab else {}}
            for sp, text, lab in dialog
        ]} for dialog in dialogs
    ]))
    return path


def test_merge_consecutive_keeps_every_label_in_order(tmp_path, capsys):
    path = _esconv_file(tmp_path, [[
        ("seeker", "I lost my job", None),
        ("supporter", "Oh no.", "Question"),
        ("supporter", "What happened?", "Question"),
        ("supporter", "Maybe talk to HR.", "Providing Suggestions"),
        ("seeker", "ok", None),
        ("supporter", "You did well.", "Affirmation and Reassurance"),
        ("seeker", "thanks", None),
        ("seeker", "really", None),
        ("supporter", "Anytime.", "Others"),
    ]])
    assert main(["stats", str(path), "--json", "--merge-consecutive"]) == 0
    merged = json.loads(capsys.readouterr().out)
    assert main(["stats", str(path), "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert merged["utterances"] == 6 and plain["utterances"] == 9
    # Table 2 counts every label of a merged turn, repeats included: the total is unchanged by merging.
    assert merged["strategies"] == plain["strategies"] == {
        "Question": 2, "Affirmation and Reassurance": 1, "Others": 1, "Providing Suggestions": 1}
    # the merged turn (utterance 2 of 6: phase 2) carries Qu, Qu, PS
    assert merged["phases"]["2"] == {"Question": 0.6667, "Providing Suggestions": 0.3333}
    # transitions read every label in order: Qu Qu PS AR Oth -> Qu PS AR Oth (repeats merged), one 3-hop
    assert [r["path"] for r in merged["transitions"]["3-hop"]] == ["Qu -> PS -> AR -> Oth"]
    assert merged["avg_words_per_utterance"] == round(sum(len(t.split()) for t in (
        "I lost my job", "Oh no.", "What happened?", "Maybe talk to HR.", "ok", "You did well.", "thanks",
        "really", "Anytime.")) / 6, 2)


def test_merge_consecutive_keeps_table2_total_on_real_esconv(shared_data, capsys):
    src = shared_data / "esconv" / "FailedESConv.sample.json"
    raw = json.loads(src.read_text())
    labelled = sum(1 for r in raw for u in r["dialog"]
                   if u["speaker"] in ("supporter", "listener") and (u.get("annotation") or {}).get("strategy"))
    totals = {}
    for flag in ([], ["--merge-consecutive"]):
        assert main(["stats", str(src), "--json", *flag]) == 0
        totals[bool(flag)] = sum(json.loads(capsys.readouterr().out)["strategies"].values())
    assert totals == {False: labelled, True: labelled}  # 1,183 on this sample (merging used to give 982)


def test_top_transitions_show_counts_mark_ties_and_break_them_alphabetically(capsys):
    names = ["Emotional Validation", "Reflective Statements", "Suggest Options", "Affirmation",
             "Clarification", "Offer Hope"]
    # six dialogues, each one distinct 3-hop path occurring once; one path occurs twice
    paths = [[names[i % 6], names[(i + 1) % 6], names[(i + 2) % 6], names[(i + 3) % 6]] for i in range(6)]
    ds = [_d(i, "A", p) for i, p in enumerate(paths + [paths[3]])]
    st = compute_stats(ds, top_k=3)
    rows = st.transitions["3-hop"]
    assert rows[0]["count"] == 2 and rows[0]["strategies"] == paths[3]
    assert len(rows) == 6  # every path tying with the 3rd (count 1) is kept
    assert [r["path"] for r in rows[1:]] == sorted(r["path"] for r in rows[1:])
    assert st.distinct_transitions["3-hop"] == 6
    ds_rev = list(reversed(ds))  # order of first appearance does not matter
    assert compute_stats(ds_rev, top_k=3).transitions == st.transitions
    from extes.stats import format_stats
    text = format_stats(st)
    assert "and 3 more with count 1" in text


def test_percentages_sum_to_100_by_largest_remainder_and_equal_counts_print_equal(capsys):
    import extes.stats
    from extes.shares import percentages
    assert extes.stats.percentages is percentages  # the one rounding rule of the project (extes.shares)
    assert not hasattr(extes.stats, "largest_remainder")
    # equal counts print equal: 33.4/33.3/33.3 would tell three equal scenarios apart
    tied = [_d(i, s, ["Emotional Validation"]) for i, s in enumerate("ABC")]
    from extes.stats import format_stats
    lines = [line.split() for line in format_stats(compute_stats(tied)).splitlines()
             if line.strip()[:1] in "ABC" and line.strip().endswith("%") and len(line.split()) == 3]
    assert [float(w[-1].rstrip("%")) for w in lines] == [33.3, 33.3, 33.3]
    ds = [_d(i, s, ["Emotional Validation"]) for i, s in enumerate("ABCABCA")]  # 3/7, 2/7, 2/7
    text = format_stats(compute_stats(ds))
    shares = [float(line.split()[-1].rstrip("%")) for line in text.splitlines()
              if line.strip()[:1] in "ABC" and line.strip().endswith("%") and len(line.split()) == 3]
    # exact 42.857, 28.571, 28.571: rounding each gives 42.9 + 28.6 + 28.6 = 100.1
    assert shares == [42.8, 28.6, 28.6] and sum(shares) == pytest.approx(100.0)
