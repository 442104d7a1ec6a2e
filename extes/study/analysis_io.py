"""Reading, validating and writing the study's analysis files.

Two input formats (documented in docs/analysis.md):

- Votes CSV, one row per pairwise judgment: ``session_id, aspect, arm_a, arm_b, outcome`` plus optional
  ``rater_id, conversation_id, created_at``.
- Ratings CSV, long format: ``item_id, rater_id, label`` plus optional ``aspect`` and ``source``.

Readers accept a path or a DataFrame (the study store hands us frames), normalise whitespace and case,
and raise `AnalysisInputError` listing the first offending rows of every problem found, so a researcher
fixes the file in one pass. Writers put everything into a temporary directory first and only move files
into place once all of them were written, so an error never leaves half a report behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd

ASPECTS: tuple[str, ...] = ("fluency", "identification", "comforting", "suggestion", "overall")
OUTCOMES: tuple[str, ...] = ("a", "b", "tie")
VOTE_COLUMNS: tuple[str, ...] = ("session_id", "aspect", "arm_a", "arm_b", "outcome")
VOTE_OPTIONAL: tuple[str, ...] = ("rater_id", "conversation_id", "created_at")
RATING_COLUMNS: tuple[str, ...] = ("item_id", "rater_id", "label")
RATING_OPTIONAL: tuple[str, ...] = ("aspect", "source")

MAX_LISTED = 5  # offending rows named per problem
VALIDATED = "extes_validated"  # DataFrame.attrs key set on frames returned by the loaders


class AnalysisInputError(ValueError):
    """Bad votes or ratings input; the message names the file, the rows and the reason."""


# ----------------------------------------------------------------------------------------- reading


def _read_frame(
    source: str | os.PathLike | pd.DataFrame, kind: str, where: str | None
) -> tuple[pd.DataFrame, str, bool]:
    """Return (all-string frame, name for messages, whether rows are CSV lines)."""
    if isinstance(source, pd.DataFrame):
        frame = source.copy()
        frame.columns = [str(c).strip() for c in frame.columns]
        frame = frame.reset_index(drop=True)
        frame.attrs = {}
        for col in frame.columns:
            frame[col] = _as_text(frame[col])
        return frame, where or f"{kind} (DataFrame)", False
    path = Path(source)
    name = where or str(path)
    if not path.exists():
        raise FileNotFoundError(f"{name}: {kind} file not found")
    if path.is_dir():
        raise AnalysisInputError(f"{name}: is a directory, expected a {kind} CSV file")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise AnalysisInputError(f"{name}: empty file, expected a CSV header line") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise AnalysisInputError(f"{name}: not a readable CSV file ({exc})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame, name, True


def _as_text(values: pd.Series) -> pd.Series:
    """Column of a caller's frame as strings, "" for missing, as `read_csv(dtype=str)` would give."""
    missing = values.isna()
    if pd.api.types.is_float_dtype(values) and (values[~missing] % 1 == 0).all():
        values = values.astype("Int64")  # 1.0 (an int column with gaps) reads back as "1"
    return values.astype(object).where(~missing, "").astype(str)


def _row_ref(index: int, csv_lines: bool) -> str:
    return f"line {index + 2}" if csv_lines else f"row {index}"


def _problem(
    frame: pd.DataFrame, mask: pd.Series, reason: str, show: tuple[str, ...], csv_lines: bool
) -> str | None:
    bad = frame.index[mask.to_numpy()]
    if len(bad) == 0:
        return None
    listed = []
    for idx in bad[:MAX_LISTED]:
        fields = ", ".join(f"{c}={frame.at[idx, c]!r}" for c in show)
        listed.append(f"{_row_ref(int(idx), csv_lines)} ({fields})")
    more = f" and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
    rows = "row" if len(bad) == 1 else "rows"
    return f"{reason} in {len(bad)} {rows}: " + "; ".join(listed) + more


def _raise_if(name: str, kind: str, problems: list[str | None]) -> None:
    found = [p for p in problems if p]
    if found:
        raise AnalysisInputError(f"{name}: invalid {kind}:\n  - " + "\n  - ".join(found))


def _check_columns(frame: pd.DataFrame, required: tuple[str, ...], name: str, kind: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise AnalysisInputError(
            f"{name}: missing {kind} column(s) {', '.join(missing)}; "
            f"found {', '.join(map(str, frame.columns)) or 'none'}; required {', '.join(required)}"
        )


def load_votes(
    source: str | os.PathLike | pd.DataFrame, *, where: str | None = None, allow_empty: bool = False
) -> pd.DataFrame:
    """Read and validate votes; return a frame with exactly the Votes columns (strings).

    ``aspect`` and ``outcome`` are lower-cased and every field stripped. Raises `AnalysisInputError`
    naming the first offending rows for: missing columns, empty required fields, unknown outcomes or
    aspects, ``arm_a == arm_b``, and (unless ``allow_empty``) an input without any vote.
    """
    frame, name, csv_lines = _read_frame(source, "votes", where)
    _check_columns(frame, VOTE_COLUMNS, name, "votes")
    for col in VOTE_OPTIONAL:
        if col not in frame.columns:
            frame[col] = ""
    frame = frame[list(VOTE_COLUMNS + VOTE_OPTIONAL)].copy()
    for col in frame.columns:
        frame[col] = frame[col].astype(str).str.strip()
    shown = frame.copy()  # messages quote the values as written
    frame["aspect"] = frame["aspect"].str.lower()
    frame["outcome"] = frame["outcome"].str.lower()
    if frame.empty and not allow_empty:
        raise AnalysisInputError(f"{name}: no votes (the file has a header but no rows)")
    frame.attrs[VALIDATED] = "votes"
    empty = frame[list(VOTE_COLUMNS)].eq("").any(axis=1)
    filled = ~empty
    _raise_if(
        name,
        "votes",
        [
            _problem(
                shown, empty, f"empty required field ({', '.join(VOTE_COLUMNS)})", VOTE_COLUMNS, csv_lines
            ),
            _problem(
                shown,
                filled & ~frame["outcome"].isin(OUTCOMES),
                f"unknown outcome (expected one of {', '.join(OUTCOMES)})",
                ("outcome",),
                csv_lines,
            ),
            _problem(
                shown,
                filled & ~frame["aspect"].isin(ASPECTS),
                f"unknown aspect (expected one of {', '.join(ASPECTS)})",
                ("aspect",),
                csv_lines,
            ),
            _problem(
                shown,
                filled & frame["arm_a"].eq(frame["arm_b"]),
                "an arm compared with itself (arm_a == arm_b)",
                ("arm_a", "arm_b"),
                csv_lines,
            ),
        ],
    )
    return frame


def load_ratings(
    source: str | os.PathLike | pd.DataFrame,
    *,
    where: str | None = None,
    require_pairs: bool = True,
    allow_empty: bool = False,
) -> pd.DataFrame:
    """Read and validate ratings; return ``item_id, rater_id, label, aspect, source`` (strings).

    A missing ``aspect``/``source`` column becomes empty strings. Raises `AnalysisInputError` naming the
    first offending rows for: missing columns, empty fields, one rater rating the same item (and aspect,
    and source) twice, and (with ``require_pairs``) data where no item has two or more ratings, so
    there is nothing to agree on.
    """
    frame, name, csv_lines = _read_frame(source, "ratings", where)
    _check_columns(frame, RATING_COLUMNS, name, "ratings")
    for col in RATING_OPTIONAL:
        if col not in frame.columns:
            frame[col] = ""
    frame = frame[list(RATING_COLUMNS + RATING_OPTIONAL)].copy()
    for col in frame.columns:
        frame[col] = frame[col].astype(str).str.strip()
    # An optional column counts as present when any row fills it; then every row must.
    present = [c for c in RATING_OPTIONAL if frame[c].ne("").any()]
    if "aspect" in present:
        frame["aspect"] = frame["aspect"].str.lower()
    if frame.empty:
        if allow_empty:
            frame.attrs[VALIDATED] = "ratings"
            return frame
        raise AnalysisInputError(f"{name}: no ratings (the file has a header but no rows)")
    required = RATING_COLUMNS + tuple(present)
    empty = frame[list(required)].eq("").any(axis=1)
    unit = ["source", "item_id", "aspect"]
    duplicate = frame.duplicated(unit + ["rater_id"], keep="first")
    _raise_if(
        name,
        "ratings",
        [
            _problem(frame, empty, f"empty field ({', '.join(required)})", required, csv_lines),
            _problem(
                frame,
                duplicate,
                "repeated rating by the same rater for the same item",
                ("item_id", "rater_id") + tuple(present),
                csv_lines,
            ),
        ],
    )
    per_unit = frame.groupby(unit, sort=False)["rater_id"].transform("size")
    if require_pairs and int(per_unit.max()) < 2:
        lone = _problem(frame, per_unit < 2, "single rating of an item", ("item_id", "rater_id"), csv_lines)
        raise AnalysisInputError(
            f"{name}: invalid ratings: every item has fewer than two raters, so agreement is undefined"
            f"\n  - {lone}"
        )
    frame.attrs[VALIDATED] = "ratings"
    return frame


# ----------------------------------------------------------------------------------------- writing


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


def _png(fig) -> Callable[[Path], None]:
    return lambda path: fig.savefig(path, dpi=120)


def _csv(frame: pd.DataFrame, index: bool = False) -> Callable[[Path], None]:
    return lambda path: frame.to_csv(path, index=index)


def _text(text: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(text, encoding="utf-8")


def write_analysis_report(out_dir: str | os.PathLike, wtl, bt, matrices: list) -> list[Path]:
    """Write the `extes analyze` report: report.md, CSV tables and PNG charts, all or nothing.

    ``wtl``: `WinTieLossResult`; ``bt``: `BradleyTerryResult`; ``matrices``: `WinRateMatrix` list.
    """
    from extes.study.analysis import plot_bradley_terry, plot_win_rate_heatmap, plot_win_tie_loss

    writers: dict[str, Callable[[Path], None]] = {
        "win_tie_loss.csv": _csv(wtl.rows),
        "bradley_terry.csv": _csv(bt.ratings),
        "win_tie_loss.png": _png(plot_win_tie_loss(wtl)),
        "bradley_terry.png": _png(plot_bradley_terry(bt)),
    }
    level = round(100 * wtl.confidence)
    md = [
        f"# Pairwise study: {wtl.reference} against the other arms\n",
        f"{int(wtl.rows['n'].sum())} votes involving `{wtl.reference}` from {wtl.sessions} sessions. "
        f"Win / tie / loss in percent from `{wtl.reference}`'s side; `*` marks a two-sided sign test "
        f"p < 0.05 (ties excluded). CI: {level}% percentile bootstrap of win - loss, sessions resampled "
        f"({wtl.n_boot} resamples, seed {wtl.seed}).\n",
        markdown_table(wtl.table()),
        "![win/tie/loss](win_tie_loss.png)\n",
        "## Details\n",
        markdown_table(
            wtl.rows[["opponent", "aspect", "n", "win", "tie", "loss", "p_value", "ci_low", "ci_high"]]
        ),
        "## Bradley-Terry ratings (Elo scale, ties = half a win each way)\n",
        f"{level}% percentile bootstrap CIs, sessions resampled ({bt.n_boot} resamples); "
        f"prior: {bt.prior:g} virtual tie(s) per pair.\n",
        markdown_table(bt.ratings, floatfmt=".1f"),
        "![Bradley-Terry](bradley_terry.png)\n",
        "## Win-rate matrices (row arm against column arm, ties = half)\n",
    ]
    for matrix in matrices:
        stem = f"win_rate_{matrix.aspect}"
        writers[f"{stem}.csv"] = _csv(matrix.rates, index=True)
        writers[f"{stem}.png"] = _png(plot_win_rate_heatmap(matrix))
        table = matrix.rates.reset_index(names="arm")
        md += [
            f"### {matrix.aspect}\n",
            markdown_table(table, floatfmt=".2f"),
            f"![{matrix.aspect}]({stem}.png)\n",
        ]
    writers["report.md"] = _text("\n".join(md))
    return write_outputs(out_dir, writers)


def write_agreement_report(out_dir: str | os.PathLike, result, quality: pd.DataFrame | None) -> list[Path]:
    """Write the `extes agreement` report: report.md and agreement.csv (+ dataset_quality.csv)."""
    table = agreement_table(result)
    writers: dict[str, Callable[[Path], None]] = {"agreement.csv": _csv(table)}
    md = [
        "# Inter-rater agreement\n",
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
    writers["report.md"] = _text("\n".join(md))
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
