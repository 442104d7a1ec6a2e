"""Drafts of rating forms: the answers and the comment as the participant fills them in, so a reload or a
later return restores them. Participant text: kept only here, never logged; deleted with the submission
(`VotesStore.submit_votes`)."""

from __future__ import annotations

import json
from collections.abc import Mapping

import sqlalchemy as sa

from extes.study.records import RatingDraft
from extes.study.store.base import StoreBase
from extes.study.store.schema import rating_drafts
from extes.study.store.times import now


class DraftsStore(StoreBase):
    def save_draft(self, conversation_id: str, participant_id: str, answers: Mapping[str, str],
                   comment: str) -> None:
        """Replace the conversation's draft (one row per conversation; the last save wins)."""
        values = dict(participant_id=participant_id, answers=json.dumps(dict(answers), sort_keys=True),
                      comment=comment, updated_at=now())
        where = rating_drafts.c.conversation_id == conversation_id
        with self.engine.begin() as conn:
            if conn.execute(rating_drafts.update().where(where).values(**values)).rowcount == 0:
                try:
                    with conn.begin_nested():
                        conn.execute(rating_drafts.insert().values(conversation_id=conversation_id, **values))
                except sa.exc.IntegrityError:  # a simultaneous first save (another tab)
                    conn.execute(rating_drafts.update().where(where).values(**values))

    def draft(self, conversation_id: str) -> RatingDraft | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(rating_drafts).where(rating_drafts.c.conversation_id == conversation_id)).first()
        return RatingDraft.from_row(row._mapping) if row else None

    def delete_draft(self, conversation_id: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(rating_drafts.delete().where(rating_drafts.c.conversation_id == conversation_id))
