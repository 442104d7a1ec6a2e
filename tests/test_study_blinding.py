"""Blinding (issue 13): no strategy tag reaches a participant or a judge, and the panes cannot be told
apart by when their text appears.

Before: only a leading "[Strategy]" tag was stripped (a second or mid-reply tag was shown, in the strategy
arm's pane only), and the strategy pane's first text came about 400 ms after the others in 8 of 8 sends.
Issue 24: labels in other wrappings ("(EV)", "**Affirmation:**", "<strategy>X</strategy>", hashtags, ...);
the generated matrix of labels x wrappings x positions is tests/test_study_tags.py.
"""

from __future__ import annotations

import random

import pytest
from study_helpers import ARM_NAMES, FakePool, full_answers, make_protocol

from extes.study import annotation as ann
from extes.study.blinding import strip_tags, visible_so_far
from extes.study.session import Study, StudyRefusal
from extes.study.store import Store

TAGS = {2: "[Emotional Validation]", 4: "[ev]", 5: "[offer HOPE]"}  # mid-reply, any case, abbreviations


@pytest.mark.parametrize("text, clean, found", [
    ("[Emotional Validation] That sounds hard.", "That sounds hard.", ["Emotional Validation"]),
    ("That is hard. [Offer Hope] It gets better.", "That is hard. It gets better.", ["Offer Hope"]),
    ("Hi [rs]there [CLA] ok", "Hi there ok", ["Reflective Statements", "Clarification"]),
    ("[Question] What happened?", "What happened?", ["Question"]),  # ESConv's taxonomy too
    ("A note [sic] and [1] stay.", "A note [sic] and [1] stay.", []),  # not strategy tags
])
def test_every_tag_of_the_taxonomy_is_stripped_anywhere(text, clean, found):
    assert strip_tags(text) == (clean, found)


def test_an_unfinished_tag_is_held_back_while_streaming():
    assert visible_so_far("That is hard. [Emot") == "That is hard."
    assert visible_so_far("That is hard. [Emotional Validation] I") == "That is hard. I"
    assert visible_so_far("see [" + "x" * 80) == "see [" + "x" * 80  # too long to become a tag


def test_no_tag_is_shown_stored_as_text_or_shown_to_judges(tmp_path):
    protocol = make_protocol(tmp_path, min_turns=1, conversations=1,
                             annotation={"judges_see_conversations": True})
    store = Store(tmp_path / "s.sqlite")
    study = Study(protocol, store, FakePool(late_arm=ARM_NAMES[2], tags=TAGS,
                                            reply_attrs={"dtype": "bfloat16", "engine_version": "e-2"}))
    view = study.start_conversation(study.consent().code, "Academic Stress")
    views = list(study.send(view.code, view.conversation_id, "ABC", "hello"))
    for v in views:
        shown = " ".join(m["content"] for p in v.panes for m in p.messages)
        assert "[" not in shown and "Validation" not in shown, shown
    pane = "ABC"[store.conversation(view.conversation_id).arm_order.index(ARM_NAMES[2])]
    [reply] = [m for m in store.messages(view.conversation_id, pane) if m.role == "assistant"]
    assert "[" not in reply.text and "[ev]" in reply.raw_text  # raw text kept for analysis
    assert reply.strategies == ("Emotional Validation", "Emotional Validation", "Offer Hope")
    assert (reply.dtype, reply.engine_version) == ("bfloat16", "e-2")  # the engine's, when it has them
    study.submit_rating(view.code, view.conversation_id, full_answers(study))
    ann.sync_items(store, protocol)
    judge = ann.new_judge(store, protocol).id
    a = ann.next_assignment(store, protocol, judge)
    assert "[" not in " ".join(text for turns in ann.item_view(store, judge, a.id).panes for _r, text in turns)


def test_over_20_sends_no_pane_is_first_or_last_by_timing(tmp_path):
    """The arm that starts late (as a strategy arm does while its tag is held back) sits in every pane
    over the sends; in each send, all panes show their first words in the same update and complete in
    the same update, so no pane is systematically first or last."""
    protocol = make_protocol(tmp_path, min_turns=1, conversations=1)
    store = Store(tmp_path / "s.sqlite")
    study = Study(protocol, store, FakePool(late_arm=ARM_NAMES[2], late_steps=4, words=8),
                  rng=random.Random(0))
    late_panes = set()
    for i in range(20):
        view = study.start_conversation(study.consent().code, "Academic Stress")
        late_panes.add("ABC"[store.conversation(view.conversation_id).arm_order.index(ARM_NAMES[2])])
        views = list(study.send(view.code, view.conversation_id, "ABC", f"hello {i}"))
        first, complete = {}, {}
        for n, v in enumerate(views):
            for ps in v.panes:
                if ps.messages[-1]["role"] == "assistant" and ps.messages[-1]["content"]:
                    first.setdefault(ps.pane, n)
                if ps.turns == 1:
                    complete.setdefault(ps.pane, n)
        assert len(set(first.values())) == 1, (i, first)  # first words: same update for all panes
        assert len(set(complete.values())) == 1, (i, complete)  # completion: same update
    assert late_panes == {"A", "B", "C"}


def test_tags_in_other_wrappings_never_show_while_streaming_or_after(tmp_path):
    """Issue 24: a label in another wrapping is never on screen in any update of a real send, and every
    strategy is stored (character-by-character streaming of every wrapping: tests/test_study_tags.py).
    The old stripper showed all of these."""
    tags = {0: "**Affirmation:**", 2: "(EV)", 4: "<strategy>Offer Hope</strategy>", 7: "#EmotionalValidation",
            9: "【Question】"}
    protocol = make_protocol(tmp_path, min_turns=1, conversations=1)
    store = Store(tmp_path / "s.sqlite")
    study = Study(protocol, store, FakePool(late_arm=ARM_NAMES[2], tags=tags, words=10))
    view = study.start_conversation(study.consent().code, "Academic Stress")
    for v in study.send(view.code, view.conversation_id, "ABC", "hello"):
        shown = " ".join(m["content"] for p in v.panes for m in p.messages if m["role"] == "assistant")
        for piece in ("Affirmation", "EV", "Offer", "Hope", "strategy", "#", "<", "(EV", "【", "Question", "**"):
            assert piece not in shown, (piece, shown)
    pane = "ABC"[store.conversation(view.conversation_id).arm_order.index(ARM_NAMES[2])]
    [reply] = [m for m in store.messages(view.conversation_id, pane) if m.role == "assistant"]
    assert reply.strategies == ("Affirmation", "Emotional Validation", "Offer Hope", "Emotional Validation",
                                "Question")


def test_a_reply_that_is_only_tags_never_counts_and_keeps_its_raw_text(tmp_path):
    """Before: "[Affirmation] (EV)" was stored as an empty complete reply, counted as a turn and shown as an
    empty bubble in the strategy arm's pane only."""
    import dataclasses

    from extes.models.types import Event

    target = ARM_NAMES[2]

    class TagOnlyPool(FakePool):
        def stream_many(self, requests, cancel=None):
            for key, ev in super().stream_many(requests, cancel):
                if requests[key][0] != target:
                    yield key, ev
                elif ev.done:
                    yield key, Event("[Affirmation] (EV)")
                    raw = "[Affirmation] (EV)"
                    yield key, Event("", True, dataclasses.replace(ev.reply, text=raw, raw_text=raw))

    protocol = make_protocol(tmp_path, min_turns=1, conversations=1)
    store = Store(tmp_path / "s.sqlite")
    study = Study(protocol, store, TagOnlyPool())
    view = study.start_conversation(study.consent().code, "Academic Stress")
    with pytest.raises(StudyRefusal, match="send your message again"):
        list(study.send(view.code, view.conversation_id, "ABC", "hello"))
    pane = "ABC"[store.conversation(view.conversation_id).arm_order.index(target)]
    after = study.resume(view.code)
    shown = {ps.pane: ps for ps in after.panes}
    assert shown[pane].turns == 0 and shown[pane].remaining == 1  # never a turn
    assert [m["role"] for m in shown[pane].messages] == ["user"]  # nothing drawn for it
    [reply] = [m for m in store.messages(view.conversation_id, pane) if m.role == "assistant"]
    assert reply.text == "" and reply.raw_text == "[Affirmation] (EV)" and reply.status.value == "error"
    assert reply.strategies == ("Affirmation", "Emotional Validation")
