"""Sessions of participants who arrived from a recruitment platform."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from extes.study.store.base import DuplicateError, StoreBase, StoreError, new_code, row_dict
from extes.study.store.schema import participants, platform_sessions
from extes.study.store.times import now


class PlatformStore(StoreBase):
    def create_platform_participant(self, protocol: str, platform: str, platform_hash: str, raw_id: str | None,
                                    study_id: str | None, session_id: str | None,
                                    also_known_as: Sequence[str] = ()) -> dict[str, Any]:
        """A participant who consented after arriving from a recruitment platform, and their platform session,
        in one transaction. DuplicateError when this platform id already started (under `platform_hash` or
        any hash in `also_known_as`: the id's hashes in older databases): the unique hash means the same id
        can never start twice, whatever the number of app processes. An id recorded only as screened out
        (someone declined with it) may still start: a decline must not lock out the id's owner, so the
        screened-out session becomes this participant's."""
        stamp = now()
        hashes = list(dict.fromkeys([platform_hash, *also_known_as]))
        for _ in range(20):
            row = {"id": f"p-{uuid.uuid4().hex[:12]}", "code": new_code(), "role": "participant",
                   "consented_at": stamp, "protocol": protocol}
            try:
                with self._write("platform_sessions") as conn:
                    known = conn.execute(sa.select(platform_sessions.c.id, platform_sessions.c.participant_id)
                                         .where(platform_sessions.c.platform_hash.in_(hashes))).all()
                    if any(k.participant_id is not None for k in known):
                        raise DuplicateError("this platform id already started this study")
                    conn.execute(participants.insert().values(**row))
                    values = dict(participant_id=row["id"], platform=platform, platform_hash=platform_hash,
                                  raw_id=raw_id, study_id=study_id, session_id=session_id, started_at=stamp,
                                  screened_out_at=None, last_stage="setup", last_seen_at=stamp)
                    if known:  # declined earlier (by the owner, or by someone else with their id)
                        conn.execute(platform_sessions.update().where(platform_sessions.c.id == known[0].id)
                                     .values(**values))
                    else:
                        conn.execute(platform_sessions.insert().values(**values))
                return row
            except sa.exc.IntegrityError:
                if self.platform_session(*hashes) is not None:  # a simultaneous start won
                    raise DuplicateError("this platform id already started this study") from None
                continue  # pragma: no cover - a participant code collision
        raise StoreError("could not issue a unique participant code")  # pragma: no cover

    def record_screened_out(self, platform: str, platform_hash: str, raw_id: str | None, study_id: str | None,
                            session_id: str | None, stage: str = "consent",
                            also_known_as: Sequence[str] = ()) -> bool:
        """One who arrived from a platform and did not consent (no participant is created). False when this
        platform id is already known (nothing changes: a decline never screens out an id that agreed)."""
        stamp = now()
        try:
            with self._write("platform_sessions") as conn:
                if conn.execute(sa.select(platform_sessions.c.id).where(
                        platform_sessions.c.platform_hash.in_([platform_hash, *also_known_as]))).first():
                    return False
                conn.execute(platform_sessions.insert().values(
                    participant_id=None, platform=platform, platform_hash=platform_hash, raw_id=raw_id,
                    study_id=study_id, session_id=session_id, started_at=stamp, screened_out_at=stamp,
                    last_stage=stage, last_seen_at=stamp))
            return True
        except sa.exc.IntegrityError:
            return False

    def platform_session(self, *platform_hashes: str) -> dict[str, Any] | None:
        """The platform session stored under the first of these hashes that has one."""
        with self.engine.connect() as conn:
            rows = {r.platform_hash: row_dict(r) for r in conn.execute(
                sa.select(platform_sessions).where(platform_sessions.c.platform_hash.in_(list(platform_hashes))))}
        return next((rows[h] for h in platform_hashes if h in rows), None)

    def platform_session_of(self, participant_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(platform_sessions)
                             .where(platform_sessions.c.participant_id == participant_id)).first()
        return row_dict(r) if r else None

    def platform_seen(self, participant_id: str, stage: str) -> None:
        """The stage a platform participant was last seen at; the first "done" sets completed_at."""
        stamp = now()
        with self.engine.begin() as conn:
            conn.execute(platform_sessions.update().where(platform_sessions.c.participant_id == participant_id)
                         .values(last_stage=stage, last_seen_at=stamp))
            if stage == "done":
                conn.execute(platform_sessions.update()
                             .where(platform_sessions.c.participant_id == participant_id,
                                    platform_sessions.c.completed_at.is_(None))
                             .values(completed_at=stamp))

    def platform_sessions(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [row_dict(r) for r in conn.execute(sa.select(platform_sessions).order_by(platform_sessions.c.id))]
