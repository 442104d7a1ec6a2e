"""The researcher dashboard: off without a password, refuses without login, shows what the analysis
layer computes from the store (counts, win/tie/loss with p-values, agreement, flags, transcripts) and
exports the CSVs the analysis commands read."""

from __future__ import annotations

import json
import random

import httpx
import pandas as pd
import pytest
from study_helpers import ARM_NAMES, FakePool, ServerThread, full_answers, make_protocol

from extes.analysis import load_ratings, load_votes
from extes.study import annotation as ann
from extes.study import ui_research as ui
from extes.study.session import Study
from extes.study.store import Store


def run_participants(study: Study, n: int, risky: bool = False) -> list[str]:
    """n participants, one conversation each, rated: pane A always "left", so arms win by position."""
    conv_ids = []
    for i in range(n):
        v = study.consent()
        v = study.start_conversation(v.code, "Academic Stress", "")
        text = "I want to die <script>alert(1)</script>" if risky and i == 0 else f"hello {i}"
        for _ in study.send(v.code, v.conversation_id, "ABC", text):
            pass
        study.submit_rating(v.code, v.conversation_id, full_answers(study, "left"))
        conv_ids.append(v.conversation_id)
    return conv_ids


@pytest.fixture
def setup(tmp_path):
    data = tmp_path / "mini.json"
    data.write_text(json.dumps([{"scene": "Academic Stress", "description": "",
                                 "content": [{"User": f"exam {i}"}, {"AI": "That is a lot."}]} for i in range(2)]))
    protocol = make_protocol(tmp_path, min_turns=1, conversations=1,
                             annotation={"judges_per_item": 2, "dataset": str(data), "judges_see_conversations": True})
    store = Store(tmp_path / "study.sqlite")
    study = Study(protocol, store, FakePool(), rng=random.Random(0))
    yield protocol, store, study
    store.close()


def test_without_password_the_dashboard_is_off_and_says_so(setup, monkeypatch):
    protocol, store, _study = setup
    monkeypatch.delenv(ui.PASSWORD_ENV, raising=False)
    assert ui.research_password() is None and not ui.password_ok("")
    board = ui.Dashboard(store, protocol)
    with pytest.raises(ui.NotLoggedIn, match=ui.PASSWORD_ENV):
        board.login("anything")
    from extes.study.app import build_app

    with ServerThread(build_app(protocol, store, FakePool())) as srv:
        page = httpx.get(srv.url + "research/config", timeout=30).text
    assert "The researcher dashboard is off" in page and "research-password" not in page


def test_every_handler_refuses_without_login(setup, monkeypatch):
    protocol, store, study = setup
    monkeypatch.setenv(ui.PASSWORD_ENV, "s3cret")
    monkeypatch.setattr(ui, "FAIL_DELAY_S", 0.0)
    run_participants(study, 1)
    board = ui.Dashboard(store, protocol)
    with pytest.raises(ui.NotLoggedIn, match="Wrong password"):
        board.login("S3CRET")
    for call in (lambda: board.refresh(False, ARM_NAMES[0]), lambda: board.transcript(False, "c-x"),
                 lambda: board.export(False), lambda: board.refresh("true", ARM_NAMES[0])):
        with pytest.raises(ui.NotLoggedIn):
            call()
    assert board.login("s3cret") == list(ARM_NAMES)


def test_arm_names_are_not_in_the_page_before_login(setup, monkeypatch):
    protocol, store, study = setup
    monkeypatch.setenv(ui.PASSWORD_ENV, "s3cret")
    run_participants(study, 1)
    from extes.study.app import build_app

    with ServerThread(build_app(protocol, store, FakePool(), study=study)) as srv:
        for path in ("research/", "research/config", "annotate/config"):
            page = httpx.get(srv.url + path, timeout=30, follow_redirects=True).text
            assert "research-password" in page or path == "annotate/config"
            assert not any(name in page for name in ARM_NAMES), path
            assert "s3cret" not in page


def test_refresh_renders_counts_win_tie_loss_agreement_and_flags(setup, monkeypatch):
    protocol, store, study = setup
    monkeypatch.setenv(ui.PASSWORD_ENV, "s3cret")
    conv_ids = run_participants(study, 6, risky=True)
    # Two judges rate every conversation and both dataset dialogues.
    for _ in range(2):
        judge = ann.new_judge(store, protocol).id
        ann.sync_items(store, protocol)
        while (a := ann.next_assignment(store, protocol, judge)) is not None:
            if store.annotation_items() and a.item_id.startswith("c-"):
                form = {(x.key, k): "tie" for x in protocol.aspects for k in range(3)}
                ann.submit_pairwise(store, protocol, judge, a.id, form)
            else:
                scores = {x: 2 for x in protocol.annotation.likert_aspects}
                ann.submit_likert(store, protocol, judge, a.id, scores)
    board = ui.Dashboard(store, protocol)
    d = board.refresh(True, ARM_NAMES[0], "participant")

    counts = d.counts
    assert counts["participants"] == 6 and counts["rated_conversations"] == 6
    assert counts["annotation_judgments"] == 2 * (6 + 2) and counts["completed_ratings"] == 6 + 16
    assert counts["flags"] >= 1 and counts["annotation_items_complete"] == 8
    md = ui.counts_markdown(counts)
    assert "| Participants | 6 |" in md and "| Risk flags |" in md

    wtl = d.win_tie_loss
    # Each participant picked the left pane everywhere: check against the stored votes directly.
    votes = store.votes_frame()
    ref = votes[(votes["arm_a"] == ARM_NAMES[0]) | (votes["arm_b"] == ARM_NAMES[0])]
    wins = ((ref["arm_a"] == ARM_NAMES[0]) & (ref["outcome"] == "a")).sum()
    assert int(wtl.rows["n_win"].sum()) == wins and int(wtl.rows["n"].sum()) == len(ref)
    assert set(wtl.rows["aspect"]) == {a.key for a in protocol.aspects}
    assert wtl.rows["p_value"].between(0, 1).all()
    assert list(wtl.table.columns)[0] == "comparison" and wtl.figure is not None
    judge_view = ui.win_tie_loss_view(store, ARM_NAMES[0], "judge", n_boot=50)
    assert set(judge_view.rows["n_tie"] == judge_view.rows["n"]) == {True}  # judges always said tie

    agree = d.agreement
    table = agree.table.set_index(["source", "aspect"])
    assert {"pairwise", "extes"} <= set(agree.table["source"])
    assert table.loc[("extes", "all"), "percent_agreement"] == pytest.approx(1.0)
    assert table.loc[("extes", "all"), "items"] == 2 * 5  # two dialogues x five metrics, two judges each
    assert agree.quality is not None and (agree.quality["extes"] == 2.0).all()

    flags = d.flags
    assert list(flags["conversation_id"]) == [conv_ids[0]] and flags["category"].iloc[0] == "suicide"
    assert set(d.conversations["conversation_id"]) == set(conv_ids)


def test_transcript_and_empty_states(setup, monkeypatch):
    protocol, store, study = setup
    board = ui.Dashboard(store, protocol)
    d = board.refresh(True, ARM_NAMES[0])
    assert d.win_tie_loss.rows is None and "No votes yet" in d.win_tie_loss.note
    assert d.agreement.table is None and d.flags.empty
    (cid,) = run_participants(study, 1, risky=True)
    head, frame = board.transcript(True, cid)
    conv = store.conversation(cid)
    assert all(arm in head for arm in conv.arm_order)
    assert list(frame["role"]).count("user") == 3 and "<script>alert(1)</script>" in frame["text"].iloc[0]
    assert board.transcript(True, "c-nope")[0] == "No such conversation."


def test_csv_exports_load_in_the_analysis_layer(setup, tmp_path):
    protocol, store, study = setup
    run_participants(study, 2)
    judge = ann.new_judge(store, protocol).id
    ann.sync_items(store, protocol)
    n_items = 0
    while (a := ann.next_assignment(store, protocol, judge)) is not None and n_items < 3:
        n_items += 1
        if a.pane_order is None:
            ann.submit_likert(store, protocol, judge, a.id, {x: 1 for x in protocol.annotation.likert_aspects})
        else:
            form = {(x.key, k): "right" for x in protocol.aspects for k in range(3)}
            ann.submit_pairwise(store, protocol, judge, a.id, form)
    paths = ui.export_csvs(store, tmp_path / "export")
    assert [p.name for p in paths] == list(ui.EXPORTS)
    votes = load_votes(str(paths[0]))
    assert len(votes) == 2 * 15 and set(votes["rater_id"]) == set(store.votes_frame()["rater_id"])
    judged = sum(1 for a in store.assignments() if a.status == "done" and a.pane_order)
    assert len(load_votes(str(paths[1]), allow_empty=True)) == 15 * judged
    ratings = pd.read_csv(paths[2], dtype=str)
    assert len(ratings[ratings["source"] != "pairwise"]) == 5 * (n_items - judged)
    assert len(ratings[ratings["source"] == "pairwise"]) == 15 * (2 + judged)
    load_ratings(str(paths[2]), require_pairs=False)


def test_dashboard_handlers_name_every_component_they_update(setup, monkeypatch):
    """Each dashboard handler returns {component: update} for exactly the outputs its event lists, so a
    component added to the page shifts nothing; the values land on the components they describe."""
    protocol, store, study = setup
    monkeypatch.setenv(ui.PASSWORD_ENV, "s3cret")
    (cid,) = run_participants(study, 1, risky=True)
    demo = ui.build_research_ui(protocol, store)
    fns = {}
    for block_fn in demo.fns.values():
        fns.setdefault(block_fn.name, block_fn)  # a handler wired to several triggers has one name
    by_id = {block.elem_id: block for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    calls = {"login": ("s3cret",), "refresh": (True, ARM_NAMES[0], "participant"), "show": (True, cid),
             "platform": (True,), "invite": (True, 1), "export": (True,)}
    out = {}
    for name, args in calls.items():
        out[name] = fns[name].fn(*args)
        assert set(out[name]) == set(fns[name].outputs), name
    assert True in out["login"].values()
    assert "| Participants | 1 |" in out["refresh"][by_id["research-counts"]]
    assert "research-download/" in out["export"][by_id["research-download"]]
    assert "New judge codes" in out["invite"][by_id["research-invites"]]
    assert "No participant has arrived" in out["platform"][by_id["research-platform"]]
    assert cid in next(v for v in out["show"].values() if isinstance(v, str))
