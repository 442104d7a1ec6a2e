"""Agreement of one group of raters with another on the same pairwise questions (Cohen's kappa).

Used to ask how far an LLM judge (or a third-party human judge) agrees with the participant who had
the conversation. Votes are matched on (conversation, unordered arm pair, aspect) and labelled as
in `extes.analysis.agreement.pairwise_rating_rows`: "x" (the alphabetically first arm better), "y" or
"tie", so the pane order each rater saw does not matter. A conversation rated by several judges gives
one matched pair per judge.

Cohen's kappa = (p_o - p_e) / (1 - p_e), with p_o the share of matched pairs where both agree and p_e
the agreement expected from each side's own label shares (Cohen 1960). It is undefined (None) when
p_e = 1 (both sides used a single, identical label throughout).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pandas as pd

from extes.analysis.io import aspect_order


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Cohen's kappa of two equally long label sequences; None when undefined."""
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa: {len(a)} labels against {len(b)}")
    n = len(a)
    if n == 0:
        return None
    p_o = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    p_e = sum(ca[k] * cb[k] for k in set(ca) | set(cb)) / (n * n)
    if p_e >= 1.0:
        return None
    return (p_o - p_e) / (1.0 - p_e)


def labelled(votes: pd.DataFrame) -> pd.DataFrame:
    """Votes (Votes CSV columns) as (conversation, x, y, aspect, rater_id, label) with x < y."""
    conv = votes["conversation_id"] if "conversation_id" in votes else votes["session_id"]
    conv = conv.where(conv.astype(str).str.len() > 0, votes["session_id"]).astype(str)
    x = votes[["arm_a", "arm_b"]].min(axis=1)
    y = votes[["arm_a", "arm_b"]].max(axis=1)
    winner = votes["arm_a"].where(votes["outcome"] == "a", votes["arm_b"])
    label = winner.eq(x).map({True: "x", False: "y"}).where(votes["outcome"] != "tie", "tie")
    rater = votes["rater_id"].astype(str) if "rater_id" in votes else pd.Series("", index=votes.index)
    return pd.DataFrame({"conversation": conv, "x": x, "y": y, "aspect": votes["aspect"].astype(str),
                         "rater_id": rater, "label": label})


def agreement_with(reference: pd.DataFrame, other: pd.DataFrame) -> pd.DataFrame:
    """Per aspect (and "all"): matched pairs, percent agreement and Cohen's kappa of ``other`` vs ``reference``.

    ``reference`` must hold one vote per (conversation, pair, aspect), like the participants' own votes.
    """
    ref = labelled(reference)
    dup = ref.duplicated(["conversation", "x", "y", "aspect"])
    if dup.any():
        first = ref[dup].iloc[0]
        raise ValueError(f"reference votes: more than one vote for conversation {first.conversation}, "
                         f"{first.x} vs {first.y}, {first.aspect}")
    merged = labelled(other).merge(ref, on=["conversation", "x", "y", "aspect"], suffixes=("", "_ref"))
    rows = []
    for aspect in aspect_order(merged["aspect"]) + ["all"]:
        sub = merged if aspect == "all" else merged[merged["aspect"] == aspect]
        n = len(sub)
        kappa = cohen_kappa(list(sub["label"]), list(sub["label_ref"]))
        rows.append({"aspect": aspect, "n": n,
                     "conversations": int(sub["conversation"].nunique()),
                     "percent_agreement": float((sub["label"] == sub["label_ref"]).mean()) if n else None,
                     "cohen_kappa": kappa})
    return pd.DataFrame(rows, columns=["aspect", "n", "conversations", "percent_agreement", "cohen_kappa"])


def _fmt(v: object) -> str:
    return "n/a" if v is None or (isinstance(v, float) and v != v) else f"{v:.3f}"


def agreement_markdown(title: str, table: pd.DataFrame) -> list[str]:
    """A Markdown section for an `agreement_with` table."""
    lines = [f"### {title}", "", "| aspect | n | conversations | % agreement | Cohen's kappa |",
             "|---|---|---|---|---|"]
    for r in table.itertuples(index=False):
        pct = "n/a" if r.percent_agreement is None or r.percent_agreement != r.percent_agreement \
            else f"{100 * r.percent_agreement:.1f}"
        lines.append(f"| {r.aspect} | {r.n} | {r.conversations} | {pct} | {_fmt(r.cohen_kappa)} |")
    return lines + [""]


def people_agreement_sections(participant: pd.DataFrame, llm: pd.DataFrame | None,
                              judges: pd.DataFrame | None) -> tuple[list[str], dict[str, list[dict]]]:
    """Markdown and JSON for the LLM vs participants and (the ceiling) human judges vs participants."""
    lines: list[str] = []
    tables: dict[str, list[dict]] = {}
    for key, title, other in (("llm_vs_participant", "LLM vs participant", llm),
                              ("judges_vs_participant", "Human judges vs participant (the ceiling)", judges)):
        if other is None or not len(other) or not len(participant):
            continue
        t = agreement_with(participant, other)
        tables[key] = t.to_dict(orient="records")
        lines += agreement_markdown(title, t)
    return lines, tables
