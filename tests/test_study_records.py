"""The store returns records (frozen dataclasses) and never a dict; a row's stored form becomes its Python
form in one place per record (`from_row`), including "streaming means interrupted after a crash"."""

from __future__ import annotations

import dataclasses
import inspect
import typing

import pytest
from study_helpers import FakePool, full_answers, make_protocol

from extes.study import annotation as ann
from extes.study import records
from extes.study.records import Message, MessageStatus
from extes.study.session import Study
from extes.study.store import Store
from extes.study.store.times import ago, now


def test_no_store_method_is_declared_to_return_a_dict_of_any():
    for name, fn in inspect.getmembers(Store, inspect.isfunction):
        if name.startswith("_"):
            continue
        ret = typing.get_type_hints(fn).get("return")
        assert "dict[str, typing.Any]" not in str(ret), f"Store.{name} returns {ret}"


def _filled_store(tmp_path):
    protocol = make_protocol(tmp_path, min_turns=1, conversations=1, annotation={"judges_see_conversations": True})
    store = Store(tmp_path / "s.sqlite")
    study = Study(protocol, store, FakePool())
    view = study.start_conversation(study.consent().code, "Academic Stress")
    list(study.send(view.code, view.conversation_id, "ABC", "I want to kill myself"))
    study.report(view.code, view.conversation_id, "A", 1)
    study.submit_rating(view.code, view.conversation_id, full_answers(study))
    ann.sync_items(store, protocol)
    judge = ann.new_judge(store, protocol)
    assert ann.next_assignment(store, protocol, judge.id) is not None
    return store, view, judge


def test_every_read_returns_frozen_records(tmp_path):
    store, view, judge = _filled_store(tmp_path)
    cid = view.conversation_id
    reads = {
        "participant_by_code": [store.participant_by_code(view.code)],
        "participant": [store.participant(view.participant_id)],
        "conversation": [store.conversation(cid)],
        "messages": store.messages(cid),
        "message": [store.message(store.messages(cid)[0].id)],
        "flags": store.flags(),
        "reports": store.reports(),
        "votes": store.votes(),
        "annotation_items": store.annotation_items(),
        "judges": store.judges(),
        "assignments": store.assignments(),
        "participant (judge)": [store.participant(judge.id)],
    }
    for what, values in reads.items():
        assert values, what
        for value in values:
            assert dataclasses.is_dataclass(value) and not isinstance(value, dict), what
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(value, dataclasses.fields(value)[0].name, "changed")
    assert {type(v).__name__ for v in store.messages(cid)} == {"Message"}
    assert all(isinstance(getattr(records, name), type) for name in (
        "Participant", "Conversation", "Message", "Vote", "Flag", "Report", "AnnotationItem", "Assignment",
        "Judgment", "PlatformSession", "LlmVote"))
    store.close()


ROW = {"id": 1, "conversation_id": "c", "pane": "A", "arm": "x", "role": "assistant", "text": "hi",
       "partial": True, "strategies": '["Affirmation"]', "settings": '{"temperature": 0.7}'}


@pytest.mark.parametrize("reason, updated, status", [
    ("streaming", "fresh", MessageStatus.STREAMING),
    ("streaming", "stale", MessageStatus.INTERRUPTED),  # its writer died: read as interrupted
    ("interrupted", "fresh", MessageStatus.INTERRUPTED),
    ("error", "fresh", MessageStatus.ERROR),
    ("stop", "fresh", MessageStatus.COMPLETE),
    ("length", "fresh", MessageStatus.COMPLETE),
])
def test_a_message_status_is_read_in_one_place(reason, updated, status):
    stamp = now() if updated == "fresh" else ago(60)
    m = Message.from_row({**ROW, "finish_reason": reason, "updated_at": stamp}, stale_before=ago(10))
    assert m.status is status
    assert m.finish_reason == ("interrupted" if (reason, updated) == ("streaming", "stale") else reason)
    assert m.strategies == ("Affirmation",) and m.settings == {"temperature": 0.7} and m.partial is True
    assert m.cut_off == (status in (MessageStatus.INTERRUPTED, MessageStatus.ERROR))
    assert not m.counts  # partial


def test_a_crashed_reply_is_read_as_interrupted_but_left_as_it_is_in_the_database(tmp_path):
    import sqlalchemy as sa

    from extes.study.store import schema

    store = Store(tmp_path / "s.sqlite")
    p = store.create_participant()
    conv = store.create_conversation(p.id, "Academic Stress", "", lambda c: (0, ["x", "y", "z"]))
    [(_uid, rid)] = store.open_turn(conv.id, "hello", [("A", "x")])
    store.update_replies({rid: "half a rep"})
    with store.engine.begin() as conn:  # its process died a minute ago
        conn.execute(schema.messages.update().where(schema.messages.c.id == rid).values(updated_at=ago(60)))
    reply = store.message(rid)
    assert reply.status is MessageStatus.INTERRUPTED and reply.text == "half a rep"
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(schema.messages.c.finish_reason).where(schema.messages.c.id == rid)
                            ).scalar() == "streaming"
    assert not store.is_streaming(conv.id)
    store.close()
