"""Participants, conversations and their messages (written while they stream), flags and reports."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from extes.study.records import Conversation, Flag, Message, Participant, Report
from extes.study.store.base import (
    DuplicateError,
    LimitError,
    StoreBase,
    StoreError,
    new_code,
    normalize_code,
    stale_before,
)
from extes.study.store.schema import conversations, flags, messages, participants, reports
from extes.study.store.times import now


class ChatStore(StoreBase):
    def create_participant(self, role: str = "participant", protocol: str = "") -> Participant:
        """A new participant (or judge) with a fresh random code."""
        for _ in range(20):
            row = {"id": f"p-{uuid.uuid4().hex[:12]}", "code": new_code(), "role": role,
                   "consented_at": now(), "protocol": protocol}
            try:
                with self.engine.begin() as conn:
                    conn.execute(participants.insert().values(**row))
                return Participant.from_row(row)
            except sa.exc.IntegrityError:  # pragma: no cover - a code collision (about 1 in 10^17)
                continue
        raise StoreError("could not issue a unique participant code")  # pragma: no cover

    def participant_by_code(self, code: str) -> Participant | None:
        code = normalize_code(code)
        if not code:
            return None
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(participants).where(participants.c.code == code)).first()
        return Participant.from_row(r._mapping) if r else None

    def participant(self, participant_id: str) -> Participant | None:
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(participants).where(participants.c.id == participant_id)).first()
        return Participant.from_row(r._mapping) if r else None

    def order_counts(self, n_orders: int = 6, protocol: str | None = None,
                     conn: Connection | None = None) -> list[int]:
        """How many conversations used each arm-to-pane order so far (optionally within one protocol).
        Abandoned conversations (see migration 2) do not count."""
        q = (sa.select(conversations.c.order_index, sa.func.count())
             .where(conversations.c.status != "abandoned").group_by(conversations.c.order_index))
        if protocol is not None:
            q = q.where(conversations.c.protocol == protocol)
        counts = [0] * n_orders
        if conn is None:
            with self.engine.connect() as own:
                result = own.execute(q).all()
        else:
            result = conn.execute(q).all()
        for idx, n in result:
            if 0 <= idx < n_orders:
                counts[idx] = n
        return counts

    def create_conversation(self, participant_id: str, scenario: str, description: str,
                            choose_order: Callable[[list[int]], tuple[int, Sequence[str]]],
                            protocol: str = "", max_conversations: int | None = None,
                            n_orders: int = 6) -> Conversation:
        """Create the participant's next conversation. `choose_order(counts)` gets the usage counts of the
        design's `n_orders` selections (extes.study.design; 6 orders for 3 arms in 3 panes) and returns
        (order_index, arm names for panes A, B (, C)).

        One write transaction checks the limits, counts the orders and inserts, so neither the limits nor
        the balance of orders can be broken by simultaneous starts, in one process or several. LimitError
        (reason "in_progress") when the participant has a conversation in progress, ("complete") when they
        already have `max_conversations`; the unique index `uq_one_chatting` backs the first up."""
        try:
            with self._write("conversations") as conn:
                rows = conn.execute(sa.select(conversations.c.status)
                                    .where(conversations.c.participant_id == participant_id)).all()
                statuses = [r.status for r in rows]
                if "chatting" in statuses:
                    raise LimitError("a conversation is already in progress", "in_progress")
                if max_conversations is not None and sum(st == "rated" for st in statuses) >= max_conversations:
                    raise LimitError("all conversations are done", "complete")
                order_index, arm_order = choose_order(self.order_counts(n_orders, protocol=protocol, conn=conn))
                row = {
                    "id": f"c-{uuid.uuid4().hex[:12]}", "participant_id": participant_id, "seq": len(rows) + 1,
                    "order_index": int(order_index), "arm_order": json.dumps(list(arm_order)),
                    "scenario": scenario, "description": description, "status": "chatting",
                    "protocol": protocol, "created_at": now(),
                }
                conn.execute(conversations.insert().values(**row))
        except sa.exc.IntegrityError:
            raise LimitError("a conversation is already in progress", "in_progress") from None
        return Conversation.from_row(row)

    def conversation(self, conversation_id: str) -> Conversation | None:
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(conversations).where(conversations.c.id == conversation_id)).first()
        return Conversation.from_row(r._mapping) if r else None

    def conversations_of(self, participant_id: str) -> list[Conversation]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(conversations).where(conversations.c.participant_id == participant_id)
                                .order_by(conversations.c.seq)).all()
        return [Conversation.from_row(r._mapping) for r in rows]

    def all_conversations(self) -> list[Conversation]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(conversations).order_by(conversations.c.created_at)).all()
        return [Conversation.from_row(r._mapping) for r in rows]

    def add_message(self, conversation_id: str, pane: str, arm: str, role: str, text: str, *,
                    raw_text: str | None = None, strategy: str | None = None, latency_s: float | None = None,
                    ttft_s: float | None = None, n_tokens: int | None = None, finish_reason: str | None = None,
                    settings: dict | None = None, strategies: Sequence[str] | None = None,
                    dtype: str | None = None, engine_version: str | None = None, partial: bool = False) -> int:
        row = {
            "conversation_id": conversation_id, "pane": pane, "arm": arm, "role": role, "text": text,
            "raw_text": raw_text, "strategy": strategy, "created_at": now(), "latency_s": latency_s,
            "ttft_s": ttft_s, "n_tokens": n_tokens, "finish_reason": finish_reason,
            "settings": json.dumps(settings, sort_keys=True, default=str) if settings is not None else None,
            "strategies": json.dumps(list(strategies)) if strategies else None, "dtype": dtype,
            "engine_version": engine_version, "partial": bool(partial),
        }
        with self.engine.begin() as conn:
            return int(conn.execute(messages.insert().values(**row)).inserted_primary_key[0])

    def add_messages(self, rows: Iterable[dict[str, Any]]) -> list[int]:
        """Insert several messages in one transaction (the user's message to each pane); returns ids."""
        ids = []
        with self.engine.begin() as conn:
            for r in rows:
                r = {"created_at": now(), **r}
                if isinstance(r.get("settings"), dict):
                    r["settings"] = json.dumps(r["settings"], sort_keys=True, default=str)
                ids.append(int(conn.execute(messages.insert().values(**r)).inserted_primary_key[0]))
        return ids

    def open_turn(self, conversation_id: str, text: str, panes: Sequence[tuple[str, str]]) -> list[tuple[int, int]]:
        """A participant's message to each (pane, arm) and an empty reply row per pane marked streaming,
        in one transaction that first checks that the conversation is still open (LimitError "closed")
        and that none of these panes is streaming already (LimitError "streaming"). Returns (user message
        id, reply id) per pane. Rating checks the same rows, so no reply can be stored after a rating."""
        stamp = now()
        with self._write("conversations", "messages") as conn:
            status = conn.execute(sa.select(conversations.c.status).where(conversations.c.id == conversation_id)
                                  .with_for_update()).scalar()
            if status != "chatting":
                raise LimitError("this conversation is closed", "closed")
            if self._streaming(conn, conversation_id, [p for p, _ in panes]):
                raise LimitError("a reply is still streaming", "streaming")
            out = []
            for pane, arm in panes:
                base = {"conversation_id": conversation_id, "pane": pane, "arm": arm, "created_at": stamp}
                uid = conn.execute(messages.insert().values(**base, role="user", text=text, partial=False)
                                   ).inserted_primary_key[0]
                rid = conn.execute(messages.insert().values(**base, role="assistant", text="", partial=True,
                                                            finish_reason="streaming", updated_at=stamp)
                                   ).inserted_primary_key[0]
                out.append((int(uid), int(rid)))
        return out

    def is_streaming(self, conversation_id: str) -> bool:
        """Whether a reply of this conversation is being written by a live process right now."""
        with self.engine.connect() as conn:
            return self._streaming(conn, conversation_id)

    def update_replies(self, texts: dict[int, str]) -> None:
        """The streamed text so far (still partial) of the replies of one send, {message id: text}, in one
        transaction: written every few hundred milliseconds while they stream, so a crash loses at most
        that much of what was shown."""
        if not texts:
            return
        stamp = now()
        with self.engine.begin() as conn:
            for message_id, text in texts.items():
                conn.execute(messages.update().where(messages.c.id == int(message_id),
                                                     messages.c.finish_reason == "streaming")
                             .values(text=text, updated_at=stamp))

    def touch_replies(self, message_ids: Sequence[int]) -> None:
        """Heartbeat of replies still streaming in this process (see STREAM_STALE_S)."""
        if not message_ids:
            return
        with self.engine.begin() as conn:
            conn.execute(messages.update().where(messages.c.id.in_([int(i) for i in message_ids]),
                                                 messages.c.finish_reason == "streaming").values(updated_at=now()))

    def finish_reply(self, message_id: int, text: str, *, finish_reason: str, partial: bool = False,
                     raw_text: str | None = None, strategy: str | None = None,
                     strategies: Sequence[str] | None = None, latency_s: float | None = None,
                     ttft_s: float | None = None, n_tokens: int | None = None, settings: dict | None = None,
                     dtype: str | None = None, engine_version: str | None = None, cut_chars: int | None = None,
                     screened: str | None = None) -> None:
        """Complete a streamed reply row in place (partial=True for interrupted or failed replies)."""
        with self.engine.begin() as conn:
            conn.execute(messages.update().where(messages.c.id == int(message_id)).values(
                text=text, finish_reason=finish_reason, partial=bool(partial), updated_at=now(),
                raw_text=raw_text, strategy=strategy, strategies=json.dumps(list(strategies)) if strategies else None,
                latency_s=latency_s, ttft_s=ttft_s, n_tokens=n_tokens, dtype=dtype, engine_version=engine_version,
                cut_chars=cut_chars, screened=screened,
                settings=json.dumps(settings, sort_keys=True, default=str) if settings is not None else None))

    def delete_empty_reply(self, message_id: int) -> None:
        """Remove a reply row that never showed a word (a failed or abandoned reply before its first piece)."""
        with self.engine.begin() as conn:
            conn.execute(messages.delete().where(messages.c.id == int(message_id), messages.c.role == "assistant",
                                                 messages.c.text == ""))

    def messages(self, conversation_id: str, pane: str | None = None) -> list[Message]:
        """Messages in order. A reply still marked streaming whose writer stopped refreshing it
        (STREAM_STALE_S) is read as interrupted (`Message.from_row`): the process writing it died."""
        q = sa.select(messages).where(messages.c.conversation_id == conversation_id)
        if pane is not None:
            q = q.where(messages.c.pane == pane)
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(messages.c.id)).all()
        stale = stale_before()
        return [Message.from_row(r._mapping, stale) for r in rows]

    def message(self, message_id: int) -> Message | None:
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(messages).where(messages.c.id == int(message_id))).first()
        return Message.from_row(r._mapping, stale_before()) if r else None

    def last_activity(self, conversation_id: str) -> str | None:
        """When the conversation's last message was written or finished (the rating form opens after it)."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.max(sa.func.coalesce(messages.c.updated_at, messages.c.created_at)))
                                .where(messages.c.conversation_id == conversation_id)).scalar()

    def add_flag(self, conversation_id: str, participant_id: str, category: str, pattern: str | None = None,
                 message_id: int | None = None) -> int:
        with self.engine.begin() as conn:
            return int(conn.execute(flags.insert().values(
                conversation_id=conversation_id, participant_id=participant_id, category=category,
                pattern=pattern, message_id=message_id, created_at=now())).inserted_primary_key[0])

    def flags(self, conversation_id: str | None = None) -> list[Flag]:
        q = sa.select(flags).order_by(flags.c.id)
        if conversation_id is not None:
            q = q.where(flags.c.conversation_id == conversation_id)
        with self.engine.connect() as conn:
            return [Flag.from_row(r._mapping) for r in conn.execute(q)]

    def resolve_flag(self, flag_id: int, note: str = "") -> Flag:
        """Mark an open flag resolved, with the researcher's note (what was done). ValueError naming the
        flag when there is no such flag or it was resolved already (its first note is kept)."""
        with self.engine.begin() as conn:
            done = conn.execute(flags.update().where(flags.c.id == int(flag_id), flags.c.resolved_at.is_(None))
                                .values(resolved_at=now(), note=note)).rowcount
            row = conn.execute(sa.select(flags).where(flags.c.id == int(flag_id))).first()
        if row is None:
            raise ValueError(f"flag {flag_id}: no such flag")
        if not done:
            raise ValueError(f"flag {flag_id}: already resolved at {row.resolved_at}")
        return Flag.from_row(row._mapping)

    def add_report(self, conversation_id: str, message_id: int, participant_id: str, reason: str = "harmful") -> int:
        """Record a participant's report of a model reply (once per reply and participant)."""
        try:
            with self.engine.begin() as conn:
                return int(conn.execute(reports.insert().values(
                    conversation_id=conversation_id, message_id=int(message_id), participant_id=participant_id,
                    reason=reason, created_at=now())).inserted_primary_key[0])
        except sa.exc.IntegrityError:
            raise DuplicateError("this reply was already reported") from None

    def reports(self, conversation_id: str | None = None) -> list[Report]:
        q = sa.select(reports).order_by(reports.c.id)
        if conversation_id is not None:
            q = q.where(reports.c.conversation_id == conversation_id)
        with self.engine.connect() as conn:
            return [Report.from_row(r._mapping) for r in conn.execute(q)]
