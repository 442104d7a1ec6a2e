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
