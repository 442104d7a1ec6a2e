"""LLM judges: the participants' pairwise, per-aspect questions asked of an LLM, with a position swap.

Why each piece is here:
- **Position swap.** LLM judges prefer one position (MT-bench, Zheng et al. 2023). Every pair is judged
  twice, with the two transcripts in both orders. Where the two answers disagree for an aspect (a
  different winner, or a winner against a tie), the vote is a tie and the disagreement is counted as a
  *position inconsistency*, reported per aspect.
- **Strict parsing.** The answer must be one JSON object with exactly the aspects' keys and values "A",
  "B" or "tie" (case-insensitive; a ```json fence is allowed). Anything else is recorded verbatim as
  unparseable and asked once more; a pair order that stays unparseable gives no vote and is reported.
- **Never re-pay.** Every answer goes into an append-only journal (the self-chat builder's `Journal`,
  fsynced) before it is used, keyed by the prompt version, model, item, arms, order and a hash of the
  prompt. A rerun reads the journal and asks only what has no final answer yet.
- **The builder's client.** Requests go through `extes.llm.client.LLMClient` (rate limits, retries
  with backoff, Retry-After) and `Budget` (a request is sent only if its worst case fits the budget).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from extes.llm.budget import Budget, BudgetExceeded
from extes.llm.journal import Journal, now_iso, read_journal
from extes.taxonomy import ASPECTS, Aspect

PROMPT_VERSION = "pairwise-v1"
VERDICTS = ("A", "B", "tie")


# The ExTES human-evaluation aspects, worded for a judge reading two transcripts (defined in taxonomy).
DEFAULT_ASPECTS: tuple[Aspect, ...] = ASPECTS


@dataclass(frozen=True)
class PairItem:
    """Two arms' transcripts of the same conversation (or the same test context), to be compared.

    ``transcript_x``/``transcript_y`` are ``(role, text)`` turns with role "user" or "assistant".
    ``arm_x`` < ``arm_y`` (sorted), so an item is the same whatever order the panes were shown in.
    """

    item_id: str
    arm_x: str
    arm_y: str
    transcript_x: tuple[tuple[str, str], ...]
    transcript_y: tuple[tuple[str, str], ...]
    conversation_id: str = ""

    def __post_init__(self) -> None:
        if self.arm_x >= self.arm_y:
            raise ValueError(f"{self.item_id}: arms must be two different names in sorted order, "
                             f"got {self.arm_x!r}, {self.arm_y!r}")


class ChatClient(Protocol):
    """What the judge needs from a client: `extes.llm.client.LLMClient` has it."""

    model: str

    async def complete(self, messages: list[dict[str, str]], est_tokens: int, max_tokens: int,
                       temperature: float, request_id: str = "") -> Any: ...


def load_prompt(version: str = PROMPT_VERSION) -> str:
    """The versioned judge prompt shipped in extes/judge/prompts/<version>.txt."""
    try:
        return resources.files("extes.judge").joinpath("prompts", f"{version}.txt").read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"unknown judge prompt version {version!r}") from None


def render_transcript(turns: Iterable[tuple[str, str]]) -> str:
    names = {"user": "Person", "assistant": "Chatbot"}
    return "\n".join(f"{names.get(role, role)}: {' '.join(text.split())}" for role, text in turns)


def build_messages(item: PairItem, order: str, aspects: Sequence[Aspect], template: str) -> list[dict[str, str]]:
    """The chat messages for one order: "xy" shows arm_x as A, "yx" shows arm_y as A."""
    first, second = ((item.transcript_x, item.transcript_y) if order == "xy"
                     else (item.transcript_y, item.transcript_x))
    keys = [a.key for a in aspects]
    text = template.format(
        aspects="\n".join(f"- {a.key} ({a.label}): {a.question}" for a in aspects),
        conversation_a=render_transcript(first), conversation_b=render_transcript(second),
        keys=", ".join(keys), example=json.dumps({k: v for k, v in zip(keys, ["A", "tie", "B", "A", "tie"] * 3)}),
    )
    return [{"role": "user", "content": text}]


_FENCE_RE = re.compile(r"^```(?:json)?\s*\n?(.*?)\n?```$", re.S | re.I)


def parse_verdict(text: str, keys: Sequence[str]) -> tuple[dict[str, str] | None, str]:
    """Strictly parse a judge's answer: ``({aspect: "A"|"B"|"tie"}, "")`` or ``(None, reason)``."""
    body = (text or "").strip()
    m = _FENCE_RE.match(body)
    if m:
        body = m.group(1).strip()
    if not body:
        return None, "empty answer"
    try:
        data = json.loads(body)
    except ValueError:
        return None, "not a JSON object"
    if not isinstance(data, dict):
        return None, f"not a JSON object (a {type(data).__name__})"
    missing = [k for k in keys if k not in data]
    extra = sorted(set(data) - set(keys))
    if missing or extra:
        return None, f"keys: missing {missing}, unexpected {extra}"
    out: dict[str, str] = {}
    for k in keys:
        value = data[k]
        norm = {"a": "A", "b": "B", "tie": "tie"}.get(value.strip().lower()) if isinstance(value, str) else None
        if norm is None:
            return None, f"{k}: {value!r} is not A, B or tie"
        out[k] = norm
    return out, ""


def combine_orders(v_xy: dict[str, str], v_yx: dict[str, str], keys: Sequence[str]) -> dict[str, tuple[str, bool]]:
    """Per aspect: (outcome "x"|"y"|"tie", consistent). Any disagreement between the orders is a tie."""
    as_xy = {"A": "x", "B": "y", "tie": "tie"}
    as_yx = {"A": "y", "B": "x", "tie": "tie"}
    out = {}
    for k in keys:
        a, b = as_xy[v_xy[k]], as_yx[v_yx[k]]
        out[k] = (a, True) if a == b else ("tie", False)
    return out


def request_key(model: str, version: str, item: PairItem, order: str, messages: list[dict[str, str]]) -> str:
    h = hashlib.sha256()
    for part in (version, model, item.item_id, item.arm_x, item.arm_y, order,
                 json.dumps(messages, sort_keys=True, ensure_ascii=False)):
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:32]


@dataclass
class JudgeResult:
    model: str
    prompt_version: str
    aspects: tuple[str, ...]
    votes: list[dict[str, Any]] = field(default_factory=list)  # Votes CSV rows, voter "llm"
    requests: int = 0          # API calls that returned an answer in this run
    reused: int = 0            # answers taken from the journal (not paid again)
    answers: int = 0           # parsed answers (this run and reused)
    parse_failures: int = 0    # unparseable answers recorded (this run and reused)
    request_failures: int = 0  # calls that failed after the client's retries (this run)
    unparsed_orders: int = 0   # (pair, order)s with no parseable answer after the retry: no vote
    pairs: int = 0
    judged_pairs: int = 0      # pairs with both orders parsed
    compared: Counter = field(default_factory=Counter)       # per aspect: pairs judged in both orders
    inconsistent: Counter = field(default_factory=Counter)   # per aspect: orders disagreed -> tie
    cost: float = 0.0          # this run's spend
    prompt_tokens: int = 0
    completion_tokens: int = 0
    budget_stopped: bool = False

    def position_inconsistency(self) -> dict[str, float | None]:
        return {a: (self.inconsistent[a] / self.compared[a] if self.compared[a] else None) for a in self.aspects}

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.model, "prompt_version": self.prompt_version, "pairs": self.pairs,
            "judged_pairs": self.judged_pairs, "votes": len(self.votes), "requests": self.requests,
            "reused_from_journal": self.reused, "answers": self.answers, "parse_failures": self.parse_failures,
            "request_failures": self.request_failures, "unparsed_orders": self.unparsed_orders,
            "position_inconsistency": self.position_inconsistency(),
            "inconsistent": dict(self.inconsistent), "compared": dict(self.compared),
            "cost": round(self.cost, 6), "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens, "budget_stopped": self.budget_stopped,
        }


class Judge:
    """Judge pairs with an LLM; answers journaled in ``journal_path`` (a rerun never re-pays)."""

    def __init__(self, client: ChatClient, journal_path: str | Path, aspects: Sequence[Aspect] = DEFAULT_ASPECTS,
                 budget: Budget | None = None, prompt_version: str = PROMPT_VERSION, temperature: float = 0.0,
                 max_tokens: int = 200, parse_retries: int = 1, concurrency: int = 4):
        self.client = client
        self.journal_path = Path(journal_path)
        self.aspects = tuple(aspects)
        self.keys = tuple(a.key for a in self.aspects)
        self.budget = budget
        self.version = prompt_version
        self.template = load_prompt(prompt_version)
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.attempts = 1 + parse_retries
        self.concurrency = concurrency

    def _past(self) -> dict[str, list[dict[str, Any]]]:
        by_key: dict[str, list[dict[str, Any]]] = {}
        if self.journal_path.exists():
            for rec in read_journal(self.journal_path):
                if rec.get("type") == "answer":
                    by_key.setdefault(rec["key"], []).append(rec)
        return by_key

    async def _order(self, item: PairItem, order: str, past: list[dict[str, Any]], journal: Journal,
                     result: JudgeResult, lock: asyncio.Lock) -> dict[str, str] | None:
        messages = build_messages(item, order, self.aspects, self.template)
        key = request_key(self.client.model, self.version, item, order, messages)
        for rec in past:
            result.reused += 1
            if rec["parsed"] is not None:
                result.answers += 1
                return rec["parsed"]
            result.parse_failures += 1
        est = len(messages[0]["content"]) // 4 + 16
        for attempt in range(len(past), self.attempts):
            reserved = 0.0
            if self.budget is not None:
                reserved = self.budget.worst_case(est, self.max_tokens)
                if not self.budget.reserve(reserved):
                    raise BudgetExceeded(f"budget reached before {item.item_id} ({order})")
            try:
                comp = await self.client.complete(messages, est_tokens=est, max_tokens=self.max_tokens,
                                                  temperature=self.temperature,
                                                  request_id=f"judge-{key}-{attempt}")
            except Exception as exc:  # noqa: BLE001 - a failed request is recorded, the run goes on
                if self.budget is not None:
                    self.budget.release(reserved)
                result.request_failures += 1
                await journal.append_async("request_failed", key=key, item_id=item.item_id, order=order,
                                           error=str(exc)[:300], at=now_iso())
                return None
            cost = self.budget.charge(comp.prompt_tokens, comp.completion_tokens, reserved) if self.budget else 0.0
            parsed, reason = parse_verdict(comp.text, self.keys)
            async with lock:
                result.requests += 1
                result.cost += cost
                result.prompt_tokens += comp.prompt_tokens
                result.completion_tokens += comp.completion_tokens
            await journal.append_async(
                "answer", key=key, item_id=item.item_id, arm_x=item.arm_x, arm_y=item.arm_y, order=order,
                attempt=attempt, model=self.client.model, prompt_version=self.version, text=comp.text,
                parsed=parsed, error=reason or None, prompt_tokens=comp.prompt_tokens,
                completion_tokens=comp.completion_tokens, cost=cost, at=now_iso())
            if parsed is not None:
                result.answers += 1
                return parsed
            result.parse_failures += 1
        result.unparsed_orders += 1
        return None

    async def run(self, items: Sequence[PairItem]) -> JudgeResult:
        result = JudgeResult(model=self.client.model, prompt_version=self.version, aspects=self.keys,
                             pairs=len(items))
        past = self._past()
        verdicts: dict[tuple[int, str], dict[str, str] | None] = {}
        sem = asyncio.Semaphore(self.concurrency)
        lock = asyncio.Lock()
        self.journal_path.parent.mkdir(parents=True, exist_ok=True)
        with Journal(self.journal_path) as journal:
            async def one(i: int, order: str) -> None:
                item = items[i]
                messages = build_messages(item, order, self.aspects, self.template)
                key = request_key(self.client.model, self.version, item, order, messages)
                async with sem:
                    if result.budget_stopped:
                        return
                    try:
                        verdicts[(i, order)] = await self._order(item, order, past.get(key, []), journal,
                                                                 result, lock)
                    except BudgetExceeded:
                        result.budget_stopped = True

            await asyncio.gather(*(one(i, order) for i in range(len(items)) for order in ("xy", "yx")))
        stamp = now_iso()
        for i, item in enumerate(items):
            v_xy, v_yx = verdicts.get((i, "xy")), verdicts.get((i, "yx"))
            if v_xy is None or v_yx is None:
                continue
            result.judged_pairs += 1
            for aspect, (outcome, consistent) in combine_orders(v_xy, v_yx, self.keys).items():
                result.compared[aspect] += 1
                if not consistent:
                    result.inconsistent[aspect] += 1
                result.votes.append({
                    "session_id": item.conversation_id or item.item_id, "aspect": aspect,
                    "arm_a": item.arm_x, "arm_b": item.arm_y,
                    "outcome": {"x": "a", "y": "b", "tie": "tie"}[outcome],
                    "rater_id": f"llm:{self.client.model}", "conversation_id": item.conversation_id,
                    "created_at": stamp, "voter": "llm",
                })
        return result


def judge_pairs(client: ChatClient, items: Sequence[PairItem], journal_path: str | Path, **kwargs: Any) -> JudgeResult:
    """Synchronous wrapper: run a `Judge` over ``items``."""
    return asyncio.run(Judge(client, journal_path, **kwargs).run(items))
