"""The study's records: what the store returns and its callers pass around (frozen dataclasses, never
dicts)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

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
