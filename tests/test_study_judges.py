"""Judges are invited, never self-served (issue 13, privacy).

Before: anyone opening /annotate could mint judge codes (100 in a burst) and read other participants'
rated transcripts; junk judges' open items used up every item's quota. Each test below fails on that code.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
from study_helpers import FakePool, ServerThread, free_port  # noqa: F401
from test_study_annotation import full_form, make_protocol, rated_conversation, write_dataset

from extes.study import annotation as ann
from extes.study.store import Store


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "study.sqlite")
    yield s
    s.close()


def test_only_invited_unrevoked_judge_codes_open_annotate(store, tmp_path):
    protocol = make_protocol(tmp_path)
    participant = store.create_participant()
    [code] = ann.invite_judges(store, protocol, 1)
    assert ann.judge_by_code(store, code).role == "judge"
    for bad in (participant.code, "ZZZZ-ZZZZ-ZZZZ-ZZZZ", "", ["list"], None):
        with pytest.raises(ann.AnnotationError, match="unknown code"):
            ann.judge_by_code(store, bad)
    store.revoke_judge(code)
    with pytest.raises(ann.AnnotationError, match="unknown code"):
        ann.judge_by_code(store, code)


def test_annotate_page_offers_no_way_to_make_a_code(tmp_path):
    from gradio_client import Client
    from study_helpers import make_protocol as study_protocol

    from extes.study.app import build_app
    from extes.study.session import Study

    protocol = study_protocol(tmp_path, annotation={"judges_see_conversations": True})
    store = Store(tmp_path / "a.sqlite")
    with ServerThread(build_app(protocol, store, FakePool(), study=Study(protocol, store, FakePool()))) as srv:
        client = Client(srv.url + "annotate/", verbose=False)
        names = json.dumps(client.view_api(print_info=False, return_format="dict"))
        assert "new_judge" not in names
        before = store.counts()
        with pytest.raises(Exception, match="unknown code"):
            client.predict("", api_name="/annotate_login")
        assert store.counts() == before and store.judges() == []
    store.close()


def test_annotate_can_be_switched_off(tmp_path):
    import urllib.error
    import urllib.request

    from study_helpers import make_protocol as study_protocol

    from extes.study.app import build_app
    from extes.study.session import Study

    protocol = study_protocol(tmp_path, annotation={"enabled": False})
    store = Store(tmp_path / "a.sqlite")
    with ServerThread(build_app(protocol, store, FakePool(), study=Study(protocol, store, FakePool()))) as srv:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(srv.url + "annotate/", timeout=10)
        assert err.value.code == 404
    store.close()


def test_revoking_frees_the_judges_unfinished_items(store, tmp_path):
    protocol = make_protocol(tmp_path, judges=1)
    rated_conversation(store)
    ann.sync_items(store, protocol)
    bad, good = ann.invite_judges(store, protocol, 2)
    bad_id, good_id = (ann.judge_by_code(store, c).id for c in (bad, good))
    a = ann.next_assignment(store, protocol, bad_id)
    assert ann.next_assignment(store, protocol, good_id) is None  # the only slot is taken
    assert store.revoke_judge(bad) == 1
    assert ann.next_assignment(store, protocol, good_id).item_id == a.item_id
    with pytest.raises(ann.AnnotationError):  # the revoked judge cannot submit what they held
        ann.submit_pairwise(store, protocol, bad_id, a.id, full_form(protocol))
    assert store.votes_frame("judge").empty


def test_quota_counts_only_submitted_judgments_and_a_late_submission_beyond_it_is_refused(store, tmp_path):
    protocol = make_protocol(tmp_path, judges=1)
    rated_conversation(store)
    ann.sync_items(store, protocol)
    j1, j2 = (ann.new_judge(store, protocol).id for _ in range(2))
    late = ann.next_assignment(store, protocol, j1)
    fresh = ann.next_assignment(store, protocol, j2, stale_after_s=0)  # j1's went stale: handed on
    ann.submit_pairwise(store, protocol, j2, fresh.id, full_form(protocol))
    assert ann.coverage(store, protocol) == {"items": 1, "complete_items": 1, "judgments": 1}
    with pytest.raises(ann.AnnotationError, match="already has all the judgments"):
        ann.submit_pairwise(store, protocol, j1, late.id, full_form(protocol))
    assert len(store.votes_frame("judge")) == 15  # one judge's form, not two
    assert ann.next_assignment(store, protocol, j1) is None  # the expired assignment is closed


def test_per_judge_and_global_in_progress_limits(store, tmp_path):
    protocol = make_protocol(tmp_path, judges=3, max_open_total=2)
    for _ in range(3):
        rated_conversation(store)
    ann.sync_items(store, protocol)
    j = [ann.new_judge(store, protocol).id for _ in range(3)]
    a0 = ann.next_assignment(store, protocol, j[0])
    assert ann.next_assignment(store, protocol, j[0]).id == a0.id  # one item in progress per judge
    ann.next_assignment(store, protocol, j[1])
    with pytest.raises(ann.AnnotationError, match="try again"):
        ann.next_assignment(store, protocol, j[2])  # two in progress across judges: the global limit
    ann.submit_pairwise(store, protocol, j[0], a0.id, full_form(protocol))
    assert ann.next_assignment(store, protocol, j[2]) is not None
    assert sum(a.status == "open" for a in store.assignments()) == 2


def test_judges_see_participants_conversations_only_when_the_protocol_says_so(store, tmp_path):
    write_dataset(tmp_path, n=1)
    protocol = make_protocol(tmp_path, dataset="data/mini.json", see=False)
    rated_conversation(store)
    assert ann.sync_items(store, protocol) == {"conversation": 0, "dialogue": 1}
    judge = ann.new_judge(store, protocol).id
    a = ann.next_assignment(store, protocol, judge, rng=random.Random(0))
    assert store.annotation_items()[0].kind == "dialogue" and a.item_id.startswith("mini:")
    ann.submit_likert(store, protocol, judge, a.id, {k: 2 for k in protocol.annotation.likert_aspects})
    assert ann.next_assignment(store, protocol, judge) is None


def test_research_dashboard_invites_and_revokes_only_after_login(store, tmp_path, monkeypatch):
    from extes.study.ui_research import Dashboard, NotLoggedIn

    protocol = make_protocol(tmp_path)
    board = Dashboard(store, protocol)
    with pytest.raises(NotLoggedIn):
        board.invite(False, 3)
    codes = board.invite(True, 3)
    assert len(set(codes)) == 3 and all(ann.judge_by_code(store, c) for c in codes)
    assert list(board.judges(True).code) == codes
    board.revoke(True, codes[0])
    assert list(board.judges(True)["revoked"]) == ["yes", "", ""]


def test_cli_invites_and_revokes_judges(tmp_path, repo_root):
    db = tmp_path / "cli.sqlite"
    out = subprocess.run([sys.executable, str(repo_root / "app.py"), "--db", str(db), "--invite-judges", "2"],
                         capture_output=True, text=True, timeout=120, cwd=repo_root)
    assert out.returncode == 0, out.stderr
    codes = out.stdout.split()
    store = Store(db)
    assert len(codes) == 2 and all(store.participant_by_code(c).role == "judge" for c in codes)
    out = subprocess.run([sys.executable, str(repo_root / "app.py"), "--db", str(db), "--revoke-judge", codes[0]],
                         capture_output=True, text=True, timeout=120, cwd=repo_root)
    assert out.returncode == 0 and "revoked" in out.stdout
    assert store.participant_by_code(codes[0]).revoked_at
    store.close()
