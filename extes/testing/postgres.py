"""A throwaway PostgreSQL cluster for tests and benchmarks (Debian's `postgresql` package).

    with TempPostgres() as pg:          # initdb on a temporary directory, a free loopback port
        url = pg.url("study")           # postgresql+psycopg://postgres@127.0.0.1:PORT/study (created)

As root, initdb and pg_ctl run as the `postgres` user (`runuser`), as PostgreSQL refuses to run as root;
trust authentication on 127.0.0.1 only. `available()` says why it cannot run (package or driver missing),
so tests skip with that reason. Needs `psycopg` (psycopg[binary]) for the URL's driver.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

BIN_DIRS = tuple(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)) if Path(
    "/usr/lib/postgresql").is_dir() else ()


def _bin() -> Path | None:
    for d in BIN_DIRS:
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def available() -> str | None:
    """None when a cluster can be started here, else the reason it cannot."""
    if _bin() is None:
        return "PostgreSQL server binaries not found (Debian: apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the psycopg driver is not installed (pip install 'psycopg[binary]')"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a 'postgres' user to run the server as"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TempPostgres:
    """A PostgreSQL server on a temporary directory; stopped and deleted on exit."""

    def __init__(self, root: str | Path | None = None):
        reason = available()
        if reason:
            raise RuntimeError(reason)
        self.bin = _bin()
        self._own_root = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="extes-pg-"))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.port = _free_port()
        self.user = "postgres"
        self._as_postgres = os.geteuid() == 0

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)

    def start(self) -> TempPostgres:
        self.sock.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.sock, "postgres")
        try:
            self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", self.user, "--no-sync", "-E", "UTF8")
            opts = f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
            self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-w", "-t", "60", "-l",
                      str(self.root / "server.log"), "start")
        except subprocess.CalledProcessError as exc:
            log = (self.root / "server.log").read_text() if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {exc.stderr or exc.stdout}\n{log}") from None
        return self

    def stop(self) -> None:
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> TempPostgres:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def url(self, database: str | None = None) -> str:
        """A SQLAlchemy URL for a new (created now) database; a fresh name each call by default."""
        import psycopg

        name = database or f"t_{uuid.uuid4().hex[:12]}"
        deadline = time.time() + 30
        while True:
            try:
                with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres",
                                     autocommit=True) as conn:
                    exists = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
                    if not exists:
                        conn.execute(f'create database "{name}"')
                break
            except psycopg.OperationalError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{name}"
