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

import json
import secrets
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

DEFAULT_DB = Path("results") / "study.sqlite"
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I/L: easy to read back and type
CODE_GROUPS, CODE_GROUP_LEN = 3, 4
OUTCOMES = ("a", "b", "tie")
VOTE_SOURCES = ("participant", "judge", "all", "llm")  # votes_frame sources; "all" is people only


class StoreError(RuntimeError):
    """The database cannot be used (e.g. written by a newer version of extes)."""


class DuplicateError(ValueError):
    """A write that would repeat one already stored (a second vote for the same conversation, ...)."""


class LimitError(ValueError):
    """A write the study's limits refuse, decided inside the database transaction (so it holds for several
    app processes on one database). `reason` says which limit: in_progress, complete, streaming, closed,
    quota, revoked."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


# A reply row still marked "streaming" whose updated_at has not been refreshed for this long belongs to a
# process that died (kill -9, power loss): it is shown as interrupted and no longer blocks sending or
# rating. The writing process refreshes it every HEARTBEAT_S (extes.study.session), text or not.
STREAM_STALE_S = 10.0
HEARTBEAT_S = 2.0


PANE_NAMES: tuple[str, ...] = ("A", "B", "C")


@dataclass(frozen=True)
class Conversation:
    """One stored conversation: which arm sits in which pane (`arm(pane)`), its scenario and state."""

    id: str
    participant_id: str
    seq: int  # 1, 2, ... within the participant
    order_index: int  # which of the six arm-to-pane orders
    arm_order: tuple[str, ...]  # arm names in panes A, B, C
    scenario: str
    description: str = ""
    status: str = "chatting"  # chatting | rated | abandoned
    comment: str | None = None
    protocol: str = ""
    created_at: str = ""
    rated_at: str | None = None

    def arm(self, pane: str) -> str:
        """The arm behind pane "A", "B" or "C"."""
        return self.arm_order[PANE_NAMES.index(pane)]

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Conversation:
        data = {f: row.get(f) for f in cls.__dataclass_fields__ if f in row}
        order = row["arm_order"]
        data["arm_order"] = tuple(json.loads(order) if isinstance(order, str) else order)
        data["description"] = data.get("description") or ""
        return cls(**data)


@dataclass(frozen=True)
class RatingChecks:
    """What the rating form's attention checks found (v3): stored with the votes, atomically."""

    instructed_answer: str | None = None
    rating_seconds: float | None = None
    flags: tuple[tuple[str, str], ...] = ()  # (flag, detail): counts and times, never participant text


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def ago(seconds: float) -> str:
    """The timestamp `seconds` ago, comparable as text with `now()`."""
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def new_code(groups_n: int = CODE_GROUPS) -> str:
    groups = ("".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_GROUP_LEN)) for _ in range(groups_n))
    return "-".join(groups)


def normalize_code(code: str) -> str:
    """Upper-case, drop spaces and dashes, re-insert dashes: 'abcd efgh-jkmn' -> 'ABCD-EFGH-JKMN'."""
    raw = "".join(ch for ch in str(code or "").upper() if ch.isalnum())
    return "-".join(raw[i:i + CODE_GROUP_LEN] for i in range(0, len(raw), CODE_GROUP_LEN))


# ---------------------------------------------------------------------------------------------- schema

metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version", metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.String(40), nullable=False),
)

meta = sa.Table(
    "meta", metadata,
    sa.Column("key", sa.String(100), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

participants = sa.Table(
    "participants", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("code", sa.String(40), nullable=False, unique=True),
    sa.Column("role", sa.String(20), nullable=False, default="participant"),  # participant | judge
    sa.Column("consented_at", sa.String(40), nullable=False),
    sa.Column("protocol", sa.Text, nullable=False, default=""),
    sa.Column("revoked_at", sa.String(40), nullable=True),  # v2: a revoked judge invitation
)

conversations = sa.Table(
    "conversations", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("participant_id", sa.String(40), sa.ForeignKey("participants.id"), nullable=False, index=True),
    sa.Column("seq", sa.Integer, nullable=False),  # 1, 2, ... within the participant
    sa.Column("order_index", sa.Integer, nullable=False),  # which of the six arm-to-pane orders
    sa.Column("arm_order", sa.Text, nullable=False),  # JSON list: arm name in pane A, B, C
    sa.Column("scenario", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False, default=""),
    sa.Column("status", sa.String(20), nullable=False, default="chatting"),  # chatting | rated
    sa.Column("comment", sa.Text, nullable=True),
    sa.Column("protocol", sa.Text, nullable=False, default=""),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("rated_at", sa.String(40), nullable=True),
    sa.UniqueConstraint("participant_id", "seq", name="uq_conversation_seq"),
)
# v2: at most one conversation in progress per participant, whatever the number of app processes.
sa.Index("uq_one_chatting", conversations.c.participant_id, unique=True,
         sqlite_where=conversations.c.status == "chatting", postgresql_where=conversations.c.status == "chatting")

messages = sa.Table(
    "messages", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("conversation_id", sa.String(40), sa.ForeignKey("conversations.id"), nullable=False, index=True),
    sa.Column("pane", sa.String(1), nullable=False),
    sa.Column("arm", sa.String(200), nullable=False),
    sa.Column("role", sa.String(20), nullable=False),  # user | assistant
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("raw_text", sa.Text, nullable=True),  # model output incl. strategy tag
    sa.Column("strategy", sa.String(200), nullable=True),  # predicted strategy (strategy arms)
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("latency_s", sa.Float, nullable=True),
    sa.Column("ttft_s", sa.Float, nullable=True),
    sa.Column("n_tokens", sa.Integer, nullable=True),
    sa.Column("finish_reason", sa.String(40), nullable=True),
    sa.Column("settings", sa.Text, nullable=True),  # JSON generation settings
    # v2: a reply is written while it streams (partial=True, finish_reason "streaming", refreshed
    # updated_at) and completed in place; every strategy tag found in the raw text; the engine's numbers.
    sa.Column("partial", sa.Boolean, nullable=True),
    sa.Column("updated_at", sa.String(40), nullable=True),
    sa.Column("strategies", sa.Text, nullable=True),  # JSON list
    sa.Column("dtype", sa.String(40), nullable=True),
    sa.Column("engine_version", sa.String(80), nullable=True),
)

votes = sa.Table(
    "votes", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("conversation_id", sa.String(40), sa.ForeignKey("conversations.id"), nullable=False, index=True),
    sa.Column("rater_id", sa.String(40), sa.ForeignKey("participants.id"), nullable=False),
    sa.Column("aspect", sa.String(40), nullable=False),
    sa.Column("pane_a", sa.String(1), nullable=False),  # left pane of the pair as shown
    sa.Column("pane_b", sa.String(1), nullable=False),
    sa.Column("arm_a", sa.String(200), nullable=False),
    sa.Column("arm_b", sa.String(200), nullable=False),
    sa.Column("outcome", sa.String(4), nullable=False),  # a | b | tie
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.UniqueConstraint("conversation_id", "rater_id", "aspect", "pane_a", "pane_b", name="uq_vote"),
)

reports = sa.Table(
    "reports", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("conversation_id", sa.String(40), sa.ForeignKey("conversations.id"), nullable=False, index=True),
    sa.Column("message_id", sa.Integer, sa.ForeignKey("messages.id"), nullable=False),
    sa.Column("participant_id", sa.String(40), sa.ForeignKey("participants.id"), nullable=False),
    sa.Column("reason", sa.Text, nullable=False, default="harmful"),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.UniqueConstraint("message_id", "participant_id", name="uq_report"),
)

flags = sa.Table(
    "flags", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("conversation_id", sa.String(40), sa.ForeignKey("conversations.id"), nullable=False, index=True),
    sa.Column("message_id", sa.Integer, sa.ForeignKey("messages.id"), nullable=True),
    sa.Column("participant_id", sa.String(40), sa.ForeignKey("participants.id"), nullable=False),
    sa.Column("category", sa.String(100), nullable=False),  # risk category (or "report")
    sa.Column("pattern", sa.Text, nullable=True),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("resolved_at", sa.String(40), nullable=True),
    sa.Column("note", sa.Text, nullable=True),
)

# Annotation (third-party judges; built on by extes/study/annotation.py).
annotation_items = sa.Table(
    "annotation_items", metadata,
    sa.Column("id", sa.String(200), primary_key=True),  # conversation id, or "<dataset>:<dialogue id>"
    sa.Column("kind", sa.String(20), nullable=False),  # conversation | dialogue
    sa.Column("source", sa.Text, nullable=False, default=""),  # dataset name/path for dialogues
    sa.Column("payload", sa.Text, nullable=True),  # JSON dialogue for kind=dialogue
    sa.Column("created_at", sa.String(40), nullable=False),
)

assignments = sa.Table(
    "assignments", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("item_id", sa.String(200), sa.ForeignKey("annotation_items.id"), nullable=False, index=True),
    sa.Column("judge_id", sa.String(40), sa.ForeignKey("participants.id"), nullable=False, index=True),
    sa.Column("pane_order", sa.Text, nullable=True),  # JSON: panes of the conversation as shown to the judge
    sa.Column("status", sa.String(20), nullable=False, default="open"),  # open | done
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.Column("completed_at", sa.String(40), nullable=True),
    sa.UniqueConstraint("item_id", "judge_id", name="uq_assignment"),
)

judgments = sa.Table(
    "judgments", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("assignment_id", sa.Integer, sa.ForeignKey("assignments.id"), nullable=False, index=True),
    sa.Column("judge_id", sa.String(40), sa.ForeignKey("participants.id"), nullable=False),
    sa.Column("conversation_id", sa.String(40), sa.ForeignKey("conversations.id"), nullable=False),
    sa.Column("aspect", sa.String(40), nullable=False),
    sa.Column("arm_a", sa.String(200), nullable=False),
    sa.Column("arm_b", sa.String(200), nullable=False),
    sa.Column("outcome", sa.String(4), nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.UniqueConstraint("assignment_id", "aspect", "arm_a", "arm_b", name="uq_judgment"),
)

likert_ratings = sa.Table(
    "likert_ratings", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("assignment_id", sa.Integer, sa.ForeignKey("assignments.id"), nullable=False, index=True),
    sa.Column("judge_id", sa.String(40), sa.ForeignKey("participants.id"), nullable=False),
    sa.Column("item_id", sa.String(200), sa.ForeignKey("annotation_items.id"), nullable=False),
    sa.Column("aspect", sa.String(100), nullable=False),
    sa.Column("score", sa.Integer, nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.UniqueConstraint("assignment_id", "aspect", name="uq_likert"),
)


# v2: attempts counted for rate limits and lockouts (extes.study.limits), shared by every app process.
# `bucket` is a kind plus a keyed hash of the client address: no address is stored.
rate_events = sa.Table(
    "rate_events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("bucket", sa.String(100), nullable=False, index=True),
    sa.Column("at", sa.String(40), nullable=False, index=True),
)


# v3 (issue 15): attention flags per conversation, the rating form's attention answer and time, and the
# sessions of participants who arrived from a recruitment platform.
conversation_flags = sa.Table(
    "conversation_flags", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("conversation_id", sa.String(40), sa.ForeignKey("conversations.id"), nullable=False, index=True),
    sa.Column("flag", sa.String(40), nullable=False),  # extes.analysis.exclusions.FLAGS
    sa.Column("detail", sa.Text, nullable=False, default=""),  # counts and times only, never the text
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.UniqueConstraint("conversation_id", "flag", name="uq_conversation_flag"),
)

rating_checks = sa.Table(
    "rating_checks", metadata,
    sa.Column("conversation_id", sa.String(40), sa.ForeignKey("conversations.id"), primary_key=True),
    sa.Column("instructed_answer", sa.String(20), nullable=True),  # the attention row's answer (never a vote)
    sa.Column("rating_seconds", sa.Float, nullable=True),  # from the last reply to the submitted form
    sa.Column("created_at", sa.String(40), nullable=False),
)

platform_sessions = sa.Table(
    "platform_sessions", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    # NULL for one who declined consent (screened out: no participant was created)
    sa.Column("participant_id", sa.String(40), sa.ForeignKey("participants.id"), nullable=True, unique=True),
    sa.Column("platform", sa.String(20), nullable=False),
    sa.Column("platform_hash", sa.String(64), nullable=False, unique=True),  # HMAC of the platform id
    sa.Column("raw_id", sa.String(128), nullable=True),  # only with recruitment.keep_raw_id
    sa.Column("study_id", sa.String(128), nullable=True),
    sa.Column("session_id", sa.String(128), nullable=True),
    sa.Column("started_at", sa.String(40), nullable=False),
    sa.Column("completed_at", sa.String(40), nullable=True),
    sa.Column("screened_out_at", sa.String(40), nullable=True),
    sa.Column("last_stage", sa.String(20), nullable=False, default="consent"),
    sa.Column("last_seen_at", sa.String(40), nullable=False),
)


# Votes of LLM judges (`extes judge --db`): pairwise, per aspect, both orders already combined; one set
# per (judge model, prompt version), replaced as a whole when the judge runs again.
llm_votes = sa.Table(
    "llm_votes", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("conversation_id", sa.String(40), sa.ForeignKey("conversations.id"), nullable=False, index=True),
    sa.Column("judge_model", sa.String(200), nullable=False),
    sa.Column("prompt_version", sa.String(40), nullable=False),
    sa.Column("aspect", sa.String(40), nullable=False),
    sa.Column("arm_a", sa.String(200), nullable=False),
    sa.Column("arm_b", sa.String(200), nullable=False),
    sa.Column("outcome", sa.String(10), nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
    sa.UniqueConstraint("conversation_id", "judge_model", "prompt_version", "aspect", "arm_a", "arm_b",
                        name="uq_llm_vote"),
)


def _migration_1(conn: Connection) -> None:
    """Initial schema (frozen in extes.study.schema_v1: creating today's tables here would make every
    later migration fail on a fresh database with "duplicate column")."""
    from extes.study import schema_v1

    schema_v1.metadata.create_all(conn, tables=[t for t in schema_v1.metadata.sorted_tables
                                                if t.name != "schema_version"])


def _add_columns(conn: Connection, table: sa.Table, names: Sequence[str]) -> None:
    for name in names:
        col = table.c[name]
        conn.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {name} {col.type.compile(conn.dialect)}"))


def _migration_2(conn: Connection) -> None:
    """Judge invitations (participants.revoked_at), replies persisted while they stream (messages.partial,
    updated_at), every strategy tag of a reply, the engine's dtype and version; one conversation in
    progress per participant as a unique index; rate_events. Conversations left "chatting" beside a newer one (the
    race this index now prevents) become "abandoned"."""
    _add_columns(conn, participants, ["revoked_at"])
    _add_columns(conn, messages, ["partial", "updated_at", "strategies", "dtype", "engine_version"])
    rows = conn.execute(sa.select(conversations.c.id, conversations.c.participant_id)
                        .where(conversations.c.status == "chatting")
                        .order_by(conversations.c.participant_id, conversations.c.seq.desc())).all()
    seen: set[str] = set()
    for cid, pid in rows:
        if pid in seen:
            conn.execute(conversations.update().where(conversations.c.id == cid).values(status="abandoned"))
        seen.add(pid)
    for index in conversations.indexes:
        if index.name == "uq_one_chatting":
            index.create(conn)
    rate_events.create(conn)


def _migration_3(conn: Connection) -> None:
    """Attention flags per conversation, the rating form's attention answer and time, platform sessions."""
    for table in (conversation_flags, rating_checks, platform_sessions):
        table.create(conn)


def _migration_4(conn: Connection) -> None:
    """LLM judges' votes (`extes judge --db`)."""
    llm_votes.create(conn)


MIGRATIONS: list[Callable[[Connection], None]] = [_migration_1, _migration_2, _migration_3, _migration_4]
SCHEMA_VERSION = len(MIGRATIONS)


def _url(url_or_path: str | Path | None) -> tuple[str, Path | None]:
    if url_or_path is None:
        url_or_path = DEFAULT_DB
    text = str(url_or_path)
    if "://" in text:
        return text, None
    path = Path(text).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}", path


def _row(r: Any) -> dict[str, Any]:
    return dict(r._mapping)


class Store:
    """One study database. Safe to share between the threads of one app (each call opens its own
    short transaction); several processes may share an SQLite file (WAL) or a server database."""

    def __init__(self, url_or_path: str | Path | None = None, echo: bool = False):
        try:
            self.url, self.path = _url(url_or_path)
        except OSError as exc:
            raise StoreError(f"{url_or_path}: cannot create the database folder ({exc})") from None
        kwargs: dict[str, Any] = {"echo": echo}
        in_memory = self.path is None and (":memory:" in self.url or self.url.rstrip("/").endswith("sqlite:"))
        if self.url.startswith("sqlite"):
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            if not in_memory:  # (an in-memory database has its own pool)
                # one kept connection per busy thread: with SQLAlchemy's default (5 + 10 overflow) twenty
                # participants' threads kept opening and closing connections, each paying the pragmas
                kwargs.update(pool_size=32, max_overflow=32)
        try:
            self.engine: Engine = sa.create_engine(self.url, **kwargs)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
            raise StoreError(f"{self._where()}: not a usable database URL ({exc})") from None
        if self.url.startswith("sqlite"):
            @sa.event.listens_for(self.engine, "connect")
            def _pragmas(dbapi_conn, _record):  # pragma: no cover - exercised through every test
                dbapi_conn.isolation_level = None  # BEGIN is emitted below, so writes can be IMMEDIATE
                cur = dbapi_conn.cursor()
                if not in_memory:
                    cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=FULL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.close()

            @sa.event.listens_for(self.engine, "begin")
            def _begin(conn):  # pragma: no cover - exercised through every test
                # A write transaction takes SQLite's write lock at BEGIN, so a check (how many
                # conversations, how many judges) and the insert it allows cannot interleave with another
                # process's: SQLite's BEGIN IMMEDIATE is PostgreSQL's LOCK TABLE in `_write`.
                immediate = conn.get_execution_options().get("extes_write")
                conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
        try:
            self.migrate()
        except sa.exc.SQLAlchemyError as exc:
            raise StoreError(f"{self._where()}: cannot open the study database ({type(exc).__name__}: "
                             f"{getattr(exc, 'orig', None) or exc})") from None

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    @contextmanager
    def _write(self, *lock_tables: str) -> Iterator[Connection]:
        """A write transaction in which checks and the writes they allow are atomic across processes:
        BEGIN IMMEDIATE on SQLite (one writer at a time), and on PostgreSQL an explicit lock on
        `lock_tables` (SHARE ROW EXCLUSIVE: one such transaction per table at a time; readers go on)."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(extes_write=True)
            with conn.begin():
                if self.engine.dialect.name == "postgresql":
                    for name in lock_tables:
                        conn.execute(sa.text(f"LOCK TABLE {name} IN SHARE ROW EXCLUSIVE MODE"))
                yield conn

    def where(self) -> str:
        """The database for messages, without any password in the URL."""
        return self._where()

    def _where(self) -> str:
        if self.path is not None:
            return str(self.path)
        try:
            return sa.engine.make_url(self.url).render_as_string(hide_password=True)
        except sa.exc.ArgumentError:
            return "<database URL>"

    # ------------------------------------------------------------------------------ housekeeping

    def migrate(self) -> int:
        """Apply the migrations this database lacks; returns the schema version."""
        with self.engine.begin() as conn:
            schema_version.create(conn, checkfirst=True)
            current = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0
        where = self._where()
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"{where}: database schema version {current} is newer than this version of extes "
                f"understands ({SCHEMA_VERSION}); upgrade extes or use another database"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            with self.engine.begin() as conn:
                done = conn.execute(sa.select(schema_version.c.version).where(schema_version.c.version == version)).first()
                if done:  # another process got there first
                    continue
                MIGRATIONS[version - 1](conn)
                conn.execute(schema_version.insert().values(version=version, applied_at=now()))
        return self.schema_version()

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0

    def close(self) -> None:
        self.engine.dispose()

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(meta.c.value).where(meta.c.key == key)).scalar()
        return default if value is None else value

    def meta_value(self, key: str, make: Callable[[], str]) -> str:
        """The stored value for `key`, creating it with `make()` the first time (first writer wins)."""
        value = self.get_meta(key)
        if value is not None:
            return value
        try:
            with self.engine.begin() as conn:
                conn.execute(meta.insert().values(key=key, value=make()))
        except sa.exc.IntegrityError:
            pass
        return self.get_meta(key)  # type: ignore[return-value]

    # ------------------------------------------------------------------------------ participants

    def create_participant(self, role: str = "participant", protocol: str = "") -> dict[str, Any]:
        """A new participant with a fresh random code; returns its row (id, code, ...)."""
        for _ in range(20):
            row = {"id": f"p-{uuid.uuid4().hex[:12]}", "code": new_code(), "role": role,
                   "consented_at": now(), "protocol": protocol}
            try:
                with self.engine.begin() as conn:
                    conn.execute(participants.insert().values(**row))
                return row
            except sa.exc.IntegrityError:  # pragma: no cover - a code collision (about 1 in 10^17)
                continue
        raise StoreError("could not issue a unique participant code")  # pragma: no cover

    def participant_by_code(self, code: str) -> dict[str, Any] | None:
        code = normalize_code(code)
        if not code:
            return None
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(participants).where(participants.c.code == code)).first()
        return _row(r) if r else None

    def participant(self, participant_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(participants).where(participants.c.id == participant_id)).first()
        return _row(r) if r else None

    # ------------------------------------------------------------------------------ conversations

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
                            protocol: str = "", max_conversations: int | None = None) -> Conversation:
        """Create the participant's next conversation. `choose_order(counts)` gets the per-order usage
        counts and returns (order_index, arm names for panes A, B, C).

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
                order_index, arm_order = choose_order(self.order_counts(protocol=protocol, conn=conn))
                row = {
                    "id": f"c-{uuid.uuid4().hex[:12]}", "participant_id": participant_id, "seq": len(rows) + 1,
                    "order_index": int(order_index), "arm_order": json.dumps(list(arm_order)),
                    "scenario": scenario, "description": description, "status": "chatting",
                    "protocol": protocol, "created_at": now(),
                }
                conn.execute(conversations.insert().values(**row))
        except sa.exc.IntegrityError:
            raise LimitError("a conversation is already in progress", "in_progress") from None
        return self._conversation_dict(row)

    @staticmethod
    def _conversation_dict(row: dict[str, Any]) -> Conversation:
        return Conversation.from_row(row)

    def conversation(self, conversation_id: str) -> Conversation | None:
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(conversations).where(conversations.c.id == conversation_id)).first()
        return self._conversation_dict(_row(r)) if r else None

    def conversations_of(self, participant_id: str) -> list[Conversation]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(conversations).where(conversations.c.participant_id == participant_id)
                                .order_by(conversations.c.seq)).all()
        return [self._conversation_dict(_row(r)) for r in rows]

    def all_conversations(self) -> list[Conversation]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(conversations).order_by(conversations.c.created_at)).all()
        return [self._conversation_dict(_row(r)) for r in rows]

    # ------------------------------------------------------------------------------ messages

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

    @staticmethod
    def _streaming(conn: Connection, conversation_id: str, panes: Sequence[str] | None = None) -> bool:
        q = sa.select(sa.func.count()).select_from(messages).where(
            messages.c.conversation_id == conversation_id, messages.c.finish_reason == "streaming",
            messages.c.updated_at > ago(STREAM_STALE_S))
        if panes is not None:
            q = q.where(messages.c.pane.in_(list(panes)))
        return bool(conn.execute(q).scalar())

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
                     dtype: str | None = None, engine_version: str | None = None) -> None:
        """Complete a streamed reply row in place (partial=True for interrupted or failed replies)."""
        with self.engine.begin() as conn:
            conn.execute(messages.update().where(messages.c.id == int(message_id)).values(
                text=text, finish_reason=finish_reason, partial=bool(partial), updated_at=now(),
                raw_text=raw_text, strategy=strategy, strategies=json.dumps(list(strategies)) if strategies else None,
                latency_s=latency_s, ttft_s=ttft_s, n_tokens=n_tokens, dtype=dtype, engine_version=engine_version,
                settings=json.dumps(settings, sort_keys=True, default=str) if settings is not None else None))

    def delete_empty_reply(self, message_id: int) -> None:
        """Remove a reply row that never showed a word (a failed or abandoned reply before its first piece)."""
        with self.engine.begin() as conn:
            conn.execute(messages.delete().where(messages.c.id == int(message_id), messages.c.role == "assistant",
                                                 messages.c.text == ""))

    def messages(self, conversation_id: str, pane: str | None = None) -> list[dict[str, Any]]:
        """Messages in order. A reply still marked streaming whose writer stopped refreshing it
        (STREAM_STALE_S) is returned with finish_reason "interrupted": the process writing it died."""
        q = sa.select(messages).where(messages.c.conversation_id == conversation_id)
        if pane is not None:
            q = q.where(messages.c.pane == pane)
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(messages.c.id)).all()
        stale = ago(STREAM_STALE_S)
        out = []
        for r in rows:
            d = _row(r)
            d["settings"] = json.loads(d["settings"]) if d["settings"] else None
            d["strategies"] = json.loads(d["strategies"]) if d.get("strategies") else []
            d["partial"] = bool(d.get("partial"))
            if d["finish_reason"] == "streaming" and (d.get("updated_at") or "") <= stale:
                d["finish_reason"] = "interrupted"
            out.append(d)
        return out

    def message(self, message_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(messages).where(messages.c.id == int(message_id))).first()
        return _row(r) if r else None

    # ------------------------------------------------------------------------------ safety

    def add_flag(self, conversation_id: str, participant_id: str, category: str, pattern: str | None = None,
                 message_id: int | None = None) -> int:
        with self.engine.begin() as conn:
            return int(conn.execute(flags.insert().values(
                conversation_id=conversation_id, participant_id=participant_id, category=category,
                pattern=pattern, message_id=message_id, created_at=now())).inserted_primary_key[0])

    def flags(self, conversation_id: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(flags).order_by(flags.c.id)
        if conversation_id is not None:
            q = q.where(flags.c.conversation_id == conversation_id)
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(q)]

    def resolve_flag(self, flag_id: int, note: str = "") -> None:
        with self.engine.begin() as conn:
            conn.execute(flags.update().where(flags.c.id == flag_id).values(resolved_at=now(), note=note))

    def add_report(self, conversation_id: str, message_id: int, participant_id: str, reason: str = "harmful") -> int:
        """Record a participant's report of a model reply (once per reply and participant)."""
        try:
            with self.engine.begin() as conn:
                return int(conn.execute(reports.insert().values(
                    conversation_id=conversation_id, message_id=int(message_id), participant_id=participant_id,
                    reason=reason, created_at=now())).inserted_primary_key[0])
        except sa.exc.IntegrityError:
            raise DuplicateError("this reply was already reported") from None

    def reports(self, conversation_id: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(reports).order_by(reports.c.id)
        if conversation_id is not None:
            q = q.where(reports.c.conversation_id == conversation_id)
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(q)]

    # ------------------------------------------------------------------------------ votes

    def submit_votes(self, conversation_id: str, rater_id: str, rows: Sequence[dict[str, Any]],
                     comment: str | None = None, checks: RatingChecks | None = None) -> int:
        """Store a participant's complete rating form and mark the conversation rated, atomically.
        Each row: aspect, pane_a, pane_b, arm_a, arm_b, outcome (a|b|tie). Raises DuplicateError when the
        conversation was already rated (nothing is written then)."""
        for r in rows:
            if r["outcome"] not in OUTCOMES:
                raise ValueError(f"vote outcome must be one of {OUTCOMES}, got {r['outcome']!r}")
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
                     **{k: r[k] for k in ("aspect", "pane_a", "pane_b", "arm_a", "arm_b", "outcome")}}
                    for r in rows
                ])
                if checks is not None:  # v3: attention answer, time on the form and flags, in the same transaction
                    self._write_checks(conn, conversation_id, checks, stamp)
        except sa.exc.IntegrityError:
            raise DuplicateError("this conversation was already rated") from None
        return len(rows)

    def votes(self, conversation_id: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(votes).order_by(votes.c.id)
        if conversation_id is not None:
            q = q.where(votes.c.conversation_id == conversation_id)
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(q)]

    # ------------------------------------------------------------------------------ annotation

    def add_annotation_item(self, item_id: str, kind: str, source: str = "", payload: Any = None) -> bool:
        """Register an item judges can be assigned (True if new, False if it existed)."""
        if kind not in ("conversation", "dialogue"):
            raise ValueError(f"annotation item kind must be 'conversation' or 'dialogue', got {kind!r}")
        try:
            with self.engine.begin() as conn:
                conn.execute(annotation_items.insert().values(
                    id=item_id, kind=kind, source=source, created_at=now(),
                    payload=json.dumps(payload, ensure_ascii=False) if payload is not None else None))
            return True
        except sa.exc.IntegrityError:
            return False

    def annotation_items(self, kind: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(annotation_items).order_by(annotation_items.c.created_at, annotation_items.c.id)
        if kind is not None:
            q = q.where(annotation_items.c.kind == kind)
        with self.engine.connect() as conn:
            rows = [_row(r) for r in conn.execute(q)]
        for r in rows:
            r["payload"] = json.loads(r["payload"]) if r["payload"] else None
        return rows

    def create_assignment(self, item_id: str, judge_id: str, pane_order: Sequence[str] | None = None) -> int:
        """Assign an item to a judge; DuplicateError if that judge already has it."""
        try:
            with self.engine.begin() as conn:
                return int(conn.execute(assignments.insert().values(
                    item_id=item_id, judge_id=judge_id, status="open", created_at=now(),
                    pane_order=json.dumps(list(pane_order)) if pane_order else None)).inserted_primary_key[0])
        except sa.exc.IntegrityError:
            raise DuplicateError(f"item {item_id} is already assigned to this judge") from None

    def assign_next(self, judge_id: str, pick: Callable[[list[tuple[dict[str, Any], int]]], tuple[str, Any]],
                    *, quota: int, stale_after_s: float, max_open_per_judge: int = 1, max_open_total: int = 100,
                    kinds: Sequence[str] = ("conversation", "dialogue"),
                    exclude: Iterable[str] = ()) -> dict[str, Any] | None:
        """The judge's oldest open assignment, or a new one, decided in one write transaction so quotas and
        limits hold with several app processes on one database.

        An item counts its submitted judgments plus open assignments younger than `stale_after_s`; it is
        eligible while that is below `quota`, the judge never had it and it is not in `exclude` (their own
        conversations). `pick(candidates)` gets [(item, count)] and returns (item id, pane order or None).
        None when nothing is eligible, when the judge already has `max_open_per_judge` open items, or when
        `max_open_total` items are in progress across all judges (LimitError "busy" then)."""
        cutoff = ago(stale_after_s)
        with self._write("assignments") as conn:
            judge = conn.execute(sa.select(participants).where(participants.c.id == judge_id)).first()
            if judge is None or judge.revoked_at is not None:
                raise LimitError("this judge code was revoked", "revoked")
            mine = [_row(r) for r in conn.execute(sa.select(assignments).where(assignments.c.judge_id == judge_id)
                                                    .order_by(assignments.c.id))]
            open_mine = [a for a in mine if a["status"] == "open"]
            if open_mine:
                a = open_mine[0]
                a["pane_order"] = json.loads(a["pane_order"]) if a["pane_order"] else None
                return a
            if max_open_per_judge < 1:
                return None
            live = (assignments.c.status == "done") | (
                (assignments.c.status == "open") & (assignments.c.created_at > cutoff))
            n_open = conn.execute(sa.select(sa.func.count()).select_from(assignments).where(
                assignments.c.status == "open", assignments.c.created_at > cutoff)).scalar() or 0
            counts = {item: n for item, n in conn.execute(
                sa.select(assignments.c.item_id, sa.func.count()).where(live).group_by(assignments.c.item_id))}
            seen = {a["item_id"] for a in mine} | set(exclude)
            items = [_row(r) for r in conn.execute(sa.select(annotation_items)
                                                   .where(annotation_items.c.kind.in_(list(kinds)))
                                                   .order_by(annotation_items.c.created_at, annotation_items.c.id))]
            candidates = []
            for item in items:
                n = counts.get(item["id"], 0)
                if item["id"] not in seen and n < quota:
                    item["payload"] = json.loads(item["payload"]) if item["payload"] else None
                    candidates.append((item, n))
            if not candidates:
                return None
            if n_open >= max_open_total:
                raise LimitError("too many items are being judged right now", "busy")
            item_id, pane_order = pick(candidates)
            row = {"item_id": item_id, "judge_id": judge_id, "status": "open", "created_at": now(),
                   "pane_order": json.dumps(list(pane_order)) if pane_order else None}
            row["id"] = int(conn.execute(assignments.insert().values(**row)).inserted_primary_key[0])
        row["pane_order"] = list(pane_order) if pane_order else None
        row["completed_at"] = None
        return row

    def assignments(self, judge_id: str | None = None, item_id: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(assignments).order_by(assignments.c.id)
        if judge_id is not None:
            q = q.where(assignments.c.judge_id == judge_id)
        if item_id is not None:
            q = q.where(assignments.c.item_id == item_id)
        with self.engine.connect() as conn:
            rows = [_row(r) for r in conn.execute(q)]
        for r in rows:
            r["pane_order"] = json.loads(r["pane_order"]) if r["pane_order"] else None
        return rows

    def assignment_counts(self) -> dict[str, int]:
        """Number of judges assigned per item id (open or done)."""
        q = sa.select(assignments.c.item_id, sa.func.count()).group_by(assignments.c.item_id)
        with self.engine.connect() as conn:
            return {item: n for item, n in conn.execute(q)}

    def submit_judgments(self, assignment_id: int, rows: Sequence[dict[str, Any]], quota: int | None = None) -> int:
        """Pairwise judgments for an assigned conversation (aspect, arm_a, arm_b, outcome), atomically,
        closing the assignment; DuplicateError when it was already done."""
        return self._submit_assignment(assignment_id, judgments, rows, ("aspect", "arm_a", "arm_b", "outcome"),
                                       extra=lambda a: {"conversation_id": a["item_id"]}, quota=quota)

    def submit_likert(self, assignment_id: int, scores: dict[str, int], quota: int | None = None) -> int:
        """Likert scores (aspect -> score) for an assigned dataset dialogue, atomically."""
        rows = [{"aspect": k, "score": int(v)} for k, v in scores.items()]
        return self._submit_assignment(assignment_id, likert_ratings, rows, ("aspect", "score"),
                                       extra=lambda a: {"item_id": a["item_id"]}, quota=quota)

    def _submit_assignment(self, assignment_id: int, table: sa.Table, rows: Sequence[dict[str, Any]],
                           keys: tuple[str, ...], extra: Callable[[dict], dict], quota: int | None = None) -> int:
        """LimitError "quota" when the item already has `quota` submitted judgments (a late judge whose
        assignment went stale: the assignment is closed as "expired"), "revoked" for a revoked judge."""
        stamp = now()
        full = False
        try:
            with self._write("assignments") as conn:
                a = conn.execute(sa.select(assignments).where(assignments.c.id == assignment_id)).first()
                if a is None:
                    raise ValueError(f"no assignment {assignment_id}")
                a = _row(a)
                revoked = conn.execute(sa.select(participants.c.revoked_at)
                                       .where(participants.c.id == a["judge_id"])).scalar()
                if revoked is not None:
                    raise LimitError("this judge code was revoked", "revoked")
                if quota is not None and a["status"] == "open":
                    done = conn.execute(sa.select(sa.func.count()).select_from(assignments).where(
                        assignments.c.item_id == a["item_id"], assignments.c.status == "done")).scalar() or 0
                    if done >= quota:
                        conn.execute(assignments.update().where(assignments.c.id == assignment_id)
                                     .values(status="expired", completed_at=stamp))
                        full = True
                if not full:
                    updated = conn.execute(assignments.update().where(
                        assignments.c.id == assignment_id, assignments.c.status == "open"
                    ).values(status="done", completed_at=stamp)).rowcount
                    if updated != 1:
                        raise DuplicateError("this assignment was already submitted")
                    conn.execute(table.insert(), [
                        {"assignment_id": assignment_id, "judge_id": a["judge_id"], "created_at": stamp,
                         **extra(a), **{k: r[k] for k in keys}} for r in rows
                    ])
        except sa.exc.IntegrityError:
            raise DuplicateError("this assignment was already submitted") from None
        if full:
            raise LimitError("this item already has all the judgments it needs", "quota")
        return len(rows)

    # ------------------------------------------------------------------------------ rate limits

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

    # ------------------------------------------------------------------------------ judge invitations

    def invite_judges(self, n: int, protocol: str = "") -> list[str]:
        """`n` new judge codes (single-use invitations: each is one judge's identity), as the researcher
        hands them out. Longer than participant codes: 16 characters (about 79 bits)."""
        if not 1 <= int(n) <= 1000:
            raise ValueError(f"number of judge invitations must be 1-1000, got {n}")
        codes = []
        for _ in range(int(n)):
            for _attempt in range(20):
                row = {"id": f"p-{uuid.uuid4().hex[:12]}", "code": new_code(4), "role": "judge",
                       "consented_at": now(), "protocol": protocol}
                try:
                    with self.engine.begin() as conn:
                        conn.execute(participants.insert().values(**row))
                    codes.append(row["code"])
                    break
                except sa.exc.IntegrityError:  # pragma: no cover - a code collision
                    continue
        return codes

    def revoke_judge(self, code: str) -> int:
        """Revoke a judge invitation: the code no longer opens /annotate, and the judge's unfinished items
        are freed for others (their open assignments are deleted). Returns how many were freed; ValueError
        when no judge has this code."""
        code = normalize_code(code)
        with self._write("assignments") as conn:
            judge = conn.execute(sa.select(participants).where(participants.c.code == code,
                                                               participants.c.role == "judge")).first()
            if judge is None:
                raise ValueError("no judge invitation with this code")
            conn.execute(participants.update().where(participants.c.id == judge.id)
                         .values(revoked_at=judge.revoked_at or now()))
            freed = conn.execute(assignments.delete().where(assignments.c.judge_id == judge.id,
                                                            assignments.c.status == "open")).rowcount
        return int(freed)

    def judges(self) -> list[dict[str, Any]]:
        """Every judge invitation with its state and submitted items (for the dashboard)."""
        done = sa.select(assignments.c.judge_id, sa.func.count().label("n")).where(
            assignments.c.status == "done").group_by(assignments.c.judge_id).subquery()
        q = (sa.select(participants.c.id, participants.c.code, participants.c.consented_at, participants.c.revoked_at,
                       sa.func.coalesce(done.c.n, 0).label("done"))
             .outerjoin(done, done.c.judge_id == participants.c.id)
             .where(participants.c.role == "judge").order_by(participants.c.consented_at))
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(q)]

    # ------------------------------------------------------------------------------ exports

    def votes_frame(self, source: str = "participant"):
        """Votes CSV frame: session_id, aspect, arm_a, arm_b, outcome, rater_id, conversation_id, created_at.

        source="participant": the participants' own votes (session_id = conversation id: one rating form);
        "judge": third-party judgments (session_id = "j<assignment id>"); "all": both (people only);
        "llm": LLM judges' votes (`extes judge --db`; rater_id = "llm:<model>").
        """
        import pandas as pd

        cols = ["session_id", "aspect", "arm_a", "arm_b", "outcome", "rater_id", "conversation_id", "created_at"]
        rows: list[dict[str, Any]] = []
        with self.engine.connect() as conn:
            if source in ("participant", "all"):
                for r in conn.execute(sa.select(votes).order_by(votes.c.id)):
                    rows.append({"session_id": r.conversation_id, "aspect": r.aspect, "arm_a": r.arm_a,
                                 "arm_b": r.arm_b, "outcome": r.outcome, "rater_id": r.rater_id,
                                 "conversation_id": r.conversation_id, "created_at": r.created_at})
            if source in ("judge", "all"):
                for r in conn.execute(sa.select(judgments).order_by(judgments.c.id)):
                    rows.append({"session_id": f"j{r.assignment_id}", "aspect": r.aspect, "arm_a": r.arm_a,
                                 "arm_b": r.arm_b, "outcome": r.outcome, "rater_id": r.judge_id,
                                 "conversation_id": r.conversation_id, "created_at": r.created_at})
            if source == "llm":
                for r in conn.execute(sa.select(llm_votes).order_by(llm_votes.c.id)):
                    rows.append({"session_id": r.conversation_id, "aspect": r.aspect, "arm_a": r.arm_a,
                                 "arm_b": r.arm_b, "outcome": r.outcome, "rater_id": f"llm:{r.judge_model}",
                                 "conversation_id": r.conversation_id, "created_at": r.created_at})
            if source not in VOTE_SOURCES:
                raise ValueError(f"votes source must be {', '.join(VOTE_SOURCES)}, got {source!r}")
        return pd.DataFrame(rows, columns=cols)

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

    def ratings_frame(self):
        """Ratings CSV frame: item_id, rater_id, label, aspect, source.

        - Likert rows: judges' 0-3 scores of dataset dialogues (item_id = annotation item id,
          label = the score as text, aspect = the Likert aspect lower-cased, source = the dialogue's
          dataset source, e.g. "extes" or "extes-build", so means compare datasets as in Table 4);
        - source "pairwise": every pairwise vote on a conversation, by its participant and by judges,
          labelled by `extes.analysis.agreement.pairwise_rating_rows`.
        """
        import pandas as pd

        from extes.analysis.agreement import pairwise_rating_rows

        out: list[dict[str, Any]] = []
        with self.engine.connect() as conn:
            q = (sa.select(likert_ratings, annotation_items.c.source.label("item_source"))
                 .join(annotation_items, annotation_items.c.id == likert_ratings.c.item_id)
                 .order_by(likert_ratings.c.id))
            for r in conn.execute(q):
                out.append({"item_id": r.item_id, "rater_id": r.judge_id, "label": str(r.score),
                            "aspect": r.aspect.lower(), "source": r.item_source or "likert"})
            pair_rows = [(r.conversation_id, r.rater_id, r.aspect, r.arm_a, r.arm_b, r.outcome)
                         for r in conn.execute(sa.select(votes).order_by(votes.c.id))]
            pair_rows += [(r.conversation_id, r.judge_id, r.aspect, r.arm_a, r.arm_b, r.outcome)
                          for r in conn.execute(sa.select(judgments).order_by(judgments.c.id))]
        out += pairwise_rating_rows(pair_rows)
        return pd.DataFrame(out, columns=["item_id", "rater_id", "label", "aspect", "source"])

    def counts(self) -> dict[str, int]:
        """Live counts for the dashboard."""
        with self.engine.connect() as conn:
            def n(q):
                return int(conn.execute(q).scalar() or 0)
            return {
                "participants": n(sa.select(sa.func.count()).select_from(participants)
                                  .where(participants.c.role == "participant")),
                "conversations": n(sa.select(sa.func.count()).select_from(conversations)),
                "rated_conversations": n(sa.select(sa.func.count()).select_from(conversations)
                                         .where(conversations.c.status == "rated")),
                "votes": n(sa.select(sa.func.count()).select_from(votes)),
                "messages": n(sa.select(sa.func.count()).select_from(messages)),
                "flags": n(sa.select(sa.func.count()).select_from(flags)),
                "open_flags": n(sa.select(sa.func.count()).select_from(flags).where(flags.c.resolved_at.is_(None))),
                "reports": n(sa.select(sa.func.count()).select_from(reports)),
            }

    # ------------------------------------------------------------------------------ v3: attention, platforms

    def set_meta(self, key: str, value: str) -> None:
        """Store `value` under `key`, replacing an earlier value (e.g. the running protocol's exclusion rule)."""
        with self.engine.begin() as conn:
            if conn.execute(meta.update().where(meta.c.key == key).values(value=value)).rowcount == 0:
                try:
                    with conn.begin_nested():
                        conn.execute(meta.insert().values(key=key, value=value))
                except sa.exc.IntegrityError:  # another process inserted it meanwhile
                    conn.execute(meta.update().where(meta.c.key == key).values(value=value))

    @staticmethod
    def _write_checks(conn: Connection, conversation_id: str, checks: RatingChecks, stamp: str) -> None:
        conn.execute(rating_checks.insert().values(
            conversation_id=conversation_id, instructed_answer=checks.instructed_answer,
            rating_seconds=checks.rating_seconds, created_at=stamp))
        if checks.flags:
            conn.execute(conversation_flags.insert(), [
                {"conversation_id": conversation_id, "flag": f, "detail": d, "created_at": stamp}
                for f, d in checks.flags])

    def rating_checks(self, conversation_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(rating_checks).where(rating_checks.c.conversation_id == conversation_id)).first()
        return _row(r) if r else None

    def conversation_flags(self, conversation_id: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(conversation_flags).order_by(conversation_flags.c.id)
        if conversation_id is not None:
            q = q.where(conversation_flags.c.conversation_id == conversation_id)
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(q)]

    def flags_frame(self):
        """Attention flags for extes.analysis.exclusions.apply_exclusions: conversation_id, flag, detail."""
        import pandas as pd

        rows = [{k: r[k] for k in ("conversation_id", "flag", "detail")} for r in self.conversation_flags()]
        return pd.DataFrame(rows, columns=["conversation_id", "flag", "detail"])

    def last_activity(self, conversation_id: str) -> str | None:
        """When the conversation's last message was written or finished (the rating form opens after it)."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.max(sa.func.coalesce(messages.c.updated_at, messages.c.created_at)))
                                .where(messages.c.conversation_id == conversation_id)).scalar()

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
            rows = {r.platform_hash: _row(r) for r in conn.execute(
                sa.select(platform_sessions).where(platform_sessions.c.platform_hash.in_(list(platform_hashes))))}
        return next((rows[h] for h in platform_hashes if h in rows), None)

    def platform_session_of(self, participant_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(platform_sessions)
                             .where(platform_sessions.c.participant_id == participant_id)).first()
        return _row(r) if r else None

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
            return [_row(r) for r in conn.execute(sa.select(platform_sessions).order_by(platform_sessions.c.id))]
