"""The build journal: append-only JSONL, one record per line, flushed and fsynced per record.

It is the single source of truth of a build run: requests (before they are sent), responses with
usage and cost, errors, decisions, reviews and budget stops. Everything else (exports, statistics,
the review queue) is derived from it, and a re-run reads it to resume.

Every record has "type", "ts" (UTC ISO time) and a stable id field ("id" for request-level records,
"dialogue_id" for reviews). A torn last line (a crash mid-write) is skipped on reading; before the
first new append a newline is written so the torn bytes stay on a line of their own.

The same class is the crash-safe JSONL file of `extes evaluate`'s reply cache (records keyed by "key",
written with `append_records`, a torn last line dropped: ``torn="drop"``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

JOURNAL_NAME = "journal.jsonl"


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JournalError(ValueError):
    pass


def read_journal(path: str | Path, strict: bool = False, required: str = "type") -> list[dict[str, Any]]:
    """All records (JSON objects with a ``required`` field); bad lines are skipped with a warning on stderr
    (strict: raise, naming the line)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with path.open("r", encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict) or required not in rec:
                    raise ValueError("not a journal record")
            except ValueError as exc:
                msg = f"{path}: line {n}: unreadable journal record skipped ({exc})"
                if strict:
                    raise JournalError(msg) from None
                print(f"warning: {msg}", file=sys.stderr)
                continue
            records.append(rec)
    return records


class Journal:
    """An append-only JSONL file. ``torn``: what happens to a torn last line left by a crash: "keep" it on a
    line of its own (a build journal keeps every byte) or "drop" it at once (a cache)."""

    def __init__(self, path: str | Path, fsync: bool = True, torn: str = "keep"):
        if torn not in ("keep", "drop"):
            raise ValueError(f"torn={torn!r}: expected 'keep' or 'drop'")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        if torn == "drop":
            self._drop_torn_tail()
        self._lock = threading.Lock()
        self._fh = None
        self._written = 0   # records written (flushed) by this object
        self._synced = 0    # of those, known to be on disk
        self._syncing = None  # the fsync in flight, shared by concurrent sync() callers

    def _drop_torn_tail(self) -> None:
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):
            os.truncate(self.path, data.rfind(b"\n") + 1)

    def _open(self):
        if self._fh is None:
            needs_newline = False
            if self.path.exists() and self.path.stat().st_size > 0:
                with self.path.open("rb") as fh:
                    fh.seek(-1, os.SEEK_END)
                    needs_newline = fh.read(1) != b"\n"
            self._fh = self.path.open("a", encoding="utf-8")
            if needs_newline:
                self._fh.write("\n")
        return self._fh

    def write(self, type_: str, **fields: Any) -> dict[str, Any]:
        """Write and flush one record (in the OS cache, not yet on disk: follow with sync())."""
        rec = {"type": type_, "ts": now_iso(), **fields}
        line = json.dumps(rec, ensure_ascii=False) + "\n"
        with self._lock:
            fh = self._open()
            fh.write(line)  # one write call per whole line
            fh.flush()
            self._written += 1
        return rec

    def append_records(self, records: Sequence[dict[str, Any]]) -> None:
        """Write the records as they are (no "type"/"ts" added) in one write, then flush and fsync."""
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        with self._lock:
            fh = self._open()
            fh.write(text)
            fh.flush()
            self._written += len(records)
            n = self._written
            if self.fsync:
                os.fsync(fh.fileno())
                self._synced = max(self._synced, n)

    def append(self, type_: str, **fields: Any) -> dict[str, Any]:
        """Write, flush and fsync one record."""
        rec = self.write(type_, **fields)
        if self.fsync and self._fh is not None:
            n = self._written
            os.fsync(self._fh.fileno())
            self._synced = max(self._synced, n)
        return rec

    async def sync(self) -> None:
        """Make every record written so far durable. The fsync runs in a worker thread, so the event
        loop keeps serving other requests meanwhile, and concurrent callers share one fsync (group
        commit) instead of queueing one each."""

        if not self.fsync or self._fh is None:
            return
        target = self._written
        while self._synced < target:
            if self._syncing is None:
                self._syncing = asyncio.ensure_future(self._fsync_once())
            task = self._syncing
            await asyncio.shield(task)

    async def _fsync_once(self) -> None:
        upto = self._written
        try:
            await asyncio.to_thread(os.fsync, self._fh.fileno())
            self._synced = max(self._synced, upto)
        finally:
            self._syncing = None

    async def append_async(self, type_: str, **fields: Any) -> dict[str, Any]:
        rec = self.write(type_, **fields)
        await self.sync()
        return rec

    def records(self) -> list[dict[str, Any]]:
        return read_journal(self.path)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records())

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
