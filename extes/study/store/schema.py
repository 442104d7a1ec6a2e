"""The study database's tables (the newest version) and the frozen migrations that build them.

The schema is versioned: the `schema_version` table records each migration applied, and `MIGRATIONS` is
the ordered list of migration functions. To change the schema, append a migration (never edit an applied
one) and update the table definitions below to match what the migrations produce.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from extes.study.store import schema_v1

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
    # v5: characters cut from a capped reply's end to end it at a sentence (null: not capped); a reply the
    # screen replaced: its category (the shown text is the replacement, raw_text the model's words)
    sa.Column("cut_chars", sa.Integer, nullable=True),
    sa.Column("screened", sa.String(40), nullable=True),
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


# The rating form as the participant fills it in (answers and comment), kept so a reload or a later return
# restores it; deleted when the form is submitted. Participant text: never logged, never exported.
rating_drafts = sa.Table(
    "rating_drafts", metadata,
    sa.Column("conversation_id", sa.String(40), sa.ForeignKey("conversations.id"), primary_key=True),
    sa.Column("participant_id", sa.String(40), sa.ForeignKey("participants.id"), nullable=False),
    sa.Column("answers", sa.Text, nullable=False),  # JSON {question key: answer}
    sa.Column("comment", sa.Text, nullable=False),
    sa.Column("updated_at", sa.String(40), nullable=False),
)


def _migration_1(conn: Connection) -> None:
    """Initial schema (frozen in extes.study.store.schema_v1: creating today's tables here would make every
    later migration fail on a fresh database with "duplicate column")."""
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


def _migration_5(conn: Connection) -> None:
    """What was cut from a capped reply (messages.cut_chars); a reply screened out (messages.screened)."""
    _add_columns(conn, messages, ["cut_chars", "screened"])


def _migration_6(conn: Connection) -> None:
    """Drafts of rating forms, restored on reload or return (issue 28)."""
    rating_drafts.create(conn)


MIGRATIONS: list[Callable[[Connection], None]] = [_migration_1, _migration_2, _migration_3, _migration_4,
                                                  _migration_5, _migration_6]
SCHEMA_VERSION = len(MIGRATIONS)
