"""The participant flow through the functions behind the UI (no browser), with a FakePool."""

from __future__ import annotations

import threading

import pytest
from study_helpers import ARM_NAMES, FakePool, full_answers, make_protocol

from extes.study.session import SCENARIO_CHOICES, Study, StudyRefusal
from extes.study.store import Store


@pytest.fixture
def study(tmp_path):
    protocol = make_protocol(tmp_path, min_turns=2, conversations=2)
    s = Study(protocol, Store(tmp_path / "study.sqlite"), FakePool())
    yield s
    s.store.close()


def chat(study, view, text="I have been feeling low", panes="ABC"):
    views = list(study.send(view.code, view.conversation_id, panes, text))
    return views[-1]


def snapshot(store: Store):
    """Everything stored, to prove refusals change nothing."""
    return (store.counts(), [c.status for c in store.all_conversations()],
            [(m.id, m.text) for c in store.all_conversations() for m in store.messages(c.id)])


def test_consent_issues_a_code_and_nothing_is_stored_before(study):
    assert study.store.counts()["participants"] == 0
    view = study.consent()
    assert view.stage == "setup" and len(view.code) == 14
    assert study.store.counts()["participants"] == 1
    assert study.resume(view.code.lower().replace("-", " ")).participant_id == view.participant_id


def test_scenario_choices_are_the_36_plus_something_else():
    assert len(SCENARIO_CHOICES) == 37 and SCENARIO_CHOICES[-1] == "Something else"


def test_full_flow_two_conversations(study):
    view = study.consent()
    view = study.start_conversation(view.code, "Academic Stress", "exams next week")
    assert view.stage == "chat" and [p.label for p in view.panes] == ["Model A", "Model B", "Model C"]
    assert [p.remaining for p in view.panes] == [2, 2, 2] and not view.can_rate
    views = list(study.send(view.code, view.conversation_id, "ABC", "hello"))
    # The first view already shows the user's message; then the three panes fill at once (streaming).
    assert views[0].streaming and all(p.messages[-1]["role"] == "user" for p in views[0].panes)
    partial = [v for v in views if v.streaming and all(p.messages[-1]["role"] == "assistant" and
                                                        0 < len(p.messages[-1]["content"]) for p in v.panes)]
    final = [p.messages[-1]["content"] for p in views[-1].panes]
    assert partial and all(len(p.messages[-1]["content"]) < len(f) for p, f in zip(partial[0].panes, final))
    view = views[-1]
    assert [p.remaining for p in view.panes] == [1, 1, 1]
    view = chat(study, view, "still here", panes="A")
    assert [p.remaining for p in view.panes] == [0, 1, 1]
    view = chat(study, view, "and you", panes="BC")
    assert view.can_rate
    view = chat(study, view, "one more past the minimum", panes="B")  # continuing is allowed
    assert view.panes[1].turns == 3
    view = study.submit_rating(view.code, view.conversation_id, full_answers(study, "left"), "thanks")
    assert view.stage == "thanks" and view.revealed is None
    votes = study.store.votes_frame()
    assert len(votes) == 15 and set(votes["outcome"]) == {"a"}
    assert set(votes["arm_a"]) | set(votes["arm_b"]) == set(ARM_NAMES)
    assert study.resume(view.code).stage == "setup"  # a later visit goes on with conversation 2
    view = study.next_conversation(view.code)
    assert view.stage == "setup" and view.number == 2
    view = study.start_conversation(view.code, "Something else", "")
    view = chat(study, view)
    view = chat(study, view)
    view = study.submit_rating(view.code, view.conversation_id, full_answers(study, "tie"))
    assert view.stage == "done"
    with pytest.raises(StudyRefusal):
        study.start_conversation(view.code, "Academic Stress")
    assert study.store.counts()["votes"] == 30


def test_resume_restores_exactly(study):
    view = study.consent()
    view = study.start_conversation(view.code, "Anxiety and Panic")
    view = chat(study, view, "first")
    resumed = study.resume(view.code)
    assert resumed.stage == "chat" and resumed.conversation_id == view.conversation_id
    assert [p.messages for p in resumed.panes] == [p.messages for p in view.panes]
    # Starting again while a conversation is open does not create a second one.
    with pytest.raises(StudyRefusal) as err:
        study.start_conversation(view.code, "Anxiety and Panic")
    assert err.value.hint
    assert len(study.store.conversations_of(view.participant_id)) == 1


def test_bad_inputs_are_refused_and_change_nothing(study, tmp_path):
    me = study.start_conversation(study.consent().code, "Academic Stress")
    other = study.start_conversation(study.consent().code, "Career Transitions")
    chat(study, me, "hello")
    before = snapshot(study.store)

    with pytest.raises(StudyRefusal) as err:
        list(study.send(me.code, me.conversation_id, "A", "   \n "))
    assert err.value.hint and "Type a message" in str(err.value)
    with pytest.raises(StudyRefusal) as err:
        list(study.send(me.code, me.conversation_id, "A", "x" * 4001))
    assert "4,001" in str(err.value) and "4,000" in str(err.value)
    with pytest.raises(StudyRefusal) as err:  # another participant's conversation
        list(study.send(me.code, other.conversation_id, "A", "hi"))
    assert "does not belong" in str(err.value)
    with pytest.raises(StudyRefusal):
        list(study.send("ZZZZ-ZZZZ-ZZZZ", me.conversation_id, "A", "hi"))
    with pytest.raises(StudyRefusal):
        list(study.send(me.code, me.conversation_id, "D", "hi"))
    with pytest.raises(StudyRefusal) as err:  # vote before the minimum
        study.submit_rating(me.code, me.conversation_id, full_answers(study))
    assert "needs 1 more" in str(err.value)
    with pytest.raises(StudyRefusal):
        study.submit_rating(other.code, me.conversation_id, full_answers(study))
    with pytest.raises(StudyRefusal):
        study.report(other.code, me.conversation_id, "A", 1)
    with pytest.raises(StudyRefusal):
        study.start_conversation(me.code, "Not a scenario")
    assert snapshot(study.store) == before

    chat(study, me, "again")
    answers = full_answers(study)
    answers.pop("overall:BC")
    answers["fluency:AB"] = "maybe"
    before = snapshot(study.store)
    with pytest.raises(StudyRefusal) as err:  # incomplete form
        study.submit_rating(me.code, me.conversation_id, answers)
    assert "Overall (Model B vs Model C)" in str(err.value) and "Fluency (Model A vs Model B)" in str(err.value)
    assert snapshot(study.store) == before
    study.submit_rating(me.code, me.conversation_id, full_answers(study))
    before = snapshot(study.store)
    with pytest.raises(StudyRefusal) as err:  # duplicate vote
        study.submit_rating(me.code, me.conversation_id, full_answers(study, "right"))
    assert "already been rated" in str(err.value)
    with pytest.raises(StudyRefusal):  # no more messages to a rated conversation
        list(study.send(me.code, me.conversation_id, "A", "hi"))
    assert snapshot(study.store) == before
    assert set(study.store.votes_frame().outcome) == {"a"}


def test_html_is_stored_verbatim(study):
    view = study.start_conversation(study.consent().code, "Academic Stress")
    payload = "<script>alert('x')</script><b>bold</b>"
    view = chat(study, view, payload, panes="A")
    assert view.panes[0].messages[0]["content"] == payload
    assert study.store.messages(view.conversation_id, "A")[0].text == payload


def test_risk_pattern_flags_and_banner(study):
    view = study.start_conversation(study.consent().code, "Depression and Low Mood")
    view = chat(study, view, "I had a normal day")
    assert not view.crisis and study.store.flags() == []
    view = chat(study, view, "Sometimes I think about ending my life", panes="B")
    assert view.crisis
    flags = study.store.flags(view.conversation_id)
    assert [f.category for f in flags] == ["suicide"]
    assert "ending my life" not in repr(flags)  # the flag records the pattern, not the text
    assert study.resume(view.code).crisis  # the banner stays after a refresh


def test_report_a_reply(study):
    view = study.start_conversation(study.consent().code, "Academic Stress")
    view = chat(study, view, "hi", panes="C")
    study.report(view.code, view.conversation_id, "C", 1)
    reports = study.store.reports(view.conversation_id)
    assert len(reports) == 1 and study.store.message(reports[0].message_id).role == "assistant"
    with pytest.raises(StudyRefusal):  # a user message is not a model reply
        study.report(view.code, view.conversation_id, "C", 0)
    with pytest.raises(StudyRefusal):  # twice
        study.report(view.code, view.conversation_id, "C", 1)
    with pytest.raises(StudyRefusal):  # still streaming / out of range
        study.report(view.code, view.conversation_id, "C", 5)
    with pytest.raises(StudyRefusal, match="option the page offers"):  # only the page's reason
        study.report(view.code, view.conversation_id, "C", 1, reason="<b>anything else</b>")


def test_models_see_only_their_pane_and_not_the_scenario(study):
    view = study.start_conversation(study.consent().code, "Academic Stress", "secret description")
    chat(study, view, "to A only", panes="A")
    chat(study, view, "to all")
    calls = {arm: msgs for arm, msgs in study.pool.calls[-3:]}
    arm_a = study.store.conversation(view.conversation_id).arm_order[0]
    assert [m["content"] for m in calls[arm_a] if m["role"] == "user"] == ["to A only", "to all"]
    others = [msgs for arm, msgs in calls.items() if arm != arm_a]
    assert all([m["content"] for m in msgs if m["role"] == "user"] == ["to all"] for msgs in others)
    assert "secret description" not in repr(study.pool.calls) and all(m["role"] != "system" for _, ms in
                                                                         study.pool.calls for m in ms)


def test_scenario_reaches_models_when_the_protocol_says_so(tmp_path):
    protocol = make_protocol(tmp_path, scenario_to_models=True)
    s = Study(protocol, Store(tmp_path / "s.sqlite"), FakePool())
    view = s.start_conversation(s.consent().code, "Academic Stress", "my thesis")
    chat(s, view, "hi", panes="A")
    system = s.pool.calls[-1][1][0]
    assert system["role"] == "system" and "Academic Stress" in system["content"] and "my thesis" in system["content"]


def test_reveal_after_rating_when_protocol_allows(tmp_path):
    protocol = make_protocol(tmp_path, min_turns=1, conversations=1, reveal_identities="after_rating")
    s = Study(protocol, Store(tmp_path / "s.sqlite"), FakePool())
    view = s.start_conversation(s.consent().code, "Academic Stress")
    assert view.revealed is None
    view = chat(s, view)
    view = s.submit_rating(view.code, view.conversation_id, full_answers(s))
    assert view.stage == "done" and sorted(view.revealed.values()) == sorted(ARM_NAMES)


def test_model_failure_is_generic_and_keeps_the_user_message(tmp_path):
    protocol = make_protocol(tmp_path)
    s = Study(protocol, Store(tmp_path / "s.sqlite"), FakePool(fail_arm=ARM_NAMES[2]))
    view = s.start_conversation(s.consent().code, "Academic Stress")
    with pytest.raises(StudyRefusal) as err:
        chat(s, view, "hello")
    assert "could not reply" in str(err.value) and not any(n in str(err.value) for n in ARM_NAMES)
    assert [m.role for m in s.store.messages(view.conversation_id)] == ["user"] * 3


def test_one_failing_pane_keeps_what_was_shown_and_the_other_panes(tmp_path):
    protocol = make_protocol(tmp_path, min_turns=2)
    s = Study(protocol, Store(tmp_path / "s.sqlite"), FakePool(error_arm=ARM_NAMES[1]))
    view = s.start_conversation(s.consent().code, "Academic Stress")
    failing = "ABC"[view_order(s, view).index(ARM_NAMES[1])]
    with pytest.raises(StudyRefusal, match="send your message again"):
        chat(s, view, "hello")
    rows = s.store.messages(view.conversation_id)
    by_pane = {p: [r.role for r in rows if r.pane == p] for p in "ABC"}
    assert by_pane[failing] == ["user", "assistant"]  # the partial text, kept
    assert [r.finish_reason for r in rows if r.pane == failing and r.role == "assistant"] == ["error"]
    others = [r.finish_reason for r in rows if r.pane != failing and r.role == "assistant"]
    assert others == ["stop", "stop"]  # the other panes finished normally


def view_order(s, view):
    return s.store.conversation(view.conversation_id).arm_order


def test_a_reply_cut_by_the_length_cap_is_shown_up_to_its_last_sentence(tmp_path):
    protocol = make_protocol(tmp_path)
    pool = FakePool(finish="length")
    pool._reply_words = lambda messages: ["That", "sounds", "hard.", "Maybe", "you"]
    s = Study(protocol, Store(tmp_path / "s.sqlite"), pool)
    view = s.start_conversation(s.consent().code, "Academic Stress")
    last = chat(s, view, "hello", panes="A")
    [reply] = [r for r in s.store.messages(view.conversation_id, "A") if r.role == "assistant"]
    assert reply.text == "That sounds hard." and reply.raw_text == "That sounds hard. Maybe you"
    assert last.panes[0].messages[-1]["content"] == "That sounds hard."  # what the participant is shown
    assert s.resume(view.code).panes[0].messages[-1]["content"] == "That sounds hard."  # and after a reload


def test_abandoned_stream_keeps_the_partial_reply(study):
    study.pacing = None  # shown as generated (a paced single-pane send shows nothing for its first second)
    view = study.start_conversation(study.consent().code, "Academic Stress")
    stream = study.send(view.code, view.conversation_id, "A", "hello")
    for _ in range(5):  # user message view + four deltas: "That sounds hard. Thank" shows its first sentence
        next(stream)
    stream.close()  # the page was closed mid-reply
    rows = study.store.messages(view.conversation_id, "A")
    assert [r.role for r in rows] == ["user", "assistant"]
    assert rows[1].finish_reason == "interrupted" and rows[1].text
    # The conversation is free again, and the next context merges nothing wrongly.
    chat(study, view, "next", panes="A")
    assert len(study.store.messages(view.conversation_id, "A")) == 4


def test_overlapping_sends_to_one_conversation_are_refused(study):
    view = study.start_conversation(study.consent().code, "Academic Stress")
    first = study.send(view.code, view.conversation_id, "A", "one")
    next(first)
    with pytest.raises(StudyRefusal) as err:
        list(study.send(view.code, view.conversation_id, "B", "two"))
    assert err.value.hint
    list(first)
    chat(study, view, "three", panes="B")


def test_concurrent_participants_never_see_each_other(tmp_path):
    protocol = make_protocol(tmp_path, min_turns=3)
    s = Study(protocol, Store(tmp_path / "s.sqlite"), FakePool(delay=0.001))
    errors: list[BaseException] = []

    def participant(i: int):
        try:
            view = s.start_conversation(s.consent().code, "Academic Stress")
            for t in range(3):
                view = chat(s, view, f"participant-{i}-turn-{t}")
            texts = [m["content"] for p in s.resume(view.code).panes for m in p.messages if m["role"] == "user"]
            assert texts and all(x.startswith(f"participant-{i}-") for x in texts)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=participant, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for _arm, msgs in s.pool.calls:
        owners = {m["content"].split("-turn-")[0] for m in msgs if m["role"] == "user"}
        assert len(owners) == 1  # a model's context never mixes participants
    assert s.store.counts()["messages"] == 6 * 3 * 3 * 2


def test_judge_codes_and_foreign_protocol_conversations_are_refused(study, tmp_path):
    judge = study.store.create_participant(role="judge")
    with pytest.raises(StudyRefusal, match="not a participant code"):
        study.resume(judge.code)
    view = study.start_conversation(study.consent().code, "Academic Stress")
    (tmp_path / "other").mkdir()
    other = make_protocol(tmp_path / "other", arms=[{"name": n} for n in ("p", "q", "r")])
    moved = Study(other, study.store, FakePool(arm_names=("p", "q", "r")))
    before = snapshot(study.store)
    with pytest.raises(StudyRefusal, match="cannot be continued"):
        list(moved.send(view.code, view.conversation_id, "A", "hi"))
    assert snapshot(study.store) == before
