"""The study database's schema as migration 1 created it (frozen: never edit).

Migrations build on this: migration 1 creates exactly these tables, later migrations alter them. The live
table definitions in `extes.study.store.schema` describe the newest version.
"""

from __future__ import annotations

import sqlalchemy as sa

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
