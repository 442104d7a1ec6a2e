"""Schema migrations: a database made by every earlier schema version, with data in it, upgrades to the
newest one without losing a row; a fresh database runs every migration in turn.

Before the frozen schema of version 1 (extes/study/store/schema_v1.py), migration 1 created today's tables, so
any migration adding a column failed on a fresh database with "duplicate column name"."""

from __future__ import annotations

import json

import sqlalchemy as sa

from extes.study.store import MIGRATIONS, SCHEMA_VERSION, Store, schema_v1
from extes.study.store import schema as store_mod


def _make_version(path, version: int) -> sa.Engine:
    """A database at schema `version`, written by the migrations as they were."""
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        store_mod.schema_version.create(conn)
        for v in range(1, version + 1):
            MIGRATIONS[v - 1](conn)
            conn.execute(store_mod.schema_version.insert().values(version=v, applied_at="then"))
            if v == 1:  # the data as version 1 wrote it, carried through the later migrations
                _v1_data(conn)
    return engine


def _v1_data(conn: sa.Connection) -> None:
    t = schema_v1
    conn.execute(t.participants.insert().values(id="p-1", code="AAAA-BBBB-CCCC", role="participant",
                                                consented_at="2026-01-01", protocol="x"))
    # Two conversations "chatting" at once: what the race on Start could leave behind.
    for seq in (1, 2):
        conn.execute(t.conversations.insert().values(
            id=f"c-{seq}", participant_id="p-1", seq=seq, order_index=seq, arm_order=json.dumps(["a", "b", "c"]),
            scenario="Academic Stress", description="", status="chatting", protocol="x",
            created_at=f"2026-01-0{seq}"))
    conn.execute(t.messages.insert().values(conversation_id="c-2", pane="A", arm="a", role="user",
                                            text="old message", created_at="2026-01-02"))
    conn.execute(t.messages.insert().values(conversation_id="c-2", pane="A", arm="a", role="assistant",
                                            text="old reply", raw_text="[EV] old reply", strategy="Emotional Validation",
                                            created_at="2026-01-02", finish_reason="stop"))


def test_a_fresh_database_runs_every_migration(tmp_path):
    store = Store(tmp_path / "fresh.sqlite")
    assert store.schema_version() == SCHEMA_VERSION == len(MIGRATIONS)
    with store.engine.connect() as conn:
        insp = sa.inspect(conn)
        for table in store_mod.metadata.sorted_tables:  # the live definitions match what migrations built
            assert {c["name"] for c in insp.get_columns(table.name)} == {c.name for c in table.columns}, table.name


def test_every_earlier_version_with_data_upgrades(tmp_path):
    for version in range(1, SCHEMA_VERSION):
        path = tmp_path / f"v{version}.sqlite"
        engine = _make_version(path, version)
        engine.dispose()
        store = Store(path)
        assert store.schema_version() == SCHEMA_VERSION
        assert store.participant_by_code("AAAA-BBBB-CCCC")["id"] == "p-1"
        convs = {c.id: c.status for c in store.conversations_of("p-1")}
        assert convs == {"c-1": "abandoned", "c-2": "chatting"}  # only the newest stays open
        msgs = store.messages("c-2")
        assert [m["text"] for m in msgs] == ["old message", "old reply"]
        assert msgs[1]["raw_text"] == "[EV] old reply" and msgs[1]["partial"] is False
        # the new constraint holds on the upgraded database
        import pytest

        from extes.study.store import LimitError
        with pytest.raises(LimitError):
            store.create_conversation("p-1", "Academic Stress", "", lambda counts: (0, ["a", "b", "c"]))
        store.close()
