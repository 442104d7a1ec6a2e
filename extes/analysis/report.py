"""Writing the analysis outputs: CSVs, Markdown tables and reports, all or nothing.

Writers put everything into a temporary directory first and only move files into place once all of
them were written, so an error never leaves half a report behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd

from extes.analysis.corrections import CORRECTIONS
from extes.analysis.io import AnalysisInputError
from extes.shares import RULE


def write_csv_atomic(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write ``frame`` as CSV next to ``path`` under a temporary name, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            frame.to_csv(handle, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_outputs(out_dir: str | os.PathLike, writers: Mapping[str, Callable[[Path], None]]) -> list[Path]:
    """Run each ``writers[name](tmp_path)`` inside a temporary directory, then move all files to ``out_dir``.

    If any writer fails, the temporary directory is removed and ``out_dir`` is left exactly as it was.
    Files already in ``out_dir`` with other names are kept; same-named ones are replaced.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise AnalysisInputError(f"{out}: exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for name, write in writers.items():
            write(tmp / name)
            if not (tmp / name).is_file():
                raise RuntimeError(f"writer for {name} produced no file")
        if not out.exists():
            tmp.rename(out)
            return [out / name for name in writers]
        for name in writers:
            os.replace(tmp / name, out / name)
        return [out / name for name in writers]
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A GitHub-flavoured Markdown table (own formatter: no optional `tabulate` dependency)."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return "" if pd.isna(value) else format(value, floatfmt)
        return str(value).replace("|", "\\|")

    header = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- reports


def png_writer(fig) -> Callable[[Path], None]:
    return lambda path: fig.savefig(path, dpi=120)


def _csv(frame: pd.DataFrame, index: bool = False) -> Callable[[Path], None]:
    return lambda path: frame.to_csv(path, index=index)


def text_writer(text: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(text, encoding="utf-8")


def votes_sentence(wtl) -> str:
    """The one definition of the vote counts, used by the console and report.md alike."""
    level = round(100 * wtl.confidence)
    ci = (
        f"CI = {level}% percentile bootstrap of win - loss, sessions resampled "
        f"({wtl.n_boot} resamples, seed {wtl.seed})"
        if wtl.n_boot
        else "no bootstrap (--n-boot 0)"
    )
    return (
        f"{wtl.votes} votes in all; {wtl.votes_with_reference} of them involve {wtl.reference} (the n of "
        f"the table's cells), from {wtl.sessions} sessions with {wtl.reference}; {ci}."
    )


def wtl_caption(wtl) -> str:
    return (
        f"{wtl.reference} against each arm: win / tie / loss (%) from {wtl.reference}'s side; "
        f"* = two-sided sign test (ties excluded) p < 0.05 after {CORRECTIONS[wtl.correction]} "
        f"over the {wtl.tests} tests in this table; {RULE}"
    )


def bt_caption(bt) -> str:
    shifts = [v for v in bt.prior_shift.values() if v == v]
    shift = f"; it moves any rating by at most {max(shifts):.1f} Elo vs maximum likelihood" if shifts else ""
    return (
        f"Prior: {bt.prior:g} virtual tie(s) per pair of arms (--bt-prior; maximum a-posteriori){shift}."
    )


def omissions_sentence(wtl) -> str | None:
    """What the table has no votes for (pairs never compared, aspects without votes), or None."""
    gaps = wtl.omissions()
    return "Not in the votes: " + "; ".join(gaps) + "." if gaps else None


def matrix_display(matrix) -> pd.DataFrame:
    """A `WinRateMatrix` as text: rates to 2 decimals, "never compared" for a pair without votes."""
    arms = list(matrix.rates.index)
    cells = [
        [
            "-" if i == j else ("never compared" if matrix.counts.iat[i, j] == 0 else f"{matrix.rates.iat[i, j]:.2f}")
            for j in range(len(arms))
        ]
        for i in range(len(arms))
    ]
    return pd.DataFrame(cells, index=arms, columns=arms)


def bt_display(bt) -> pd.DataFrame:
    """Bradley-Terry ratings as text: an arm without votes on an aspect reads "no votes"."""
    def num(value: float) -> str:
        return "n/a" if value != value else f"{value:.1f}"

    rows = []
    for r in bt.ratings.itertuples(index=False):
        judged = r.n > 0
        rows.append({"aspect": r.aspect, "rank": str(r.rank) if judged else "-", "arm": r.arm,
                     "rating": num(r.rating) if judged else "no votes",
                     "ci_low": num(r.ci_low) if judged else "-", "ci_high": num(r.ci_high) if judged else "-",
                     "n": str(r.n)})
    return pd.DataFrame(rows, columns=["aspect", "rank", "arm", "rating", "ci_low", "ci_high", "n"])


def matrix_sections(wtl, matrices: list) -> list[tuple[str, object]]:
    """(aspect, WinRateMatrix or None) for every aspect of the table, None where it has no votes."""
    by_aspect = {m.aspect: m for m in matrices}
    return [(a, by_aspect.get(a)) for a in dict.fromkeys(wtl.rows["aspect"])] + [
        (a, m) for a, m in by_aspect.items() if a not in set(wtl.rows["aspect"])
    ]


def write_analysis_report(out_dir: str | os.PathLike, wtl, bt, matrices: list) -> list[Path]:
    """Write the `extes analyze` report: report.md, CSV tables and PNG charts, all or nothing.

    ``wtl``: `WinTieLossResult`; ``bt``: `BradleyTerryResult`; ``matrices``: `WinRateMatrix` list.
    """
    # lazy: matplotlib loads only when figures are drawn
    from extes.analysis.plots import plot_bradley_terry, plot_win_rate_heatmap, plot_win_tie_loss

    writers: dict[str, Callable[[Path], None]] = {
        "win_tie_loss.csv": _csv(wtl.rows),
        "bradley_terry.csv": _csv(bt.ratings),
        "win_tie_loss.png": png_writer(plot_win_tie_loss(wtl)),
        "bradley_terry.png": png_writer(plot_bradley_terry(bt)),
    }
    level = round(100 * wtl.confidence)
    md = [
        f"# Pairwise study: {wtl.reference} against the other arms\n",
        f"{wtl_caption(wtl)}.\n",
        f"{votes_sentence(wtl)}\n",
        markdown_table(wtl.table()),
        *[f"{gap}\n" for gap in [omissions_sentence(wtl)] if gap],
        "![win/tie/loss](win_tie_loss.png)\n",
        *[f"> Warning: {note}\n" for note in wtl.notes],
        "## Details\n",
        markdown_table(
            wtl.rows[["opponent", "aspect", "n", "win", "tie", "loss", "p_value", "p_adjusted", "ci_low", "ci_high",
                      "status"]]
        ),
        "## Bradley-Terry ratings (Elo scale, ties = half a win each way)\n",
        f"{level}% percentile bootstrap CIs, sessions resampled ({bt.n_boot} resamples). {bt_caption(bt)}\n",
        *[f"> Warning: {note}\n" for note in bt.notes],
        markdown_table(bt_display(bt)),
        "![Bradley-Terry](bradley_terry.png)\n",
        "## Win-rate matrices (row arm against column arm, ties = half)\n",
    ]
    for aspect, matrix in matrix_sections(wtl, matrices):
        if matrix is None:
            md += [f"### {aspect}\n", "no votes\n"]
            continue
        stem = f"win_rate_{matrix.aspect}"
        writers[f"{stem}.csv"] = _csv(matrix.rates, index=True)
        writers[f"{stem}.png"] = png_writer(plot_win_rate_heatmap(matrix))
        md += [
            f"### {matrix.aspect}\n",
            markdown_table(matrix_display(matrix).reset_index(names="arm")),
            f"![{matrix.aspect}]({stem}.png)\n",
        ]
    writers["report.md"] = text_writer("\n".join(md))
    return write_outputs(out_dir, writers)


def agreement_headline(result) -> str:
    """The counts and statistics of an `AgreementResult` in one line; the counts are what each statistic
    uses: with items rated once, Fleiss' kappa uses every item (single ratings in its category shares),
    alpha and percent agreement only the items rated twice or more."""
    def fmt(value) -> str:
        return "n/a" if value is None or value != value else f"{value:.3f}"

    alpha = result.krippendorff_alpha
    stats = (f"Fleiss' kappa {fmt(result.fleiss_kappa)}, Krippendorff's alpha nominal {fmt(alpha['nominal'])}"
             + (f", ordinal {fmt(alpha['ordinal'])}" if alpha["ordinal"] is not None else "")
             + f", percent agreement {fmt(result.percent_agreement)}")
    if not result.dropped_items:
        return f"{result.items} items, {result.raters} raters, {result.ratings} ratings; {stats}"
    return (f"{result.items_all} items, {result.raters_all} raters, {result.ratings_all} ratings (Fleiss' kappa "
            f"uses all; {result.dropped_items} item(s) rated once only in its category shares); alpha and percent "
            f"agreement use the {result.items} items rated twice or more ({result.raters} raters, {result.ratings} "
            f"ratings); {stats}")


def write_agreement_report(out_dir: str | os.PathLike, result, quality: pd.DataFrame | None) -> list[Path]:
    """Write the `extes agreement` report: report.md and agreement.csv (+ dataset_quality.csv)."""
    table = agreement_table(result)
    writers: dict[str, Callable[[Path], None]] = {"agreement.csv": _csv(table)}
    md = [
        "# Inter-rater agreement\n",
        f"{agreement_headline(result)}.\n",
        f"Fleiss' kappa variant: {result.fleiss_variant}.\n",
        markdown_table(table),
    ]
    notes = agreement_notes(result)
    if notes:
        md += ["Notes:\n", "\n".join(f"- {n}" for n in notes) + "\n"]
    if quality is not None:
        writers["dataset_quality.csv"] = _csv(quality)
        md += [
            "## Dataset quality (mean score per metric per source)\n",
            markdown_table(quality_table(quality)),
        ]
    writers["report.md"] = text_writer("\n".join(md))
    return write_outputs(out_dir, writers)


def agreement_table(result) -> pd.DataFrame:
    """One row per scope of an `AgreementResult`: all ratings, each aspect, each source (and its aspects).

    ``source``/``aspect`` read "all" where the row pools them.
    """
    scopes = [("all", "all", result)] + [("all", a, r) for a, r in result.per_aspect.items()]
    for source, sub in result.per_source.items():
        scopes += [(source, "all", sub)] + [(source, a, r) for a, r in sub.per_aspect.items()]
    return pd.DataFrame(
        [
            {
                "source": source,
                "aspect": aspect,
                "items": r.items,
                "raters": r.raters,
                "ratings": r.ratings,
                "fleiss_kappa": r.fleiss_kappa,
                "alpha_nominal": r.krippendorff_alpha["nominal"],
                "alpha_ordinal": r.krippendorff_alpha["ordinal"]
                if r.krippendorff_alpha["ordinal"] is not None
                else float("nan"),
                "percent_agreement": r.percent_agreement,
            }
            for source, aspect, r in scopes
        ]
    )


def agreement_notes(result) -> list[str]:
    """Every note of an `AgreementResult` and its parts, once each."""
    parts = [result, *result.per_aspect.values()]
    for sub in result.per_source.values():
        parts += [sub, *sub.per_aspect.values()]
    return list(dict.fromkeys(note for part in parts for note in part.notes))


def quality_table(quality: pd.DataFrame) -> pd.DataFrame:
    """Table 4 layout: one row per metric, one ``mean`` column per source."""
    wide = quality.pivot(index="aspect", columns="source", values="mean")
    wide = wide.reindex([a for a in dict.fromkeys(quality["aspect"])])
    wide.columns = [str(c) for c in wide.columns]
    return wide.reset_index(names="metric")
