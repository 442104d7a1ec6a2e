"""Replies that end like sentences, for every arm alike (issue 28, item 4).

The protocol's `max_reply_tokens` is the length every arm uses (it was only a cap over each arm's own
`max_new_tokens`, so 128 ran); a reply cut by that length ends at its last complete sentence, by one rule for
every arm, and the cut sentence is never on screen, not even while the reply streams; what was cut is
recorded (messages.cut_chars).
"""

from __future__ import annotations

import logging

import pytest
from study_helpers import ARM_NAMES, FakePool, make_protocol

from extes.study.screening import sentence_end, trim_to_sentence
from extes.study.session import Study
from extes.study.store import Store


def test_every_arm_replies_at_the_protocol_length(tmp_path):
    protocol = make_protocol(tmp_path, max_reply_tokens=160)  # arms without generation settings: 128 each
    assert [a.generation.max_new_tokens for a in protocol.arms] == [160, 160, 160]


def test_an_arm_that_sets_its_own_length_loads_with_the_protocol_length_and_a_warning(tmp_path, caplog):
    arms = [{"name": n, "generation": {"max_new_tokens": 64}} for n in ARM_NAMES]
    with caplog.at_level(logging.WARNING, logger="extes.study.protocol"):
        protocol = make_protocol(tmp_path, arms=arms, max_reply_tokens=100)
    assert [a.generation.max_new_tokens for a in protocol.arms] == [100, 100, 100]
    assert "generation.max_new_tokens 64 is replaced by the protocol's max_reply_tokens 100" in caplog.text


@pytest.mark.parametrize(("text", "expected"), [
    ("That sounds hard. Maybe you", "That sounds hard."),
    ('She said "stop." And then', 'She said "stop."'),
    ("Try these:\n1. Sleep more.\n2. Walk", "Try these:\n1. Sleep more."),
    ("Try these:\n1. Sleep", "Try these:\n1. Sleep"),  # no complete sentence: nothing to end at, kept whole
    ("It costs 3.50 a month and", "It costs 3.50 a month and"),
    ("Really? Yes! And", "Really? Yes!"),
])
def test_a_capped_reply_ends_at_its_last_complete_sentence(text, expected):
    assert trim_to_sentence(text) == expected


def test_a_sentence_end_counts_while_streaming_only_once_the_next_word_starts():
    assert sentence_end("That sounds hard.", final=False) == 0
    assert sentence_end("That sounds hard. M", final=False) == len("That sounds hard.")


CAPPED = {ARM_NAMES[0]: "That sounds hard. Maybe you", ARM_NAMES[1]: "I am here for you! Would it",
          ARM_NAMES[2]: "Exams are stressful. What part worries you most? I think"}


def test_capped_replies_of_every_arm_never_show_the_cut_sentence(tmp_path):
    protocol = make_protocol(tmp_path, min_turns=1, conversations=1)
    s = Study(protocol, Store(tmp_path / "s.sqlite"), FakePool(texts=CAPPED, finish="length"))
    view = s.start_conversation(s.consent().code, "Academic Stress")
    views = list(s.send(view.code, view.conversation_id, "ABC", "I have exams"))
    order = s.store.conversation(view.conversation_id).arm_order
    for pane, arm in zip("ABC", order):
        full = CAPPED[arm]
        kept = trim_to_sentence(full)
        seen = {v.panes["ABC".index(pane)].messages[-1]["content"] for v in views
                if v.panes["ABC".index(pane)].messages[-1]["role"] == "assistant"}
        assert all(kept.startswith(text) for text in seen), (arm, seen)  # never past the last sentence
        [row] = [r for r in s.store.messages(view.conversation_id, pane) if r.is_reply]
        assert row.text == kept and row.raw_text == full and row.cut_chars == len(full) - len(kept)
        assert row.finish_reason == "length"
    s.store.close()


def test_a_reply_that_ended_by_itself_is_kept_whole_and_records_no_cut(tmp_path):
    protocol = make_protocol(tmp_path, min_turns=1, conversations=1)
    s = Study(protocol, Store(tmp_path / "s.sqlite"), FakePool(texts={ARM_NAMES[0]: "Thank you for telling me"}))
    view = s.start_conversation(s.consent().code, "Academic Stress")
    list(s.send(view.code, view.conversation_id, "ABC", "hello"))
    replies = [r for r in s.store.messages(view.conversation_id) if r.is_reply and r.arm == ARM_NAMES[0]]
    assert [(r.text, r.cut_chars) for r in replies] == [("Thank you for telling me", None)]
    s.store.close()
