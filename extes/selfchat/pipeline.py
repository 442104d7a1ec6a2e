"""The build loop: rounds of self-chat requests, judged, deduplicated, journaled, exported.

Round k asks for its share of --target, split over scenarios by the quota. Each request takes an
in-context example from the pool (seeds + dialogues accepted in rounds < k), preferring the same
scenario, and asks for a new dialogue of the scenario with the most dialogues still missing.
Workers (--concurrency) take the next scenario under one asyncio condition, so quotas are never
overshot by requests in flight. A round ends when its target is met, when it has used
`max_attempts_factor` x target requests, or when the budget cap is reached.

Crash safety: the request record is journaled (fsync) before it is sent, the response (with usage
and cost) as soon as it arrives, the decision right after. A re-run replays the journal: paid
responses without a decision are judged now (not re-sent); requests in flight when the run died
are marked abandoned and their worst-case cost is counted as spent (we cannot know whether the
server billed them); new requests get fresh ids.
"""

from __future__ import annotations

import asyncio
import math
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extes.dialogue import Dialogue, load_dialogues
from extes.llm.budget import Budget, Price, estimate_run
from extes.llm.client import LLMClient, RequestFailed
from extes.llm.journal import JOURNAL_NAME, Journal
from extes.selfchat.dedup import NearDupIndex, TurnIndex, dialogue_text
from extes.selfchat.export import export_run
from extes.selfchat.prompt import (
    TEMPLATE_VERSION,
    build_messages,
    estimate_prompt_tokens,
    estimate_tokens,
    prompt_sha,
)
from extes.selfchat.quota import allocate, split_rounds
from extes.selfchat.state import RunState, dialogue_id_for
from extes.selfchat.validate import ACCEPTED, NEEDS_REVIEW, REJECTED, Rules, judge, strip_build_meta
from extes.taxonomy import scenario_proportions


@dataclass
class BuildConfig:
    seeds: list[Path]
    out: Path
    model: str
    target: int
    base_url: str | None = None
    api_key: str | None = None
    rounds: int = 1
    concurrency: int = 8
    rpm: float | None = None
    tpm: float | None = None
    max_cost: float | None = None
    price: Price | None = None
    temperature: float = 0.7
    max_tokens: int = 2048
    proportions: dict[str, float] | None = None
    rules: Rules = field(default_factory=Rules)
    seed: int = 0
    max_attempts_factor: float = 3.0
    max_retries: int = 6
    max_consecutive_failures: int = 3   # requests in a row failing after all retries stop the run
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    timeout: float = 120.0
    progress: bool = True
    fsync: bool = True

    def summary(self) -> dict[str, Any]:
        return {
            "seeds": [str(p) for p in self.seeds], "out": str(self.out), "model": self.model,
            "base_url": self.base_url, "target": self.target, "rounds": self.rounds,
            "concurrency": self.concurrency, "rpm": self.rpm, "tpm": self.tpm, "max_cost": self.max_cost,
            "price": [self.price.input_per_m, self.price.output_per_m] if self.price else None,
            "temperature": self.temperature, "max_tokens": self.max_tokens, "seed": self.seed,
            "rules": self.rules.__dict__, "template_version": TEMPLATE_VERSION,
        }


@dataclass
class BuildResult:
    accepted: int                 # generated dialogues accepted in total (all runs)
    target: int
    requests: int                 # requests this invocation sent (not counting retries)
    counts: Counter               # this invocation's decisions by status
    spent: float                  # all runs
    stop_reason: str              # "done" | "budget" | "exhausted" | "fatal"
    rounds: list[dict[str, Any]]
    retries: int = 0

    @property
    def complete(self) -> bool:
        return self.stop_reason == "done"


class FatalRequestError(Exception):
    pass


def pick_example(pool: list[Dialogue], scene: str, rng: random.Random) -> Dialogue:
    same = [d for d in pool if d.scene == scene]
    return rng.choice(same or pool)


class Builder:
    def __init__(self, cfg: BuildConfig):
        if cfg.target < 0:
            raise ValueError(f"--target must be >= 0, got {cfg.target}")
        if cfg.concurrency < 1:
            raise ValueError(f"--concurrency must be >= 1, got {cfg.concurrency}")
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.seeds = load_dialogues(cfg.seeds)
        if not self.seeds:
            raise ValueError(f"no seed dialogues found in {', '.join(map(str, cfg.seeds))}")
        for d in self.seeds:
            d.meta["round"] = 0
        self._lockfh = self._lock()
        self.journal = Journal(self.out / JOURNAL_NAME, fsync=cfg.fsync)
        self.state = RunState.load(self.out)
        self.budget = Budget(cfg.price, cfg.max_cost, spent=self.state.spent)
        self.near = NearDupIndex(cfg.rules.near_dup_threshold)
        self.turns = TurnIndex()
        self.by_id: dict[str, Dialogue] = {}
        for d in self.seeds:
            self._index(d)
        for d in self.state.accepted():
            self._index(d)
        self.counts: Counter = Counter()
        self.requests_sent = 0
        self.consecutive_failures = 0
        self.client: LLMClient | None = None
        self._bar = None
        self.stop_reason: str | None = None

    # -- indexes ------------------------------------------------------------------------------------
    def _index(self, d: Dialogue) -> None:
        self.by_id[d.id] = d
        self.near.add(d.id, dialogue_text(d))
        self.turns.add(d.id, d)

    def pool(self, round_: int) -> list[Dialogue]:
        return self.seeds + self.state.accepted(set(range(1, round_)))

    # -- estimate -----------------------------------------------------------------------------------
    def estimate(self):
        done = len(self.state.accepted())
        avg_prompt = int(sum(estimate_prompt_tokens(build_messages(d, d.scene, self.cfg.rules.min_utterances))
                             for d in self.seeds) / len(self.seeds))
        avg_completion = int(sum(estimate_tokens(str(d.to_extes())) for d in self.seeds) / len(self.seeds))
        return estimate_run(max(0, self.cfg.target - done), avg_prompt, min(avg_completion, self.cfg.max_tokens),
                            self.cfg.max_tokens, self.cfg.price)

    # -- recovery -----------------------------------------------------------------------------------
    def recover(self) -> None:
        """Settle what a previous run left open: judge paid responses, mark lost requests."""
        for rid in self.state.unsettled():
            req = self.state.requests[rid]
            charged = float(req.get("reserved", 0.0))
            rec = self.journal.append("abandoned", id=rid, charged=charged,
                                      note="in flight when the previous run stopped; worst-case cost counted")
            self.state.abandoned[rid] = rec
            self.budget.spent += charged
        for rid in self.state.undecided():
            if rid not in self.state.requests:  # a damaged journal: keep the response, say so
                print(f"warning: {self.journal.path}: response {rid} has no request record; not judged",
                      file=sys.stderr)
                continue
            self._decide(self.state.requests[rid], self.state.responses[rid])
        self.journal.append("recovered", abandoned=len(self.state.abandoned), decided=len(self.state.decisions))

    # -- one request --------------------------------------------------------------------------------
    def _decide(self, req: dict[str, Any], resp: dict[str, Any]) -> dict[str, Any]:
        rid = req["id"]
        example = self.by_id.get(req.get("example_id", ""))
        verdict = judge(resp["text"], req["scenario"], example, self.near, self.turns, self.cfg.rules,
                        dialogue_id=dialogue_id_for(rid), finish_reason=resp.get("finish_reason"))
        d = verdict.dialogue
        if d is not None:
            d.meta.update({"round": req["round"], "request_id": rid, "example_id": req.get("example_id"),
                           "template_version": req.get("template_version"), "model": resp.get("model")})
            if verdict.status == ACCEPTED:
                strip_build_meta(d.turns)
        rec = self.journal.write(
            "decision", id=rid, dialogue_id=dialogue_id_for(rid), round=req["round"],
            scenario=req["scenario"], status=verdict.status, reasons=verdict.reasons, notes=verdict.notes,
            dialogue=d.to_dict() if d is not None else None, template_version=req.get("template_version"))
        self.state.decisions[rid] = rec
        self.state.records.append(rec)
        if verdict.status == ACCEPTED and d is not None:
            self._index(d)
        self.counts[verdict.status] += 1
        return rec

    async def _request(self, rid: str, messages: list[dict[str, str]], est: int, reserved: float) -> str:
        """Send one request and judge it; returns the decision status (or 'error')."""
        assert self.client is not None

        def on_retry(attempt: int, err: str, delay: float) -> None:
            self.journal.append("retry", id=rid, attempt=attempt, error=err, delay_s=round(delay, 3))

        try:
            comp = await self.client.complete(messages, est, self.cfg.max_tokens, self.cfg.temperature,
                                              request_id=rid, on_retry=on_retry)
        except RequestFailed as exc:
            self.budget.release(reserved)
            rec = await self.journal.append_async("error", id=rid, error=str(exc), attempts=exc.attempts,
                                                  errors=exc.errors, retryable=exc.retryable)
            self.state.errors[rid] = rec
            self.counts["error"] += 1
            if not exc.retryable:
                raise FatalRequestError(str(exc)) from None
            self.consecutive_failures += 1
            if self.consecutive_failures >= self.cfg.max_consecutive_failures:
                raise FatalRequestError(f"{self.consecutive_failures} requests in a row failed after all "
                                        f"retries; last: {exc}") from None
            return "error"
        self.consecutive_failures = 0
        cost = self.budget.charge(comp.prompt_tokens, comp.completion_tokens, reserved)
        resp = await self.journal.append_async(
            "response", id=rid, text=comp.text, model=comp.model, finish_reason=comp.finish_reason,
            usage={"prompt_tokens": comp.prompt_tokens, "completion_tokens": comp.completion_tokens},
            cost=cost, latency_s=round(comp.latency_s, 4), attempts=comp.attempts)
        self.state.responses[rid] = resp
        dec = self._decide(self.state.requests[rid], resp)
        await self.journal.sync()  # shared with concurrent workers' fsyncs (group commit)
        return dec["status"]

    # -- a round ------------------------------------------------------------------------------------
    async def run_round(self, round_: int, target: int, start: int = 0) -> str:
        """`start`: dialogues wanted in earlier rounds, so this round takes the next slice of the
        allocation order (rounds together follow the proportions)."""
        rnd = Round(self, round_, target, start)
        tasks = [asyncio.create_task(rnd.worker()) for _ in range(self.cfg.concurrency)]
        try:
            results = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for t in tasks:
                t.cancel()
        for r in results:
            if isinstance(r, BaseException):
                raise r
        reason = "done" if rnd.done() else (rnd.stop or "exhausted")
        self.journal.append("round_end", round=round_, reason=reason, target=target,
                            accepted=sum(rnd.accepted.values()), requests=rnd.requests)
        return reason

    # -- progress bar -------------------------------------------------------------------------------
    def _update_bar(self, accepted: bool) -> None:
        if self._bar is None:
            return
        if accepted:
            self._bar.update(1)
        self._bar.set_postfix(acc=self.counts[ACCEPTED], rej=self.counts[REJECTED],
                              review=self.counts[NEEDS_REVIEW], err=self.counts["error"],
                              cost=f"${self.budget.spent:.2f}", refresh=False)

    # -- the whole run ------------------------------------------------------------------------------
    def _lock(self):
        """One build per run folder at a time (two would interleave request ids)."""
        import fcntl

        fh = (self.out / ".build.lock").open("a")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise ValueError(f"{self.out}: another `extes build` is running on this folder") from None
        return fh

    async def run(self) -> BuildResult:
        try:
            return await self._run()
        finally:
            self.close()

    def close(self) -> None:
        self.journal.close()
        if self._lockfh is not None:
            self._lockfh.close()
            self._lockfh = None

    async def _run(self) -> BuildResult:
        cfg = self.cfg
        self.journal.append("run_start", config=cfg.summary(), resumed=bool(self.state.requests))
        self.recover()
        targets = split_rounds(cfg.target, cfg.rounds)
        self.client = LLMClient(cfg.model, cfg.base_url, cfg.api_key, cfg.rpm, cfg.tpm, cfg.max_retries,
                                cfg.backoff_base, cfg.backoff_max, timeout=cfg.timeout, seed=cfg.seed)
        if cfg.progress:
            from tqdm import tqdm

            self._bar = tqdm(total=cfg.target, initial=min(cfg.target, len(self.state.accepted())),
                             desc="build", unit="dlg", file=sys.stderr, dynamic_ncols=True)
        reason = "done"
        try:
            for k, target in enumerate(targets, start=1):
                have = sum(self.state.accepted_counts(k).values())
                if have >= target:
                    continue
                if self.state.requests_in_round(k) >= math.ceil(target * cfg.max_attempts_factor):
                    reason = "exhausted"
                    continue
                if self._bar is not None:
                    self._bar.set_description(f"build round {k}/{len(targets)}")
                r = await self.run_round(k, target, start=sum(targets[:k - 1]))
                if r == "budget":
                    reason = "budget"
                    break
                if r != "done":
                    reason = r
        except FatalRequestError:
            reason = "fatal"
            raise
        except BaseException:  # Ctrl-C, cancellation, a bug: the journal stays consistent either way
            reason = "interrupted"
            raise
        finally:
            self.stop_reason = reason
            if self._bar is not None:
                self._bar.close()
            await self.client.close()
            self.journal.append("run_end", reason=reason, spent=self.budget.spent,
                                requests=self.requests_sent, counts=dict(self.counts),
                                retries=self.client.stats.retries)
            self.journal.close()
            if reason == "fatal":  # what was accepted before the server failed is still worth having

                export_run(self.out, self.seeds, len(targets))

        rounds = export_run(self.out, self.seeds, len(targets))
        return BuildResult(len(self.state.accepted()), cfg.target, self.requests_sent, self.counts,
                           self.budget.spent, reason, rounds, self.client.stats.retries)


@dataclass(frozen=True)
class Claim:
    """A request a worker has claimed: journaled and its worst-case cost reserved, not yet sent."""

    rid: str
    scene: str
    example_id: str  # the in-context example the prompt shows
    messages: list[dict[str, str]]
    est: int  # estimated prompt tokens
    reserved: float  # worst-case cost held in the budget


class Round:
    """One round's shared bookkeeping; `worker()` runs `concurrency` times over it.

    Workers claim the next scenario under one asyncio condition (`_claim`), so quotas are never
    overshot by requests in flight, and send outside it.
    """

    def __init__(self, builder: Builder, round_: int, target: int, start: int):
        cfg = builder.cfg
        self.b, self.round = builder, round_
        self.quota = allocate(target, cfg.proportions or scenario_proportions(), start=start)
        self.order = list(self.quota)
        self.accepted = builder.state.accepted_counts(round_)
        self.inflight: Counter = Counter()
        self.max_requests = math.ceil(target * cfg.max_attempts_factor)
        self.requests = builder.state.requests_in_round(round_)
        self.seq = builder.state.next_seq(round_)
        self.stop: str | None = None
        self.pool = builder.pool(round_)
        self.cond = asyncio.Condition()

    def done(self) -> bool:
        return all(self.accepted[s] >= self.quota[s] for s in self.quota)

    def next_scene(self) -> str | None:
        """The scenario with the most dialogues still missing (counting those in flight), if any."""
        best, best_def = None, 0
        for s in self.order:
            deficit = self.quota[s] - self.accepted[s] - self.inflight[s]
            if deficit > best_def:
                best, best_def = s, deficit
        return best

    async def _scene_or_stop(self) -> str | None:
        """(Under the condition.) The next scenario to ask for, waiting while only requests in flight can
        tell; None when this worker should stop."""
        while True:
            if self.stop or self.done():
                return None
            scene = self.next_scene() if self.requests < self.max_requests else None
            if scene is not None:
                return scene
            if not sum(self.inflight.values()):
                if self.requests >= self.max_requests:
                    self.stop = self.stop or "exhausted"
                return None
            await self.cond.wait()

    def _prepare(self, scene: str) -> Claim:
        cfg = self.b.cfg
        rid = f"r{self.round}-{self.seq:06d}"
        example = pick_example(self.pool, scene, random.Random(f"{cfg.seed}|{rid}"))
        messages = build_messages(example, scene, cfg.rules.min_utterances)
        est = estimate_prompt_tokens(messages)
        return Claim(rid, scene, example.id, messages, est, self.b.budget.worst_case(est, cfg.max_tokens))

    def _register(self, claim: Claim) -> Claim:
        """Count the claimed request and journal it (the fsync follows outside the condition)."""
        cfg, b = self.b.cfg, self.b
        self.seq += 1
        self.requests += 1
        self.inflight[claim.scene] += 1
        req = b.journal.write(
            "request", id=claim.rid, round=self.round, scenario=claim.scene, example_id=claim.example_id,
            template_version=TEMPLATE_VERSION, model=cfg.model, temperature=cfg.temperature,
            max_tokens=cfg.max_tokens, prompt_sha=prompt_sha(claim.messages), est_prompt_tokens=claim.est,
            reserved=claim.reserved)
        b.state.requests[claim.rid] = req
        b.requests_sent += 1
        return claim

    async def _claim(self) -> Claim | None:
        """The next request this worker sends, or None when the round is over for it."""
        async with self.cond:
            while True:
                scene = await self._scene_or_stop()
                if scene is None:
                    return None
                claim = self._prepare(scene)
                if self.b.budget.reserve(claim.reserved):
                    return self._register(claim)
                if not sum(self.inflight.values()):
                    self.stop = "budget"
                    self.b.journal.append("budget_stop", round=self.round, spent=self.b.budget.spent,
                                          reserved=self.b.budget.reserved, next_worst_case=claim.reserved,
                                          max_cost=self.b.cfg.max_cost)
                    self.cond.notify_all()
                    return None
                await self.cond.wait()  # what is in flight may cost less than reserved: wait and look again

    async def worker(self) -> None:
        while (claim := await self._claim()) is not None:
            try:
                # on disk before it is sent (the fsync runs off the event loop)
                await self.b.journal.sync()
                status = await self.b._request(claim.rid, claim.messages, claim.est, claim.reserved)
            except BaseException:
                # leave the others a consistent state to stop on; the journal keeps the request,
                # so a re-run settles it
                self.inflight[claim.scene] -= 1
                self.stop = self.stop or "fatal"
                async with self.cond:
                    self.cond.notify_all()
                raise
            async with self.cond:
                self.inflight[claim.scene] -= 1
                if status == ACCEPTED:
                    self.accepted[claim.scene] += 1
                self.b._update_bar(status == ACCEPTED)
                self.cond.notify_all()


def run_build_sync(cfg: BuildConfig) -> BuildResult:
    return asyncio.run(Builder(cfg).run())
