"""Resolving a risk flag: the researcher records what was done, so "open flags" counts only the open ones.

Shared by the dashboard (`/research`, "Flagged conversations") and the command line
(`extes app --open-flags`, `extes app --resolve-flag ID --note TEXT`), without Gradio.
"""

from __future__ import annotations

from typing import Any

from extes.study.store import Store


def open_flag_choices(store: Store) -> list[tuple[str, str]]:
    """(label, flag id) of every open risk flag, oldest first: what the dashboard offers to resolve."""
    return [(f"flag {f.id}: {f.category} in {f.conversation_id} ({f.created_at[:16]})", str(f.id))
            for f in store.flags() if f.resolved_at is None]


def resolve_flag(store: Store, flag_id: Any, note: str | None) -> str:
    """Resolve an open risk flag with a note (what was done); the sentence to show. ValueError (shown as
    is) for no flag picked, an empty note, an unknown or already resolved flag."""
    if not str(flag_id or "").strip().isdigit():
        raise ValueError("Pick an open flag to resolve.")
    note = (note or "").strip()
    if not note:
        raise ValueError(f"Write a note saying what was done about flag {flag_id} before resolving it.")
    flag = store.resolve_flag(int(str(flag_id).strip()), note)
    return f"Flag {flag.id} ({flag.category} in {flag.conversation_id}) resolved."
