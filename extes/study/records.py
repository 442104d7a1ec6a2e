"""The study's records: what the store returns and its callers pass around. Frozen dataclasses, one per
kind of row, with enums where a column holds a closed set; the store never returns a dict.

Each record is built from its database row by `from_row`, the one place where a column's stored form
(JSON text, a nullable flag, a legacy value) becomes its Python form. In particular, a reply row still
marked "streaming" whose writer stopped refreshing it is read as interrupted in `Message.from_row` and
nowhere else.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, Self

PANE_NAMES: tuple[str, ...] = ("A", "B", "C")


def _pick(cls: type, row: Mapping[str, Any]) -> dict[str, object]:
    """The row's values for the record's fields (columns the record does not name are left out)."""
    return {f.name: row[f.name] for f in fields(cls) if f.name in row}


class _Record:
    """A record whose fields are its row's columns as stored (records with stored forms to convert
    override `from_row`)."""

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        return cls(**_pick(cls, row))


def _json(text: Any, empty: Any = None) -> Any:
    return json.loads(text) if isinstance(text, str) and text else empty


class Role(StrEnum):
    PARTICIPANT = "participant"
    JUDGE = "judge"


class ConversationStatus(StrEnum):
    CHATTING = "chatting"
    RATED = "rated"
    ABANDONED = "abandoned"  # left "chatting" beside a newer one before migration 2 prevented it


class MessageStatus(StrEnum):
    """Where a message stands: a reply is STREAMING while a live process writes it, COMPLETE when its model
    finished (any finish reason but the three below), INTERRUPTED when it was cut off (a closed page, or a
    process that died mid-reply), ERROR when its model failed. Participants' messages are COMPLETE."""

    STREAMING = "streaming"
    COMPLETE = "complete"
    INTERRUPTED = "interrupted"
    ERROR = "error"


@dataclass(frozen=True)
class Participant:
    """A participant or an invited judge: `code` is their credential (it resumes a session)."""

    id: str
    code: str
    role: Role
    consented_at: str
    protocol: str = ""
    revoked_at: str | None = None  # a revoked judge invitation

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        data = _pick(cls, row)
        data["role"] = Role(row["role"])
        data["protocol"] = row.get("protocol") or ""
        return cls(**data)


@dataclass(frozen=True)
class Conversation:
    """One stored conversation: which arm sits in which pane (`arm(pane)`), its scenario and state."""

    id: str
    participant_id: str
    seq: int  # 1, 2, ... within the participant
    order_index: int  # which arm-to-pane order of the design
    arm_order: tuple[str, ...]  # arm names in panes A, B (, C)
    scenario: str
    description: str = ""
    status: ConversationStatus = ConversationStatus.CHATTING
    comment: str | None = None
    protocol: str = ""
    created_at: str = ""
    rated_at: str | None = None

    def arm(self, pane: str) -> str:
        """The arm behind pane "A", "B" or "C"."""
        return self.arm_order[PANE_NAMES.index(pane)]

    @property
    def panes(self) -> tuple[str, ...]:
        """The panes it shows: ("A", "B") for a two-pane design, ("A", "B", "C") for three."""
        return PANE_NAMES[:len(self.arm_order)]

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        data = _pick(cls, row)
        order = row["arm_order"]
        data["arm_order"] = tuple(json.loads(order) if isinstance(order, str) else order)
        data["description"] = row.get("description") or ""
        data["protocol"] = row.get("protocol") or ""
        data["status"] = ConversationStatus(row.get("status") or "chatting")
        return cls(**data)


@dataclass(frozen=True)
class Message:
    """A participant's message to one pane, or a model's reply in it. `text` is what the participant was
    shown (strategy tags stripped); `raw_text` is the model's output as written."""

    id: int
    conversation_id: str
    pane: str
    arm: str
    role: str  # user | assistant
    text: str
    status: MessageStatus
    finish_reason: str | None = None  # the engine's (stop, length, ...), or streaming/interrupted/error
    partial: bool = False
    raw_text: str | None = None
    strategy: str | None = None  # the predicted strategy (strategy arms)
    strategies: tuple[str, ...] = ()  # every strategy tag found in the raw text
    created_at: str = ""
    updated_at: str | None = None
    latency_s: float | None = None
    ttft_s: float | None = None
    n_tokens: int | None = None
    settings: Mapping[str, Any] | None = None  # the generation settings, as the engine reported them
    dtype: str | None = None
    engine_version: str | None = None
    cut_chars: int | None = None  # characters cut from a capped reply to end it at a sentence
    screened: str | None = None  # the screen replaced this reply (category); raw_text has the model's words

    @property
    def is_reply(self) -> bool:
        return self.role == "assistant"

    @property
    def counts(self) -> bool:
        """A complete reply: only these count towards a pane's minimum of turns."""
        return self.is_reply and self.status is MessageStatus.COMPLETE and not self.partial

    @property
    def cut_off(self) -> bool:
        """A reply that did not finish (interrupted, or its model failed)."""
        return self.is_reply and self.status in (MessageStatus.INTERRUPTED, MessageStatus.ERROR)

    @classmethod
    def from_row(cls, row: Mapping[str, Any], stale_before: str) -> Self:
        """`stale_before`: a reply still marked streaming whose last refresh is older than this belongs to
        a process that died (kill -9), and is read as interrupted (its row is left as it is)."""
        data = _pick(cls, row)
        reason = row.get("finish_reason")
        if reason == "streaming" and (row.get("updated_at") or "") <= stale_before:
            reason = "interrupted"
        data["finish_reason"] = reason
        data["status"] = (MessageStatus(reason) if reason in ("streaming", "interrupted", "error")
                          else MessageStatus.COMPLETE)
        data["partial"] = bool(row.get("partial"))
        data["settings"] = _json(row.get("settings"))
        data["strategies"] = tuple(_json(row.get("strategies"), []))
        return cls(**data)


@dataclass(frozen=True)
class Flag(_Record):
    """A risk the safety check found in a participant's message (or a reported reply), for researchers."""

    id: int
    conversation_id: str
    participant_id: str
    category: str  # a risk category of the protocol, or "report"
    pattern: str | None = None
    message_id: int | None = None
    created_at: str = ""
    resolved_at: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class Report(_Record):
    """A participant's report of a model reply."""

    id: int
    conversation_id: str
    message_id: int
    participant_id: str
    reason: str
    created_at: str = ""


@dataclass(frozen=True)
class Vote(_Record):
    """One answer of a participant's rating form: `outcome` a, b or tie for the pair (pane_a, pane_b)."""

    id: int
    conversation_id: str
    rater_id: str
    aspect: str
    pane_a: str
    pane_b: str
    arm_a: str
    arm_b: str
    outcome: str
    created_at: str = ""


@dataclass(frozen=True)
class PaneVote:
    """One answer of a rating form as it is written: the panes as shown, the arms behind them, a, b or tie."""

    aspect: str
    pane_a: str
    pane_b: str
    arm_a: str
    arm_b: str
    outcome: str


@dataclass(frozen=True)
class RatingChecks:
    """What the rating form's attention checks found (v3): stored with the votes, atomically."""

    instructed_answer: str | None = None
    rating_seconds: float | None = None
    flags: tuple[tuple[str, str], ...] = ()  # (flag, detail): counts and times, never participant text


@dataclass(frozen=True)
class RatingDraft:
    """A rating form as last filled in, not yet submitted: `answers` holds (question key, answer) pairs
    (`extes.study.rating.answer_key`), `comment` the participant's text."""

    conversation_id: str
    participant_id: str
    answers: tuple[tuple[str, str], ...] = ()
    comment: str = ""
    updated_at: str = ""

    def answer(self, key: str) -> str | None:
        return dict(self.answers).get(key)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        data = _pick(cls, row)
        stored = _json(row["answers"], {})
        data["answers"] = tuple((str(k), str(v)) for k, v in stored.items()) if isinstance(stored, dict) else ()
        return cls(**data)

@dataclass(frozen=True)
class RatingRecord(_Record):
    """The stored attention answer and time of one rating form."""

    conversation_id: str
    instructed_answer: str | None
    rating_seconds: float | None
    created_at: str = ""


@dataclass(frozen=True)
class ConversationFlag(_Record):
    """An attention flag of a conversation (extes.analysis.exclusions.FLAGS); `detail` holds counts and
    times, never participant text."""

    id: int
    conversation_id: str
    flag: str
    detail: str = ""
    created_at: str = ""


@dataclass(frozen=True)
class AnnotationItem:
    """Something judges can be assigned: a participant's conversation, or a dataset dialogue (`payload`,
    its JSON)."""

    id: str
    kind: str  # conversation | dialogue
    source: str = ""
    payload: Any = None
    created_at: str = ""

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        data = _pick(cls, row)
        data["payload"] = _json(row.get("payload"))
        data["source"] = row.get("source") or ""
        return cls(**data)


@dataclass(frozen=True)
class Assignment:
    """An item assigned to a judge; `pane_order` is the conversation's panes in the order shown to them."""

    id: int
    item_id: str
    judge_id: str
    status: str  # open | done | expired
    pane_order: tuple[str, ...] | None = None
    created_at: str = ""
    completed_at: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        data = _pick(cls, row)
        order = row.get("pane_order")
        order = json.loads(order) if isinstance(order, str) and order else order
        data["pane_order"] = tuple(order) if order else None
        return cls(**data)


@dataclass(frozen=True)
class Judgment(_Record):
    """A judge's pairwise answer on an assigned conversation."""

    id: int
    assignment_id: int
    judge_id: str
    conversation_id: str
    aspect: str
    arm_a: str
    arm_b: str
    outcome: str
    created_at: str = ""


@dataclass(frozen=True)
class JudgeInvitation(_Record):
    """A judge code as the dashboard lists it, with the number of items the judge submitted."""

    id: str
    code: str
    consented_at: str
    revoked_at: str | None
    done: int


@dataclass(frozen=True)
class PlatformSession(_Record):
    """A participant who arrived from a recruitment platform (or declined: no participant). The platform
    id is kept only as its keyed hash, and raw only when the protocol says so."""

    id: int
    participant_id: str | None
    platform: str
    platform_hash: str
    started_at: str
    last_stage: str
    last_seen_at: str
    raw_id: str | None = None
    study_id: str | None = None
    session_id: str | None = None
    completed_at: str | None = None
    screened_out_at: str | None = None


@dataclass(frozen=True)
class LlmVote(_Record):
    """An LLM judge's pairwise vote on a conversation (`extes judge --db`)."""

    id: int
    conversation_id: str
    judge_model: str
    prompt_version: str
    aspect: str
    arm_a: str
    arm_b: str
    outcome: str
    created_at: str = ""
