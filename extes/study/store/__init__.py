"""The study's durable store: participants, conversations, messages, votes, reports, flags and annotation.

SQLAlchemy 2 Core over SQLite in WAL mode by default (`results/study.sqlite`), or any SQLAlchemy URL
(PostgreSQL for a study spread over several servers). Every write is its own committed transaction, made
as it happens, so killing the process loses nothing already shown to a participant.

The schema is versioned: the `schema_version` table records each migration applied, and `MIGRATIONS` is
the ordered list of migration functions. To change the schema, append a migration (never edit an applied
one) and update the table definitions below to match what the migrations produce.

Participant codes are credentials (they resume a session), so they never leave this module in exports:
the CSVs use the participant id (`p-...`) as `rater_id`.
"""

from __future__ import annotations

from extes.study.records import Conversation, RatingChecks
from extes.study.store.base import (
    CODE_ALPHABET,
    DEFAULT_DB,
    HEARTBEAT_S,
    STREAM_STALE_S,
    DuplicateError,
    LimitError,
    StoreError,
    new_code,
    normalize_code,
)
from extes.study.store.chat import ChatStore
from extes.study.store.drafts import DraftsStore
from extes.study.store.frames import VOTE_SOURCES, FramesStore
from extes.study.store.judging import JudgingStore
from extes.study.store.limits import LimitsStore
from extes.study.store.platform import PlatformStore
from extes.study.store.schema import MIGRATIONS, SCHEMA_VERSION
from extes.study.store.times import ago, now
from extes.study.store.votes import OUTCOMES, VotesStore

__all__ = [
    "CODE_ALPHABET", "DEFAULT_DB", "HEARTBEAT_S", "MIGRATIONS", "OUTCOMES", "SCHEMA_VERSION", "STREAM_STALE_S",
    "VOTE_SOURCES", "Conversation", "DuplicateError", "LimitError", "RatingChecks", "Store", "StoreError", "ago",
    "new_code", "normalize_code", "now",
]


class Store(ChatStore, VotesStore, JudgingStore, PlatformStore, LimitsStore, FramesStore, DraftsStore):
    """One study database, every domain's reads and writes (each domain is a module of this package)."""
