"""The study store: migrations, atomic votes, exports in the analysis formats, durability under kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import sqlalchemy as sa

from extes.analysis import load_ratings, load_votes
from extes.study.records import PaneVote
from extes.study.store import SCHEMA_VERSION, DuplicateError, Store, StoreError, normalize_code

PAIRS = [("A", "B"), ("A", "C"), ("B", "C")]
ARMS = {"A": "x", "B": "y", "C": "z"}


def rated_conversation(store: Store, outcome: str = "a"):
    p = store.create_participant()
    conv = store.create_conversation(p.id, "Academic Stress", "", lambda counts: (0, ["x", "y", "z"]))
    rows = [{"aspect": asp, "pane_a": a, "pane_b": b, "arm_a": ARMS[a], "arm_b": ARMS[b], "outcome": outcome}
            for asp in ("fluency", "overall") for a, b in PAIRS]
    store.submit_votes(conv.id, p.id, [PaneVote(**r) for r in rows], comment="ok")
    return p, conv


def test_schema_versioned_and_migrations_run_once(tmp_path):
    path = tmp_path / "s.sqlite"
    store = Store(path)
    assert store.schema_version() == SCHEMA_VERSION == 6
    Store(path)  # reopening applies nothing twice
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from schema_version")).scalar() == SCHEMA_VERSION
        assert conn.execute(sa.text("pragma journal_mode")).scalar() == "wal"
        tables = set(sa.inspect(conn).get_table_names())
    assert {"participants", "conversations", "messages", "votes", "reports", "flags", "annotation_items",
            "assignments", "judgments", "likert_ratings", "schema_version", "conversation_flags", "rating_checks",
            "platform_sessions", "llm_votes", "rating_drafts"} <= tables


def test_newer_schema_is_refused(db_url):
    path = db_url
    store = Store(path)
    with store.engine.begin() as conn:
        conn.execute(sa.text("insert into schema_version values (99, 'later')"))
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        Store(path)


def test_any_sqlalchemy_url(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'u.sqlite'}")
    assert store.create_participant().code
    mem = Store("sqlite://")
    assert mem.schema_version() == SCHEMA_VERSION


def test_codes():
    assert normalize_code(" abcd efgh-jkmn ") == "ABCD-EFGH-JKMN"


def test_votes_are_atomic_and_unique(db_url):
    store = Store(db_url)
    p, conv = rated_conversation(store)
    with pytest.raises(DuplicateError):
        store.submit_votes(conv.id, p.id, [PaneVote("overall", "A", "B", "x", "y", "b")])
    assert len(store.votes(conv.id)) == 6
    conv2 = store.create_conversation(p.id, "Academic Stress", "", lambda c: (1, ["x", "z", "y"]))
    with pytest.raises(ValueError):
        store.submit_votes(conv2.id, p.id, [PaneVote("overall", "A", "B", "x", "z", "left")])
    assert store.conversation(conv2.id).status == "chatting"


def test_exports_match_the_analysis_formats(db_url):
    store = Store(db_url)
    rated_conversation(store, "a")
    _, conv = rated_conversation(store, "tie")
    votes = store.votes_frame()
    assert list(votes.columns) == ["session_id", "aspect", "arm_a", "arm_b", "outcome", "rater_id",
                                   "conversation_id", "created_at"]
    assert len(load_votes(votes)) == 12
    assert votes["rater_id"].str.startswith("p-").all()  # the participant id, never the resume code

    # Judges: a pairwise judgment of the second conversation and Likert ratings of a dataset dialogue.
    store.add_annotation_item(conv.id, "conversation")
    store.add_annotation_item("extes:d1", "dialogue", source="extes", payload={"turns": []})
    for j in range(2):
        judge = store.create_participant(role="judge")
        a = store.create_assignment(conv.id, judge.id, pane_order=["B", "A", "C"])
        store.submit_judgments(a, [{"aspect": "overall", "arm_a": "y", "arm_b": "x", "outcome": "b"}])
        with pytest.raises(DuplicateError):
            store.submit_judgments(a, [{"aspect": "overall", "arm_a": "y", "arm_b": "x", "outcome": "b"}])
        with pytest.raises(DuplicateError):
            store.create_assignment(conv.id, judge.id)
        b = store.create_assignment("extes:d1", judge.id)
        store.submit_likert(b, {"Informativeness": 2 + j, "Coherence": 3})
    assert store.assignment_counts() == {conv.id: 2, "extes:d1": 2}
    assert len(store.votes_frame("judge")) == 2 and len(store.votes_frame("all")) == 14
    ratings = store.ratings_frame()
    assert list(ratings.columns) == ["item_id", "rater_id", "label", "aspect", "source"]
    checked = load_ratings(ratings)
    likert = checked[checked["source"] != "pairwise"]
    assert sorted(likert["label"]) == ["2", "3", "3", "3"]
    # The participant said tie for x~y overall, both judges said x (arm_b of their judgment) was better.
    item = checked[(checked["item_id"] == f"{conv.id}/x~y") & (checked["aspect"] == "overall")]
    assert sorted(item["label"]) == ["tie", "x", "x"]


def test_reports_flags_and_counts(db_url):
    store = Store(db_url)
    p = store.create_participant()
    conv = store.create_conversation(p.id, "Academic Stress", "", lambda c: (0, ["x", "y", "z"]))
    mid = store.add_message(conv.id, "A", "x", "assistant", "hello", settings={"temperature": 0.7})
    assert store.messages(conv.id)[0].settings == {"temperature": 0.7}
    store.add_report(conv.id, mid, p.id)
    with pytest.raises(DuplicateError):
        store.add_report(conv.id, mid, p.id)
    fid = store.add_flag(conv.id, p.id, "suicide", r"\bsuicid\w*", message_id=mid)
    store.resolve_flag(fid, "contacted")
    counts = store.counts()
    assert counts["reports"] == 1 and counts["flags"] == 1 and counts["open_flags"] == 0


WRITER = textwrap.dedent("""
    import sys
    from extes.study.store import Store
    store = Store(sys.argv[1])
    p = store.create_participant()
    conv = store.create_conversation(p.id, "Academic Stress", "", lambda c: (0, ["x", "y", "z"]))
    print(conv.id, flush=True)
    i = 0
    while True:
        mid = store.add_message(conv.id, "ABC"[i % 3], "x", "user", f"message {i}")
        print(mid, i, flush=True)  # shown only after the commit returned
        i += 1
""")


def test_kill_9_loses_no_committed_write(db_url):
    db = db_url
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    conv_id = proc.stdout.readline().strip()
    shown = []
    deadline = time.time() + 30
    while len(shown) < 200 and time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        shown.append(line.split())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(shown) >= 50
    store = Store(db)
    stored = {(str(m.id), m.text) for m in store.messages(conv_id)}
    assert {(mid, f"message {i}") for mid, i in shown} <= stored


def test_unusable_databases_fail_clearly(tmp_path):
    with pytest.raises(StoreError, match="not a usable database URL") as err:
        Store("nosuchdialect://user:secret@host/db")
    assert "secret" not in str(err.value)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot create the database folder"):
        Store(blocker / "sub" / "study.sqlite")
    not_a_db = tmp_path / "text.sqlite"
    not_a_db.write_text("this is not a database " * 100)
    with pytest.raises(StoreError, match="cannot open the study database"):
        Store(not_a_db)
    assert not_a_db.read_text().startswith("this is not a database")  # left as it was
