"""`extes judge`: an LLM judges the study's rated conversations pairwise, and we measure how far it
agrees with the participants (and how far human judges do, as the ceiling).

It lives in the study layer because it reads a study database; the judging itself is `extes.judge`
and the agreement is `extes.analysis.rater_agreement`. Outputs in --out:
- ``llm_votes.csv``: Votes CSV rows (voter "llm", rater_id "llm:<model>"), ready for `extes analyze`;
- ``journal.jsonl``: every answer, verbatim (a rerun of the same command never pays twice);
- ``summary.json`` and ``agreement.md``: counts, cost, position inconsistency, agreement tables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from itertools import combinations
from pathlib import Path
from typing import Any

import pandas as pd

from extes.analysis.rater_agreement import people_agreement_sections
from extes.analysis.report import write_csv_atomic
from extes.commands.analysis_cli import fmt_number, open_store
from extes.errors import CLIError
from extes.judge import PROMPT_VERSION, Judge, PairItem
from extes.llm.budget import Budget, price_for
from extes.llm.client import LLMClient
from extes.models.arms import load_arms

PANES_OF_STUDY = ("A", "B", "C")


def configure_judge(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", required=True, help="study database (SQLite path or SQLAlchemy URL)")
    p.add_argument("--arms", required=True, help="arms YAML (or study protocol) holding the judge arm")
    p.add_argument("--arm", required=True, help="the judge: an arm with backend: openai (an API model, "
                   "vLLM, or `extes serve`)")
    p.add_argument("--out", required=True, type=Path, help="output folder (journal, votes, summary)")
    p.add_argument("--limit", type=int, help="judge the first N rated conversations only")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--rpm", type=float, default=None, help="client-side requests-per-minute limit")
    p.add_argument("--max-cost", type=float, default=None, help="hard budget in USD (never exceeded)")
    p.add_argument("--price-in", type=float, default=None, help="USD per 1M prompt tokens")
    p.add_argument("--price-out", type=float, default=None, help="USD per 1M completion tokens")
    p.add_argument("--max-tokens", type=int, default=200, help="the judge's answer length cap")
    p.add_argument("--prompt-version", default=None, help="judge prompt version (default: the newest)")
    p.add_argument("--no-db", dest="into_db", action="store_false",
                   help="do not store the LLM's votes in the study database (default: store them, replacing "
                        "this judge model's and prompt version's earlier votes)")


def _judge_arm(args: argparse.Namespace) -> Any:
    arms = {a.name: a for a in load_arms(args.arms)}
    if args.arm not in arms:
        raise CLIError(f"{args.arms}: no arm named {args.arm!r}; arms there: {', '.join(arms)}")
    arm = arms[args.arm]
    if arm.backend != "openai":
        raise CLIError(f"{args.arms}: arm {arm.name!r} is a local arm; the judge needs backend: openai "
                       "(serve local arms with `extes serve` and point an openai arm at it)")
    return arm


def pair_items(store: Any, limit: int | None = None) -> list[Any]:
    """Every arm pair of every rated conversation, with each pane's transcript as the participant saw it."""
    items = []
    rated = [c for c in store.all_conversations() if c.status == "rated"]
    for conv in rated[:limit] if limit else rated:
        conv_id = conv.id
        order = list(conv.arm_order)
        transcripts = {}
        for pane, arm in zip(conv.panes, order):  # 2 or 3 panes
            rows = store.messages(conv_id, pane)
            transcripts[arm] = tuple((r.role, r.text) for r in rows if r.role in ("user", "assistant"))
        for x, y in combinations(sorted(transcripts), 2):
            items.append(PairItem(f"{conv_id}/{x}~{y}", x, y, transcripts[x], transcripts[y],
                                  conversation_id=conv_id))
    return items


def run_judge(args: argparse.Namespace) -> int:
    arm = _judge_arm(args)
    store = open_store(args.db)
    try:
        items = pair_items(store, args.limit)
        participant_votes = store.votes_frame("participant")
        judge_votes = store.votes_frame("judge")
    finally:
        getattr(store, "close", lambda: None)()
    if not items:
        raise CLIError(f"{args.db}: no rated conversations to judge")
    price = price_for(arm.model, None, args.price_in, args.price_out)
    client = LLMClient(arm.model, base_url=arm.base_url, api_key=os.environ.get(arm.api_key_env),
                       rpm=args.rpm, max_retries=arm.max_retries, timeout=arm.timeout_s)
    budget = Budget(price, args.max_cost) if (price is not None or args.max_cost is not None) else None
    judge = Judge(client, args.out / "journal.jsonl", budget=budget, max_tokens=args.max_tokens,
                  prompt_version=args.prompt_version or PROMPT_VERSION, concurrency=args.concurrency)

    async def go() -> Any:
        try:
            return await judge.run(items)
        finally:
            await client.close()

    result = asyncio.run(go())
    cols = ["session_id", "aspect", "arm_a", "arm_b", "outcome", "rater_id", "conversation_id", "created_at", "voter"]
    llm = pd.DataFrame(result.votes, columns=cols)
    write_csv_atomic(llm, args.out / "llm_votes.csv")
    if args.into_db:  # the votes join the study's own (`--voters llm` in export/analyze, the dashboard)
        store = open_store(args.db)
        try:
            store.replace_llm_votes(arm.model, result.prompt_version, result.votes)
        finally:
            getattr(store, "close", lambda: None)()
    summary = result.summary()
    lines = [f"# LLM judge: {arm.model} (prompt {result.prompt_version})", "",
             f"- pairs: {result.pairs}; judged in both orders: {result.judged_pairs}; votes: {len(result.votes)}",
             f"- requests this run: {result.requests}; answers reused from the journal: {result.reused}",
             f"- unparseable answers: {result.parse_failures} (each retried once); pair orders left without "
             f"a parseable answer: {result.unparsed_orders}; failed requests: {result.request_failures}",
             f"- cost this run: ${result.cost:.4f}" + (" (stopped at --max-cost)" if result.budget_stopped else ""),
             "", "Position inconsistency (share of judged pairs whose answer changed with the order; "
             "counted as ties):", ""]
    for aspect, share in result.position_inconsistency().items():
        lines.append(f"- {aspect}: {fmt_number(share)} ({result.inconsistent[aspect]} of {result.compared[aspect]})")
    lines.append("")
    sections, tables = people_agreement_sections(participant_votes, llm, judge_votes)
    lines += sections
    summary["agreement"] = tables
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (args.out / "agreement.md").write_text("\n".join(lines) + "\n")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
