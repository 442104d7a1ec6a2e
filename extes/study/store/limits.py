"""Attempts counted for rate limits, shared by every app process."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from extes.study.store.base import StoreBase
from extes.study.store.schema import rate_events
from extes.study.store.times import ago, now


class LimitsStore(StoreBase):
    def count_and_record(self, buckets: Sequence[tuple[str, int, float]], record: bool = True) -> str | None:
        """For rate limits shared by all app processes: each (bucket, limit, window_s) is checked against
        the events recorded within its window; the first bucket at its limit is returned (nothing is
        recorded then), else None, after recording one event in every bucket when `record`. One write
        transaction, so simultaneous attempts cannot all slip under a limit. Events older than a day are
        deleted on the way."""
        stamp = now()
        with self._write("rate_events") as conn:
            for bucket, limit, window_s in buckets:
                n = conn.execute(sa.select(sa.func.count()).select_from(rate_events).where(
                    rate_events.c.bucket == bucket, rate_events.c.at > ago(window_s))).scalar() or 0
                if n >= limit:
                    return bucket
            if record:
                conn.execute(rate_events.insert(), [{"bucket": b, "at": stamp} for b, _l, _w in buckets])
            if secrets.randbelow(100) == 0:
                conn.execute(rate_events.delete().where(rate_events.c.at < ago(86400)))
        return None

    def retry_after(self, bucket: str, limit: int, window_s: float) -> float:
        """Seconds until `bucket` holds fewer than `limit` events within its window (0 when it already does):
        how long a client at its limit must wait."""
        with self.engine.connect() as conn:
            stamps = conn.execute(sa.select(rate_events.c.at).where(
                rate_events.c.bucket == bucket, rate_events.c.at > ago(window_s))
                .order_by(rate_events.c.at.desc()).limit(max(1, limit))).scalars().all()
        if len(stamps) < limit:
            return 0.0
        expires = datetime.fromisoformat(stamps[-1]) + timedelta(seconds=window_s)
        return max(0.0, (expires - datetime.now(UTC)).total_seconds())
