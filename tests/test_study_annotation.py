"""Annotation: assignment rules (quota, no repeats), blind item views,
pairwise and Likert forms stored so the export frames carry them, and refusals that change nothing."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from extes.study import annotation as ann
from extes.study.assignment import balanced_chooser
from extes.study.protocol import protocol_from_dict
from extes.study.records import PaneVote
from extes.study.store import Store

ARMS = ["alpha", "beta", "gamma"]
ASPECTS = [{"key": k, "label": k.capitalize(), "question": f"Who was better at {k}?"}
           for k in ("fluency", "identification", "comforting", "suggestion", "overall")]


def make_protocol(tmp_path: Path, judges: int = 3, dataset: str | None = None, pairwise: bool = True,
                  see: bool = True, **annotation):
    data = {
        "title": "t", "consent": "c", "arms": [{"name": n} for n in ARMS], "aspects": ASPECTS,
        "crisis": {"banner": "b", "patterns": {"suicide": ["suicid"]}}, "min_user_turns": 1,
        "annotation": {"judges_per_item": judges, "pairwise": pairwise, "dataset": dataset,
                       "judges_see_conversations": see, **annotation},
    }
    path = tmp_path / "eval_protocol" / "p.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return protocol_from_dict(data, where=str(path), build_arms=False)


def rated_conversation(store: Store, participant_id: str | None = None) -> dict:
    pid = participant_id or store.create_participant().id
    conv = store.create_conversation(pid, "Academic Stress", "", balanced_chooser(ARMS, random.Random(1)))
    for pane, arm in zip("ABC", conv.arm_order):
        store.add_message(conv.id, pane, arm, "user", f"hello {pane}")
        store.add_message(conv.id, pane, arm, "assistant", f"reply from {arm}")
    rows = [{"aspect": "overall", "pane_a": "A", "pane_b": "B", "arm_a": conv.arm_order[0],
             "arm_b": conv.arm_order[1], "outcome": "a"}]
    store.submit_votes(conv.id, pid, [PaneVote(**r) for r in rows])
    return store.conversation(conv.id)


def full_form(protocol, choice: str = "left") -> dict:
    return {(a.key, k): choice for a in protocol.aspects for k in range(3)}


def write_dataset(tmp_path: Path, n: int = 2) -> Path:
    records = [{"scene": "Academic Stress", "description": "exams",
                "content": [{"User": f"I am stressed {i}"}, {"AI": "That sounds hard.", "AI Strategy": "Emotional Validation"}]}
               for i in range(n)]
    path = tmp_path / "data" / "mini.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(records))
    return path


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "study.sqlite")
    yield s
    s.close()


def test_only_rated_conversations_become_items_and_sync_is_idempotent(store, tmp_path):
    protocol = make_protocol(tmp_path)
    rated = rated_conversation(store)
    pid = store.create_participant().id
    store.create_conversation(pid, "Academic Stress", "", balanced_chooser(ARMS))  # still chatting
    assert ann.sync_items(store, protocol) == {"conversation": 1, "dialogue": 0}
    assert ann.sync_items(store, protocol) == {"conversation": 0, "dialogue": 0}
    assert [i.id for i in store.annotation_items()] == [rated.id]


def test_each_item_reaches_quota_no_repeats(store, tmp_path):
    protocol = make_protocol(tmp_path, judges=3)
    owner = store.create_participant()
    convs = [rated_conversation(store, owner.id)] + [rated_conversation(store) for _ in range(3)]
    ann.sync_items(store, protocol)
    judges = [ann.new_judge(store, protocol).id for _ in range(5)]
    rng = random.Random(0)
    # Judges take turns until nobody gets anything more.
    progress = True
    while progress:
        progress = False
        for j in judges:
            a = ann.next_assignment(store, protocol, j, rng=rng)
            if a is None:
                continue
            progress = True
            assert ann.submit_pairwise(store, protocol, j, a.id, full_form(protocol)) == 15
    per_item: dict[str, list[str]] = {}
    for a in store.assignments():
        assert a.status == "done"
        per_item.setdefault(a.item_id, []).append(a.judge_id)
    assert sorted(per_item) == sorted(c.id for c in convs)
    for item, js in per_item.items():
        assert len(js) == 3, item  # exactly the quota
        assert len(set(js)) == 3  # no judge twice


def test_open_assignment_is_resumed_and_abandoned_ones_stop_counting(store, tmp_path):
    protocol = make_protocol(tmp_path, judges=1)
    rated_conversation(store)
    ann.sync_items(store, protocol)
    j1, j2 = (ann.new_judge(store, protocol).id for _ in range(2))
    first = ann.next_assignment(store, protocol, j1)
    assert ann.next_assignment(store, protocol, j1).id == first.id  # refresh: same item
    assert ann.next_assignment(store, protocol, j2) is None  # quota taken by j1's open assignment
    assert ann.next_assignment(store, protocol, j2, stale_after_s=0) is not None  # j1 walked away


def test_pairwise_judgments_map_shown_panes_to_arms_and_export(store, tmp_path):
    protocol = make_protocol(tmp_path)
    conv = rated_conversation(store)
    ann.sync_items(store, protocol)
    judge = ann.new_judge(store, protocol).id
    a = ann.next_assignment(store, protocol, judge, rng=random.Random(3))
    view = ann.item_view(store, judge, a.id)
    arm_of = dict(zip("ABC", conv.arm_order))
    shown_arms = [arm_of[p] for p in a.pane_order]
    # The blind view shows each pane's transcript in the judge's order, without arm names.
    assert [turns[-1][1] for turns in view.panes] == [f"reply from {arm}" for arm in shown_arms]
    form = full_form(protocol, "tie")
    form[("overall", 1)] = "right"  # shown A vs shown C: C better
    ann.submit_pairwise(store, protocol, judge, a.id, form)
    frame = store.votes_frame("judge")
    assert len(frame) == 15 and set(frame["rater_id"]) == {judge}
    row = frame[(frame["aspect"] == "overall") & (frame["outcome"] != "tie")].iloc[0]
    assert (row["arm_a"], row["arm_b"], row["outcome"]) == (shown_arms[0], shown_arms[2], "b")
    ratings = store.ratings_frame()
    assert (ratings["rater_id"] == judge).sum() == 15


def test_incomplete_foreign_or_repeated_submissions_change_nothing(store, tmp_path):
    protocol = make_protocol(tmp_path)
    rated_conversation(store)
    ann.sync_items(store, protocol)
    judge, other = (ann.new_judge(store, protocol).id for _ in range(2))
    a = ann.next_assignment(store, protocol, judge)
    form = full_form(protocol)
    del form[("comforting", 2)]
    with pytest.raises(ann.AnnotationError, match="Comforting: B vs C"):
        ann.submit_pairwise(store, protocol, judge, a.id, form)
    with pytest.raises(ann.AnnotationError, match="not one of yours"):
        ann.submit_pairwise(store, protocol, other, a.id, full_form(protocol))
    with pytest.raises(ann.AnnotationError, match="not one of yours"):
        ann.item_view(store, other, a.id)
    assert len(store.votes_frame("judge")) == 0
    ann.submit_pairwise(store, protocol, judge, a.id, full_form(protocol))
    with pytest.raises(ann.AnnotationError, match="already submitted"):
        ann.submit_pairwise(store, protocol, judge, a.id, full_form(protocol, "right"))
    assert set(store.votes_frame("judge").outcome) == {"a"}


def test_dataset_dialogues_are_rated_on_the_likert_scale(store, tmp_path):
    path = write_dataset(tmp_path, n=2)
    protocol = make_protocol(tmp_path, judges=2, dataset="data/mini.json", pairwise=False)
    rated_conversation(store)
    assert ann.sync_items(store, protocol) == {"conversation": 0, "dialogue": 2}  # found from the repo root
    assert path.exists()
    judge = ann.new_judge(store, protocol).id
    a = ann.next_assignment(store, protocol, judge)
    view = ann.item_view(store, judge, a.id)
    assert view.kind == "dialogue" and view.turns[0][0] == "user" and view.scene == "Academic Stress"
    aspects = protocol.annotation.likert_aspects
    with pytest.raises(ann.AnnotationError, match="Coherence"):
        ann.submit_likert(store, protocol, judge, a.id, {**{k: 2 for k in aspects}, "Coherence": 4})
    with pytest.raises(ann.AnnotationError, match="Helpfulness"):
        ann.submit_likert(store, protocol, judge, a.id, {k: 1 for k in aspects if k != "Helpfulness"})
    with pytest.raises(ann.AnnotationError, match="Likert scores"):
        ann.submit_pairwise(store, protocol, judge, a.id, full_form(protocol))
    assert len(store.ratings_frame()) == 1  # only the participant's own vote
    ann.submit_likert(store, protocol, judge, a.id, {k: "3" for k in aspects})
    frame = store.ratings_frame()
    likert = frame[frame["source"] != "pairwise"]
    assert len(likert) == 5 and set(likert["label"]) == {"3"} and set(likert["item_id"]) == {a.item_id}
    assert set(likert["aspect"]) == {k.lower() for k in aspects}
    assert ann.coverage(store, protocol) == {"items": 2, "complete_items": 0, "judgments": 1}


def test_missing_dataset_and_unknown_code_are_clear_errors(store, tmp_path):
    protocol = make_protocol(tmp_path, dataset="data/nope.json")
    with pytest.raises(FileNotFoundError, match="annotation.dataset: data/nope.json"):
        ann.sync_items(store, protocol)
    with pytest.raises(ann.AnnotationError, match="unknown code"):
        ann.judge_by_code(store, "ZZZZ-ZZZZ-ZZZZ")


def test_annotate_page_through_gradio_client(tmp_path):
    """The /annotate page's endpoints: new judge code, blind item, incomplete form refused, full form stored."""
    from gradio_client import Client
    from study_helpers import ARM_NAMES, FakePool, ServerThread, call, full_answers
    from study_helpers import make_protocol as study_protocol

    from extes.study.app import build_app
    from extes.study.session import Study

    protocol = study_protocol(tmp_path, min_turns=1, conversations=1,
                              annotation={"judges_see_conversations": True})
    store = Store(tmp_path / "app.sqlite")
    study = Study(protocol, store, FakePool())
    v = study.consent()
    v = study.start_conversation(v.code, "Academic Stress", "")
    for _ in study.send(v.code, v.conversation_id, "ABC", "my exams <b>scare</b> me"):
        pass
    study.submit_rating(v.code, v.conversation_id, full_answers(study))
    [code] = ann.invite_judges(store, protocol, 1)
    with ServerThread(build_app(protocol, store, FakePool(), study=study)) as srv:
        client = Client(srv.url + "annotate/", verbose=False)
        out = call(client, code, api_name="/annotate_login")
        assert out["judge code"] == code and out["assignment"].isdigit()
        assignment_id = out["assignment"]
        shown = json.dumps(out, default=str)
        assert not any(name in shown for name in ARM_NAMES)
        assert "&lt;b&gt;scare&lt;/b&gt;" in shown and "<b>scare" not in shown
        n_pairs, n_likert = 15, len(protocol.annotation.likert_aspects)
        radios = ["tie"] * (n_pairs - 1) + [None] + [None] * n_likert
        with pytest.raises(Exception, match="missing"):
            client.predict(code, assignment_id, *radios, api_name="/annotate_submit")
        assert store.votes_frame("judge").empty
        # A participant's code is not a judge code: it opens nothing and submits nothing.
        with pytest.raises(Exception, match="unknown code"):
            client.predict(v.code, assignment_id, *(["tie"] * n_pairs + [None] * n_likert), api_name="/annotate_submit")
        with pytest.raises(Exception, match="unknown code"):
            client.predict(v.code, api_name="/annotate_login")
        out = call(client, code, assignment_id, *(["tie"] * n_pairs + [None] * n_likert),
                   api_name="/annotate_submit")
        assert out["assignment"] == ""  # nothing left
    frame = store.votes_frame("judge")
    assert len(frame) == 15 and set(frame["outcome"]) == {"tie"}
    store.close()


def test_judge_page_updates_name_their_components(store, tmp_path):
    """AnnotateUI's handlers return {component: update} for exactly its outputs: a study conversation opens
    the three panes, a dataset dialogue the single one, and the end hides both."""
    import gradio as gr

    from extes.study.ui_annotate import render_annotate

    protocol = make_protocol(tmp_path, judges=1, dataset=str(write_dataset(tmp_path, n=1)))
    rated_conversation(store)
    [code] = ann.invite_judges(store, protocol, 1)
    with gr.Blocks():
        page = render_annotate(store, protocol)
    kinds = []
    out = page.on_login(code)
    while out[page.assignment_box]:
        assert set(out) == set(page.outputs) and out[page.code_box] == code
        assert out[page.submit_btn]["visible"] is True and out[page.login_col]["visible"] is False
        conv, dlg = out[page.conv_col]["visible"], out[page.dlg_col]["visible"]
        assert conv != dlg
        if conv:
            kinds.append("conversation")
            assert all(out[chat][-1]["content"].startswith("reply from") for chat in page.chats)
            values = ["tie"] * len(page.pair_radios) + [None] * len(page.likert_radios)
        else:
            kinds.append("dialogue")
            assert out[page.dlg_chat][0]["content"] == "I am stressed 0" and all(out[c] == [] for c in page.chats)
            values = [None] * len(page.pair_radios) + ["2"] * len(page.likert_radios)
        out = page.on_submit(code, out[page.assignment_box], *values)
    assert sorted(kinds) == ["conversation", "dialogue"]
    assert set(out) == set(page.outputs) and "nothing more for you to judge" in out[page.status_md]
    assert out[page.submit_btn]["visible"] is False and out[page.conv_col]["visible"] is False
