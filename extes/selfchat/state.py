"""The state of a build run, derived from its journal (the only thing a run keeps on disk that
matters). Used by the pipeline to resume, by review to list its queue, and by the exporters."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extes.dialogue import Dialogue
from extes.llm.journal import JOURNAL_NAME, read_journal


def dialogue_id_for(request_id: str) -> str:
    return f"gen-{request_id}"


def round_of(request_id: str) -> int:
    """Request ids look like r<round>-<seq>."""
    return int(request_id.split("-", 1)[0][1:])


@dataclass
class RunState:
    journal_path: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)
    responses: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, dict[str, Any]] = field(default_factory=dict)
    abandoned: dict[str, dict[str, Any]] = field(default_factory=dict)
    decisions: dict[str, dict[str, Any]] = field(default_factory=dict)      # request id -> decision
    reviews: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    retries: Counter = field(default_factory=Counter)                       # request id -> retries

    @classmethod
    def load(cls, run_dir: str | Path) -> RunState:
        run_dir = Path(run_dir)
        path = run_dir / JOURNAL_NAME if run_dir.is_dir() or not run_dir.suffix else run_dir
        st = cls(path)
        st.records = read_journal(path)
        for rec in st.records:
            t = rec["type"]
            rid = rec.get("id")
            if t == "request":
                st.requests[rid] = rec
            elif t == "response":
                st.responses[rid] = rec
            elif t == "error":
                st.errors[rid] = rec
            elif t == "abandoned":
                st.abandoned[rid] = rec
            elif t == "decision":
                st.decisions[rid] = rec
            elif t == "review":
                st.reviews[rec["dialogue_id"]].append(rec)
            elif t == "retry":
                st.retries[rid] += 1
        return st

    # -- money --------------------------------------------------------------------------------------
    @property
    def spent(self) -> float:
        return sum(r.get("cost", 0.0) for r in self.responses.values()) + sum(
            r.get("charged", 0.0) for r in self.abandoned.values())

    # -- progress -----------------------------------------------------------------------------------
    def unsettled(self) -> list[str]:
        """Requests sent (or about to be) with no response and no error: in flight when a run died."""
        return [rid for rid in self.requests
                if rid not in self.responses and rid not in self.errors and rid not in self.abandoned]

    def undecided(self) -> list[str]:
        """Paid-for responses whose decision was not written (the run died in between)."""
        return [rid for rid in self.responses if rid not in self.decisions]

    def next_seq(self, round_: int) -> int:
        seqs = [int(rid.split("-", 1)[1]) for rid in self.requests if round_of(rid) == round_]
        return max(seqs, default=0) + 1

    def requests_in_round(self, round_: int) -> int:
        return sum(1 for rid in self.requests if round_of(rid) == round_)

    # -- outcomes -----------------------------------------------------------------------------------
    def final_status(self, request_id: str) -> str | None:
        dec = self.decisions.get(request_id)
        if dec is None:
            return None
        revs = self.reviews.get(dec["dialogue_id"])
        if revs:
            return "accepted" if revs[-1]["action"] == "accept" else "discarded"
        return dec["status"]

    def accepted(self, rounds: set[int] | None = None) -> list[Dialogue]:
        """Accepted generated dialogues in the order they were accepted (automatically or by review)."""
        order: list[tuple[int, Dialogue]] = []
        for pos, rec in enumerate(self.records):
            if rec["type"] == "decision" and rec["status"] == "accepted" and rec.get("dialogue"):
                if self.decisions.get(rec["id"]) is not rec:
                    continue
                revs = self.reviews.get(rec["dialogue_id"])
                if revs and revs[-1]["action"] != "accept":
                    continue
                d = Dialogue.from_dict(revs[-1]["after"] if revs else rec["dialogue"])
            elif rec["type"] == "review" and rec["action"] == "accept":
                if self.reviews[rec["dialogue_id"]][-1] is not rec:
                    continue
                dec = self.decisions.get(rec["id"])
                if dec is not None and dec["status"] == "accepted":
                    continue  # an edit of an auto-accepted dialogue keeps its original position
                d = Dialogue.from_dict(rec["after"])
            else:
                continue
            if rounds is not None and d.meta.get("round") not in rounds:
                continue
            order.append((pos, d))
        return [d for _, d in order]

    def accepted_counts(self, round_: int) -> Counter:
        return Counter(d.scene for d in self.accepted({round_}))

    def queue(self) -> list[dict[str, Any]]:
        """Decisions a reviewer can act on: needs_review and rejected ones that have a parsed
        dialogue and no review yet; needs_review first."""
        items = [dec for dec in self.decisions.values()
                 if dec["status"] in ("needs_review", "rejected") and dec.get("dialogue")
                 and not self.reviews.get(dec["dialogue_id"])]
        return sorted(items, key=lambda d: (d["status"] != "needs_review", d["id"]))
