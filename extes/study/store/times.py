"""Timestamps as the store writes them: ISO 8601 in UTC, comparable as text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def ago(seconds: float) -> str:
    """The timestamp `seconds` ago, comparable as text with `now()`."""
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat(timespec="milliseconds")

