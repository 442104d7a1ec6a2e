"""CLI verbs of the metrics layer: `extes evaluate` and `extes toxicity`."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from extes.dialogue import atomic_write, load_dialogues
from extes.errors import CLIError
from extes.metrics.evaluate import (
    EvalOptions,
    ModelCache,
    evaluate_many,
    load_embeddings,
    markdown_table,
    resolve_arm,
    write_outputs,
)
from extes.metrics.matrix import load_spec, run_matrix, write_table
from extes.metrics.predictions import score_predictions
from extes.metrics.text import tokenize
from extes.metrics.toxicity import ATTRIBUTES, ScoreCache, ToxicityError, make_scorer, score_texts
from extes.models import ArmPool

# ----------------------------------------------------------------------------------------------------------
# extes evaluate


def configure_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arm", action="append", default=[],
                   help="an arm name from --arms, a results/runs/<name> or results/adapters/<name> folder, a "
                        "checkpoint folder, or the embedded model name; repeat for several rows")
    p.add_argument("--arms", help="arms YAML (or study protocol) in which --arm names are looked up")
    p.add_argument("--data", help="test dialogues: a file or folder (ExTES JSON, ESConv JSON or our JSONL)")
    p.add_argument("--matrix", help="SPEC.yaml: several arms x several test sets -> one table (see docs/metrics.md)")
    p.add_argument("--predictions", metavar="FILE",
                   help="score replies generated elsewhere: JSONL of {dialogue_id, turn, reply} against the gold "
                        "turns of --data; no model is loaded (PPL only with --arm, Extrema with --glove or --arm)")
    p.add_argument("--limit", type=int, help="evaluate the first N dialogues only")
    p.add_argument("--out", help="output folder (default results/eval/<test file name>)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    p.add_argument("--sample", action="store_true",
                   help="use each arm's own sampling settings instead of greedy decoding")
    p.add_argument("--max-new-tokens", type=int, help="override the arms' max_new_tokens")
    p.add_argument("--batch-size", type=int, default=8, help="turns per generation batch and cache append (default 8)")
    p.add_argument("--no-ppl", action="store_true", help="skip perplexity")
    p.add_argument("--ppl-tag", choices=("context", "scored"), default="context",
                   help="strategy arms: the gold strategy tag is context only (default) or scored as well")
    p.add_argument("--glove", help="GloVe-format word vectors for Vector Extrema (default: the base model's "
                                   "input embeddings)")
    p.add_argument("--wordnet", help="WordNet database folder for METEOR synonyms, or 'none' (default: search)")
    p.add_argument("--cache-dir", default="results/eval/cache", help="generation cache (default results/eval/cache)")
    p.add_argument("--no-progress", action="store_true")


def _options(args):
    settings = {}
    if args.max_new_tokens is not None:
        if args.max_new_tokens < 1:
            raise CLIError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
        settings["max_new_tokens"] = args.max_new_tokens
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be >= 1, got {args.limit}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    return EvalOptions(limit=args.limit, greedy=not args.sample, settings=settings, batch_size=args.batch_size,
                       ppl=not args.no_ppl, ppl_tag=args.ppl_tag, glove=args.glove, wordnet=args.wordnet,
                       cache_dir=args.cache_dir, progress=not args.no_progress)


def run_evaluate(args) -> int:  # noqa: C901, PLR0915 - one flag check per option of the verb, in the order --help lists them

    if args.predictions:
        return _run_predictions(args)
    if args.matrix:
        if args.arm or args.data:
            raise CLIError("--matrix takes arms and test sets from the spec; do not combine it with --arm/--data")

        spec = load_spec(args.matrix)
        opts = _options(args)
        # command-line values override the spec where given
        if args.limit is not None:
            spec.options.limit = args.limit
        if args.max_new_tokens is not None:
            spec.options.settings = {**spec.options.settings, "max_new_tokens": args.max_new_tokens}
        if args.sample:
            spec.options.greedy = False
        if args.no_ppl:
            spec.options.ppl = False
        for key in ("glove", "wordnet"):
            if getattr(opts, key):
                setattr(spec.options, key, getattr(opts, key))
        if args.batch_size != 8:
            spec.options.batch_size = args.batch_size
        if args.cache_dir != "results/eval/cache":
            spec.options.cache_dir = args.cache_dir
        if args.out:
            spec.out = Path(args.out)
        results = run_matrix(spec, progress=not args.no_progress)
        _print(results, args.json, group_by_data=True)
        print(f"wrote {spec.out / 'table.md'}", file=sys.stderr)
        return 0

    if not args.arm or not args.data:
        raise CLIError("give --arm ARM (repeatable) and --data TEST_PATH, or --matrix SPEC.yaml")

    options = _options(args)
    arms = [resolve_arm(a, args.arms) for a in args.arm]
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise CLIError(f"--arm values resolve to duplicate arm names {names}")
    data = Path(args.data)
    dialogues = load_dialogues(data)
    out = Path(args.out) if args.out else Path("results/eval") / (data.stem or "test")
    models = ModelCache()
    vocab = set()
    if options.glove:
        for d in dialogues[: options.limit] if options.limit else dialogues:
            for t in d.turns:
                vocab.update(tokenize(t.text))
    local = [a for a in arms if a.backend == "local"]
    embeddings = load_embeddings(options, local[0].base if local else arms[0].base, models, vocab)
    with ArmPool(arms) as pool:
        results = evaluate_many(pool, arms, {data.stem or "test": (data, dialogues)}, options, models=models,
                                embeddings=embeddings)
    for r in results:
        write_outputs(r, out / r.arm if len(arms) > 1 else out)
    if len(arms) > 1:
        write_table(results, out, group_by_data=False)
    _print(results, args.json, group_by_data=False)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _run_predictions(args) -> int:
    if args.matrix:
        raise CLIError("--predictions scores one file against --data; do not combine it with --matrix")
    if not args.data:
        raise CLIError("--predictions needs --data (the test dialogues holding the gold turns)")
    if len(args.arm) > 1:
        raise CLIError("--predictions takes at most one --arm (whose model gives PPL of the gold replies)")
    options = _options(args)
    arm = resolve_arm(args.arm[0], args.arms) if args.arm else None
    data = Path(args.data)
    result = score_predictions(args.predictions, data, load_dialogues(data), options, arm=arm)
    out = Path(args.out) if args.out else Path("results/eval") / Path(args.predictions).stem
    write_outputs(result, out)
    _print([result], args.json, group_by_data=False)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _print(results, as_json: bool, group_by_data: bool) -> None:
    if as_json:
        payload = [r.payload for r in results]
        print(json.dumps(payload[0] if len(payload) == 1 else payload, indent=2, ensure_ascii=False))
    else:
        print(markdown_table(results, group_by_data=group_by_data))


# ----------------------------------------------------------------------------------------------------------
# extes toxicity


def configure_toxicity(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", action="append", default=[],
                   help="dialogue file/folder to score (one row per --data; repeatable)")
    p.add_argument("--role", choices=("assistant", "user", "all"), default="all",
                   help="which turns of --data to score (default all)")
    p.add_argument("--replies", action="append", default=[],
                   help="replies.jsonl written by `extes evaluate` (one row per file; repeatable)")
    p.add_argument("--limit", type=int, help="score the first N texts of each source only")
    p.add_argument("--classifier", help="local Hugging Face sequence-classification checkpoint folder "
                                        "(default: the Perspective API with $PERSPECTIVE_API_KEY)")
    p.add_argument("--label-map", action="append", default=[], metavar="LABEL=ATTRIBUTE",
                   help="map a classifier label to a Perspective attribute, e.g. LABEL_1=TOXICITY")
    p.add_argument("--perspective-url", help="Perspective endpoint (default Google's)")
    p.add_argument("--qps", type=float, default=1.0, help="Perspective requests per second (default 1)")
    p.add_argument("--max-retries", type=int, default=5)
    p.add_argument("--cache", default="results/toxicity/cache.sqlite", help="score cache (holds no text)")
    p.add_argument("--out", default="results/toxicity", help="output folder (default results/toxicity)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-progress", action="store_true")


def _texts_from_replies(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"--replies {path}: no such file")
    texts = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                texts.append(str(rec["reply"]))
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{path}: line {n}: expected a JSON object with a 'reply' field "
                                 "(replies.jsonl from extes evaluate)") from None
    return texts


def _sources(args) -> list[tuple[str, list[str]]]:
    out = []
    for d in args.data:
        dialogues = load_dialogues(d)
        texts = [t.text for dl in dialogues for t in dl.turns if args.role == "all" or t.role == args.role]
        out.append((f"{Path(d).name} ({args.role} turns)", texts))
    for r in args.replies:
        path = Path(r)
        label = path.parent.name if path.name == "replies.jsonl" else path.stem
        out.append((f"{label} (replies)", _texts_from_replies(path)))
    if not out:
        raise CLIError("give --data DIALOGUES and/or --replies REPLIES.jsonl to score")
    if args.limit is not None:
        if args.limit < 1:
            raise CLIError(f"--limit must be >= 1, got {args.limit}")
        out = [(label, texts[: args.limit]) for label, texts in out]
    return out


def run_toxicity(args) -> int:
    label_map = {}
    for item in args.label_map:
        if "=" not in item:
            raise CLIError(f"--label-map {item!r}: expected LABEL=ATTRIBUTE")
        k, v = item.split("=", 1)
        label_map[k.strip()] = v.strip().upper()
    sources = _sources(args)
    try:
        scorer = make_scorer(args.classifier, label_map, args.perspective_url, args.qps, args.max_retries)
    except ToxicityError as exc:
        raise CLIError(str(exc)) from None
    cache = ScoreCache(args.cache)
    rows = []
    try:
        for label, texts in sources:
            try:
                res = score_texts(scorer, texts, cache=cache, progress=not args.no_progress)
            except ToxicityError as exc:
                raise CLIError(f"{label}: {exc}") from None
            rows.append({"source": label, **res.to_dict()})
    finally:
        cache.close()
        scorer.close()
    attrs = [a for a in ATTRIBUTES if any(a in r["means"] for r in rows)]
    head = ["Source", *attrs, "n scored", "n failed"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in rows:
        vals = [r["means"].get(a) for a in attrs]
        cells = ["-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}" for v in vals]
        lines.append("| " + " | ".join([r["source"], *cells, str(r["n_scored"]), str(r["n_failed"])]) + " |")
    table = "\n".join(lines) + f"\n\n- Scorer: {rows[0]['scorer']}. Mean probability per attribute.\n"
    out = Path(args.out)
    atomic_write(out / "toxicity.json", json.dumps(rows, indent=2, ensure_ascii=False, default=_nan_none) + "\n")
    atomic_write(out / "toxicity.md", table)
    print(json.dumps(rows, indent=2, default=_nan_none) if args.json else table)
    return 0


def _nan_none(x):
    return None
