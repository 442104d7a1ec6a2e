"""`extes report`: the paper's tables in one command, as Markdown (report.md) and LaTeX (tables.tex).

It gathers whatever it is given and lays it out with `extes.analysis.tables`; every number comes from
the function behind the verb that prints it on its own (`extes stats`, `agreement`, `analyze`,
`evaluate`, `toxicity`). It lives in the study layer because ``--db`` reads a study database.

Inputs (all optional, at least one):
- ``--data [LABEL=]PATH`` (repeatable): ExTES JSON, ESConv JSON, our JSONL, a folder of those, or a build
  run folder (``rounds.json`` present: its ``generated.jsonl``, the dialogues the run produced) ->
  Tables 1, 2, 3, 5 side by side;
- ``--db`` a study database, or ``--votes`` / ``--ratings`` CSVs -> Table 9 (needs ``--reference``) and
  Table 4 (numeric ratings with a source);
- ``--results PATH`` (repeatable): ``results.json`` of `extes evaluate`, or a folder searched for them ->
  Tables 6 and 8;
- ``--toxicity PATH`` (repeatable): ``toxicity.json`` of `extes toxicity` -> Table 7;
- ``--names FILE``: display names, YAML ``{arms: {name: display}, datasets: {label: display}}``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from extes.analysis import tables as T
from extes.analysis.agreement import agreement, dataset_quality
from extes.analysis.io import load_ratings, load_votes
from extes.analysis.pairwise import win_tie_loss
from extes.analysis.report import png_writer, text_writer, votes_sentence, write_outputs
from extes.commands.analysis_cli import add_stat_options, open_store, screened_replies
from extes.config import ConfigModel, load_config
from extes.dialogue import load_dialogues
from extes.metrics.registry import TABLE_COLUMNS
from extes.shares import percentages
from extes.stats import compute_stats, strategy_abbreviation


class DisplayNames(ConfigModel):
    """``--names`` file: how arms (and datasets, sources, test sets) are named in the tables."""

    arms: dict[str, str] = {}
    datasets: dict[str, str] = {}


def configure_report(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", action="append", default=[], metavar="[LABEL=]PATH",
                        help="dataset: ExTES JSON, ESConv JSON, our JSONL, a folder, or a build run (repeatable)")
    parser.add_argument("--merge-consecutive", action="store_true",
                        help="dataset statistics with consecutive same-speaker utterances merged (as extes stats)")
    parser.add_argument("--top-k", type=int, default=5, help="transitions per hop count in Table 5 (default 5)")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--db", help="study database (SQLite path or SQLAlchemy URL): votes and ratings")
    src.add_argument("--votes", type=Path, help="Votes CSV (with --ratings instead of --db)")
    parser.add_argument("--ratings", type=Path, help="Ratings CSV (Likert scores with a source column)")
    parser.add_argument("--voters", choices=("participant", "judge", "all"), default="participant",
                        help="with --db: whose votes (default: the participants' own)")
    parser.add_argument("--reference", help="the arm of Table 9 (win/tie/loss against every other arm)")
    parser.add_argument("--results", action="append", default=[],
                        help="results.json of extes evaluate, or a folder holding them (repeatable)")
    parser.add_argument("--toxicity", action="append", default=[], help="toxicity.json of extes toxicity")
    parser.add_argument("--names", help="YAML: {arms: {name: display name}, datasets: {label: display name}}")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for Table 9's CIs")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--out", type=Path, required=True, help="folder for report.md, tables.tex and figures")
    add_stat_options(parser)


def _split_label(spec: str) -> tuple[str | None, str]:
    if "=" in spec and not Path(spec).exists():
        label, path = spec.split("=", 1)
        return label.strip(), path
    return None, spec


def load_dataset(spec: str):
    """(label, dialogues) for one ``--data`` value; a build run folder gives its generated dialogues."""

    label, raw = _split_label(spec)
    path = Path(raw)
    if not path.exists():
        raise FileNotFoundError(f"--data {raw}: no such file or folder")
    if path.is_dir() and (path / "rounds.json").is_file():
        generated = path / "generated.jsonl"
        if not generated.is_file():
            raise FileNotFoundError(f"--data {raw}: a build run without generated.jsonl (run `extes build` to "
                                    "export it)")
        return label or path.name, load_dialogues(generated)
    dialogues = load_dialogues(path)
    if not dialogues:
        raise ValueError(f"--data {raw}: no dialogues")
    return label or (path.stem if path.is_file() else path.name), dialogues


def load_results(paths: list[str]) -> list[dict[str, Any]]:
    """`extes evaluate` payloads from results.json files or folders (searched recursively, sorted)."""
    out = []
    for raw in paths:
        path = Path(raw)
        files = sorted(path.rglob("results.json")) if path.is_dir() else [path]
        if not files or not all(f.is_file() for f in files):
            raise FileNotFoundError(f"--results {raw}: no results.json found")
        for f in files:
            try:
                payload = json.loads(f.read_text(encoding="utf-8"))
                payload["metrics"], payload["data"]["label"], payload["arm"]["name"]
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{f}: not a results.json of extes evaluate (needs metrics, data.label, "
                                 "arm.name)") from None
            out.append(payload)
    return out


def load_toxicity(paths: list[str]) -> list[dict[str, Any]]:
    rows = []
    for raw in paths:
        path = Path(raw)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            for r in data:
                r["source"], r["means"], r["n_scored"]
        except FileNotFoundError:
            raise FileNotFoundError(f"--toxicity {raw}: no such file") from None
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{raw}: not a toxicity.json of extes toxicity (a list of rows with source, "
                             "means, n_scored)") from None
        rows += data
    return rows


def _votes_and_ratings(args):
    if args.db:
        store = open_store(args.db)
        try:
            votes, ratings = store.votes_frame(args.voters), store.ratings_frame()
        finally:
            store.close()
        votes = load_votes(votes, where=f"{args.db} (votes)", allow_empty=True, duplicates=args.duplicates)
        ratings = load_ratings(ratings, where=f"{args.db} (ratings)", require_pairs=False, allow_empty=True)
        return votes, ratings
    votes = load_votes(args.votes, duplicates=args.duplicates) if args.votes else None
    ratings = load_ratings(args.ratings, require_pairs=False) if args.ratings else None
    return votes, ratings


def likert_sources(ratings, given: str | None = None) -> list[str]:
    """Sources whose labels are all numbers (Table 4's input). With ``given`` (the --ratings file), no such
    source is an error that names what is missing: the source column, or numeric labels."""
    import pandas as pd

    numeric, text = [], {}
    for source, labels in ratings.groupby("source")["label"]:
        values = pd.to_numeric(labels, errors="coerce")
        if source and source != "pairwise" and values.notna().all():
            numeric.append(source)
        elif source:
            text[source] = labels[values.isna()].iloc[0] if values.isna().any() else None
    if numeric or given is None:
        return numeric
    if not text:
        raise ValueError(f"--ratings {given}: Table 4 needs a 'source' column (which dataset each rated item "
                         "comes from, e.g. extes or seed); the file has none or leaves it empty")
    shown = ", ".join(f"{k} ({v!r})" if v is not None else k for k, v in list(text.items())[:5])
    raise ValueError(f"--ratings {given}: Table 4 needs numeric labels (Likert scores); no source has only "
                     f"numbers: {shown}")


def build_tables(args) -> tuple[list, dict[str, Any]]:
    """Every table the inputs allow, plus the objects behind them (for figures and JSON)."""


    names = load_config(args.names, DisplayNames, "display names") if args.names else DisplayNames()
    arm_names = {**names.datasets, **names.arms}
    out: list = []
    objects: dict[str, Any] = {}
    if args.data:
        stats = {}
        for spec in args.data:
            label, dialogues = load_dataset(spec)
            if label in stats:
                raise ValueError(f"--data: two datasets labelled {label!r}; name them LABEL=PATH")
            stats[label] = compute_stats(dialogues, top_k=args.top_k, merge_consecutive=args.merge_consecutive)
        objects["stats"] = stats
        merged = args.merge_consecutive
        out += [T.table1_scenarios(stats, names.datasets), T.table2_strategies(stats, names.datasets),
                T.table3_overview(stats, names.datasets, merged=merged),
                T.table5_transitions(stats, names.datasets, merged=merged)]
    votes, ratings = _votes_and_ratings(args)
    if ratings is not None and len(ratings):
        numeric = likert_sources(ratings, None if args.db else str(args.ratings))
        if numeric:
            likert = ratings[ratings["source"].isin(numeric)]
            quality = dataset_quality(likert)
            per_source = {s: agreement(likert[likert["source"] == s]) for s in numeric}
            objects.update(quality=quality, agreement=per_source)
            out.append(T.table4_quality(quality, per_source, names.datasets))
    if args.results:
        results = load_results(args.results)
        objects["results"] = results
        out += T.tables_automatic(results, TABLE_COLUMNS, {**names.datasets, **names.arms})
    if args.toxicity:
        tox = load_toxicity(args.toxicity)
        objects["toxicity"] = tox
        out.append(T.table7_toxicity(tox, arm_names))
    if votes is not None and len(votes):
        if not args.reference:
            raise ValueError("votes given: name the Table 9 arm with --reference ARM")
        wtl = win_tie_loss(votes, args.reference, n_boot=args.n_boot, seed=args.seed,
                           correction=args.correction, min_sessions=args.min_sessions)
        objects["wtl"] = wtl
        out.append(T.table9_pairwise(wtl, names.arms))
    screened = screened_replies(args.db)
    if screened is not None and len(screened):
        objects["screened"] = screened
        out.append(T.table_screened_replies(screened, names.arms))
    if not out:
        raise ValueError("nothing to report: give --data, --db (or --votes/--ratings), --results or --toxicity")
    return out, objects


def run_report(args: argparse.Namespace) -> int:
    built, objects = build_tables(args)
    writers: dict[str, Any] = {}
    md = ["# Report\n", "Tables in the layout of the ExTES paper (Zheng et al.); `tables.tex` holds the same "
          "tables for LaTeX (needs `\\usepackage{booktabs}`; `preview.tex` compiles them on their own).\n"]
    if "wtl" in objects:
        from extes.analysis.plots import plot_win_tie_loss  # lazy: matplotlib, only when a figure is drawn

        writers["win_tie_loss.png"] = png_writer(plot_win_tie_loss(objects["wtl"]))
        md.append(f"Votes: {votes_sentence(objects['wtl'])}\n")
        md += [f"> Warning: {n}\n" for n in objects["wtl"].notes]
    if "stats" in objects:
        writers["strategies.png"] = png_writer(_strategy_figure(objects["stats"]))
    for table in built:
        md.append(T.to_markdown(table))
    md += [f"![{name}]({name})\n" for name in writers if name.endswith(".png")]
    writers["report.md"] = text_writer("\n".join(md))
    writers["tables.tex"] = text_writer("\n".join(T.to_latex(t) for t in built))
    writers["preview.tex"] = text_writer(T.LATEX_PREAMBLE + "\\begin{document}\n\\input{tables.tex}\n\\end{document}\n")
    written = write_outputs(args.out, writers)
    print(f"wrote {len(written)} files to {args.out}: " + ", ".join(p.name for p in written))
    for table in built:
        print(f"  {table.title}")
    return 0


def _strategy_figure(stats):
    """Strategy shares per dataset, one panel each."""
    from extes.analysis.plots import new_figure  # lazy: matplotlib, only when a figure is drawn

    fig = new_figure(4.0 * len(stats) + 1.0, 3.6)
    axes = fig.subplots(1, len(stats), squeeze=False)[0]
    for ax, (label, st) in zip(axes, stats.items()):
        names = list(st.strategies)
        ax.bar([strategy_abbreviation(n) for n in names], percentages(list(st.strategies.values())), color="#55A868")
        ax.set_title(label)
        ax.set_ylabel("% of strategy labels")
        ax.tick_params(axis="x", labelrotation=90)
    return fig
