"""`extes export / analyze / agreement` end to end: CSVs, a fake store, and a real study store."""

import json

import pandas as pd
import pytest

from extes.cli import main
from extes.study.records import PaneVote

VOTES = pd.DataFrame(
    [
        ("s1", "overall", "lora", "base", "a"),
        ("s1", "fluency", "base", "lora", "b"),
        ("s2", "overall", "base", "lora", "a"),
        ("s2", "fluency", "lora", "base", "tie"),
        ("s3", "overall", "gpt", "lora", "b"),
        ("s3", "overall", "base", "gpt", "tie"),
    ],
    columns=["session_id", "aspect", "arm_a", "arm_b", "outcome"],
)

RATINGS = pd.DataFrame(
    {
        "item_id": ["d1", "d1", "d1", "d2", "d2", "d2", "d3", "d3", "d3", "d3"],
        "rater_id": ["a", "b", "c", "a", "b", "c", "a", "b", "c", "d"],
        "label": ["4", "4", "5", "2", "3", "2", "5", "5", "5", "4"],
        "aspect": ["empathy"] * 10,
        "source": ["extes"] * 6 + ["seed"] * 4,
    }
)


@pytest.fixture()
def votes_csv(tmp_path):
    path = tmp_path / "votes.csv"
    VOTES.to_csv(path, index=False)
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_analyze_json_shape(capsys, votes_csv):
    code, out, _ = run(
        capsys, "analyze", "--votes", votes_csv, "--reference", "lora", "--json", "--n-boot", 50
    )
    assert code == 0
    payload = json.loads(out)
    assert payload["reference"] == "lora"
    rows = {(r["opponent"], r["aspect"]): r for r in payload["rows"] if r["n"]}
    assert set(rows) == {("base", "fluency"), ("base", "overall"), ("gpt", "overall")}
    assert (rows[("base", "overall")]["win"], rows[("base", "overall")]["loss"]) == (0.5, 0.5)
    assert rows[("base", "fluency")]["tie"] == 0.5 and rows[("gpt", "overall")]["n"] == 1
    status = {(r["opponent"], r["aspect"]): r["status"] for r in payload["rows"]}
    assert len(status) == 10 and status[("gpt", "fluency")] == "never compared"
    assert status[("base", "suggestion")] == "no votes"
    assert payload["omissions"] == ["no votes at all on identification, comforting, suggestion",
                                    "lora never compared with gpt on fluency"]
    assert list(payload["bradley_terry"]) == ["fluency", "identification", "comforting", "suggestion", "overall"]
    assert payload["bradley_terry"]["overall"][0]["rank"] == 1
    assert payload["bradley_terry"]["fluency"][-1] == {"rank": None, "arm": "gpt", "rating": None, "ci_low": None,
                                                       "ci_high": None, "n": 0}


def test_analyze_text_and_report_directory(capsys, votes_csv, tmp_path):
    out_dir = tmp_path / "report"
    code, out, _ = run(
        capsys, "analyze", "--votes", votes_csv, "--reference", "lora", "--out", out_dir, "--n-boot", 50
    )
    assert code == 0
    assert "lora vs base" in out and "Bradley-Terry" in out and "Win rate" in out
    names = {p.name for p in out_dir.iterdir()}
    assert {
        "report.md",
        "win_tie_loss.csv",
        "win_tie_loss.png",
        "bradley_terry.csv",
        "bradley_terry.png",
        "win_rate_overall.csv",
        "win_rate_overall.png",
        "win_rate_fluency.png",
    } <= names
    assert pd.read_csv(out_dir / "win_tie_loss.csv")["n"].sum() == 5
    assert (out_dir / "win_tie_loss.png").read_bytes()[:4] == b"\x89PNG"
    assert "| lora vs base |" in (out_dir / "report.md").read_text()


def test_analyze_states_prior_correction_and_one_vote_count(capsys, votes_csv, tmp_path):
    out_dir = tmp_path / "r"
    code, out, err = run(capsys, "analyze", "--votes", votes_csv, "--reference", "lora", "--n-boot", 20,
                         "--out", out_dir)
    assert code == 0
    sentence = "6 votes in all; 5 of them involve lora (the n of the table's cells), from 3 sessions with lora"
    assert sentence in out and sentence in (out_dir / "report.md").read_text()
    assert "Prior: 1 virtual tie(s) per pair of arms (--bt-prior" in out
    assert "Holm (1979)" in out and "over the 3 tests" in out
    assert "bootstrap CIs left out: 3 session(s), fewer than 10" in err  # a warning, with the reason
    assert "Elo vs maximum likelihood" in out  # the prior's pull, measured
    code, out, _ = run(capsys, "analyze", "--votes", votes_csv, "--reference", "lora", "--n-boot", 20,
                       "--bt-prior", 4, "--correction", "bh", "--json")
    payload = json.loads(out)
    assert payload["bradley_terry_fit"]["prior"] == 4.0 and payload["correction"] == "bh"
    assert payload["votes"] == 6 and payload["votes_with_reference"] == 5
    assert all(r["ci_low"] is None for r in payload["rows"]) and payload["notes"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: f.drop(columns="outcome"), "missing votes column(s) outcome"),
        (lambda f: f.assign(outcome=["a", "b", "x", "a", "b", "tie"]), "line 4 (outcome='x')"),
        (lambda f: f.assign(aspect=["overall"] * 5 + ["style"]), "line 7 (aspect='style')"),
        (lambda f: f.assign(arm_b=["base", "lora", "lora", "base", "gpt", "gpt"]), "arm_a == arm_b"),
    ],
)
def test_analyze_bad_input_exits_2_and_writes_nothing(capsys, tmp_path, edit, message):
    path = tmp_path / "bad.csv"
    edit(VOTES).to_csv(path, index=False)
    out_dir = tmp_path / "report"
    code, out, err = run(capsys, "analyze", "--votes", path, "--reference", "lora", "--out", out_dir)
    assert code == 2 and message in err and "Traceback" not in err
    assert not out_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


def test_analyze_unknown_reference(capsys, votes_csv):
    code, _, err = run(capsys, "analyze", "--votes", votes_csv, "--reference", "gpt4")
    assert code == 2 and "unknown reference arm 'gpt4'" in err and "base, gpt, lora" in err


def test_agreement_json_with_dataset_quality(capsys, tmp_path):
    path = tmp_path / "ratings.csv"
    RATINGS.to_csv(path, index=False)
    code, out, _ = run(capsys, "agreement", "--ratings", path, "--json")
    assert code == 0
    payload = json.loads(out)
    assert {
        "fleiss_kappa",
        "krippendorff_alpha",
        "percent_agreement",
        "items",
        "raters",
        "per_aspect",
    } <= set(payload)
    assert payload["items"] == 3 and payload["raters"] == 4
    assert "Gwet 2014" in payload["fleiss_variant"]  # 3, 3 and 4 ratings per item
    assert set(payload["per_source"]) == {"extes", "seed"}
    quality = {(r["source"], r["aspect"]): r["mean"] for r in payload["dataset_quality"]}
    assert quality == {("extes", "empathy"): pytest.approx(20 / 6), ("seed", "empathy"): 4.75}


def test_agreement_text_and_errors(capsys, tmp_path):
    path = tmp_path / "ratings.csv"
    RATINGS.to_csv(path, index=False)
    out_dir = tmp_path / "agree"
    code, out, _ = run(capsys, "agreement", "--ratings", path, "--out", out_dir)
    assert code == 0 and "Fleiss' kappa" in out and "note:" in out and "Dataset quality" in out
    assert {"report.md", "agreement.csv", "dataset_quality.csv"} <= {p.name for p in out_dir.iterdir()}
    lone = tmp_path / "lone.csv"
    RATINGS.drop_duplicates("item_id").to_csv(lone, index=False)
    code, _, err = run(capsys, "agreement", "--ratings", lone)
    assert code == 2 and "fewer than two raters" in err


class FakeStore:
    def __init__(self, votes: pd.DataFrame, ratings: pd.DataFrame):
        self._votes, self._ratings, self.closed = votes, ratings, False

    def votes_frame(self, source: str = "participant") -> pd.DataFrame:
        return self._votes.copy()

    def ratings_frame(self) -> pd.DataFrame:
        return self._ratings.copy()

    def screening_frame(self) -> pd.DataFrame:  # no replies in this fake: nothing screened
        return pd.DataFrame(columns=["arm", "replies", "screened_out", "share", "capped_cut"])

    def close(self) -> None:
        self.closed = True


@pytest.fixture()
def fake_store(monkeypatch, tmp_path):
    votes = VOTES.assign(
        rater_id="p-1", conversation_id=VOTES["session_id"], created_at="2026-01-01T00:00:00"
    )
    store = FakeStore(votes, RATINGS)
    monkeypatch.setattr("extes.commands.analysis_cli.Store", lambda url: store)
    db = tmp_path / "study.sqlite"
    db.write_bytes(b"")
    return db, store


def test_db_path_goes_through_the_store(capsys, fake_store, tmp_path):
    db, store = fake_store
    code, out, _ = run(capsys, "analyze", "--db", db, "--reference", "lora", "--json", "--n-boot", 20)
    assert code == 0 and json.loads(out)["reference"] == "lora" and store.closed
    code, out, _ = run(
        capsys, "export", "--db", db, "--votes", tmp_path / "v.csv", "--ratings", tmp_path / "r.csv"
    )
    assert code == 0 and "wrote 6 votes" in out and "wrote 10 ratings" in out
    exported = pd.read_csv(tmp_path / "v.csv", dtype=str, keep_default_na=False)
    assert list(exported.columns) == [
        "session_id",
        "aspect",
        "arm_a",
        "arm_b",
        "outcome",
        "rater_id",
        "conversation_id",
        "created_at",
    ]
    code, out, _ = run(
        capsys, "analyze", "--votes", tmp_path / "v.csv", "--reference", "lora", "--json", "--n-boot", 20
    )
    assert code == 0


def test_export_validates_everything_before_writing(capsys, fake_store, tmp_path):
    db, store = fake_store
    store._ratings = RATINGS.assign(label=[""] + ["3"] * 9)
    code, _, err = run(
        capsys, "export", "--db", db, "--votes", tmp_path / "v.csv", "--ratings", tmp_path / "r.csv"
    )
    assert code == 2 and "empty field" in err and "row 0" in err
    assert not (tmp_path / "v.csv").exists() and not (tmp_path / "r.csv").exists()


def test_agreement_llm_without_overlap_is_an_error(capsys, fake_store, tmp_path):
    db, _store = fake_store  # participants rated conversations s1-s3
    llm = tmp_path / "llm_votes.csv"
    VOTES.assign(session_id=VOTES["session_id"] + "x", conversation_id=VOTES["session_id"] + "x",
                 rater_id="llm:m").to_csv(llm, index=False)
    code, out, err = run(capsys, "agreement", "--db", db, "--llm", llm)
    assert code == 2 and out == ""  # printed n = 0 and exited 0 before
    assert f"--llm {llm}: no comparison is in both the LLM's votes (6) and the participants' votes" in err
    code, out, err = run(capsys, "agreement", "--db", db, "--llm", llm, "--json")
    assert code == 2 and out == ""
    VOTES.assign(conversation_id=VOTES["session_id"], rater_id="llm:m").to_csv(llm, index=False)
    code, out, _ = run(capsys, "agreement", "--db", db, "--llm", llm)
    assert code == 0 and "| all | 6 | 3 | 100.0 |" in out


def test_agreement_headline_counts_what_each_statistic_uses(capsys, tmp_path):
    # 4 items rated by 3 raters, 6 items rated once by a fourth: kappa uses 10 items and 18 ratings
    rows = [(f"d{i}", r, str((i + k) % 3)) for i in range(4) for k, r in enumerate("abc")]
    rows += [(f"s{i}", "z", str(i % 3)) for i in range(6)]
    path = tmp_path / "r.csv"
    pd.DataFrame(rows, columns=["item_id", "rater_id", "label"]).to_csv(path, index=False)
    code, out, _ = run(capsys, "agreement", "--ratings", path, "--out", tmp_path / "o")
    head = out.splitlines()[0]
    assert code == 0 and not head.startswith("4 items, 3 raters, 12 ratings;")  # what it said before
    assert head.startswith("10 items, 4 raters, 18 ratings (Fleiss' kappa uses all; 6 item(s) rated once only "
                           "in its category shares); alpha and percent agreement use the 4 items rated twice or "
                           "more (3 raters, 12 ratings);")
    assert head in (tmp_path / "o" / "report.md").read_text()
    code, out, _ = run(capsys, "agreement", "--ratings", path, "--json")
    payload = json.loads(out)
    assert (payload["items_all"], payload["raters_all"], payload["ratings_all"]) == (10, 4, 18)
    assert (payload["items"], payload["raters"], payload["ratings"]) == (4, 3, 12)


def test_missing_database_is_not_created(capsys, tmp_path):
    code, _, err = run(capsys, "analyze", "--db", tmp_path / "none.sqlite", "--reference", "x")
    assert code == 2 and "study database not found" in err
    assert not (tmp_path / "none.sqlite").exists()


def test_against_a_real_study_store(capsys, tmp_path):
    store_mod = pytest.importorskip("extes.study.store")
    db = tmp_path / "study.sqlite"
    store = store_mod.Store(db)
    code, out, _ = run(
        capsys, "export", "--db", db, "--votes", tmp_path / "e.csv", "--ratings", tmp_path / "er.csv"
    )
    assert code == 0 and "wrote 0 votes" in out
    assert (tmp_path / "e.csv").read_text().startswith("session_id,aspect,arm_a,arm_b,outcome,rater_id")
    assert (tmp_path / "er.csv").read_text() == "item_id,rater_id,label,aspect,source\n"

    arms = ["lora", "base", "gpt"]
    for i in range(4):
        participant = store.create_participant()
        conv = store.create_conversation(participant.id, "job", "lost my job", lambda counts: (0, arms))
        outcome = ["a", "b", "tie", "a"][i]
        rows = [
            {
                "aspect": aspect,
                "pane_a": "A",
                "pane_b": "B",
                "arm_a": "lora",
                "arm_b": "base",
                "outcome": outcome,
            }
            for aspect in ("fluency", "overall")
        ]
        rows.append(
            {
                "aspect": "overall",
                "pane_a": "B",
                "pane_b": "C",
                "arm_a": "base",
                "arm_b": "gpt",
                "outcome": "b",
            }
        )
        store.submit_votes(conv.id, participant.id, [PaneVote(**r) for r in rows])
    judges = [store.create_participant(role="judge").id for _ in range(3)]
    for item in ("d1", "d2"):
        store.add_annotation_item(item, "dialogue", source="extes")
        for judge, score in zip(judges, (4, 4, 5) if item == "d1" else (2, 3, 2)):
            store.submit_likert(store.create_assignment(item, judge), {"empathy": score})
    store.close()

    code, out, _ = run(capsys, "analyze", "--db", db, "--reference", "lora", "--json", "--n-boot", 50)
    assert code == 0
    rows = {(r["opponent"], r["aspect"]): r for r in json.loads(out)["rows"]}
    assert rows[("base", "overall")]["n"] == 4 and rows[("base", "overall")]["win"] == 0.5
    assert rows[("base", "overall")]["tie"] == 0.25

    code, out, _ = run(
        capsys, "export", "--db", db, "--votes", tmp_path / "v.csv", "--ratings", tmp_path / "r.csv"
    )
    assert code == 0 and "wrote 12 votes" in out
    code, out, _ = run(capsys, "agreement", "--ratings", tmp_path / "r.csv", "--json")
    assert code == 0
    payload = json.loads(out)
    assert payload["per_source"]["extes"]["items"] == 2
    assert payload["per_source"]["extes"]["krippendorff_alpha"]["ordinal"] is not None
    assert [r["source"] for r in payload["dataset_quality"]] == ["extes"]
