"""What a send streams from (extes.study.session): the model pool's Protocol, each pane's context for its model,
and a paced send's finished replies."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol as TypingProtocol

from extes.models.arms import Arm
from extes.models.types import Event, Reply
from extes.study.blinding import strip_tags
from extes.study.records import Message
from extes.study.screening import trim_to_sentence
from extes.study.store import Conversation
from extes.study.views import ChatMessage

__all__ = ["Done", "ReplyPool", "final_text", "pane_context"]


class ReplyPool(TypingProtocol):
    """What the study needs from a model pool (extes.models.ArmPool, tests' FakePool): stream several
    requests at once. `requests` maps a key (the pane) to (arm name, messages); the iterator yields
    (key, Event) with Event.delta, .done, .reply (a Reply, or None with .error when that request failed)."""

    def stream_many(self, requests: dict[str, tuple[str, list[ChatMessage]]],
                    cancel: threading.Event | None = None) -> Iterator[tuple[str, Event]]: ...


@dataclass
class Done:
    """A paced send's replies whose model finished but which are still being shown."""

    conv: Conversation
    reply_ids: dict[str, int]
    replies: dict[str, tuple[Reply | None, str]] = field(default_factory=dict)  # pane -> (reply, raw text)


def final_text(reply: Reply | None, streamed: str) -> str:
    """What a finished reply shows (as `extes.study.session.Study._finish` stores it); "" when it shows nothing."""
    if reply is None:
        return strip_tags(streamed)[0]
    text = strip_tags(reply.text)[0]
    if reply.finish_reason == "length":
        text = trim_to_sentence(text)
    return text if text.strip() else ""


def pane_context(conv: Conversation, pane: str, arm: Arm, rows: list[Message],
                 scenario_to_models: bool) -> list[ChatMessage]:
    """The model's view of one pane: its own history (consecutive same-role turns merged, e.g. after an
    interrupted reply), with the scenario in the system prompt only when the protocol says so."""
    out: list[ChatMessage] = []
    if scenario_to_models:
        about = f"The person would like to talk about: {conv.scenario}."
        if conv.description:
            about += f" In their words: {conv.description}"
        out.append({"role": "system", "content": ((arm.system_prompt or "") + "\n\n" + about).strip()})
    for r in rows:
        if r.pane != pane or (r.is_reply and not r.text):
            continue  # a reply that never got a word out is not part of the model's history
        if out and out[-1]["role"] == r.role and r.role != "system":
            out[-1]["content"] += "\n\n" + r.text
            continue
        m: ChatMessage = {"role": r.role, "content": r.text}
        if r.is_reply and arm.strategies and r.strategy:
            m["strategy"] = r.strategy
        out.append(m)
    return out
