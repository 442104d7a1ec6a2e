"""`extes build` and `extes review`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from extes.errors import CLIError
from extes.llm.budget import load_prices, price_for
from extes.selfchat.pipeline import BuildConfig, Builder, FatalRequestError
from extes.selfchat.quota import load_proportions
from extes.selfchat.review import adjustment_rates, build_review_app, load_queue
from extes.selfchat.validate import Rules
from extes.ui_theme import offline_theme

EXIT_INCOMPLETE = 3  # stopped cleanly before the target (budget cap or attempts used up)


def configure_build(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("--seeds", nargs="+", type=Path, default=[Path("seeds")],
                   help="seed dialogue files or folders (ExTES JSON / JSONL); default seeds/")
    p.add_argument("--out", type=Path, required=True, help="run folder (journal, exports); re-run to resume")
    p.add_argument("--model", required=True, help="model name as the server knows it, e.g. gpt-4o-mini")
    p.add_argument("--base-url", default=None,
                   help="OpenAI-compatible endpoint (default: $OPENAI_BASE_URL, else OpenAI)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
    p.add_argument("--target", type=int, required=True, help="generated dialogues to accept, over all rounds")
    p.add_argument("--rounds", type=int, default=1,
                   help="round k+1 draws examples from seeds + dialogues accepted in rounds <= k")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--rpm", type=float, default=None, help="client-side requests-per-minute limit")
    p.add_argument("--tpm", type=float, default=None, help="client-side tokens-per-minute limit")
    p.add_argument("--max-cost", type=float, default=None, help="hard budget in USD (never exceeded)")
    p.add_argument("--prices", type=Path, default=None, help="JSON/YAML {model: {input, output}} USD per 1M tokens")
    p.add_argument("--price-in", type=float, default=None, help="USD per 1M prompt tokens")
    p.add_argument("--price-out", type=float, default=None, help="USD per 1M completion tokens")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-tokens", type=int, default=2048, help="completion limit per request")
    p.add_argument("--quota", type=Path, default=None,
                   help="JSON/YAML scenario -> weight (default: the paper's Table 1 proportions)")
    p.add_argument("--min-utterances", type=int, default=8)
    p.add_argument("--near-dup-threshold", type=float, default=0.5,
                   help="word-3-shingle Jaccard at or above which a dialogue is a near duplicate")
    p.add_argument("--example-copy-threshold", type=float, default=0.5,
                   help="Jaccard with its in-context example at or above which a dialogue is a copy")
    p.add_argument("--max-attempts-factor", type=float, default=3.0,
                   help="a round gives up after target x this many requests")
    p.add_argument("--max-retries", type=int, default=6, help="retries per request on 429/5xx/timeouts")
    p.add_argument("--backoff", type=float, default=1.0, help="base seconds of the exponential backoff")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per HTTP attempt")
    p.add_argument("--seed", type=int, default=0, help="seed for example choice and jitter")
    p.add_argument("--estimate-only", action="store_true", help="print the pre-run estimate and exit")
    p.add_argument("--no-progress", action="store_true")


def build_config(args: argparse.Namespace):
    base_url = args.base_url or os.environ.get("OPENAI_BASE_URL") or None
    api_key = os.environ.get(args.api_key_env)
    if not api_key and not base_url and not args.estimate_only:
        raise CLIError(f"set ${args.api_key_env} (or pass --base-url for a server that needs no key)")
    prices = load_prices(args.prices) if args.prices else None
    price = price_for(args.model, prices, args.price_in, args.price_out)
    if price is None and base_url is None:
        print(f"warning: no price known for {args.model!r}; cost is reported as $0 "
              "(pass --price-in/--price-out)", file=sys.stderr)
    for name in ("near_dup_threshold", "example_copy_threshold"):
        v = getattr(args, name)
        if not 0 < v <= 1:
            raise ValueError(f"--{name.replace('_', '-')} must be in (0, 1], got {v}")
    rules = Rules(min_utterances=args.min_utterances, near_dup_threshold=args.near_dup_threshold,
                  example_copy_threshold=args.example_copy_threshold)
    return BuildConfig(
        seeds=list(args.seeds), out=args.out, model=args.model, target=args.target, base_url=base_url,
        api_key=api_key, rounds=args.rounds, concurrency=args.concurrency, rpm=args.rpm, tpm=args.tpm,
        max_cost=args.max_cost, price=price, temperature=args.temperature, max_tokens=args.max_tokens,
        proportions=load_proportions(args.quota), rules=rules, seed=args.seed,
        max_attempts_factor=args.max_attempts_factor, max_retries=args.max_retries, backoff_base=args.backoff,
        timeout=args.timeout, progress=not args.no_progress,
    )


def run_build(args: argparse.Namespace) -> int:

    cfg = build_config(args)
    builder = Builder(cfg)
    done = len(builder.state.accepted())
    print(f"seeds: {len(builder.seeds)} dialogues; run folder {cfg.out}"
          + (f" (resuming: {done} accepted, ${builder.state.spent:.4f} spent)" if builder.state.requests else ""),
          file=sys.stderr)
    print(builder.estimate().describe(cfg.model, cfg.max_cost), file=sys.stderr)
    if args.estimate_only:
        return 0
    try:
        result = asyncio.run(builder.run())
    except KeyboardInterrupt:
        print(f"interrupted; everything so far is in {cfg.out / 'journal.jsonl'}: re-run the same command "
              "to resume", file=sys.stderr)
        return 130
    except FatalRequestError as exc:
        raise CLIError(f"the server refused a request, stopping (journal kept in {cfg.out}): {exc}") from None
    c = result.counts
    print(f"{result.stop_reason}: {result.accepted}/{result.target} accepted in total; this run sent "
          f"{result.requests} requests ({c['accepted']} accepted, {c['rejected']} rejected, "
          f"{c['needs_review']} need review, {c['error']} failed, {result.retries} retries); "
          f"spent ${result.spent:.4f}", file=sys.stderr)
    for r in result.rounds:
        reasons = ", ".join(f"{k} {v}" for k, v in list(r["rejection_reasons"].items())[:5]) or "-"
        print(f"round {r['round']}: {r['accepted_final']} accepted, acceptance {100 * r['acceptance_rate']:.0f}%, "
              f"${r['cost_usd']:.4f}, distinct-2 {r['distinct_2']:.3f}, {r['scenarios_covered']} scenarios; "
              f"reasons: {reasons}", file=sys.stderr)
    if result.stop_reason == "budget":
        print(f"stopped before --max-cost ${cfg.max_cost:.2f}; raise it and re-run the same command to continue",
              file=sys.stderr)
    print(f"wrote {cfg.out / 'extes.json'} (ExTES JSON), {cfg.out / 'extes.jsonl'}, {cfg.out / 'rounds.json'}",
          file=sys.stderr)
    return 0 if result.complete else EXIT_INCOMPLETE


def configure_review(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, required=True, help="an `extes build --out` folder")
    parser.add_argument("--reviewer", default=os.environ.get("USER", ""), help="your name, stored with decisions")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7861)
    parser.add_argument("--rates", action="store_true", help="print the human-adjustment rate per round and exit")


def run_review(args: argparse.Namespace) -> int:
    if args.rates:
        for r in adjustment_rates(args.run):
            print(f"round {r['round']}: {r['by_review']}/{r['accepted']} accepted dialogues needed a human "
                  f"({100 * r['human_adjustment_rate']:.1f}%), {r['edited']} edited")
        print(f"queue: {len(load_queue(args.run))} dialogues waiting")
        return 0
    app = build_review_app(args.run, args.reviewer)

    app.launch(server_name=args.host, server_port=args.port, theme=offline_theme())
    return 0
