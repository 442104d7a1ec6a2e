"""CLI verbs `extes export`, `extes analyze` and `extes agreement` (rendering only; maths in `extes.analysis`).

They live in the study layer because `--db` reads a study database; `extes.analysis` itself never
imports the study app, and works on any CSV.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from extes.analysis.agreement import agreement, dataset_quality
from extes.analysis.corrections import CORRECTIONS
from extes.analysis.exclusions import FLAGS, apply_exclusions, parse_rule
from extes.analysis.io import (
    RATING_COLUMNS,
    RATING_OPTIONAL,
    VOTE_COLUMNS,
    VOTE_OPTIONAL,
    aspect_order,
    load_ratings,
    load_votes,
)
from extes.analysis.pairwise import DEFAULT_PRIOR, MIN_SESSIONS, bradley_terry, win_rate_matrix, win_tie_loss
from extes.analysis.plan import Cell, cells_from_votes, per_test_alpha, plan, plot_power
from extes.analysis.rater_agreement import people_agreement_sections
from extes.analysis.report import (
    agreement_headline,
    agreement_notes,
    agreement_table,
    bt_caption,
    bt_display,
    matrix_display,
    matrix_sections,
    omissions_sentence,
    quality_table,
    votes_sentence,
    write_agreement_report,
    write_analysis_report,
    write_csv_atomic,
    wtl_caption,
)
from extes.study.recruitment import payments_frame
from extes.study.store import Store


def open_store(db: str) -> Any:
    """The study store for ``db`` (a path or an SQLAlchemy URL); a missing file is an error, not a new DB."""
    if "://" not in db and not Path(db).is_file():
        raise FileNotFoundError(f"{db}: study database not found")

    return Store(db)


def _close(store: Any) -> None:
    close = getattr(store, "close", None)
    if callable(close):
        close()


def _votes_from_db(db: str, allow_empty: bool = False, who: str = "participant",
                   duplicates: str = "refuse") -> pd.DataFrame:
    store = open_store(db)
    try:
        frame = store.votes_frame(who)
    finally:
        _close(store)
    return load_votes(frame, where=f"{db} (votes)", allow_empty=allow_empty, duplicates=duplicates)


def _ratings_from_db(db: str, for_agreement: bool) -> pd.DataFrame:
    store = open_store(db)
    try:
        frame = store.ratings_frame()
    finally:
        _close(store)
    return load_ratings(
        frame, where=f"{db} (ratings)", require_pairs=for_agreement, allow_empty=not for_agreement
    )


def _dump(payload: dict[str, Any]) -> None:
    json.dump(payload, sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")


def fmt_number(value: float, spec: str = ".3f") -> str:
    return "n/a" if value is None or value != value else format(value, spec)


# ------------------------------------------------------------------------------------- exclusions

EXCLUSIONS_HELP = ("attention-check exclusions: protocol (the rule the study's protocol declared, stored in the "
                   "database; the default), none, or a comma-separated list of flags (failed_attention, "
                   "short_messages, fast_rating, repeated_message, straight_lined). Excluded votes stay in the store.")


def _load_flags(path: Path) -> pd.DataFrame:
    """A flags CSV (conversation_id, flag[, detail]) for `analyze --votes --flags`."""

    if not path.is_file():
        raise FileNotFoundError(f"--flags {path}: no such file")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("conversation_id", "flag") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (need conversation_id, flag)")
    bad = sorted(set(frame["flag"]) - set(FLAGS))
    if bad:
        raise ValueError(f"{path}: unknown flag(s) {', '.join(bad[:5])}; known: {', '.join(FLAGS)}")
    return frame


def _exclusions(votes: pd.DataFrame, spec: str | None, db: str | None = None, flags_file: Path | None = None):
    """(kept votes, ExclusionReport): the rule of `--exclusions` applied with the flags of the study database
    (or a flags CSV). Votes are matched on conversation_id, or session_id where that is empty."""

    protocol_rule: list[str] = []
    flags = None
    if db:
        store = open_store(db)
        try:
            if hasattr(store, "flags_frame"):  # a store without attention flags (before schema v3) has none
                flags = store.flags_frame()
                protocol_rule = json.loads(store.get_meta("exclusion_rule") or "[]")
        finally:
            _close(store)
    elif flags_file is not None:
        flags = _load_flags(flags_file)
    rule = parse_rule(spec, protocol_rule)
    if rule and flags is None:
        raise ValueError(f"--exclusions {spec}: the flags are in the study database; give --db, or --flags FILE "
                         "with --votes")
    keyed = votes.copy()
    if "conversation_id" in keyed:
        keyed["conversation_id"] = keyed["conversation_id"].where(keyed["conversation_id"].astype(str) != "",
                                                                  keyed["session_id"])
    empty = pd.DataFrame(columns=["conversation_id", "flag"])
    kept, report = apply_exclusions(keyed, flags if flags is not None else empty, rule)
    out = votes.loc[kept.index]
    out.attrs = dict(votes.attrs)
    return out, report


# ------------------------------------------------------------------------------------------ export


def configure_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, help="study database (SQLite path or SQLAlchemy URL)")
    parser.add_argument("--votes", type=Path, help="write the Votes CSV here")
    parser.add_argument("--voters", choices=("participant", "judge", "all", "llm"), default="participant",
                        help="whose votes: the participants' own (default), third-party judges', both (all), or LLM judges' (llm)")
    parser.add_argument("--ratings", type=Path, help="write the Ratings CSV (annotation judgments) here")
    parser.add_argument("--exclusions", default="protocol", metavar="protocol|none|LIST", help=EXCLUSIONS_HELP)
    parser.add_argument("--flags", dest="flags_out", type=Path,
                        help="write the attention flags CSV (conversation_id, flag, detail) here")
    parser.add_argument("--payments", type=Path,
                        help="write the payments CSV for a recruitment platform here (ids, status, completion "
                             "code, times; no chat text)")


def run_export(args: argparse.Namespace) -> int:
    if args.votes is None and args.ratings is None and args.flags_out is None and args.payments is None:
        raise ValueError("nothing to export: give --votes FILE and/or --ratings FILE")
    # Read and validate everything before writing anything, so a bad record leaves no file behind.
    votes = _votes_from_db(args.db, allow_empty=True, who=args.voters) if args.votes else None
    ratings = _ratings_from_db(args.db, for_agreement=False) if args.ratings else None
    excluded = None
    if votes is not None:
        votes, excluded = _exclusions(votes, args.exclusions, db=args.db)
    extra = _extra_exports(args)
    if votes is not None:
        write_csv_atomic(votes[list(VOTE_COLUMNS + VOTE_OPTIONAL)], args.votes)
        print(f"wrote {len(votes)} votes to {args.votes}")
        print(excluded.describe())
    if ratings is not None:
        write_csv_atomic(ratings[list(RATING_COLUMNS + RATING_OPTIONAL)], args.ratings)
        print(f"wrote {len(ratings)} ratings to {args.ratings}")
    for path, frame, what in extra:
        write_csv_atomic(frame, path)
        print(f"wrote {len(frame)} {what} to {path}")
    return 0


def _extra_exports(args: argparse.Namespace) -> list[tuple[Path, pd.DataFrame, str]]:
    """The flags and payments CSVs (read before anything is written)."""

    out = []
    if args.flags_out is None and args.payments is None:
        return out
    store = open_store(args.db)
    try:
        if args.flags_out is not None:
            out.append((args.flags_out, store.flags_frame(), "flags"))
        if args.payments is not None:
            codes = json.loads(store.get_meta("completion_codes") or "{}")
            out.append((args.payments, payments_frame(store.platform_sessions(), codes), "platform sessions"))
    finally:
        _close(store)
    return out


# ----------------------------------------------------------------------------------------- analyze


def configure_analyze(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--votes", type=Path, help="Votes CSV")
    source.add_argument("--db", help="study database (SQLite path or SQLAlchemy URL)")
    parser.add_argument("--reference", required=True, help="the arm whose win/tie/loss is reported")
    parser.add_argument("--voters", choices=("participant", "judge", "all", "llm"), default="participant",
                        help="with --db: whose votes (default: the participants' own)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--out", type=Path, help="write Markdown, CSV and PNG reports into this directory")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--exclusions", default="protocol", metavar="protocol|none|LIST", help=EXCLUSIONS_HELP)
    parser.add_argument("--flags", type=Path,
                        help="with --votes: attention flags CSV (conversation_id, flag), e.g. from "
                             "`extes export --flags`")
    add_stat_options(parser)


def add_stat_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by `analyze` and `report`: correction, Bradley-Terry prior, minimum sessions."""

    parser.add_argument("--correction", choices=tuple(CORRECTIONS), default="holm",
                        help="multiple-comparison correction over the table's sign tests: holm (default), "
                             "bh (Benjamini-Hochberg) or none")
    parser.add_argument("--bt-prior", type=float, default=DEFAULT_PRIOR,
                        help=f"Bradley-Terry prior: virtual tied comparisons per pair of arms (default "
                             f"{DEFAULT_PRIOR:g}; > 0; 1e-6 is maximum likelihood where it exists)")
    parser.add_argument("--min-sessions", type=int, default=MIN_SESSIONS,
                        help=f"leave bootstrap CIs out below this many sessions (default {MIN_SESSIONS})")
    add_duplicates_option(parser)


def add_duplicates_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duplicates", choices=("refuse", "first", "last"), default="refuse",
                        help="a comparison voted more than once in a session (same rater, aspect and pair of "
                             "arms): refuse the input, naming the rows (default), or keep the first or the last "
                             "vote; the output says how many were dropped")


def run_analyze(args: argparse.Namespace) -> int:
    votes = (load_votes(args.votes, duplicates=args.duplicates) if args.votes
             else _votes_from_db(args.db, who=args.voters, duplicates=args.duplicates))
    if args.flags is not None and not args.votes:
        raise ValueError("--flags goes with --votes (with --db the flags are read from the database)")
    votes, excluded = _exclusions(votes, args.exclusions, db=args.db, flags_file=args.flags)
    if votes.empty:
        raise ValueError(f"no vote is left after the exclusions. {excluded.describe()}")
    wtl = win_tie_loss(votes, args.reference, n_boot=args.n_boot, seed=args.seed,
                       correction=args.correction, min_sessions=args.min_sessions)
    bt = bradley_terry(votes, n_boot=args.n_boot, seed=args.seed, prior=args.bt_prior,
                       min_sessions=args.min_sessions)
    matrices = _matrices(votes)
    written = write_analysis_report(args.out, wtl, bt, matrices) if args.out else []
    screened = screened_replies(args.db)
    if args.json:
        payload = wtl.to_dict()
        payload["omissions"] = wtl.omissions()
        payload["bradley_terry"] = bt.to_dict()
        payload["bradley_terry_fit"] = bt.fit_info()
        payload["win_rate"] = {m.aspect: m.to_dict() for m in matrices}
        payload.update(votes=wtl.votes, votes_with_reference=wtl.votes_with_reference,
                       sessions=wtl.sessions, n_boot=args.n_boot, seed=args.seed)
        payload["exclusions"] = excluded.to_dict()
        if screened is not None:
            payload["screened_replies"] = screened.to_dict(orient="records")
        _dump(payload)
        return 0
    print(excluded.describe())
    print(wtl_caption(wtl))
    print(wtl.table().to_string(index=False))
    if gaps := omissions_sentence(wtl):
        print(gaps)
    print(f"\nDetails: {votes_sentence(wtl)}")
    details = wtl.rows[
        ["opponent", "aspect", "n", "n_win", "n_tie", "n_loss", "p_value", "p_adjusted", "ci_low", "ci_high", "status"]
    ]
    print(details.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="n/a"))
    for note in wtl.notes:
        print(f"warning: {note}", file=sys.stderr)
    print(f"\nBradley-Terry ratings (Elo scale; ties = half a win each way). {bt_caption(bt)}")
    print(bt_display(bt).to_string(index=False))
    for note in bt.notes:
        print(f"warning: {note}", file=sys.stderr)
    for aspect, matrix in matrix_sections(wtl, matrices):
        print(f"\nWin rate, row arm vs column arm ({aspect}; ties = half)")
        print("no votes" if matrix is None else matrix_display(matrix).to_string())
    if screened is not None:
        print("\nReplies screened out before they were shown (replaced by the neutral message), per arm")
        print(screened.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if written:
        print(f"\nwrote {len(written)} files to {args.out}")
    return 0


def screened_replies(db: str | None):
    """Replies per arm and how many the screen replaced (`Store.screening_frame`); None without --db."""
    if not db:
        return None
    store = open_store(db)
    try:
        return store.screening_frame()
    finally:
        _close(store)


def _matrices(votes: pd.DataFrame) -> list:
    """A win-rate matrix for every aspect that has votes."""

    return [win_rate_matrix(votes, aspect) for aspect in aspect_order(votes["aspect"])]


# --------------------------------------------------------------------------------------- agreement


def configure_agreement(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--ratings", type=Path, help="Ratings CSV (item_id, rater_id, label[, aspect, source])"
    )
    source.add_argument("--db", help="study database: use its annotation judgments")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--out", type=Path, help="write report.md and CSV tables into this directory")
    parser.add_argument("--llm", type=Path,
                        help="an LLM judge's votes (llm_votes.csv of `extes judge`): with --db, Cohen's kappa and "
                             "percent agreement with the participants per aspect, next to the human judges'")


def _run_llm_agreement(args: argparse.Namespace) -> int:
    if not args.db:
        raise ValueError("--llm compares the LLM with the participants of a study: give --db too")
    llm = load_votes(args.llm, allow_empty=True)
    participant = _votes_from_db(args.db, allow_empty=True, who="participant")
    judges = _votes_from_db(args.db, allow_empty=True, who="judge")
    lines, tables = people_agreement_sections(participant, llm, judges)
    matched = sum(r["n"] for r in tables.get("llm_vs_participant", []) if r["aspect"] == "all")
    if not matched:
        raise ValueError(
            f"--llm {args.llm}: no comparison is in both the LLM's votes ({len(llm)}) and the participants' "
            f"votes in {args.db} ({len(participant)}), matched on conversation, pair of arms and aspect: "
            "nothing to compute agreement on (was the judge run on this study's conversations?)")
    summary_file = args.llm.parent / "summary.json"
    inconsistency = json.loads(summary_file.read_text()).get("position_inconsistency") if summary_file.is_file() else None
    if args.json:
        _dump({"agreement": tables, "position_inconsistency": inconsistency})
        return 0
    print("\n".join(lines))
    if inconsistency:
        print("LLM position inconsistency (share of pairs whose answer changed with the order): "
              + ", ".join(f"{k} {fmt_number(v)}" for k, v in inconsistency.items()))
    return 0


def run_agreement(args: argparse.Namespace) -> int:
    if args.llm:
        return _run_llm_agreement(args)

    ratings = load_ratings(args.ratings) if args.ratings else _ratings_from_db(args.db, for_agreement=True)
    result = agreement(ratings)
    quality = None
    # Table 4 needs scores: sources whose labels are all numbers (the store's Likert rows, by dataset, not "pairwise").
    numeric = [
        s
        for s, labels in ratings.groupby("source")["label"]
        if s and pd.to_numeric(labels, errors="coerce").notna().all()
    ]
    if numeric:
        quality = dataset_quality(ratings[ratings["source"].isin(numeric)])
    written = write_agreement_report(args.out, result, quality) if args.out else []
    if args.json:
        payload = result.to_dict()
        if quality is not None:
            payload["dataset_quality"] = [
                {k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()}
                for row in quality.to_dict(orient="records")
            ]
        _dump(payload)
        return 0
    print(agreement_headline(result))
    print(f"Fleiss' kappa variant: {result.fleiss_variant}")
    print()
    print(agreement_table(result).to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="n/a"))
    for note in agreement_notes(result):
        print(f"note: {note}")
    if quality is not None:
        print("\nDataset quality: mean score per metric per source")
        print(quality_table(quality).to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    if written:
        print(f"\nwrote {len(written)} files to {args.out}")
    return 0


# -------------------------------------------------------------------------------------------- plan


def configure_plan(parser: argparse.ArgumentParser) -> None:
    scenario = parser.add_argument_group("one scenario (shares in % or as fractions)")
    scenario.add_argument("--win", type=float, help="expected share of votes the reference arm wins")
    scenario.add_argument("--tie", type=float, help="expected share of ties")
    scenario.add_argument("--loss", type=float, help="expected share of votes it loses")
    scenario.add_argument("--tests", type=int, default=10,
                          help="tests in the table's family (default 10: 2 opponents x 5 aspects); the other "
                               "tests are assumed to have no effect")
    parser.add_argument("--cells", type=Path,
                        help="CSV of cells (name, win, tie, loss): e.g. a published Table 9 typed in; they form "
                             "the family")
    parser.add_argument("--votes", type=Path, help="pilot Votes CSV: every cell's observed shares (with --reference)")
    parser.add_argument("--reference", help="with --votes: the arm whose cells are planned")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    parser.add_argument("--power", type=float, default=0.8, help="target power (default 0.8)")
    parser.add_argument("--correction", choices=tuple(CORRECTIONS), default="holm",
                        help="multiple-comparison correction (default holm, as extes analyze)")
    parser.add_argument("--n-sim", type=int, default=2000, help="simulated studies per point (default 2000)")
    parser.add_argument("--n-refine", type=int, default=10_000,
                        help="simulated studies per n on the window around the crossing, where the required n "
                             "is fitted (default 10000; 0: the first n whose --n-sim estimate crosses)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-n", type=int, default=3000, help="largest number of conversations considered")
    parser.add_argument("--png", type=Path, help="write the power curve as a PNG here")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _plan_cells(args: argparse.Namespace) -> list:
    given = [args.win is not None or args.tie is not None or args.loss is not None, args.cells is not None,
             args.votes is not None]
    if sum(given) != 1:
        raise ValueError("give one of: --win/--tie/--loss, --cells CSV, or --votes CSV --reference ARM")
    if args.votes is not None:
        if not args.reference:
            raise ValueError("--votes needs --reference ARM")
        return cells_from_votes(load_votes(args.votes), args.reference)
    if args.cells is not None:
        return _cells_file(args.cells)
    if None in (args.win, args.tie, args.loss):
        raise ValueError("give all three of --win, --tie and --loss")
    if why := _shares_problem(args.win, args.tie, args.loss):
        raise ValueError(f"--win {args.win:g} --tie {args.tie:g} --loss {args.loss:g}: {why}")
    return [Cell(f"win {args.win:g} / tie {args.tie:g} / loss {args.loss:g}", args.win, args.tie, args.loss)]


def _shares_problem(win: float, tie: float, loss: float) -> str | None:
    """Why three shares are not a win/tie/loss split (in %, adding up to 100, or fractions adding up to 1;
    0.5 points of rounding allowed), or None."""
    shares = (win, tie, loss)
    if any(not x == x or x < 0 for x in shares):
        return "shares must be numbers >= 0"
    total = sum(shares)
    if abs(total - 100.0) <= 0.5 or abs(total - 1.0) <= 0.005:
        return None
    return (f"they add up to {total:g}, not 100 (percent) or 1 (fractions); they would be rescaled to "
            f"{100 * win / total:.1f} / {100 * tie / total:.1f} / {100 * loss / total:.1f} without a word, so give "
            "shares that add up" if total > 0 else "they add up to 0")


def _cells_file(path: Path) -> list:
    """Cells from a CSV (name, win, tie, loss); every error names the file (and the line)."""

    if not path.is_file():
        raise FileNotFoundError(f"--cells {path}: no such file")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"--cells {path}: not a readable CSV file ({str(exc).strip() or type(exc).__name__})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in ("name", "win", "tie", "loss") if c not in frame.columns]
    if missing:
        raise ValueError(f"--cells {path}: missing column(s) {', '.join(missing)} (need name, win, tie, loss)")
    if frame.empty:
        raise ValueError(f"--cells {path}: no cells (a header but no rows)")
    cells, problems = [], []
    for i, r in enumerate(frame.itertuples(index=False), start=2):
        try:
            shares = [float(getattr(r, k)) for k in ("win", "tie", "loss")]
        except ValueError:
            problems.append(f"line {i} ({r.name!r}): win, tie and loss must be numbers, got "
                            f"{r.win!r}, {r.tie!r}, {r.loss!r}")
            continue
        if why := _shares_problem(*shares):
            problems.append(f"line {i} ({r.name!r}): {why}")
            continue
        try:
            cells.append(Cell(str(r.name), *shares))
        except ValueError as exc:
            problems.append(f"line {i}: {exc}")
    if problems:
        raise ValueError(f"--cells {path}: invalid cells:\n  - " + "\n  - ".join(problems[:5]))
    return cells


def run_plan(args: argparse.Namespace) -> int:
    cells = _plan_cells(args)
    tests = args.tests if len(cells) == 1 else None
    result = plan(cells, tests=tests, alpha=args.alpha, correction=args.correction, target=args.power,
                  n_sim=args.n_sim, seed=args.seed, max_n=args.max_n, n_refine=args.n_refine)
    if args.png:
        args.png.parent.mkdir(parents=True, exist_ok=True)
        plot_power(result).savefig(args.png, dpi=120)
    if args.json:
        _dump(result.to_dict())
        return 0
    level = per_test_alpha(result.alpha, result.correction, result.tests)
    print(f"Two-sided sign test (ties dropped), alpha {result.alpha:g}, {result.correction} over "
          f"{result.tests} test(s), target power {result.target:.0%}; n = conversations = votes per cell")
    how = (f"{result.n_sim} studies per n on a grid and by bisection, then {result.n_refine} per n on a window "
           "around the crossing, where a straight line of power against n gives the smallest n reaching the "
           "target" if result.n_refine else
           f"{result.n_sim} studies per n; the first n whose estimate reaches the target, by grid and bisection")
    print(f"needed: simulated with {result.correction} ({how}); Monte-Carlo SE: of the fitted power at that n, and "
          f"in conversations; exact: binomial power at the fixed level {level:.4g} (alpha/K, Bonferroni)")
    rows = [{"cell": c.name, "win/tie/loss": f"{c.p_win:.2f}/{c.p_tie:.2f}/{c.p_loss:.2f}",
             "n needed (sim)": "-" if r is None else str(r),
             "power there (MC SE)": f"{x.power:.3f} ({x.se:.3f})" if x else "-",
             "n MC SE": ("< 0.1" if x.n_se < 0.05 else f"{x.n_se:.1f}") if x else "-",
             "n needed (exact)": "-" if e is None else str(e)}
            for c, r, e, x in zip(result.cells, result.required, result.required_exact,
                                  result.crossings or [None] * len(result.cells))]
    print(pd.DataFrame(rows).to_string(index=False))
    print("\nPower curve (simulated; exact at the fixed level in brackets)")
    curve = pd.DataFrame({"n": result.grid, **{
        c.name: [f"{result.power[i, j]:.2f} [{result.exact[i, j]:.2f}]" for i in range(len(result.grid))]
        for j, c in enumerate(result.cells)}})
    print(curve.to_string(index=False))
    for note in result.notes:
        print(f"note: {note}")
    if args.png:
        print(f"wrote {args.png}")
    return 0
