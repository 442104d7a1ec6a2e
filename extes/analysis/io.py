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

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from extes.taxonomy import ASPECT_KEYS

ASPECTS: tuple[str, ...] = ASPECT_KEYS  # the keys of extes.taxonomy.Aspect, defined once there
OUTCOMES: tuple[str, ...] = ("a", "b", "tie")
VOTE_COLUMNS: tuple[str, ...] = ("session_id", "aspect", "arm_a", "arm_b", "outcome")
VOTE_OPTIONAL: tuple[str, ...] = ("rater_id", "conversation_id", "created_at")
RATING_COLUMNS: tuple[str, ...] = ("item_id", "rater_id", "label")
RATING_OPTIONAL: tuple[str, ...] = ("aspect", "source")

MAX_LISTED = 5  # offending rows named per problem
VALIDATED = "extes_validated"  # DataFrame.attrs key set on frames returned by the loaders
DEDUPLICATED = "extes_duplicates"  # DataFrame.attrs key: (policy, votes dropped) when duplicates were dropped
DUPLICATE_POLICIES = ("refuse", "first", "last")
# One comparison: a session's rater judging one pair of arms (either order) on one aspect.
_VOTE_KEY = ("session_id", "rater_id", "aspect", "arm_x", "arm_y")


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


def _columns(frame: pd.DataFrame, required: tuple[str, ...], optional: tuple[str, ...], name: str,
             kind: str) -> pd.DataFrame:
    """Exactly the required and optional columns (a missing optional one empty), every field stripped text."""
    _check_columns(frame, required, name, kind)
    for col in optional:
        if col not in frame.columns:
            frame[col] = ""
    frame = frame[list(required + optional)].copy()
    for col in frame.columns:
        frame[col] = frame[col].astype(str).str.strip()
    return frame


def _vote_key(frame: pd.DataFrame) -> pd.DataFrame:
    """The comparison each vote answers: session, rater, aspect and the pair of arms in either order."""
    a, b = frame["arm_a"].to_numpy(dtype=object), frame["arm_b"].to_numpy(dtype=object)
    first = a <= b  # element-wise (a row-wise DataFrame.min on strings took 2.9 s for 20,000 votes)
    return frame[["session_id", "rater_id", "aspect"]].assign(arm_x=np.where(first, a, b), arm_y=np.where(first, b, a))


def _duplicate_votes(frame: pd.DataFrame, keep: str) -> pd.Series:
    """Rows that repeat a comparison (same session, rater, aspect and pair of arms in either order)."""
    return _vote_key(frame).duplicated(list(_VOTE_KEY), keep=keep)


def _duplicate_problem(shown: pd.DataFrame, frame: pd.DataFrame, csv_lines: bool) -> str | None:
    repeats = _duplicate_votes(frame, "first")
    if not repeats.any():
        return None
    key = _vote_key(frame)
    first = key.reset_index().groupby(list(_VOTE_KEY), sort=False)["index"].transform("first")
    first.index = key.index
    bad = frame.index[repeats.to_numpy()]
    listed = [
        f"{_row_ref(int(i), csv_lines)} (session_id={shown.at[i, 'session_id']!r}, aspect={shown.at[i, 'aspect']!r}, "
        f"arm_a={shown.at[i, 'arm_a']!r}, arm_b={shown.at[i, 'arm_b']!r}; repeats {_row_ref(int(first[i]), csv_lines)})"
        for i in bad[:MAX_LISTED]
    ]
    more = f" and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
    return (
        f"the same comparison voted more than once (same session_id, rater_id, aspect and pair of arms, in "
        f"either order; it would count twice in n and the sign test; --duplicates first|last keeps one) in "
        f"{len(bad)} {'row' if len(bad) == 1 else 'rows'}: " + "; ".join(listed) + more
    )


def duplicates_note(votes: pd.DataFrame) -> str | None:
    """What `load_votes(duplicates="first"|"last")` dropped, for the output; None when nothing was."""
    info = votes.attrs.get(DEDUPLICATED)
    if not info or not info[1]:
        return None
    policy, dropped = info
    return (
        f"{dropped} duplicate vote(s) dropped (--duplicates {policy}: the {policy} vote of each session, rater, "
        "aspect and pair of arms kept)"
    )


def load_votes(
    source: str | os.PathLike | pd.DataFrame,
    *,
    where: str | None = None,
    allow_empty: bool = False,
    duplicates: str = "refuse",
) -> pd.DataFrame:
    """Read and validate votes; return a frame with exactly the Votes columns (strings).

    ``aspect`` and ``outcome`` are lower-cased and every field stripped. Raises `AnalysisInputError`
    naming the first offending rows for: missing columns, empty required fields, unknown outcomes or
    aspects, ``arm_a == arm_b``, and (unless ``allow_empty``) an input without any vote.

    A comparison voted more than once (same session, rater, aspect and pair of arms in either order) is
    refused (``duplicates="refuse"``) with the rows named; ``"first"`` or ``"last"`` keeps one vote (by
    row order) and records the number dropped in ``attrs`` (`duplicates_note` words it for the output).
    """
    if duplicates not in DUPLICATE_POLICIES:
        raise ValueError(f"duplicates must be one of {', '.join(DUPLICATE_POLICIES)}, got {duplicates!r}")
    frame, name, csv_lines = _read_frame(source, "votes", where)
    frame = _columns(frame, VOTE_COLUMNS, VOTE_OPTIONAL, name, "votes")
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
    if duplicates == "refuse":
        _raise_if(name, "votes", [_duplicate_problem(shown, frame, csv_lines)])
    elif len(frame):
        drop = _duplicate_votes(frame, "first" if duplicates == "first" else "last")
        frame = frame[~drop.to_numpy()].copy()
        frame.attrs[VALIDATED] = "votes"
        frame.attrs[DEDUPLICATED] = (duplicates, int(drop.sum()))
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
    frame = _columns(frame, RATING_COLUMNS, RATING_OPTIONAL, name, "ratings")
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


# ------------------------------------------------------------------------------------- shared helpers


def none_if_nan(value: Any) -> Any:
    if value is pd.NA:
        return None
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def records(frame: pd.DataFrame, columns: list[str]) -> list[dict[str, Any]]:
    return [
        {c: none_if_nan(v) for c, v in zip(columns, row)} for row in frame[columns].itertuples(index=False)
    ]


def as_votes(votes: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    # Frames from load_votes carry a marker, so chained calls do not validate 100k rows again.
    if isinstance(votes, pd.DataFrame) and votes.attrs.get(VALIDATED) == "votes":
        return votes
    return load_votes(votes)


def as_ratings(ratings: pd.DataFrame | str, require_pairs: bool = True) -> pd.DataFrame:
    if isinstance(ratings, pd.DataFrame) and ratings.attrs.get(VALIDATED) == "ratings":
        return ratings
    return load_ratings(ratings, require_pairs=require_pairs)


def aspect_order(values: pd.Series | list[str]) -> list[str]:
    present = set(values)
    return [a for a in ASPECTS if a in present] + sorted(present - set(ASPECTS))
