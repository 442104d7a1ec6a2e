"""Risk detection for participant messages.

Each participant message is matched against the protocol's risk patterns (regular expressions grouped
by category: suicide, self-harm, abuse, danger to others, ...). A match shows the crisis-resources banner
at once, flags the conversation for researchers and is recorded (category and pattern; the text itself
is already in the messages table and is never logged).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class RiskMatch:
    category: str
    pattern: str


class RiskChecker:
    def __init__(self, patterns: dict[str, tuple[str, ...] | list[str]]):
        self._compiled = [
            (category, p, re.compile(p, re.IGNORECASE)) for category, ps in patterns.items() for p in ps
        ]

    @classmethod
    def from_protocol(cls, protocol) -> RiskChecker:
        return cls(protocol.crisis.patterns)

    def check(self, text: str) -> list[RiskMatch]:
        """All categories that match (first matching pattern of each)."""
        found: dict[str, RiskMatch] = {}
        for category, pattern, rx in self._compiled:
            if category not in found and rx.search(text or ""):
                found[category] = RiskMatch(category, pattern)
        return list(found.values())


def record_risks(store, checker: RiskChecker, conversation_id: str, participant_id: str, text: str,
                 message_id: int | None = None) -> list[RiskMatch]:
    """Check `text` and write one flag per matching category; returns the matches."""
    matches = checker.check(text)
    for m in matches:
        store.add_flag(conversation_id, participant_id, m.category, m.pattern, message_id=message_id)
    return matches


def crisis_banner(protocol) -> str:
    """The crisis-resources Markdown shown when a risk pattern matched in the conversation."""
    return protocol.crisis.banner
