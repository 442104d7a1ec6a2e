"""Researchers' transcripts export and flag resolution, without a browser: every message as shown, with its
arm, pane, turn, order and reply status, in the dashboard's one-time zip (JSONL and CSV) only after login;
a risk flag resolved with a note on the dashboard and from the command line, so "open flags" means open.
The browser side is tests/test_study_judge_page_browser.py."""

from __future__ import annotations

import io
import json
import random
import zipfile

import pandas as pd
import pytest
from study_helpers import ARM_NAMES, FakePool, full_answers, make_protocol

from extes.commands import app_cli
from extes.study import ui_research as ui
from extes.study.session import Study
from extes.study.store import Store
from extes.study.transcripts import COLUMNS, transcript_rows
from extes.study.views import StudyRefusal


@pytest.fixture
def setup(tmp_path):
    protocol = make_protocol(tmp_path, min_turns=1, conversations=1)
    store = Store(tmp_path / "study.sqlite")
    study = Study(protocol, store, FakePool(), rng=random.Random(0))
    yield protocol, store, study, tmp_path
    store.close()


def chat(study: Study, texts: list[str], rate: bool = True) -> str:
    v = study.consent()
    v = study.start_conversation(v.code, "Academic Stress", "")
    for text in texts:
        try:
            for _ in study.send(v.code, v.conversation_id, "ABC", text):
                pass
        except StudyRefusal:  # a pane's model failed (FakePool(error_arm=...)): what was shown is kept
            pass
    if rate:
        study.submit_rating(v.code, v.conversation_id, full_answers(study))
    return v.conversation_id


def test_transcript_rows_carry_arm_pane_turn_order_shown_text_and_status(setup):
    protocol, store, _, _ = setup
    # pane order is random: the second arm's replies end with an error event, the others complete
    study = Study(protocol, store, FakePool(error_arm=ARM_NAMES[1]), rng=random.Random(0))
    cid = chat(study, ["I failed my exam", "and my parents are angry <b>hi</b>"], rate=False)
    conv = store.conversation(cid)
    stored = store.messages(cid)
    rows = transcript_rows(store)
    assert len(rows) == len(stored) == 12  # 2 turns x 3 panes x (message + reply)
    assert [r.order for r in rows] == list(range(1, 13))
    for row, m in zip(rows, stored):
        assert (row.conversation_id, row.participant_id, row.pane, row.role) == (cid, conv.participant_id, m.pane,
                                                                                 m.role)
        assert row.arm == conv.arm(row.pane) and row.text == m.text and row.scenario == "Academic Stress"
        assert row.status == ("error" if row.arm == ARM_NAMES[1] and row.role == "assistant" else "complete")
    for pane in "ABC":
        mine = [(r.role, r.turn) for r in rows if r.pane == pane]
        assert mine == [("user", 1), ("assistant", 1), ("user", 2), ("assistant", 2)]
    assert [r.text for r in rows if r.role == "user"][-1] == "and my parents are angry <b>hi</b>"
    assert not any(r.participant_id == study.store.participant(conv.participant_id).code for r in rows)


def test_dashboard_zip_holds_the_transcripts_as_jsonl_and_csv_only_after_login(setup):
    protocol, store, study, _ = setup
    cid = chat(study, ["I cannot sleep before exams"])
    board = ui.Dashboard(store, protocol)
    with pytest.raises(ui.NotLoggedIn):
        board.export(False)
    token = board.export(True)
    data = board.downloads.take(token)
    assert board.downloads.take(token) is None  # a used link gives nothing
    zf = zipfile.ZipFile(io.BytesIO(data))
    assert {"transcripts.jsonl", "transcripts.csv", "votes.csv"} <= set(zf.namelist())
    lines = [json.loads(x) for x in zf.read("transcripts.jsonl").decode().splitlines()]
    frame = pd.read_csv(io.BytesIO(zf.read("transcripts.csv")), dtype=str, keep_default_na=False)
    assert list(frame.columns) == list(COLUMNS) and len(frame) == len(lines) == 6
    assert frame.to_dict("records") == [{k: str(v) for k, v in line.items()} for line in lines]
    conv = store.conversation(cid)
    assert {(x["pane"], x["arm"]) for x in lines} == {(p, conv.arm(p)) for p in "ABC"}
    assert {x["status"] for x in lines if x["role"] == "assistant"} == {"complete"}
    assert [x["text"] for x in lines if x["role"] == "user"] == ["I cannot sleep before exams"] * 3


def test_an_interrupted_reply_is_exported_as_interrupted(setup):
    protocol, store, study, _ = setup
    cid = chat(study, ["hello there"], rate=False)
    reply = next(m for m in store.messages(cid) if m.role == "assistant" and m.arm == ARM_NAMES[0])
    store.finish_reply(reply.id, "That sounds", finish_reason="interrupted", partial=True)
    row = next(r for r in transcript_rows(store) if r.order and r.arm == ARM_NAMES[0] and r.role == "assistant")
    assert (row.status, row.text, row.conversation_status) == ("interrupted", "That sounds", "chatting")


def risky(study: Study) -> str:
    return chat(study, ["I want to kill myself"], rate=False)


def test_resolving_a_flag_on_the_dashboard_needs_login_a_note_and_an_open_flag(setup):
    protocol, store, study, _ = setup
    risky(study)
    (flag,) = store.flags()
    board = ui.Dashboard(store, protocol)
    assert board.refresh(True, ARM_NAMES[0]).counts["open_flags"] == 1
    assert [v for _, v in board.open_flags(True)] == [str(flag.id)]
    with pytest.raises(ui.NotLoggedIn):
        board.resolve_flag(False, flag.id, "called")
    with pytest.raises(ValueError, match="Write a note"):
        board.resolve_flag(True, flag.id, "  ")
    with pytest.raises(ValueError, match="no such flag"):
        board.resolve_flag(True, 999, "x")
    said = board.resolve_flag(True, str(flag.id), "Sent the crisis resources by e-mail")
    assert f"Flag {flag.id}" in said and "resolved" in said
    (done,) = store.flags()
    assert done.resolved_at and done.note == "Sent the crisis resources by e-mail"
    with pytest.raises(ValueError, match="already resolved"):
        board.resolve_flag(True, flag.id, "again")
    d = board.refresh(True, ARM_NAMES[0])
    assert d.counts["open_flags"] == 0 and board.open_flags(True) == []
    row = d.flags[d.flags["kind"] == "risk"].iloc[0]
    assert row["note"] == "Sent the crisis resources by e-mail" and row["resolved"] == done.resolved_at


def test_resolve_handler_names_its_outputs_and_keeps_the_note_on_a_refusal(setup, monkeypatch):
    protocol, store, study, _ = setup
    monkeypatch.setenv(ui.PASSWORD_ENV, "s3cret")
    risky(study)
    (flag,) = store.flags()
    demo = ui.build_research_ui(protocol, store)
    fn = next(f for f in demo.fns.values() if f.name == "resolve")
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    out = fn.fn(True, None, "a note", ARM_NAMES[0], "participant")
    assert set(out) == set(fn.outputs) and "Pick an open flag" in out[by_id["research-resolved"]]
    assert store.flags()[0].resolved_at is None
    out = fn.fn(True, str(flag.id), "Phoned the participant", ARM_NAMES[0], "participant")
    assert "resolved" in out[by_id["research-resolved"]] and out[by_id["research-flag-note"]] == ""
    assert "| Open flags | 0 |" in out[by_id["research-counts"]]


def test_resolving_a_flag_from_the_command_line(setup, capsys):
    protocol, store, study, tmp_path = setup
    risky(study)
    risky(study)
    first, second = store.flags()
    db = str(tmp_path / "study.sqlite")
    assert app_cli.main(["--db", db, "--open-flags"]) == 0
    listed = capsys.readouterr()
    assert [line.split("\t")[0] for line in listed.out.splitlines()] == [str(first.id), str(second.id)]
    assert "2 open flag(s)" in listed.err
    assert app_cli.main(["--db", db, "--resolve-flag", str(first.id), "--note", "referred to the GP"]) == 0
    assert f"Flag {first.id}" in capsys.readouterr().out
    assert app_cli.main(["--db", db, "--resolve-flag", str(first.id), "--note", "again"]) == 2
    assert "already resolved" in capsys.readouterr().err
    assert app_cli.main(["--db", db, "--resolve-flag", str(second.id)]) == 2
    assert "Write a note" in capsys.readouterr().err
    flags = {f.id: f for f in store.flags()}
    assert flags[first.id].note == "referred to the GP" and flags[second.id].resolved_at is None
    assert store.counts()["open_flags"] == 1
