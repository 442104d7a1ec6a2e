"""The store's foundation: the database engine (SQLite in WAL mode or a server), write transactions that
hold across processes, migrations, the meta table, and the small helpers every domain uses."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from extes.study.store.schema import MIGRATIONS, SCHEMA_VERSION, messages, meta, schema_version
from extes.study.store.times import ago, now

DEFAULT_DB = Path("results") / "study.sqlite"
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I/L: easy to read back and type
CODE_GROUPS, CODE_GROUP_LEN = 3, 4


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


def new_code(groups_n: int = CODE_GROUPS) -> str:
    groups = ("".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_GROUP_LEN)) for _ in range(groups_n))
    return "-".join(groups)


def normalize_code(code: str) -> str:
    """Upper-case, drop spaces and dashes, re-insert dashes: 'abcd efgh-jkmn' -> 'ABCD-EFGH-JKMN'."""
    raw = "".join(ch for ch in str(code or "").upper() if ch.isalnum())
    return "-".join(raw[i:i + CODE_GROUP_LEN] for i in range(0, len(raw), CODE_GROUP_LEN))


def _url(url_or_path: str | Path | None) -> tuple[str, Path | None]:
    if url_or_path is None:
        url_or_path = DEFAULT_DB
    text = str(url_or_path)
    if "://" in text:
        return text, None
    path = Path(text).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}", path


def stale_before() -> str:
    """Streaming rows last refreshed before this time belong to a dead process (STREAM_STALE_S, read at
    call time)."""
    return ago(STREAM_STALE_S)


class StoreBase:
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
            raise StoreError(f"{self.where()}: not a usable database URL ({exc})") from None
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
            raise StoreError(f"{self.where()}: cannot open the study database ({type(exc).__name__}: "
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
        if self.path is not None:
            return str(self.path)
        try:
            return sa.engine.make_url(self.url).render_as_string(hide_password=True)
        except sa.exc.ArgumentError:
            return "<database URL>"

    def migrate(self) -> int:
        """Apply the migrations this database lacks; returns the schema version."""
        with self.engine.begin() as conn:
            schema_version.create(conn, checkfirst=True)
            current = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0
        where = self.where()
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
    def _streaming(conn: Connection, conversation_id: str, panes: Sequence[str] | None = None) -> bool:
        q = sa.select(sa.func.count()).select_from(messages).where(
            messages.c.conversation_id == conversation_id, messages.c.finish_reason == "streaming",
            messages.c.updated_at > stale_before())
        if panes is not None:
            q = q.where(messages.c.pane.in_(list(panes)))
        return bool(conn.execute(q).scalar())
