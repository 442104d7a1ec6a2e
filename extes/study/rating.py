"""The rating form: its questions (each aspect for each pair of panes on screen), the votes a filled form
stands for, and the attention checks it raises. Plain functions over the protocol and the store; the
session (`Study.submit_rating`) checks ownership and turns, then stores the votes and the checks in one
transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import NamedTuple

from extes.analysis import exclusions as ex
from extes.study.design import pane_pairs
from extes.study.protocol import INSTRUCTED_ANSWER, Protocol
from extes.study.records import Conversation, PaneVote, RatingChecks
from extes.study.store import Store
from extes.study.views import StudyRefusal, pane_label

PAIRS: tuple[tuple[str, str], ...] = (("A", "B"), ("A", "C"), ("B", "C"))  # the pairs of three panes
ANSWERS = {"left": "a", "right": "b", "tie": "tie", "a": "a", "b": "b"}
INSTRUCTED_KEY = "attention:instructed"  # the attention row of the rating form (never a vote)


class Question(NamedTuple):
    """One question of the form: `key` is how its answer is sent back ('fluency:AB')."""

    key: str
    label: str  # the aspect's label
    question: str  # the aspect's question
    pair: tuple[str, str]  # the panes compared, as shown (left, right)


def answer_key(aspect_key: str, pair: tuple[str, str]) -> str:
    """Key of one rating-form question: 'fluency:AB'."""
    return f"{aspect_key}:{pair[0]}{pair[1]}"


def pairs(protocol: Protocol) -> tuple[tuple[str, str], ...]:
    """The pairs of panes on screen: (A, B) with two panes; (A, B), (A, C), (B, C) with three."""
    return pane_pairs(protocol.pane_names)


def questions(protocol: Protocol) -> list[Question]:
    """Every question of the rating form, in order: each aspect for each pair of panes on screen."""
    return [Question(answer_key(a.key, pair), a.label, a.question, pair)
            for a in protocol.aspects for pair in pairs(protocol)]


def _answer(raw: object) -> str | None:
    return ANSWERS.get(raw.strip().lower()) if isinstance(raw, str) else None


def missing_answers(protocol: Protocol, answers: Mapping[str, object]) -> list[str]:
    """Keys of the questions left unanswered, in the form's order (INSTRUCTED_KEY for the attention row)."""
    missing = [q.key for q in questions(protocol) if _answer(answers.get(q.key)) is None]
    if protocol.attention.instructed_response and not isinstance(answers.get(INSTRUCTED_KEY), str):
        missing.append(INSTRUCTED_KEY)
    return missing


def draft_answers(protocol: Protocol, answers: Mapping[str, object]) -> dict[str, str]:
    """The answers of a form being filled in that are worth keeping: known questions, valid answers
    (as the page sends them), so a draft holds nothing else whatever a request carries."""
    keys = [q.key for q in questions(protocol)] + ([INSTRUCTED_KEY] if protocol.attention.instructed_response else [])
    return {k: v.strip().lower() for k in keys
            if isinstance(v := answers.get(k), str) and v.strip().lower() in ("left", "right", "tie")}


class MissingAnswers(StudyRefusal):
    """A rating form with questions left unanswered: `keys` names them (`missing_answers`)."""

    def __init__(self, message: str, keys: list[str]):
        super().__init__(message)
        self.keys = keys


def votes_from_answers(protocol: Protocol, conv: Conversation, answers: Mapping[str, str | None]) -> list[PaneVote]:
    """The votes a complete form stands for; MissingAnswers naming every question left unanswered (and the
    attention row, when the protocol has one)."""
    keys = missing_answers(protocol, answers)
    if keys:
        named = {q.key: f"{q.label} ({pane_label(q.pair[0])} vs {pane_label(q.pair[1])})" for q in questions(protocol)}
        raise MissingAnswers("Please answer every question before submitting. Missing: "
                             + "; ".join(named.get(k, "the attention row") for k in keys), keys)
    return [PaneVote(q.key.split(":")[0], *q.pair, conv.arm(q.pair[0]), conv.arm(q.pair[1]), _answer(answers[q.key]))
            for q in questions(protocol)]


def rating_seconds(store: Store, conversation_id: str) -> float | None:
    """Seconds from the conversation's last message (when the rating form was last in view without a
    reply pending) to now, measured on the server (a page cannot forge it)."""
    last = store.last_activity(conversation_id)
    if not last:
        return None
    try:
        return round(max(0.0, (datetime.now(UTC) - datetime.fromisoformat(last)).total_seconds()), 3)
    except ValueError:  # pragma: no cover - a timestamp not written by this store
        return None


def attention_checks(protocol: Protocol, store: Store, conv: Conversation, answers: Mapping[str, object],
                     votes: Sequence[PaneVote]) -> RatingChecks | None:
    """The flags this protocol's attention checks raise for a rating form (None when none is on). The
    details hold counts and times only, never what the participant wrote."""
    att = protocol.attention
    if not att.enabled():
        return None
    found: list[tuple[str, str]] = []
    instructed = None
    if att.instructed_response:
        raw = answers.get(INSTRUCTED_KEY)
        instructed = ANSWERS.get(raw.strip().lower(), "other") if isinstance(raw, str) else None
        if ex.failed_attention(instructed, INSTRUCTED_ANSWER):
            found.append(("failed_attention", f"answered {instructed!r}, asked for {INSTRUCTED_ANSWER!r}"))
    user = [m for m in store.messages(conv.id) if m.role == "user"]
    texts = [m.text for m in user]
    if att.min_message_chars and ex.short_messages(texts, att.min_message_chars):
        n = sum(len(t.strip()) < att.min_message_chars for t in texts)
        found.append(("short_messages", f"{n} of {len(texts)} message(s) under {att.min_message_chars} characters"))
    turns = max((sum(m.pane == pane for m in user) for pane in conv.panes), default=0)
    if att.flag_repeated_messages and turns >= 2 and ex.repeated_message(texts):
        found.append(("repeated_message", f"the same message in all {len(texts)} sent"))
    seconds = rating_seconds(store, conv.id)
    if att.min_rating_seconds and ex.fast_rating(seconds, att.min_rating_seconds):
        found.append(("fast_rating", f"{seconds:.1f} s on the rating form, minimum {att.min_rating_seconds} s"))
    outcomes = [v.outcome for v in votes]
    if att.flag_straight_lining and ex.straight_lined(outcomes):
        found.append(("straight_lined", f"all {len(outcomes)} answers {outcomes[0]!r}"))
    return RatingChecks(instructed_answer=instructed, rating_seconds=seconds, flags=tuple(found))
