"""The ExTES paper's tables as objects, rendered as Markdown and as LaTeX (booktabs).

Every builder takes results that other parts of extes computed (`extes.stats.DatasetStats`,
`AgreementResult`, `WinTieLossResult`, the ``results.json`` of `extes evaluate`, the ``toxicity.json`` of
`extes toxicity`) and lays them out; no statistic is computed twice. `extes report`
(`extes/commands/report_cli.py`) gathers the inputs and writes ``report.md`` and ``tables.tex``.

Layouts (numbers as in the paper):
- Table 1: dialogues per scenario; Table 2: strategy counts; Table 3: overview; Table 5: top strategy
  transitions. One column group per dataset, side by side.
- Table 4: dataset quality, mean Likert score per metric per source with Fleiss' kappa per metric.
- Tables 6 / 8: automatic metrics, one row per arm, one table per test set.
- Table 7: toxicity, mean probability per attribute per source.
- Table 9: win / tie / loss (%) per aspect in separate columns, with n per cell, significance marks
  after the stated multiple-comparison correction.
Percentages use largest-remainder rounding with equal counts always printed equal
(`extes.shares.percentages`), so every column or cell of shares adds up to 100, or falls short by
a few tenths where the last 0.1s cannot go to every one of a group of equal counts (the notes say so).

LaTeX: each table's caption carries the paper's number (``\\thetable`` is set to it inside the float, so
LaTeX prints "Table 9: ..." and ``\\ref{tab:table9}`` gives 9, not "Table 1: Table 9: ..."); a table
wider than `MAX_LATEX_COLUMNS` columns is set as stacked blocks of column groups (Table 9: three aspects,
then two), so it fits the text width of an article.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from extes.analysis.corrections import CORRECTIONS
from extes.analysis.io import aspect_order
from extes.shares import RULE, percentages
from extes.stats import DatasetStats, strategy_abbreviation, transition_lines

LATEX_PREAMBLE = "\\documentclass{article}\n\\usepackage{booktabs}\n"
MAX_LATEX_COLUMNS = 13  # wider tables are set as stacked blocks of column groups


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


def table3_overview(stats: Mapping[str, DatasetStats], names: Mapping[str, str] = {},
                    merged: bool = False) -> Table:
    """``merged``: the statistics were computed with consecutive same-speaker utterances merged
    (`extes report --merge-consecutive`); the notes say so, since it changes the utterance counts."""
    labels = list(stats)
    rows = [
        ["Dialogues", *[str(stats[k].dialogues) for k in labels]],
        ["Utterances", *[str(stats[k].utterances) for k in labels]],
        ["Avg. utterances per dialogue", *[f"{stats[k].avg_utterances:.2f}" for k in labels]],
        ["Avg. words per utterance", *[f"{stats[k].avg_words:.2f}" for k in labels]],
        ["Strategies", *[str(stats[k].n_strategies) for k in labels]],
        ["Scenarios", *[str(stats[k].n_scenes) for k in labels]],
    ]
    notes = ["Words are whitespace-separated (`extes stats`), not the metrics' NLTK tokens."]
    notes.append("Utterances: consecutive utterances of one speaker merged into one (--merge-consecutive)."
                 if merged else "Utterances: as in the files, consecutive ones of one speaker not merged.")
    return Table("table3", "Table 3: dataset overview", ["", *[name_of(names, k) for k in labels]], rows,
                 notes=notes)


def _side_by_side_counts(stats: Mapping[str, DatasetStats], attr: str, names: Mapping[str, str],
                         abbr: bool) -> tuple[list[str], list[list[str]], list[tuple[str, int]]]:
    labels = list(stats)
    keys: list[str] = []
    for k in labels:
        keys += [x for x in getattr(stats[k], attr) if x not in keys]
    shares = {}
    for k in labels:
        counts = getattr(stats[k], attr)
        shares[k] = dict(zip(counts, percentages(list(counts.values()))))
    rows = []
    for key in keys:
        row = [f"{key} ({strategy_abbreviation(key)})" if abbr else key]
        for k in labels:
            counts = getattr(stats[k], attr)
            row += [str(counts[key]), f"{shares[k][key]:.1f}"] if key in counts else ["-", "-"]
        rows.append(row)
    total = ["Total"]
    for k in labels:
        total += [str(sum(getattr(stats[k], attr).values())), f"{sum(shares[k].values()):.1f}"]
    rows.append(total)
    header = ["", *[c for _ in labels for c in ("n", "%")]]
    groups = [("", 1), *[(name_of(names, k), 2) for k in labels]]
    return header, rows, groups


def table1_scenarios(stats: Mapping[str, DatasetStats], names: Mapping[str, str] = {}) -> Table:
    header, rows, groups = _side_by_side_counts(stats, "scenes", names, abbr=False)
    return Table("table1", "Table 1: dialogues per scenario", header, rows, groups,
                 [f"%: {RULE}."])


def table2_strategies(stats: Mapping[str, DatasetStats], names: Mapping[str, str] = {}) -> Table:
    header, rows, groups = _side_by_side_counts(stats, "strategies", names, abbr=True)
    notes = [f"Every strategy label counts (a merged turn counts each of its labels); %: {RULE}."]
    return Table("table2", "Table 2: strategy labels", header, rows, groups, notes)


def table5_transitions(stats: Mapping[str, DatasetStats], names: Mapping[str, str] = {},
                       merged: bool = False) -> Table:
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
    notes = ["Adjacent repeats merged; ties broken alphabetically; 'and N more with count c' "
             "counts the paths tying with the last one shown."]
    if merged:
        notes.append("Transitions read across utterances with consecutive ones of one speaker merged "
                     "(--merge-consecutive).")
    return Table("table5", f"Table 5: top-{k} strategy transitions", header, rows, groups, notes)


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


def tables_automatic(results: Sequence[Mapping[str, Any]], columns: Sequence[str],
                     names: Mapping[str, str] = {}) -> list[Table]:
    """One table per test set from `extes evaluate` ``results.json`` payloads (Tables 6 and 8); ``columns``:
    the metric names, `extes.metrics.registry.TABLE_COLUMNS` (the metrics layer is this one's sibling)."""
    by_set: dict[str, list[Mapping[str, Any]]] = {}
    for r in results:
        by_set.setdefault(r["data"]["label"], []).append(r)
    out = []
    for i, (label, rows) in enumerate(by_set.items()):
        body = [[name_of(names, r["arm"]["name"]), *[_fmt(r["metrics"].get(c), ".2f") for c in columns]]
                for r in rows]
        number = "6" if i == 0 else "8" if i == 1 else f"8{chr(ord('a') + i - 1)}"  # 6, 8, 8b, 8c: never twice
        out.append(Table(f"table{number}-{label}",
                         f"Table {number}: automatic metrics on {name_of(names, label)}",
                         ["Model", *columns], body,
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


def table_screened_replies(frame, names: Mapping[str, str] = {}) -> Table:
    """Replies the study's screen replaced, per arm (a study database's ``screening_frame``: arm, replies,
    screened_out, share, capped_cut)."""
    body = [[name_of(names, r.arm), f"{r.screened_out} of {r.replies}", _fmt(100 * r.share, ".1f"),
             str(r.capped_cut)] for r in frame.itertuples(index=False)]
    return Table("screened", "Replies screened out before they were shown, per arm",
                 ["Arm", "Screened out", "%", "Capped, ended at a sentence"], body,
                 notes=["Screened out: replaced by the neutral message and the crisis resources (self-harm "
                        "encouragement patterns, or the protocol's toxicity classifier); the raw replies are in "
                        "the database (messages.raw_text)."])


# --------------------------------------------------------------------------------------- pairwise


def table9_pairwise(wtl, names: Mapping[str, str] = {}, significance: float = 0.05) -> Table:
    """Win / tie / loss (%) per aspect in separate columns plus n; "*" after the win share marks a
    corrected p < ``significance``."""

    aspects = aspect_order(wtl.rows["aspect"])
    cells = {(r.opponent, r.aspect): r for r in wtl.rows.itertuples(index=False)}
    rows = []
    for opp in dict.fromkeys(wtl.rows["opponent"]):
        row = [f"vs {name_of(names, opp)}"]
        for aspect in aspects:
            r = cells.get((opp, aspect))
            if r is None or r.n == 0:
                row += ["-", "-", "-", "0"]
                continue
            w, t, lo = wtl.percent(r)
            row += [f"{w:.1f}{wtl.mark(r, significance)}", f"{t:.1f}", f"{lo:.1f}", str(int(r.n))]
        rows.append(row)
    header = ["", *[c for _ in aspects for c in ("W", "T", "L", "n")]]
    groups = [(name_of(names, wtl.reference), 1), *[(a.capitalize(), 4) for a in aspects]]
    notes = [
        f"{name_of(names, wtl.reference)} against each arm, from its side; W/T/L: {RULE}; n = votes in the cell.",
        f"* = two-sided sign test (ties excluded) p < {significance:g} after {CORRECTIONS[wtl.correction]} "
        f"over the {wtl.tests} tests of this table.",
        *_table9_gaps(wtl, names),
    ]
    return Table("table9", "Table 9: human evaluation, win / tie / loss", header, rows, groups, notes)


def _table9_gaps(wtl, names: Mapping[str, str]) -> list[str]:
    """Notes for the cells without votes ("-" and n = 0), with display names."""
    rows = wtl.rows
    silent = list(dict.fromkeys(rows.loc[rows["status"] == "no votes", "aspect"]))
    out = [f"No votes at all on {', '.join(silent)}: its cells read - with n = 0."] if silent else []
    voted = [a for a in dict.fromkeys(rows["aspect"]) if a not in silent]
    never = rows[rows["status"] == "never compared"]
    pairs = []
    for opp, group in never.groupby("opponent", sort=False):
        where = "" if len(group) == len(voted) else f" ({', '.join(group['aspect'])})"
        pairs.append(f"{name_of(names, opp)}{where}")
    if pairs:
        out.append(f"Never compared with {name_of(names, wtl.reference)} (- with n = 0): {'; '.join(pairs)}.")
    return out


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
                  "<": r"\textless{}", ">": r"\textgreater{}", "*": r"$^{*}$", "\x00": r"$\rightarrow$",
                  "`": r"\textasciigrave{}"}
_CODE_SPAN = re.compile(r"`([^`]+)`")
_NUMBERED = re.compile(r"Table (\S+): (.*)", re.DOTALL)


def _escape_plain(text: str) -> str:
    out = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text.replace("->", "\x00"))
    return out.replace("--", "-{}-")  # "--merge-consecutive", not an en dash


def latex_escape(text: str) -> str:
    """Text safe in a LaTeX table cell; "->" becomes an arrow, "*" a superscript star, a `code` span
    typewriter text (a backtick would print as an opening quote) and "--" two hyphens."""
    parts = _CODE_SPAN.split(str(text))  # even: text, odd: code
    return "".join(_escape_plain(p) if i % 2 == 0 else f"\\texttt{{{_escape_plain(p)}}}" for i, p in enumerate(parts))


def _blocks(table: Table) -> list[list[int]]:
    """Groups of column indices, each with the row-label column first, at most `MAX_LATEX_COLUMNS` wide:
    a wide table (Table 9: 21 columns) is set as stacked blocks of whole column groups."""
    n = len(table.header)
    if n <= MAX_LATEX_COLUMNS or not table.groups or table.groups[0][1] != 1:
        return [list(range(n))]
    blocks, current, col = [], [0], 1
    for _title, span in table.groups[1:]:
        if len(current) > 1 and len(current) + span > MAX_LATEX_COLUMNS:
            blocks.append(current)
            current = [0]
        current += list(range(col, col + span))
        col += span
    return blocks + [current]


def _tabular(table: Table, cols: list[int]) -> list[str]:
    lines = [f"\\begin{{tabular}}{{l{'r' * (len(cols) - 1)}}}", "\\toprule"]
    if table.groups:
        keep = set(cols)
        cells, rules, start, out_col = [], [], 0, 1
        for title, span in table.groups:
            width = len([c for c in range(start, start + span) if c in keep])
            start += span
            if not width:
                continue
            cells.append(f"\\multicolumn{{{width}}}{{c}}{{{latex_escape(title)}}}" if width > 1 else latex_escape(title))
            if title and width > 1:
                rules.append(f"\\cmidrule(lr){{{out_col}-{out_col + width - 1}}}")
            out_col += width
        lines.append(" & ".join(cells) + " \\\\")
        if rules:
            lines.append(" ".join(rules))
    lines.append(" & ".join(latex_escape(table.header[c]) for c in cols) + " \\\\")
    lines.append("\\midrule")
    for row in table.rows:
        if row and row[0] == "Total":
            lines.append("\\midrule")
        lines.append(" & ".join(latex_escape(row[c]) for c in cols) + " \\\\")
    return lines + ["\\bottomrule", "\\end{tabular}"]


TEXT_WIDTH_PT = 345.0  # an article's text width (preview.tex); a paper's table* is wider
_SIZES = (("\\small", 9.0), ("\\footnotesize", 8.0), ("\\scriptsize", 7.0))


def _font_size(table: Table, blocks: list[list[int]]) -> str:
    """The largest of small / footnotesize / scriptsize at which the widest row is estimated to fit the
    text width (about 0.51 em per character, measured on Table 5's arrows) and a long table the page
    (footnotesize from 36 rows on); more than 10 columns start at footnotesize."""
    chars = max(sum(len(str(r[c])) for c in cols) for cols in blocks for r in [*table.rows, table.header])
    cols = max(len(b) for b in blocks)
    start = 0 if cols <= 10 and len(table.rows) < 36 else 1
    for name, pt in _SIZES[start:]:
        if chars * 0.51 * pt + cols * (6 if cols <= 10 else 4) <= TEXT_WIDTH_PT - 5:
            return name
    return _SIZES[-1][0]


def to_latex(table: Table) -> str:
    """A ``table`` float (``table*`` above 10 columns) with booktabs ``tabular``s; needs only
    ``\\usepackage{booktabs}``. The caption is numbered with the paper's number (``\\thetable`` set
    inside the float) and a table wider than `MAX_LATEX_COLUMNS` is set as stacked blocks."""
    blocks = _blocks(table)
    n = max(len(b) for b in blocks)
    size = _font_size(table, blocks)
    env = "table" if n <= 10 else "table*"  # wide tables span both columns of a two-column paper
    lines = [f"\\begin{{{env}}}[t]", "\\centering", size,
             "\\setlength{\\tabcolsep}{3pt}" if n <= 10 else "\\setlength{\\tabcolsep}{2pt}"]
    for i, cols in enumerate(blocks):
        if i:
            lines.append("\\par\\medskip")
        lines += _tabular(table, cols)
    numbered = _NUMBERED.fullmatch(table.title)
    title = numbered.group(2) if numbered else table.title
    if numbered:  # LaTeX numbers captions itself: print the paper's number, not "Table 1: Table 9: ..."
        lines.append(f"\\renewcommand{{\\thetable}}{{{latex_escape(numbered.group(1))}}}")
    caption = latex_escape(title) + (". " + " ".join(latex_escape(x) for x in table.notes) if table.notes else "")
    lines += [f"\\caption{{{caption}}}", f"\\label{{tab:{table.key}}}", f"\\end{{{env}}}"]
    return "\n".join(lines) + "\n"


def latex_document(tables: Sequence[Table]) -> str:
    """A minimal standalone document holding ``tables`` (tests/test_report.py compiles it with pdflatex and
    checks the log for overfull boxes and the table numbers)."""
    body = "\n".join(to_latex(t) for t in tables)
    return LATEX_PREAMBLE + "\\begin{document}\n" + body + "\\end{document}\n"
