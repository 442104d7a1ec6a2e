"""The local generation engine: one worker thread per loaded base model, continuous batching.

How it works
- One `LocalEngine` holds one copy of a base model. Every LoRA adapter of the arms on that base is a
  named adapter on that one PEFT model; an arm without adapter runs on the base ("__base__").
- Callers (any thread) `submit` a `GenRequest`; the worker thread is the only one touching the model.
- The worker keeps a running batch. Requests that are waiting when it looks at the queue are prefilled
  together (left padded, one forward pass, mixed adapters through PEFT's `adapter_names`) and merged into
  the running batch's KV cache; then every decode step is one batched forward pass over all running
  requests. A request leaves the batch when it hits end-of-turn, its token limit, the context window,
  or is cancelled; the others go on. So three panes of one participant and other participants' requests
  that arrive meanwhile share forward passes.
- Each request has its own sampling settings (temperature, top_p, repetition penalty, seed) and its own
  sink: a callable that receives `Event`s (text deltas, then a final event with the `Reply`).
- Prompts longer than the window are cut from the oldest turns, keeping the system prompt (see
  `fit_messages`).

This module's `LocalEngine` is the transformers path: its KV cache is a transformers `DynamicCache`
whose per-layer key/value tensors we align (left pad) and select (drop finished rows) ourselves; that
needs plain full-attention layers (GPT-2 and most decoder-only models). LLaMA-family bases (LLaMA, Qwen2,
Mistral) with LoRA adapters run on `extes.models.fast_engine.FastEngine` instead, which shares the queue,
admission, sampling and streaming code below; `extes.models.fast_engine.create_engine` picks one.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extes.models.arms import GenerationSettings
from extes.models.detok import IncrementalDecoder
from extes.taxonomy import STRATEGY_TAG_RE, TAG_ANYWHERE_RE, split_strategy_tag

log = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch


class ContextTooLongError(ValueError):
    """Even the system prompt plus the last message do not fit the model's context window."""


class EngineClosed(RuntimeError):
    pass


@dataclass
class Reply:
    text: str
    strategy: str | None
    raw_text: str
    n_tokens: int
    latency_s: float
    ttft_s: float | None
    finish_reason: str  # "stop" | "length" | "cancelled"
    settings: dict[str, Any]
    prompt_tokens: int = 0
    dropped_messages: int = 0
    token_ids: list[int] = field(default_factory=list)
    dtype: str = ""  # weight dtype of the engine that wrote it ("float32", "bfloat16")
    engine_version: str = ""  # which engine path and version ("transformers-1", "extes-fast-2")
    cached_prompt_tokens: int = 0  # prompt tokens whose keys/values came from the kept KV cache


@dataclass
class Event:
    """A streamed piece of a reply: visible text only (never the strategy tag). The last event of a
    reply has done=True and the Reply; in `ArmPool.stream_many` a failed request ends with done=True,
    reply=None and `error` saying why."""

    delta: str
    done: bool = False
    reply: Reply | None = None
    error: str | None = None


@dataclass
class GenRequest:
    messages: list[dict[str, str]]
    settings: GenerationSettings
    sink: Callable[[Event | BaseException], None]
    adapter: str | None = None  # adapter path (None = the base model)
    strategies: bool = False
    cancel: threading.Event = field(default_factory=threading.Event)
    external_cancel: threading.Event | None = None
    submitted_at: float = field(default_factory=time.perf_counter)

    def cancelled(self) -> bool:
        return self.cancel.is_set() or (self.external_cancel is not None and self.external_cancel.is_set())


# ----------------------------------------------------------------------------------------------------------
# Prompt building and truncation


def render_prompt(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer of {tokenizer.name_or_path!r} has no chat template; cannot format messages")
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_messages(tokenizer, messages: list[dict[str, str]], budget: int) -> tuple[list[int], int]:
    """Token ids of the chat prompt that fit in `budget` tokens, and how many messages were dropped.

    The rule: keep every system message; drop the oldest other messages one at a time until the prompt
    fits; never start the kept history with an assistant message (its user turn was dropped). The last
    message is never dropped: if system prompt + last message alone do not fit, ContextTooLongError.
    """
    system = [m for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"]
    ids = render_prompt(tokenizer, system + rest)
    if len(ids) <= budget:
        return ids, 0
    # Binary search the smallest number of dropped leading messages that fits (length is monotone).
    lo, hi = 1, len(rest) - 1
    best: tuple[list[int], int] | None = None
    while lo <= hi:
        mid = (lo + hi) // 2
        k = mid
        while k < len(rest) - 1 and rest[k]["role"] == "assistant":
            k += 1
        cand = render_prompt(tokenizer, system + rest[k:])
        if len(cand) <= budget:
            best = (cand, k)
            hi = mid - 1
        else:
            lo = mid + 1
    if best is None:
        raise ContextTooLongError(
            f"the prompt needs more than {budget} tokens even with only the system prompt and the last "
            f"message ({len(render_prompt(tokenizer, system + rest[-1:]))} tokens); shorten the message"
        )
    return best


# ----------------------------------------------------------------------------------------------------------
# Streaming text: hide the strategy tag, hold back partial characters and trailing spaces


def visible_text(raw: str, strategies: bool, final: bool) -> str:
    """The part of the decoded output that people may see so far (monotone as `raw` grows)."""
    text = raw.lstrip()
    if strategies and text.startswith("["):
        m = STRATEGY_TAG_RE.match(text)
        if m is None:
            pending = "]" not in text and "\n" not in text and len(text) <= 62
            if pending and not final:
                return ""
            # Not a tag after all (or a broken one at the very end): nothing sensible to strip.
            if final and pending:
                return ""
        else:
            text = text[m.end():]
    if final:
        return text.strip()
    return text.rstrip().rstrip("\ufffd").rstrip()


def split_reply(raw: str, strategies: bool) -> tuple[str | None, str]:
    if not strategies:
        return None, raw.strip()
    strategy, _ = split_strategy_tag(raw.strip(), "extes")
    return strategy, visible_text(raw, True, final=True)


# ----------------------------------------------------------------------------------------------------------
# Sampling


def _penalise_rows_(scores, settings: list[GenerationSettings], seen: list) -> None:
    """Apply each row's repetition penalty to fp32 `scores` (B, vocab) in place, for the whole batch with
    one gather and one scatter (the rows' seen ids offset into the flattened scores). The penalty commutes
    with a positive temperature (it multiplies or divides by a positive factor), so it may be applied to
    scores already divided by the temperature."""
    import torch

    index, factor = [], []
    vocab = scores.shape[-1]
    for i, st in enumerate(settings):
        ids = seen[i]
        if st.repetition_penalty != 1.0 and ids is not None and ids.numel():
            index.append(ids.reshape(-1) + i * vocab)
            factor.append(torch.full((ids.numel(),), float(st.repetition_penalty), dtype=scores.dtype))
    if not index:
        return
    flat = scores.view(-1)
    index, factor = torch.cat(index), torch.cat(factor)
    picked = flat[index]
    flat[index] = torch.where(picked < 0, picked * factor, picked / factor)


def _draw(probs, order, generator) -> int:
    """Inverse-CDF draw from unnormalised `probs` (1-D) with the row's own generator; `order` maps back."""
    import torch

    cum = probs.cumsum(0)
    u = torch.rand(1, generator=generator, dtype=cum.dtype) * cum[-1]
    j = int(torch.searchsorted(cum, u).clamp(max=cum.numel() - 1))
    while float(probs[j]) == 0.0 and j > 0:  # never land on a zeroed (dropped) entry
        j -= 1
    return int(order[j]) if order is not None else j


def sample_rows(logits, settings: list[GenerationSettings], seen: list, generators: list) -> list[int]:
    """One token per row of `logits` (B, vocab): repetition penalty (over prompt + output), temperature,
    top-p, each row with its own settings and generator. Batched: one penalty scatter, one argmax, one
    softmax for all rows, then the nucleus from the top 64 tokens (a real reply's nucleus at top-p 0.9
    had a median of 3 tokens, and more than 64 in about 1 row in 100), the rows whose nucleus is larger
    from the top 1024, and a full sort only beyond that; one inverse-CDF draw for all rows of a level. Each
    row draws one uniform number from its own generator, so a row gives the same token alone as in any
    batch. On the 2-core machine, 24 rows took about 17 ms with a top 256 and a draw row by row, and
    take about 7 ms now (`bench/generation.py` prints it)."""
    import torch

    out: list[int | None] = [None] * len(settings)
    greedy = [i for i, st in enumerate(settings) if st.temperature == 0]
    if greedy:
        scores = logits[greedy].float()  # a copy (indexing), so the penalty leaves `logits` as it was
        _penalise_rows_(scores, [settings[i] for i in greedy], [seen[i] for i in greedy])
        for i, t in zip(greedy, scores.argmax(-1).tolist()):
            out[i] = int(t)
    sampled = [i for i, st in enumerate(settings) if st.temperature != 0]
    if not sampled:
        return [int(t) for t in out]
    temps = torch.tensor([settings[i].temperature for i in sampled], dtype=torch.float32)[:, None]
    scores = (logits if len(sampled) == len(settings) else logits[sampled]).float() / temps  # a new tensor
    _penalise_rows_(scores, [settings[i] for i in sampled], [seen[i] for i in sampled])
    probs = torch.softmax(scores, dim=-1)
    vocab = probs.shape[-1]
    top_p = torch.tensor([settings[i].top_p for i in sampled], dtype=torch.float32)
    left = [r for r, i in enumerate(sampled) if settings[i].top_p < 1.0]  # rows of `probs` with a nucleus
    for k in (64, 1024):
        if not left:
            break
        k = min(k, vocab)
        rows_t = torch.tensor(left)
        part = probs if len(left) == len(sampled) else probs[rows_t]
        top, order = part.topk(k, dim=-1)
        cum = top.cumsum(-1)
        tp = top_p[rows_t, None]
        # the nucleus is complete within the top k when the mass before the k-th token exceeds top_p
        done = ((cum[:, -1:] - top[:, -1:]) > tp).squeeze(1) if k < vocab else torch.ones(len(left), dtype=torch.bool)
        at = done.nonzero().flatten()
        if at.numel():
            p, c = top[at], cum[at]
            kept = p.masked_fill((c - p) > tp[at], 0.0)  # a prefix of each row (p descending, c - p increasing)
            kc = kept.cumsum(-1)
            rows = [left[x] for x in at.tolist()]
            u = torch.cat([torch.rand(1, generator=generators[sampled[r]], dtype=kc.dtype) for r in rows])
            j = torch.searchsorted(kc, (u * kc[:, -1])[:, None]).squeeze(1)
            j = torch.minimum(j, ((kept > 0).sum(-1) - 1).clamp(min=0))  # never a dropped entry (as _draw)
            for r, t in zip(rows, order[at].gather(1, j[:, None]).squeeze(1).tolist()):
                out[sampled[r]] = int(t)
        left = [left[x] for x in (~done).nonzero().flatten().tolist()]
    for r, i in enumerate(sampled):
        if out[i] is not None:
            continue
        st = settings[i]
        if st.top_p >= 1.0:
            out[i] = _draw(probs[r], None, generators[i])
            continue
        p_sorted, o_sorted = probs[r].sort(descending=True)  # a nucleus larger than the top 1024
        c_sorted = p_sorted.cumsum(0)
        kept = p_sorted.masked_fill((c_sorted - p_sorted) > st.top_p, 0.0)
        out[i] = _draw(kept, o_sorted, generators[i])
    return [int(t) for t in out]


def _sample(logits, settings: GenerationSettings, seen, generator) -> int:
    """One token from 1-D logits (see sample_rows)."""
    return sample_rows(logits[None], [settings], [seen], [generator])[0]


@dataclass
class _Row:
    req: GenRequest
    adapter_name: str
    prompt_len: int
    seen: Any  # LongTensor of unique prompt+output ids (repetition penalty)
    generator: Any
    max_new: int
    detok: IncrementalDecoder
    out_ids: list[int] = field(default_factory=list)
    emitted: str = ""
    ttft: float | None = None
    dropped: int = 0
    last_token: int = 0
    finish: str | None = None
    prompt_ids: list[int] = field(default_factory=list)
    final_sent: bool = False
    length: int = 0  # tokens whose keys/values are in the cache (fast engine)
    cached: int = 0  # of which came from the kept KV cache (fast engine)
    kv: Any = None  # the row's own KV buffers while it prefills (fast engine)


@dataclass
class BatchState:
    """The running batch of the transformers path: its KV cache, attention mask (left padded) and the
    next position of each row."""

    cache: Any = None
    mask: Any = None
    positions: Any = None

    def clear(self) -> None:
        self.cache = self.mask = self.positions = None


# ----------------------------------------------------------------------------------------------------------
# The engine


class LocalEngine:
    """One base model, its LoRA adapters, one worker thread (the transformers + PEFT path)."""

    ENGINE_VERSION = "transformers-1"

    def __init__(self, base: str, adapters: list[str] | tuple[str, ...] = (), dtype=None,
                 max_batch: int = 16, max_context: int | None = None, gather_s: float = 0.01,
                 model=None, tokenizer=None):
        import torch

        self.base = base
        adapters = [str(Path(a)) for a in dict.fromkeys(adapters)]
        self._adapter_names: dict[str | None, str] = {None: BASE_ADAPTER}
        model, tokenizer = self._load(base, adapters, dtype, model, tokenizer)
        self.tokenizer = tokenizer
        cfg = model.config
        window = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048
        self.window = int(min(window, max_context) if max_context else window)
        eos = set()
        for v in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
            if isinstance(v, int):
                eos.add(v)
            elif isinstance(v, (list, tuple)):
                eos.update(int(x) for x in v)
        im_end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
        if im_end is not None:
            eos.add(im_end)
        self.eos_ids = eos
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
        self.max_batch = max_batch
        self.gather_s = gather_s
        self._torch = torch
        self._queue: queue.Queue[GenRequest | None] = queue.Queue()
        self._pending: deque[GenRequest] = deque()
        self._closed = threading.Event()
        self.steps = 0  # decode forward passes (for tests and benchmarks)
        self.max_rows_seen = 0
        self._after_load(model)
        self._thread = threading.Thread(target=self._run, name=f"extes-engine:{Path(base).name}", daemon=True)
        self._thread.start()

    def _after_load(self, model) -> None:
        """Hook for subclasses: runs after the common setup, before the worker starts."""

    def _load(self, base, adapters: list[str], dtype, model, tokenizer):
        from extes.base.loading import load_base

        if model is None:
            model, tokenizer = load_base(base, dtype=dtype)
        self.dtype_name = str(next(model.parameters()).dtype).replace("torch.", "")
        if adapters:
            from peft import PeftModel

            for i, path in enumerate(adapters):
                name = f"adapter_{i}"
                if i == 0:
                    model = PeftModel.from_pretrained(model, path, adapter_name=name, is_trainable=False)
                else:
                    model.load_adapter(path, adapter_name=name, is_trainable=False)
                self._adapter_names[path] = name
            self._peft = True
            self._active = "adapter_0"
        else:
            self._peft = False
        model.eval()
        self.model = model
        return model, tokenizer

    # -- public ---------------------------------------------------------------------------------------

    def has_adapter(self, path: str | None) -> bool:
        return (str(Path(path)) if path else None) in self._adapter_names

    def submit(self, req: GenRequest) -> None:
        if self._closed.is_set():
            raise EngineClosed("the engine is closed")
        if not self.has_adapter(req.adapter):
            raise KeyError(f"adapter {req.adapter!r} is not loaded on base {self.base!r}")
        self._queue.put(req)

    def close(self, timeout: float = 10.0) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._queue.put(None)
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- worker ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        torch = self._torch
        rows: list[_Row] = []
        state = BatchState()
        with torch.inference_mode():
            while True:
                new: list[_Row] = []
                try:
                    if not self._collect(block=not rows and not self._pending):
                        break
                    if len(rows) < self.max_batch and self._pending:
                        new = self._take_pending(self.max_batch - len(rows))
                        if new:
                            self._prefill(new, rows, state)
                    if rows:
                        self._decode(rows, state)
                except Exception as exc:  # deliver the failure to every caller waiting on this batch
                    log.error("generation worker failed: %s: %s", type(exc).__name__, exc)
                    for row in {id(r): r for r in rows + new}.values():
                        if not row.final_sent:
                            row.req.sink(exc)
                    rows.clear()
                    state.clear()
            for row in rows:
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

    def _admit(self, req: GenRequest) -> _Row | None:
        torch = self._torch
        settings = req.settings
        max_new = min(settings.max_new_tokens, max(1, self.window // 2))
        try:
            ids, dropped = fit_messages(self.tokenizer, req.messages, self.window - max_new)
        except Exception as exc:
            req.sink(exc)
            return None
        gen = torch.Generator()
        gen.manual_seed(settings.seed if settings.seed is not None else random.getrandbits(63))
        row = _Row(req=req, adapter_name=self._adapter_names[req.adapter], prompt_len=len(ids),
                   seen=torch.tensor(sorted(set(ids)), dtype=torch.long), generator=gen,
                   max_new=min(max_new, self.window - len(ids)), dropped=dropped, prompt_ids=ids,
                   detok=IncrementalDecoder(self.tokenizer))
        return row

    def _forward(self, input_ids, mask, positions, cache, adapter_names):
        kwargs = dict(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache,
                      use_cache=True, logits_to_keep=1)
        used = set(adapter_names)
        if not self._peft:
            out = self.model(**kwargs)
        elif used == {BASE_ADAPTER}:
            with self.model.disable_adapter():  # skips the LoRA hooks entirely
                out = self.model(**kwargs)
        elif len(used) == 1:
            (name,) = used
            if self._active != name:
                self.model.set_adapter(name)
                self._active = name
            out = self.model(**kwargs)
        else:  # PEFT's mixed batch: each row through its own adapter (or none)
            out = self.model(**kwargs, adapter_names=adapter_names)
        return out.logits[:, -1, :], out.cache

    def _prefill(self, new: list[_Row], rows: list[_Row], state: BatchState) -> None:
        from transformers import DynamicCache

        torch = self._torch
        n, length = len(new), max(r.prompt_len for r in new)
        input_ids = torch.full((n, length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, length), dtype=torch.long)
        for i, r in enumerate(new):
            ids = r.prompt_ids
            input_ids[i, length - len(ids):] = torch.tensor(ids, dtype=torch.long)
            mask[i, length - len(ids):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        logits, cache = self._forward(input_ids, mask, positions, cache, [r.adapter_name for r in new])
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        self._zero_padding(layers, mask)
        if rows:
            self._merge(state, layers, mask)
            state.positions = torch.cat([state.positions, mask.sum(-1)])
        else:
            state.cache, state.mask, state.positions = cache, mask, mask.sum(-1)
        now = time.perf_counter()
        self._hold_eos(logits, new)
        for i, r in enumerate(new):
            rows.append(r)
            r.ttft = now - r.req.submitted_at
            self._accept(r, _sample(logits[i], r.req.settings, r.seen, r.generator))
        self.max_rows_seen = max(self.max_rows_seen, len(rows))
        self._retire(rows, state)

    def _zero_padding(self, layers, mask) -> None:
        keep = mask[:, None, :, None].to(layers[0][0].dtype)
        for k, v in layers:
            k.mul_(keep)
            v.mul_(keep)

    def _merge(self, state: BatchState, new_layers, new_mask) -> None:
        """Append new rows to the running batch, left padding whichever side is shorter."""
        torch = self._torch
        cache, mask = state.cache, state.mask
        t_old, t_new = mask.shape[1], new_mask.shape[1]
        t = max(t_old, t_new)

        def pad(x, extra, dim):
            if extra == 0:
                return x
            shape = list(x.shape)
            shape[dim] = extra
            return torch.cat([torch.zeros(shape, dtype=x.dtype), x], dim=dim)

        for layer, (k_new, v_new) in zip(cache.layers, new_layers):
            layer.keys = torch.cat([pad(layer.keys, t - t_old, 2), pad(k_new, t - t_new, 2)], dim=0)
            layer.values = torch.cat([pad(layer.values, t - t_old, 2), pad(v_new, t - t_new, 2)], dim=0)
        state.mask = torch.cat([pad(mask, t - t_old, 1), pad(new_mask, t - t_new, 1)], dim=0)

    def _decode(self, rows: list[_Row], state: BatchState) -> None:
        torch = self._torch
        cache, mask = state.cache, state.mask
        input_ids = torch.tensor([[r.last_token] for r in rows], dtype=torch.long)
        mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype)], dim=1)
        positions = state.positions[:, None].clone()
        logits, cache = self._forward(input_ids, mask, positions, cache, [r.adapter_name for r in rows])
        self.steps += 1
        state.cache, state.mask = cache, mask
        state.positions = state.positions + 1
        self._hold_eos(logits, rows)
        tokens = sample_rows(logits, [r.req.settings for r in rows], [r.seen for r in rows],
                             [r.generator for r in rows])
        for r, token in zip(rows, tokens):
            if r.req.cancelled():
                r.finish = "cancelled"
                continue
            self._accept(r, token)
        self._retire(rows, state)

    def _hold_eos(self, logits, rows: list[_Row]) -> None:
        """A reply must show the participant something: while a row has no visible text yet (nothing
        generated, or only strategy tags, which the study never shows: any bracketed tag-like text counts,
        on every arm, as the study strips tags from every arm's replies), its end-of-turn tokens cannot be
        drawn.
        This is `min_new_tokens` counted in visible text. Without it the embedded model sometimes ended a
        reply at once, and the study showed an empty reply ("…") and kept an empty turn in the history.
        `logits` (one row per entry of `rows`) is changed in place."""
        torch = self._torch
        held = [i for i, r in enumerate(rows) if not TAG_ANYWHERE_RE.sub("", r.emitted).strip()]
        if held and self.eos_ids:
            eos = torch.tensor(sorted(self.eos_ids), dtype=torch.long, device=logits.device)
            logits[torch.tensor(held, device=logits.device)[:, None], eos[None, :]] = float("-inf")

    def _accept(self, row: _Row, token: int) -> None:
        torch = self._torch
        if token in self.eos_ids:
            row.finish = "stop"
            return
        row.out_ids.append(token)
        row.last_token = token
        if row.req.settings.repetition_penalty != 1.0 and not bool((row.seen == token).any()):
            row.seen = torch.cat([row.seen, torch.tensor([token], dtype=torch.long)])
        row.detok.add(token)
        raw = row.detok.text
        vis = visible_text(raw, row.req.strategies, final=False)
        if len(vis) > len(row.emitted) and vis.startswith(row.emitted):
            delta, row.emitted = vis[len(row.emitted):], vis
            row.req.sink(Event(delta=delta))
        if row.req.cancelled():
            row.finish = "cancelled"
        elif len(row.out_ids) >= row.max_new:
            row.finish = "length"

    def _retire(self, rows: list[_Row], state: BatchState) -> None:
        """Drop finished rows from the batch and trim cache columns that only padding uses."""
        torch = self._torch
        done = [i for i, r in enumerate(rows) if r.finish is not None]
        if not done:
            return
        for i in done:
            self._emit_final(rows[i])
        keep = [i for i, r in enumerate(rows) if r.finish is None]
        rows[:] = [rows[i] for i in keep]
        if not rows:
            state.clear()
            return
        idx = torch.tensor(keep, dtype=torch.long)
        mask = state.mask[idx]
        used = mask.any(0).nonzero()
        start = int(used[0]) if used.numel() else 0
        for layer in state.cache.layers:
            layer.keys = layer.keys[idx, :, start:]
            layer.values = layer.values[idx, :, start:]
        state.mask = mask[:, start:]
        state.positions = state.positions[idx]

    def _decode_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _emit_final(self, row: _Row) -> None:
        raw = self._decode_text(row.out_ids)
        strategy, text = split_reply(raw, row.req.strategies)
        delta = text[len(row.emitted):] if text.startswith(row.emitted) else ""
        reply = Reply(
            text=text, strategy=strategy, raw_text=raw.strip(), n_tokens=len(row.out_ids),
            latency_s=time.perf_counter() - row.req.submitted_at, ttft_s=row.ttft,
            finish_reason=row.finish or "stop", settings=row.req.settings.to_dict(),
            prompt_tokens=row.prompt_len, dropped_messages=row.dropped, token_ids=list(row.out_ids),
            dtype=self.dtype_name, engine_version=self.ENGINE_VERSION, cached_prompt_tokens=row.cached,
        )
        row.final_sent = True
        row.req.sink(Event(delta=delta, done=True, reply=reply))

    def _take_pending(self, room: int) -> list[Any]:
        """Admit waiting requests, oldest first, until ``room`` rows are taken; cancelled ones are finished
        without a row. Both engines join requests between decode steps through this."""
        taken: list[Any] = []
        while self._pending and len(taken) < room:
            req = self._pending.popleft()
            if req.cancelled():
                self._finish_unstarted(req, "cancelled")
                continue
            row = self._admit(req)
            if row is not None:
                taken.append(row)
        return taken

    def _finish_unstarted(self, req: GenRequest, reason: str) -> None:
        req.sink(Event(delta="", done=True, reply=Reply(
            text="", strategy=None, raw_text="", n_tokens=0, latency_s=time.perf_counter() - req.submitted_at,
            ttft_s=None, finish_reason=reason, settings=req.settings.to_dict(), dtype=self.dtype_name,
            engine_version=self.ENGINE_VERSION)))
