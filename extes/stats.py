"""Dataset statistics in the layout of the ExTES paper (Tables 1, 2, 3 and 5) and `extes stats`.

Definitions (stated here because papers differ):
- utterance: one turn after loading; with ``merge_consecutive`` consecutive utterances of one speaker
  are one utterance. Words are whitespace-separated tokens (`str.split`), not the NLTK tokens the
  automatic metrics use (docs/metrics.md), so "Hi, there!" is 2 words here and 4 tokens there.
- labels of a merged turn: every strategy label of its parts, in order, repeats kept. Table 2 counts
  every label (so merging never changes the Table 2 total); each label counts in the phase of the merged
  turn; transitions read the labels in order.
- phases: the k-th utterance (1-based) of a dialogue of N utterances falls in phase ceil(4k/N), so
  each dialogue is cut into four equal quarters; a phase's distribution is over the strategy labels of
  the assistant turns in that quarter.
- transitions: per dialogue, the sequence of assistant strategy labels with adjacent repeats merged
  (EV, EV, RS -> EV, RS); an n-hop transition is n consecutive moves, i.e. n+1 strategies. The top k are
  ordered by count, ties broken alphabetically by the abbreviated path; every path tying with the k-th
  is kept (``transitions``), and the text output says how many more share the k-th count.
- percentages: largest-remainder rounding (Hamilton's method), so each table's shares add up to exactly
  100 at the printed precision.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extes.dialogue import Dialogue, load_dialogues
from extes.shares import percentages
from extes.taxonomy import ESCONV_STRATEGIES, STRATEGIES

HOPS = (3, 4, 5)
N_PHASES = 4

@dataclass(frozen=True)
class StatTurn:
    """One utterance as the statistics see it: after optional merging, with every strategy label."""

    role: str
    words: int
    labels: tuple[str, ...]


def stat_turns(d: Dialogue, merge_consecutive: bool = False) -> list[StatTurn]:
    """The utterances of ``d`` for the statistics; merged turns keep every label of their parts in order.

    A turn that the loader already merged keeps what the loader recorded (``meta["merged_strategies"]``);
    load unmerged and pass ``merge_consecutive=True`` to keep repeated labels too (`run_stats` does).
    """
    out: list[StatTurn] = []
    for t in d.turns:
        labels = tuple(t.meta.get("merged_strategies") or ([t.strategy] if t.strategy else []))
        labels = labels if t.role == "assistant" else ()
        words = len(t.text.split())
        if merge_consecutive and out and out[-1].role == t.role:
            prev = out.pop()
            out.append(StatTurn(t.role, prev.words + words, prev.labels + labels))
        else:
            out.append(StatTurn(t.role, words, labels))
    return out


@dataclass
class DatasetStats:
    dialogues: int
    utterances: int
    avg_utterances: float
    avg_words: float
    n_strategies: int
    n_scenes: int
    scenes: dict[str, int]
    strategies: dict[str, int]
    phases: dict[str, dict[str, float]]
    transitions: dict[str, list[dict[str, Any]]]
    unlabelled_assistant_turns: int = 0
    sources: dict[str, int] = field(default_factory=dict)
    distinct_transitions: dict[str, int] = field(default_factory=dict)
    top_k: int = 5
    merged: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "dialogues": self.dialogues,
            "utterances": self.utterances,
            "avg_utterances_per_dialogue": round(self.avg_utterances, 2),
            "avg_words_per_utterance": round(self.avg_words, 2),
            "n_strategies": self.n_strategies,
            "n_scenes": self.n_scenes,
            "scenes": self.scenes,
            "strategies": self.strategies,
            "phases": self.phases,
            "transitions": self.transitions,
            "distinct_transitions": self.distinct_transitions,
            "top_k": self.top_k,
            "merge_consecutive": self.merged,
            "unlabelled_assistant_turns": self.unlabelled_assistant_turns,
            "sources": self.sources,
        }


def _merged_sequence(labels: Sequence[str]) -> list[str]:
    seq: list[str] = []
    for s in labels:
        if not seq or seq[-1] != s:
            seq.append(s)
    return seq


def strategy_abbreviation(name: str) -> str:
    for s in (*STRATEGIES, *ESCONV_STRATEGIES):
        if s.name == name:
            return s.abbr
    return name


def top_with_ties(counter: Counter, k: int) -> list[tuple[Any, int]]:
    """The ``k`` most common keys, ties broken by the key (alphabetically), plus every key tying with the
    k-th count. ``key`` must be sortable."""
    ranked = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    if len(ranked) <= k or k <= 0:
        return ranked if k > 0 else []
    kth = ranked[k - 1][1]
    return [kv for kv in ranked if kv[1] >= kth]


def compute_stats(dialogues: list[Dialogue], top_k: int = 5, merge_consecutive: bool = False) -> DatasetStats:
    n = len(dialogues)
    per_dialogue = [stat_turns(d, merge_consecutive) for d in dialogues]
    utterances = sum(len(ts) for ts in per_dialogue)
    words = sum(t.words for ts in per_dialogue for t in ts)
    scenes = Counter(d.scene or "(none)" for d in dialogues)
    strategies = Counter(s for ts in per_dialogue for t in ts for s in t.labels)
    unlabelled = sum(1 for ts in per_dialogue for t in ts if t.role == "assistant" and not t.labels)

    phase_counts = [Counter() for _ in range(N_PHASES)]
    for ts in per_dialogue:
        total = len(ts)
        for k, t in enumerate(ts, 1):
            phase = min(N_PHASES, max(1, math.ceil(N_PHASES * k / total)))
            phase_counts[phase - 1].update(t.labels)
    phases = {}
    for i, c in enumerate(phase_counts, 1):
        ordered = sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))
        shares = percentages([v for _, v in ordered], decimals=4, total=1.0)
        phases[str(i)] = {s: share for (s, _), share in zip(ordered, shares)}

    transitions: dict[str, list[dict[str, Any]]] = {}
    distinct: dict[str, int] = {}
    for hops in HOPS:
        c: Counter[tuple[str, ...]] = Counter()
        for ts in per_dialogue:
            seq = _merged_sequence([s for t in ts for s in t.labels])
            for i in range(len(seq) - hops):
                c[tuple(seq[i : i + hops + 1])] += 1
        by_abbr = Counter({(" -> ".join(strategy_abbreviation(s) for s in path), path): cnt for path, cnt in c.items()})
        transitions[f"{hops}-hop"] = [
            {"path": key[0], "strategies": list(key[1]), "count": cnt} for key, cnt in top_with_ties(by_abbr, top_k)
        ]
        distinct[f"{hops}-hop"] = len(c)

    return DatasetStats(
        dialogues=n,
        utterances=utterances,
        avg_utterances=utterances / n if n else 0.0,
        avg_words=words / utterances if utterances else 0.0,
        n_strategies=len(strategies),
        n_scenes=len(scenes),
        scenes=dict(sorted(scenes.items(), key=lambda kv: (-kv[1], kv[0]))),
        strategies=dict(sorted(strategies.items(), key=lambda kv: (-kv[1], kv[0]))),
        phases=phases,
        transitions=transitions,
        unlabelled_assistant_turns=unlabelled,
        sources=dict(Counter(d.source for d in dialogues)),
        distinct_transitions=distinct,
        top_k=top_k,
        merged=merge_consecutive,
    )


def transition_lines(rows: list[dict[str, Any]], top_k: int) -> list[str]:
    """The shown top-k rows as ``(path, count)`` text plus a tie line: "and 252 more with count 1"."""
    shown = rows[:top_k]
    lines = [f"{r['path']:<40} {r['count']}" for r in shown]
    extra = len(rows) - len(shown)
    if extra:
        lines.append(f"and {extra} more with count {rows[-1]['count']} (ties broken alphabetically)")
    return lines


def format_stats(st: DatasetStats) -> str:
    lines = [
        "Overview (ExTES paper Table 3)",
        f"  dialogues                      {st.dialogues}",
        f"  utterances                     {st.utterances}",
        f"  avg utterances per dialogue    {st.avg_utterances:.2f}",
        f"  avg words per utterance        {st.avg_words:.2f}  (whitespace-separated words)",
        f"  strategies used                {st.n_strategies}",
        f"  scenarios                      {st.n_scenes}",
    ]
    if st.unlabelled_assistant_turns:
        lines.append(f"  assistant turns w/o strategy   {st.unlabelled_assistant_turns}")
    if st.merged:
        lines.append("  consecutive same-speaker utterances merged; a merged turn keeps every strategy label")
    lines += ["", "Scenarios (Table 1; % by largest remainder, equal counts equal)"]
    for (name, cnt), pct in zip(st.scenes.items(), percentages(list(st.scenes.values()))):
        lines.append(f"  {name:<58} {cnt:>6}  {pct:5.1f}%")
    lines += ["", f"Strategies (Table 2; {sum(st.strategies.values())} labels)"]
    for (name, cnt), pct in zip(st.strategies.items(), percentages(list(st.strategies.values()))):
        lines.append(f"  {name + ' (' + strategy_abbreviation(name) + ')':<42} {cnt:>6}  {pct:5.1f}%")
    lines += ["", "Strategy share per conversation phase (top 5 each)"]
    for phase, dist in st.phases.items():
        top = ", ".join(f"{strategy_abbreviation(s)} {100 * v:.0f}%" for s, v in list(dist.items())[:5])
        lines.append(f"  phase {phase}: {top}")
    lines += ["", f"Top {st.top_k} strategy transitions (Table 5; adjacent repeats merged; path, count)"]
    for hops, rows in st.transitions.items():
        lines.append(f"  {hops} ({st.distinct_transitions.get(hops, len(rows))} distinct paths):")
        lines += [f"    {line}" for line in transition_lines(rows, st.top_k)]
    return "\n".join(lines)


def write_plots(st: DatasetStats, out_dir: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []

    fig, ax = plt.subplots(figsize=(10, max(4, 0.28 * len(st.scenes))))
    names = list(st.scenes)[::-1]
    ax.barh(names, [st.scenes[n] for n in names], color="#4C72B0")
    ax.set_xlabel("dialogues")
    ax.set_title("Dialogues per scenario")
    fig.tight_layout()
    written.append(out / "scenes.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 5))
    names = list(st.strategies)
    ax.bar([strategy_abbreviation(n) for n in names], [st.strategies[n] for n in names], color="#55A868")
    ax.set_ylabel("assistant turns")
    ax.set_title("Strategy distribution")
    fig.tight_layout()
    written.append(out / "strategies.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 5))
    all_strats = list(st.strategies)
    bottoms = [0.0] * N_PHASES
    cmap = plt.get_cmap("tab20")
    for i, s in enumerate(all_strats):
        vals = [st.phases[str(p)].get(s, 0.0) for p in range(1, N_PHASES + 1)]
        ax.bar([f"phase {p}" for p in range(1, N_PHASES + 1)], vals, bottom=bottoms, label=strategy_abbreviation(s), color=cmap(i % 20))
        bottoms = [b + v for b, v in zip(bottoms, vals)]
    ax.set_ylabel("share of assistant turns")
    ax.set_title("Strategies over conversation phases")
    ax.legend(ncol=2, fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    written.append(out / "phases.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    return written


# ---------------------------------------------------------------------------------------------------------
# CLI


def configure_stats(p) -> None:
    p.add_argument("paths", nargs="+", help="files or folders (ExTES JSON, ESConv JSON, our JSONL)")
    p.add_argument("--json", action="store_true", help="print one machine-readable JSON object")
    p.add_argument("--plots", metavar="DIR", help="write PNG charts to DIR")
    p.add_argument("--lenient", action="store_true", help="skip bad records and report them")
    p.add_argument("--merge-consecutive", action="store_true",
                   help="merge consecutive same-speaker utterances (a merged turn keeps every strategy label)")
    p.add_argument("--top-k", type=int, default=5, help="transitions shown per hop count (default 5; ties kept)")


def run_stats(args) -> int:
    import sys

    skipped: list[str] = []
    # Loaded unmerged and merged here, so a merged turn keeps every label (repeats too).
    dialogues = load_dialogues(args.paths, lenient=args.lenient, skipped=skipped)
    if skipped:
        print(f"skipped {len(skipped)} bad record(s):", file=sys.stderr)
        for reason in skipped[:20]:
            print(f"  {reason}", file=sys.stderr)
    if not dialogues:
        raise ValueError(f"no dialogues found in {', '.join(args.paths)}")
    st = compute_stats(dialogues, top_k=args.top_k, merge_consecutive=args.merge_consecutive)
    if args.plots:
        for path in write_plots(st, args.plots):
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        d = st.to_dict()
        d["skipped"] = len(skipped)
        print(json.dumps(d, indent=2, ensure_ascii=False))
    else:
        print(format_stats(st))
    return 0
