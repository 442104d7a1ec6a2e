"""The local generation engine: one scheduler over a `ModelRunner`, one worker thread per base model.

How a request goes through it (the worker thread is the only one that calls the runner):
1. Admission (between decode steps): callers on any thread `submit` a `Request`; the worker takes
   waiting ones while the batch has room (`max_batch`), fits each prompt to the window (`fit_messages`:
   the oldest turns go first, the system prompt stays) and gives it its own generator.
2. Chunked prefill: each loop iteration prefills at most `prefill_chunk` prompt tokens (of one or more
   waiting rows, one row at a time) before the next decode step, so a long prompt cannot stall
   everyone else's stream. A row opens its sequence in the runner when its prefill starts, not when it
   is admitted: a row admitted with it may by then have left a prompt with the same beginning in the
   runner's kept cache.
3. When its prompt is done the row samples its first token and joins the running batch.
4. Every decode step is one forward pass over all running rows (every session and arm on this base),
   then one batched sampling call (`extes.models.sampling`). Each row samples with its own settings.
5. A row leaves the batch at end-of-turn, its token limit or when cancelled (checked at every step); the
   runner may keep its keys/values for the next turn.
Events go to each request's sink: text deltas (visible text only: strategy tags are held back), then a
final event with the `Reply`; an exception when the request fails.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from extes.models.detok import IncrementalDecoder
from extes.models.runner import KVHandle, ModelRunner
from extes.models.sampling import sample_one, sample_rows
from extes.models.text import fit_messages, shows_nothing, split_reply, visible_text
from extes.models.types import MAX_BATCH, PREFILL_CHUNK, EngineClosed, EngineStats, Event, Reply, Request

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Row:
    """A request the scheduler has admitted: its prompt, its sampling state and what it has written."""

    req: Request
    prompt_ids: list[int]
    max_new: int
    dropped: int  # messages dropped from the front to fit the window
    seen: torch.Tensor  # unique prompt + output ids (repetition penalty)
    generator: torch.Generator
    detok: IncrementalDecoder
    kv: KVHandle | None = None  # the runner's sequence, from the start of its prefill to its release
    out_ids: list[int] = field(default_factory=list)
    emitted: str = ""
    ttft: float | None = None
    last_token: int = 0
    finish: str | None = None
    final_sent: bool = False

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)


class Engine:
    """One base model behind `runner`, one worker thread. `submit`, `close`, `alive`, `has_adapter`,
    `window`, `dtype_name`, `engine_version`, `stats()`: the `LocalBackend` Protocol."""

    def __init__(self, runner: ModelRunner, *, max_batch: int = MAX_BATCH, gather_s: float = 0.01,
                 prefill_chunk: int = PREFILL_CHUNK, name: str = "engine"):
        self.runner = runner
        runner.load()
        self.max_batch = max_batch
        self.gather_s = gather_s
        self.prefill_chunk = max(1, int(prefill_chunk))
        self.name = name
        self.counters = EngineStats()
        self._step_times: deque[tuple[int, float]] = deque(maxlen=4096)
        self._queue: queue.Queue[Request | None] = queue.Queue()
        self._pending: deque[Request] = deque()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"extes-engine:{Path(name).name}", daemon=True)
        self._thread.start()

    # -- public ---------------------------------------------------------------------------------------

    @property
    def tokenizer(self):
        return self.runner.tokenizer

    @property
    def window(self) -> int:
        return self.runner.window

    @property
    def dtype_name(self) -> str:
        return self.runner.dtype_name

    @property
    def engine_version(self) -> str:
        return self.runner.version

    @property
    def eos_ids(self) -> frozenset[int]:
        return self.runner.eos_ids

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def has_adapter(self, path: str | None) -> bool:
        return self.runner.has_adapter(path)

    def submit(self, req: Request) -> None:
        if self._closed.is_set():
            raise EngineClosed("the engine is closed")
        if not self.has_adapter(req.adapter):
            raise KeyError(f"adapter {req.adapter!r} is not loaded on base {self.name!r}")
        self._queue.put(req)

    def stats(self) -> EngineStats:
        """A copy of the counters (no text)."""
        c = self.counters
        return EngineStats(
            steps=c.steps, max_rows_seen=c.max_rows_seen, prefill_tokens=c.prefill_tokens,
            prefill_seconds=c.prefill_seconds, decode_rows=c.decode_rows, decode_seconds=c.decode_seconds,
            kv_positions_read=self.runner.kv_positions_read, kv_positions_used=c.kv_positions_used,
            step_times=list(self._step_times), torch_threads=torch.get_num_threads(),
            kv_cache=None if self.runner.kv_cache is None else replace(self.runner.kv_cache.stats))

    def clear_step_times(self) -> None:
        self._step_times.clear()

    def close(self, timeout: float = 10.0) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._queue.put(None)
        self._thread.join(timeout)

    # -- the worker -----------------------------------------------------------------------------------

    def _run(self) -> None:
        rows: list[Row] = []  # decoding
        prefilling: deque[Row] = deque()
        with torch.inference_mode():
            while True:
                try:
                    if not self._collect(block=not rows and not prefilling and not self._pending):
                        break
                    prefilling.extend(self._take_pending(self.max_batch - len(rows) - len(prefilling)))
                    if prefilling:
                        self._prefill(prefilling, rows)
                    if rows:
                        self._decode(rows)
                except Exception as exc:  # deliver the failure to every caller waiting on this batch
                    log.error("generation worker failed: %s: %s", type(exc).__name__, exc)
                    for row in {id(r): r for r in rows + list(prefilling)}.values():
                        if not row.final_sent:
                            row.req.sink(exc)
                    rows.clear()
                    prefilling.clear()
                    self.runner.reset()
            for row in rows + list(prefilling):
                row.finish = "cancelled"
                self._emit_final(row)
            for req in list(self._pending):
                self._finish_unstarted(req, "cancelled")

    def _collect(self, block: bool) -> bool:
        """Move queued requests into the pending list; False when closing."""
        try:
            if block:
                item = self._queue.get()
                if item is None:
                    return False
                self._pending.append(item)
                if self.gather_s:
                    time.sleep(self.gather_s)  # let the other panes of the same click arrive
            while True:
                item = self._queue.get_nowait()
                if item is None:
                    return False
                self._pending.append(item)
        except queue.Empty:
            return not self._closed.is_set()

    def _take_pending(self, room: int) -> list[Row]:
        """Admit waiting requests, oldest first, until `room` rows are taken; cancelled ones are finished
        without a row, and one whose prompt cannot fit gets its error."""
        taken: list[Row] = []
        while self._pending and len(taken) < room:
            req = self._pending.popleft()
            if req.cancelled():
                self._finish_unstarted(req, "cancelled")
                continue
            row = self._admit(req)
            if row is not None:
                taken.append(row)
        return taken

    def _admit(self, req: Request) -> Row | None:
        window = self.runner.window
        max_new = min(req.settings.max_new_tokens, max(1, window // 2))
        try:
            ids, dropped = fit_messages(self.runner.tokenizer, req.messages, window - max_new)
        except Exception as exc:
            req.sink(exc)
            return None
        gen = torch.Generator()
        gen.manual_seed(req.settings.seed if req.settings.seed is not None else random.getrandbits(63))
        return Row(req=req, prompt_ids=ids, max_new=min(max_new, window - len(ids)), dropped=dropped,
                   seen=torch.tensor(sorted(set(ids)), dtype=torch.long), generator=gen,
                   detok=IncrementalDecoder(self.runner.tokenizer))

    def _prefill(self, prefilling: deque[Row], rows: list[Row]) -> None:
        """Prefill up to `prefill_chunk` prompt tokens, front row first; rows whose prompt is done sample
        their first token and join the batch."""
        t0 = time.perf_counter()
        joining: list[Row] = []
        try:
            budget = self.prefill_chunk
            while prefilling and budget > 0:
                row = prefilling[0]
                if row.req.cancelled():
                    prefilling.popleft()
                    row.finish = "cancelled"
                    self._finish(row)
                    continue
                if row.kv is None:
                    row.kv = self.runner.open(row.req.adapter, row.prompt_ids)
                take = min(budget, row.prompt_len - row.kv.length)
                logits = self.runner.prefill(row.kv, take)
                budget -= take
                self.counters.prefill_tokens += take
                if row.kv.length < row.prompt_len:
                    continue
                prefilling.popleft()
                row.ttft = time.perf_counter() - row.req.submitted_at
                self._hold_eos(logits, [row])
                self._accept(row, sample_one(logits[0], row.req.settings, row.seen, row.generator))
                if row.finish is not None:
                    self._finish(row)
                else:
                    joining.append(row)
            if joining:
                capacity = max(min(self.runner.window, r.prompt_len + r.max_new) for r in joining)
                self.runner.join([r.kv for r in joining], capacity)
                rows.extend(joining)
                self.counters.max_rows_seen = max(self.counters.max_rows_seen, len(rows))
        finally:
            self.counters.prefill_seconds += time.perf_counter() - t0

    def _decode(self, rows: list[Row]) -> None:
        t0 = time.perf_counter()
        b = len(rows)
        used = sum(r.kv.length for r in rows) + b
        logits = self.runner.decode([r.kv for r in rows], [r.last_token for r in rows])
        self.counters.steps += 1
        self._hold_eos(logits, rows)
        tokens = sample_rows(logits, [r.req.settings for r in rows], [r.seen for r in rows],
                             [r.generator for r in rows])
        for r, token in zip(rows, tokens):
            if r.req.cancelled():
                r.finish = "cancelled"
                continue
            self._accept(r, token)
        took = time.perf_counter() - t0
        self._step_times.append((b, took))
        self.counters.decode_rows += b
        self.counters.decode_seconds += took
        self.counters.kv_positions_used += used
        done = [r for r in rows if r.finish is not None]
        if done:
            rows[:] = [r for r in rows if r.finish is None]
            for r in done:
                self._finish(r)

    def _hold_eos(self, logits: torch.Tensor, rows: list[Row]) -> None:
        """A reply must show the participant something: while a row shows nothing yet (`shows_nothing`:
        no text, or only bracketed tags, which the study strips from every arm's replies), its end-of-turn
        tokens cannot be drawn. This is `min_new_tokens` counted in visible text. Without it the embedded
        model sometimes ended a reply at once, and the study showed an empty reply ("…") and kept an empty
        turn in the history. `logits` (one row per entry of `rows`) is changed in place."""
        held = [i for i, r in enumerate(rows) if shows_nothing(r.emitted)]
        eos_ids = self.runner.eos_ids
        if held and eos_ids:
            eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=logits.device)
            logits[torch.tensor(held, device=logits.device)[:, None], eos[None, :]] = float("-inf")

    def _accept(self, row: Row, token: int) -> None:
        if token in self.runner.eos_ids:
            row.finish = "stop"
            return
        row.out_ids.append(token)
        row.last_token = token
        if row.req.settings.repetition_penalty != 1.0 and not bool((row.seen == token).any()):
            row.seen = torch.cat([row.seen, torch.tensor([token], dtype=torch.long)])
        row.detok.add(token)
        vis = visible_text(row.detok.text, row.req.strategies, final=False)
        if len(vis) > len(row.emitted) and vis.startswith(row.emitted):
            delta, row.emitted = vis[len(row.emitted):], vis
            row.req.sink(Event(delta=delta))
        if row.req.cancelled():
            row.finish = "cancelled"
        elif len(row.out_ids) >= row.max_new:
            row.finish = "length"

    def _finish(self, row: Row) -> None:
        """Send the final event, then hand the row's sequence back to the runner (which may keep its
        keys/values for the next turn)."""
        self._emit_final(row)
        if row.kv is not None:
            kv, row.kv = row.kv, None
            self.runner.release(kv, (row.prompt_ids + row.out_ids)[:kv.length])

    def _emit_final(self, row: Row) -> None:
        raw = self.runner.tokenizer.decode(row.out_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        strategy, text = split_reply(raw, row.req.strategies)
        delta = text[len(row.emitted):] if text.startswith(row.emitted) else ""
        reply = Reply(
            text=text, strategy=strategy, raw_text=raw.strip(), n_tokens=len(row.out_ids),
            latency_s=time.perf_counter() - row.req.submitted_at, ttft_s=row.ttft,
            finish_reason=row.finish or "stop", settings=row.req.settings.to_dict(),
            prompt_tokens=row.prompt_len, dropped_messages=row.dropped, token_ids=list(row.out_ids),
            dtype=self.runner.dtype_name, engine_version=self.runner.version,
            cached_prompt_tokens=row.kv.cached if row.kv is not None else 0,
        )
        row.final_sent = True
        row.req.sink(Event.final(reply, delta))

    def _finish_unstarted(self, req: Request, reason: str) -> None:
        req.sink(Event.final(req.unstarted_reply(reason, self.runner.dtype_name, self.runner.version)))
