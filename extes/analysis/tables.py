"""The ExTES paper's tables as objects, rendered as Markdown and as LaTeX (booktabs).

Every builder takes results that other parts of extes computed (`extes.stats.DatasetStats`,
`AgreementResult`, `WinTieLossResult`, the ``results.json`` of `extes evaluate`, the ``toxicity.json`` of
`extes toxicity`) and lays them out; no statistic is computed twice. `extes report`
(`extes/study/report_cli.py`) gathers the inputs and writes ``report.md`` and ``tables.tex``.

Layouts (numbers as in the paper):
- Table 1: dialogues per scenario; Table 2: strategy counts; Table 3: overview; Table 5: top strategy
  transitions. One column group per dataset, side by side.
- Table 4: dataset quality, mean Likert score per metric per source with Fleiss' kappa per metric.
- Tables 6 / 8: automatic metrics, one row per arm, one table per test set.
- Table 7: toxicity, mean probability per attribute per source.
- Table 9: win / tie / loss (%) per aspect in separate columns, with n per cell, significance marks
  after the stated multiple-comparison correction.
Percentages use largest-remainder rounding (`extes.stats.largest_remainder`), so every column or cell of
shares adds up to exactly 100.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from extes.stats import DatasetStats, largest_remainder, transition_lines

METRIC_COLUMNS = ("PPL", "METEOR", "B-2", "B-4", "R-L", "Extrema", "D-1", "D-2", "D-3")
LATEX_PREAMBLE = "\\documentclass{article}\n\\usepackage{booktabs}\n"


@dataclass
class Table:
    """One table: ``header`` (leaf columns), optional ``groups`` [(title, span)] above them (the first
    group usually spans the row-label column with an empty title), ``rows`` of cell text, ``notes``
    printed under it (and in the LaTeX caption's second sentence onwards)."""

    key: str  # stable id: "table1", "table6-test", ...
    title: str
    header: list[str]
    rows: list[list[str]]
    groups: list[tuple[str, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def name_of(names: Mapping[str, str], key: str) -> str:
    return names.get(key, key)


# ------------------------------------------------------------------------------------- datasets


def table3_overview(stats: Mapping[str, DatasetStats], names: Mapping[str, str] = {}) -> Table:
    labels = list(stats)
    rows = [
        ["Dialogues", *[str(stats[k].dialogues) for k in labels]],
        ["Utterances", *[str(stats[k].utterances) for k in labels]],
        ["Avg. utterances per dialogue", *[f"{stats[k].avg_utterances:.2f}" for k in labels]],
        ["Avg. words per utterance", *[f"{stats[k].avg_words:.2f}" for k in labels]],
        ["Strategies", *[str(stats[k].n_strategies) for k in labels]],
        ["Scenarios", *[str(stats[k].n_scenes) for k in labels]],
    ]
    return Table("table3", "Table 3: dataset overview", ["", *[name_of(names, k) for k in labels]], rows,
                 notes=["Words are whitespace-separated (`extes stats`), not the metrics' NLTK tokens."])


def _side_by_side_counts(stats: Mapping[str, DatasetStats], attr: str, names: Mapping[str, str],
                         abbr: bool) -> tuple[list[str], list[list[str]], list[tuple[str, int]]]:
    from extes.stats import _abbr

    labels = list(stats)
    keys: list[str] = []
    for k in labels:
        keys += [x for x in getattr(stats[k], attr) if x not in keys]
    shares = {}
    for k in labels:
        counts = getattr(stats[k], attr)
        shares[k] = dict(zip(counts, largest_remainder(list(counts.values()))))
    rows = []
    for key in keys:
        row = [f"{key} ({_abbr(key)})" if abbr else key]
        for k in labels:
            counts = getattr(stats[k], attr)
            row += [str(counts[key]), f"{shares[k][key]:.1f}"] if key in counts else ["-", "-"]
        rows.append(row)
    total = ["Total"]
    for k in labels:
        total += [str(sum(getattr(stats[k], attr).values())), "100.0"]
    rows.append(total)
    header = ["", *[c for _ in labels for c in ("n", "%")]]
    groups = [("", 1), *[(name_of(names, k), 2) for k in labels]]
    return header, rows, groups


def table1_scenarios(stats: Mapping[str, DatasetStats], names: Mapping[str, str] = {}) -> Table:
    header, rows, groups = _side_by_side_counts(stats, "scenes", names, abbr=False)
    return Table("table1", "Table 1: dialogues per scenario", header, rows, groups,
                 ["% by largest remainder: each dataset's column adds up to 100."])


def table2_strategies(stats: Mapping[str, DatasetStats], names: Mapping[str, str] = {}) -> Table:
    header, rows, groups = _side_by_side_counts(stats, "strategies", names, abbr=True)
    notes = ["Every strategy label counts (a merged turn counts each of its labels); "
             "% by largest remainder."]
    return Table("table2", "Table 2: strategy labels", header, rows, groups, notes)


def table5_transitions(stats: Mapping[str, DatasetStats], names: Mapping[str, str] = {}) -> Table:
    labels = list(stats)
    rows = []
    for hops in next(iter(stats.values())).transitions if stats else []:
        per = {k: transition_lines(stats[k].transitions.get(hops, []), stats[k].top_k) for k in labels}
        depth = max((len(v) for v in per.values()), default=0)
        for i in range(depth):
            row = [hops if i == 0 else ""]
            for k in labels:
                line = per[k][i] if i < len(per[k]) else ""
                if line.startswith("and "):
                    row += [line.replace(" (ties broken alphabetically)", ""), ""]
                elif line:
                    path, count = line.rsplit(None, 1)
                    row += [path.strip(), count]
                else:
                    row += ["", ""]
            rows.append(row)
    header = ["Hops", *[c for _ in labels for c in ("path", "n")]]
    groups = [("", 1), *[(name_of(names, k), 2) for k in labels]]
    k = next(iter(stats.values())).top_k if stats else 5
    return Table("table5", f"Table 5: top-{k} strategy transitions", header, rows, groups,
                 ["Adjacent repeats merged; ties broken alphabetically; 'and N more with count c' "
                  "counts the paths tying with the last one shown."])


# ----------------------------------------------------------------------------------- dataset quality


def table4_quality(quality, agreements: Mapping[str, Any], names: Mapping[str, str] = {}) -> Table:
    """``quality``: `dataset_quality` frame; ``agreements[source]``: that source's `AgreementResult`."""
    sources = list(dict.fromkeys(quality["source"]))
    aspects = list(dict.fromkeys(quality["aspect"]))
    cell = {(r.source, r.aspect): r for r in quality.itertuples(index=False)}
    rows = []
    for aspect in aspects:
        row = [aspect]
        for s in sources:
            r = cell.get((s, aspect))
            agree = agreements.get(s)
            sub = agree.per_aspect.get(aspect, agree) if agree is not None else None
            kappa = sub.fleiss_kappa if sub is not None else float("nan")
            row += [_fmt(r.mean, ".2f") if r is not None else "-", _fmt(kappa, ".3f"),
                    str(r.n_ratings) if r is not None else "-"]
        rows.append(row)
    header = ["Metric", *[c for _ in sources for c in ("mean", "kappa", "n")]]
    groups = [("", 1), *[(name_of(names, s), 3) for s in sources]]
    variants = sorted({a.fleiss_variant for a in agreements.values()})
    return Table("table4", "Table 4: dataset quality (Likert), Fleiss' kappa per metric", header, rows, groups,
                 [f"Fleiss' kappa: {v}." for v in variants] + ["n: ratings."])


# ----------------------------------------------------------------------------------- automatic metrics


def tables_automatic(results: Sequence[Mapping[str, Any]], names: Mapping[str, str] = {}) -> list[Table]:
    """One table per test set from `extes evaluate` ``results.json`` payloads (Tables 6 and 8)."""
    by_set: dict[str, list[Mapping[str, Any]]] = {}
    for r in results:
        by_set.setdefault(r["data"]["label"], []).append(r)
    out = []
    for i, (label, rows) in enumerate(by_set.items()):
        body = [[name_of(names, r["arm"]["name"]), *[_fmt(r["metrics"].get(c), ".2f") for c in METRIC_COLUMNS]]
                for r in rows]
        number = "6" if i == 0 else "8"
        out.append(Table(f"table{number}-{label}",
                         f"Table {number}: automatic metrics on {name_of(names, label)}",
                         ["Model", *METRIC_COLUMNS], body,
                         notes=["All but PPL x100; D-n corpus-level; '-' = not computed (see results.json)."]))
    return out


def table7_toxicity(rows: Sequence[Mapping[str, Any]], names: Mapping[str, str] = {}) -> Table:
    """From `extes toxicity`'s ``toxicity.json`` rows: {source, means{attribute: p}, n_scored, n_failed}."""
    attrs: list[str] = []
    for r in rows:
        attrs += [a for a in r["means"] if a not in attrs]
    body = [[name_of(names, r["source"]), *[_fmt(r["means"].get(a), ".4f") for a in attrs], str(r["n_scored"])]
            for r in rows]
    scorer = {r.get("scorer", "") for r in rows} - {""}
    return Table("table7", "Table 7: toxicity (mean probability)", ["Source", *attrs, "n"], body,
                 notes=[f"Scorer: {s}." for s in sorted(scorer)])


# --------------------------------------------------------------------------------------- pairwise


def table9_pairwise(wtl, names: Mapping[str, str] = {}, significance: float = 0.05) -> Table:
    """Win / tie / loss (%) per aspect in separate columns plus n; "*" after the win share marks a
    corrected p < ``significance``."""
    from extes.analysis.io import aspect_order
    from extes.analysis.pairwise import CORRECTION_NAMES

    aspects = aspect_order(wtl.rows["aspect"])
    cells = {(r.opponent, r.aspect): r for r in wtl.rows.itertuples(index=False)}
    rows = []
    for opp in dict.fromkeys(wtl.rows["opponent"]):
        row = [f"vs {name_of(names, opp)}"]
        for aspect in aspects:
            r = cells.get((opp, aspect))
            if r is None:
                row += ["-", "-", "-", "0"]
                continue
            w, t, lo = wtl.percent(r)
            row += [f"{w:.1f}{wtl.mark(r, significance)}", f"{t:.1f}", f"{lo:.1f}", str(int(r.n))]
        rows.append(row)
    header = ["", *[c for _ in aspects for c in ("W", "T", "L", "n")]]
    groups = [(name_of(names, wtl.reference), 1), *[(a.capitalize(), 4) for a in aspects]]
    notes = [
        f"{name_of(names, wtl.reference)} against each arm, from its side; W/T/L in %, largest remainder "
        f"(each cell sums to 100); n = votes in the cell.",
        f"* = two-sided sign test (ties excluded) p < {significance:g} after {CORRECTION_NAMES[wtl.correction]} "
        f"over the {wtl.tests} tests of this table.",
    ]
    return Table("table9", "Table 9: human evaluation, win / tie / loss", header, rows, groups, notes)


# ------------------------------------------------------------------------------------- rendering


def to_markdown(table: Table) -> str:
    def esc(text: str) -> str:
        return text.replace("|", "\\|")

    header = list(table.header)
    if table.groups:  # Markdown has one header row: prefix leaf columns with their group's title
        cols, i = [], 0
        for title, span in table.groups:
            for j in range(span):
                leaf = header[i + j]
                cols.append(f"{title} {leaf}".strip() if title and leaf else (title or leaf))
            i += span
        header = cols
    lines = [f"### {table.title}", "", "| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in table.rows]
    if table.notes:
        lines += [""] + [f"- {n}" for n in table.notes]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
                  "<": r"\textless{}", ">": r"\textgreater{}", "*": r"$^{*}$", "\x00": r"$\rightarrow$"}


def latex_escape(text: str) -> str:
    """Text safe in a LaTeX table cell; "->" becomes an arrow and "*" a superscript star."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text).replace("->", "\x00"))


def to_latex(table: Table) -> str:
    """A ``table`` float (``table*`` above 10 columns) with a booktabs ``tabular``; needs only
    ``\\usepackage{booktabs}``."""
    n = len(table.header)
    spec = "l" + "r" * (n - 1)
    size = "\\small" if n <= 10 else "\\footnotesize"  # Table 9 has 4 columns per aspect
    env = "table" if n <= 10 else "table*"  # wide tables span both columns of a two-column paper
    lines = [f"\\begin{{{env}}}[t]", "\\centering", size, "\\setlength{\\tabcolsep}{3pt}" if n <= 10
             else "\\setlength{\\tabcolsep}{2pt}",
             f"\\begin{{tabular}}{{{spec}}}", "\\toprule"]
    if table.groups:
        cells, rules, col = [], [], 1
        for title, span in table.groups:
            cells.append(f"\\multicolumn{{{span}}}{{c}}{{{latex_escape(title)}}}" if span > 1
                         else latex_escape(title))
            if title and span > 1:
                rules.append(f"\\cmidrule(lr){{{col}-{col + span - 1}}}")
            col += span
        lines.append(" & ".join(cells) + " \\\\")
        if rules:
            lines.append(" ".join(rules))
    lines.append(" & ".join(latex_escape(h) for h in table.header) + " \\\\")
    lines.append("\\midrule")
    for row in table.rows:
        if row and row[0] == "Total":
            lines.append("\\midrule")
        lines.append(" & ".join(latex_escape(c) for c in row) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    caption = latex_escape(table.title) + (". " + " ".join(latex_escape(x) for x in table.notes)
                                           if table.notes else "")
    lines += [f"\\caption{{{caption}}}", f"\\label{{tab:{table.key}}}", f"\\end{{{env}}}"]
    return "\n".join(lines) + "\n"


def latex_document(tables: Sequence[Table]) -> str:
    """A minimal standalone document holding ``tables`` (what the tests compile)."""
    body = "\n".join(to_latex(t) for t in tables)
    return LATEX_PREAMBLE + "\\begin{document}\n" + body + "\\end{document}\n"
