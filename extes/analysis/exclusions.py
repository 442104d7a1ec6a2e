"""Attention checks and exclusion rules: per-conversation flags, and votes kept or excluded by a rule.

Flags are computed when a conversation is rated (the study app) and stored with it; the rule that turns
flags into exclusions is declared in the protocol (``exclude: [failed_attention, straight_lined]``) and
applied at analysis time, so the excluded votes stay in the store and a reader can rerun the analysis
with another rule (`--exclusions protocol|none|LIST`).

The flags (all off unless the protocol turns the check on):
- ``failed_attention``: the instructed-response row ("for this row choose Tie") was answered otherwise;
- ``short_messages``: a user message shorter than the protocol's minimum characters;
- ``fast_rating``: less time on the rating form than the protocol's minimum;
- ``repeated_message``: the same message (case and spacing ignored) sent in every turn (two or more);
- ``straight_lined``: every answer of the rating form is the same option (three or more answers).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pandas as pd

FLAGS: tuple[str, ...] = ("failed_attention", "short_messages", "fast_rating", "repeated_message", "straight_lined")


def _norm(text: str) -> str:
    return " ".join(str(text).lower().split())


def straight_lined(answers: Sequence[str]) -> bool:
    return len(answers) >= 3 and len(set(answers)) == 1


def repeated_message(messages: Sequence[str]) -> bool:
    return len(messages) >= 2 and len({_norm(m) for m in messages}) == 1


def short_messages(messages: Sequence[str], min_chars: int) -> bool:
    return bool(min_chars) and any(len(str(m).strip()) < min_chars for m in messages)


def fast_rating(seconds: float | None, min_seconds: float) -> bool:
    return bool(min_seconds) and seconds is not None and seconds < min_seconds


def failed_attention(answer: str | None, expected: str) -> bool:
    return answer is None or answer != expected


def parse_rule(spec: str | None, protocol_rule: Iterable[str] = ()) -> tuple[str, ...]:
    """``--exclusions``: "protocol" (the protocol's rule, the default), "none", or a comma-separated list."""
    if spec is None or spec == "protocol":
        rule = tuple(protocol_rule)
    elif spec == "none":
        return ()
    else:
        rule = tuple(s.strip() for s in spec.split(",") if s.strip())
    unknown = [r for r in rule if r not in FLAGS]
    if unknown:
        raise ValueError(f"exclusions: unknown flag(s) {', '.join(unknown)}; known: {', '.join(FLAGS)}")
    return rule


@dataclass
class ExclusionReport:
    rule: tuple[str, ...]
    conversations: int = 0                  # conversations with votes
    excluded: list[str] = field(default_factory=list)  # conversation ids, sorted
    by_flag: Counter = field(default_factory=Counter)  # flag -> excluded conversations carrying it
    votes_excluded: int = 0

    def describe(self) -> str:
        if not self.rule:
            return "Exclusions: none applied."
        why = ", ".join(f"{f} {self.by_flag[f]}" for f in self.rule if self.by_flag[f]) or "no flags raised"
        return (f"Exclusions ({', '.join(self.rule)}): {len(self.excluded)} of {self.conversations} "
                f"conversation(s) excluded ({why}); {self.votes_excluded} vote(s) left out, kept in the store.")

    def to_dict(self) -> dict:
        return {"rule": list(self.rule), "conversations": self.conversations, "excluded": self.excluded,
                "by_flag": {f: self.by_flag[f] for f in self.rule}, "votes_excluded": self.votes_excluded}


def apply_exclusions(votes: pd.DataFrame, flags: pd.DataFrame, rule: Sequence[str]) -> tuple[pd.DataFrame, ExclusionReport]:
    """Votes without those of conversations flagged by any flag in ``rule``.

    ``flags``: one row per (conversation_id, flag). Votes are matched on ``conversation_id`` (or
    ``session_id`` where that column is absent).
    """
    key = votes["conversation_id"] if "conversation_id" in votes else votes["session_id"]
    key = key.astype(str)
    report = ExclusionReport(rule=tuple(rule), conversations=int(key.nunique()))
    if not rule or flags is None or flags.empty:
        return votes, report
    hit = flags[flags["flag"].isin(rule)]
    excluded = set(hit["conversation_id"].astype(str)) & set(key)
    for f in rule:
        report.by_flag[f] = len(set(hit.loc[hit["flag"] == f, "conversation_id"].astype(str)) & excluded)
    mask = key.isin(excluded)
    report.excluded = sorted(excluded)
    report.votes_excluded = int(mask.sum())
    kept = votes[~mask].copy()
    kept.attrs = dict(votes.attrs)
    return kept, report
