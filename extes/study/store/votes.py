"""Participants' rating forms (votes, attention checks) and LLM judges' votes."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from extes.study.records import ConversationFlag, LlmVote, PaneVote, RatingChecks, RatingRecord, Vote
from extes.study.store.base import DuplicateError, LimitError, StoreBase
from extes.study.store.schema import (
    conversation_flags,
    conversations,
    llm_votes,
    rating_checks,
    rating_drafts,
    votes,
)
from extes.study.store.times import now

OUTCOMES = ("a", "b", "tie")


class VotesStore(StoreBase):
    def submit_votes(self, conversation_id: str, rater_id: str, rows: Sequence[PaneVote],
                     comment: str | None = None, checks: RatingChecks | None = None) -> int:
        """Store a participant's complete rating form and mark the conversation rated, atomically.
        Each row: aspect, pane_a, pane_b, arm_a, arm_b, outcome (a|b|tie). Raises DuplicateError when the
        conversation was already rated (nothing is written then)."""
        for r in rows:
            if r.outcome not in OUTCOMES:
                raise ValueError(f"vote outcome must be one of {OUTCOMES}, got {r.outcome!r}")
        stamp = now()
        try:
            with self._write("conversations", "messages") as conn:
                if self._streaming(conn, conversation_id):
                    raise LimitError("a reply is still streaming", "streaming")
                updated = conn.execute(
                    conversations.update()
                    .where(conversations.c.id == conversation_id, conversations.c.status == "chatting")
                    .values(status="rated", rated_at=stamp, comment=comment or None)
                ).rowcount
                if updated != 1:
                    raise DuplicateError("this conversation was already rated")
                conn.execute(votes.insert(), [
                    {"conversation_id": conversation_id, "rater_id": rater_id, "created_at": stamp,
                     **dataclasses.asdict(r)}
                    for r in rows
                ])
                if checks is not None:  # v3: attention answer, time on the form and flags, in the same transaction
                    self._write_checks(conn, conversation_id, checks, stamp)
                # the form's draft (participant text) goes with the submission (v5)
                conn.execute(rating_drafts.delete().where(rating_drafts.c.conversation_id == conversation_id))
        except sa.exc.IntegrityError:
            raise DuplicateError("this conversation was already rated") from None
        return len(rows)

    def votes(self, conversation_id: str | None = None) -> list[Vote]:
        q = sa.select(votes).order_by(votes.c.id)
        if conversation_id is not None:
            q = q.where(votes.c.conversation_id == conversation_id)
        with self.engine.connect() as conn:
            return [Vote.from_row(r._mapping) for r in conn.execute(q)]

    @staticmethod
    def _write_checks(conn: Connection, conversation_id: str, checks: RatingChecks, stamp: str) -> None:
        conn.execute(rating_checks.insert().values(
            conversation_id=conversation_id, instructed_answer=checks.instructed_answer,
            rating_seconds=checks.rating_seconds, created_at=stamp))
        if checks.flags:
            conn.execute(conversation_flags.insert(), [
                {"conversation_id": conversation_id, "flag": f, "detail": d, "created_at": stamp}
                for f, d in checks.flags])

    def rating_checks(self, conversation_id: str) -> RatingRecord | None:
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(rating_checks).where(rating_checks.c.conversation_id == conversation_id)).first()
        return RatingRecord.from_row(r._mapping) if r else None

    def conversation_flags(self, conversation_id: str | None = None) -> list[ConversationFlag]:
        q = sa.select(conversation_flags).order_by(conversation_flags.c.id)
        if conversation_id is not None:
            q = q.where(conversation_flags.c.conversation_id == conversation_id)
        with self.engine.connect() as conn:
            return [ConversationFlag.from_row(r._mapping) for r in conn.execute(q)]

    def replace_llm_votes(self, judge_model: str, prompt_version: str, rows: Sequence[dict[str, Any]]) -> int:
        """Store an LLM judge's votes (Votes CSV rows with conversation_id), replacing that judge's and
        prompt version's earlier set in the same transaction."""
        for r in rows:
            if r["outcome"] not in OUTCOMES:
                raise ValueError(f"vote outcome must be one of {OUTCOMES}, got {r['outcome']!r}")
        stamp = now()
        with self._write("llm_votes") as conn:
            conn.execute(llm_votes.delete().where(llm_votes.c.judge_model == judge_model,
                                                  llm_votes.c.prompt_version == prompt_version))
            if rows:
                conn.execute(llm_votes.insert(), [
                    {"conversation_id": r["conversation_id"], "judge_model": judge_model,
                     "prompt_version": prompt_version, "created_at": stamp,
                     **{k: r[k] for k in ("aspect", "arm_a", "arm_b", "outcome")}} for r in rows])
        return len(rows)

    def llm_votes(self, judge_model: str | None = None) -> list[LlmVote]:
        q = sa.select(llm_votes).order_by(llm_votes.c.id)
        if judge_model is not None:
            q = q.where(llm_votes.c.judge_model == judge_model)
        with self.engine.connect() as conn:
            return [LlmVote.from_row(r._mapping) for r in conn.execute(q)]
