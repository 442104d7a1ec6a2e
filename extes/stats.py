"""Dataset statistics in the layout of the ExTES paper (Tables 1, 2, 3 and 5) and `extes stats`.

Definitions (stated here because papers differ):
- utterance: one turn after loading (consecutive same-speaker utterances are kept apart unless the
  loader was asked to merge them); words are whitespace-separated tokens.
- phases: the k-th utterance (1-based) of a dialogue of N utterances falls in phase ceil(4k/N), so
  each dialogue is cut into four equal quarters; a phase's distribution is over assistant turns with
  a strategy in that quarter.
- transitions: per dialogue, the sequence of assistant strategies with adjacent repeats merged
  (EV, EV, RS -> EV, RS); an n-hop transition is n consecutive moves, i.e. n+1 strategies.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extes.dialogue import Dialogue, load_dialogues
from extes.taxonomy import ESCONV_STRATEGIES, STRATEGIES

HOPS = (3, 4, 5)
N_PHASES = 4


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
            "unlabelled_assistant_turns": self.unlabelled_assistant_turns,
            "sources": self.sources,
        }


def _merged_sequence(d: Dialogue) -> list[str]:
    seq: list[str] = []
    for s in d.strategies:
        if not seq or seq[-1] != s:
            seq.append(s)
    return seq


def _abbr(name: str) -> str:
    for s in (*STRATEGIES, *ESCONV_STRATEGIES):
        if s.name == name:
            return s.abbr
    return name


def compute_stats(dialogues: list[Dialogue], top_k: int = 5) -> DatasetStats:
    n = len(dialogues)
    utterances = sum(len(d.turns) for d in dialogues)
    words = sum(len(t.text.split()) for d in dialogues for t in d.turns)
    scenes = Counter(d.scene or "(none)" for d in dialogues)
    strategies = Counter(s for d in dialogues for s in d.strategies)
    unlabelled = sum(1 for d in dialogues for t in d.turns if t.role == "assistant" and not t.strategy)

    phase_counts = [Counter() for _ in range(N_PHASES)]
    for d in dialogues:
        total = len(d.turns)
        for k, t in enumerate(d.turns, 1):
            if t.role == "assistant" and t.strategy:
                phase = min(N_PHASES, max(1, math.ceil(N_PHASES * k / total)))
                phase_counts[phase - 1][t.strategy] += 1
    phases = {}
    for i, c in enumerate(phase_counts, 1):
        tot = sum(c.values())
        phases[str(i)] = {s: round(v / tot, 4) for s, v in c.most_common()} if tot else {}

    transitions: dict[str, list[dict[str, Any]]] = {}
    for hops in HOPS:
        c: Counter[tuple[str, ...]] = Counter()
        for d in dialogues:
            seq = _merged_sequence(d)
            for i in range(len(seq) - hops):
                c[tuple(seq[i : i + hops + 1])] += 1
        transitions[f"{hops}-hop"] = [
            {"path": " -> ".join(_abbr(s) for s in path), "strategies": list(path), "count": cnt}
            for path, cnt in c.most_common(top_k)
        ]

    return DatasetStats(
        dialogues=n,
        utterances=utterances,
        avg_utterances=utterances / n if n else 0.0,
        avg_words=words / utterances if utterances else 0.0,
        n_strategies=len(strategies),
        n_scenes=len(scenes),
        scenes=dict(scenes.most_common()),
        strategies=dict(strategies.most_common()),
        phases=phases,
        transitions=transitions,
        unlabelled_assistant_turns=unlabelled,
        sources=dict(Counter(d.source for d in dialogues)),
    )


def format_stats(st: DatasetStats) -> str:
    lines = [
        "Overview (ExTES paper Table 3)",
        f"  dialogues                      {st.dialogues}",
        f"  utterances                     {st.utterances}",
        f"  avg utterances per dialogue    {st.avg_utterances:.2f}",
        f"  avg words per utterance        {st.avg_words:.2f}",
        f"  strategies used                {st.n_strategies}",
        f"  scenarios                      {st.n_scenes}",
    ]
    if st.unlabelled_assistant_turns:
        lines.append(f"  assistant turns w/o strategy   {st.unlabelled_assistant_turns}")
    lines += ["", "Scenarios (Table 1)"]
    for name, cnt in st.scenes.items():
        lines.append(f"  {name:<58} {cnt:>6}  {cnt / st.dialogues:6.1%}")
    total = sum(st.strategies.values()) or 1
    lines += ["", "Strategies (Table 2)"]
    for name, cnt in st.strategies.items():
        lines.append(f"  {name + ' (' + _abbr(name) + ')':<42} {cnt:>6}  {cnt / total:6.1%}")
    lines += ["", "Strategy share per conversation phase (top 5 each)"]
    for phase, dist in st.phases.items():
        top = ", ".join(f"{_abbr(s)} {v:.0%}" for s, v in list(dist.items())[:5])
        lines.append(f"  phase {phase}: {top}")
    lines += ["", "Top strategy transitions (Table 5; adjacent repeats merged)"]
    for hops, rows in st.transitions.items():
        lines.append(f"  {hops}:")
        for r in rows:
            lines.append(f"    {r['path']:<40} {r['count']}")
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
    ax.bar([_abbr(n) for n in names], [st.strategies[n] for n in names], color="#55A868")
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
        ax.bar([f"phase {p}" for p in range(1, N_PHASES + 1)], vals, bottom=bottoms, label=_abbr(s), color=cmap(i % 20))
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
    p.add_argument("--merge-consecutive", action="store_true", help="merge consecutive same-speaker utterances")


def run_stats(args) -> int:
    import sys

    skipped: list[str] = []
    dialogues = load_dialogues(args.paths, lenient=args.lenient, merge_consecutive=args.merge_consecutive,
                               skipped=skipped)
    if skipped:
        print(f"skipped {len(skipped)} bad record(s):", file=sys.stderr)
        for reason in skipped[:20]:
            print(f"  {reason}", file=sys.stderr)
    if not dialogues:
        raise ValueError(f"no dialogues found in {', '.join(args.paths)}")
    st = compute_stats(dialogues)
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
