"""Exports and per-round statistics of a build run, all derived from the journal.

Files written into the run folder (atomically, so a crash never leaves half a file):
- generated.json / generated.jsonl: the accepted generated dialogues (ExTES JSON / our JSONL)
- extes.json / extes.jsonl: the whole dataset, seeds first, then the generated dialogues
- rounds.json: per-round statistics (acceptance, rejection reasons, cost, diversity, human fixes)
- stats.txt / stats.json: `extes stats` of the generated dialogues
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from extes.dialogue import Dialogue, atomic_write, write_extes_json, write_jsonl
from extes.selfchat.dedup import words
from extes.selfchat.state import RunState, round_of
from extes.stats import compute_stats, format_stats
from extes.taxonomy import SCENARIO_NAMES


def distinct_n(dialogues: list[Dialogue], n: int) -> float:
    total, seen = 0, set()
    for d in dialogues:
        for t in d.turns:
            w = words(t.text)
            grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
            total += len(grams)
            seen.update(grams)
    return len(seen) / total if total else 0.0


def round_stats(state: RunState, round_: int) -> dict[str, Any]:
    rids = [rid for rid in state.requests if round_of(rid) == round_]
    decisions = [state.decisions[r] for r in rids if r in state.decisions]
    status = Counter(d["status"] for d in decisions)
    reasons: Counter = Counter()
    for d in decisions:
        if d["status"] != "accepted":
            reasons.update({r.split(":", 1)[0] for r in d["reasons"]})
    responses = [state.responses[r] for r in rids if r in state.responses]
    cost = sum(r.get("cost", 0.0) for r in responses) + sum(
        state.abandoned[r].get("charged", 0.0) for r in rids if r in state.abandoned)
    final = state.accepted({round_})
    human = [d for d in final if d.meta.get("reviewed")]
    edited = [d for d in human if d.meta.get("edited")]
    reviewed = [d for d in decisions if state.reviews.get(d["dialogue_id"])]
    scenes = {d.scene for d in final}
    return {
        "round": round_,
        "requests": len(rids),
        "responses": len(responses),
        "errors": sum(1 for r in rids if r in state.errors),
        "abandoned": sum(1 for r in rids if r in state.abandoned),
        "retries": sum(state.retries[r] for r in rids),
        "decisions": dict(status),
        "acceptance_rate": status["accepted"] / len(decisions) if decisions else 0.0,
        "rejection_reasons": dict(reasons.most_common()),
        "prompt_tokens": sum(r["usage"]["prompt_tokens"] for r in responses),
        "completion_tokens": sum(r["usage"]["completion_tokens"] for r in responses),
        "cost_usd": round(cost, 6),
        "accepted_final": len(final),
        "reviewed": len(reviewed),
        "accepted_by_review": len(human),
        "edited_by_review": len(edited),
        "human_adjustment_rate": len(human) / len(final) if final else 0.0,
        "distinct_1": round(distinct_n(final, 1), 4),
        "distinct_2": round(distinct_n(final, 2), 4),
        "scenarios_covered": len(scenes),
        "scenario_coverage": len(scenes) / len(SCENARIO_NAMES),
    }


def export_run(run_dir: str | Path, seeds: list[Dialogue], n_rounds: int | None = None) -> list[dict[str, Any]]:
    run_dir = Path(run_dir)
    state = RunState.load(run_dir)
    generated = state.accepted()
    write_extes_json(generated, run_dir / "generated.json")
    write_jsonl(generated, run_dir / "generated.jsonl")
    write_extes_json(list(seeds) + generated, run_dir / "extes.json")
    write_jsonl(list(seeds) + generated, run_dir / "extes.jsonl")
    seen_rounds = {round_of(r) for r in state.requests}
    last = max(seen_rounds | {n_rounds or 0})
    rounds = [round_stats(state, k) for k in range(1, last + 1)]
    by_model: dict[str, dict[str, float]] = {}
    for r in state.responses.values():
        m = by_model.setdefault(r.get("model") or "?", {"requests": 0, "prompt_tokens": 0,
                                                        "completion_tokens": 0, "cost_usd": 0.0})
        m["requests"] += 1
        m["prompt_tokens"] += r["usage"]["prompt_tokens"]
        m["completion_tokens"] += r["usage"]["completion_tokens"]
        m["cost_usd"] = round(m["cost_usd"] + r.get("cost", 0.0), 6)
    totals = {
        "accepted": len(generated),
        "seeds": len(seeds),
        "cost_usd": round(state.spent, 6),
        "requests": len(state.requests),
        "by_model": by_model,
        "human_adjustment_rate": (sum(r["accepted_by_review"] for r in rounds) / len(generated)
                                  if generated else 0.0),
    }
    atomic_write(run_dir / "rounds.json", json.dumps({"rounds": rounds, "total": totals}, indent=2) + "\n")
    if generated:  # `extes stats` for the generated part (Tables 1-3 and 5 of the paper)

        st = compute_stats(generated)
        atomic_write(run_dir / "stats.txt", format_stats(st) + "\n")
        atomic_write(run_dir / "stats.json", json.dumps(st.to_dict(), indent=2, ensure_ascii=False) + "\n")
    return rounds
