"""The fast engine: one batch across all sessions on a LLaMA-family base, gathered multi-LoRA, KV cache
kept across turns. `create_engine` picks it, or the transformers path (`LocalEngine`) where it cannot run.

How a request goes through it (one worker thread owns the model, as in `LocalEngine`):
1. Admission (between decode steps): the prompt is fitted to the window (`fit_messages`).
2. Chunked prefill: each loop iteration prefills at most `prefill_chunk` prompt tokens (of one or more
   waiting rows) before the next decode step, so a long prompt cannot stall everyone else's stream.
   When a row's prefill starts, the kept KV cache (`PrefixCache`) is asked for the longest stored prefix
   of its token ids under the arm's adapter. Those keys/values are copied into the row's own buffer;
   only the rest is prefilled.
3. When its prompt is done, its keys/values are kept (so requests that came with it and share its
   beginning, such as the system prompt, reuse them), the row samples its first token and moves into the
   running batch: slot i of the preallocated batch KV buffers (grown by doubling, never concatenated per
   step).
4. Every decode step is one forward pass over all running rows of every session and arm on this base:
   base matmuls once for the batch, each row's own LoRA delta (extes.models.fastllama).
5. A finished (or cancelled) row hands its keys/values to the kept cache under its token ids and leaves
   the batch; the last row moves into its slot.
Each row samples with its own settings and generator; cancellation is checked at every step.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from pathlib import Path

from extes.models.engine import GenRequest, LocalEngine, _Row, _sample, sample_rows

log = logging.getLogger(__name__)

ENGINE_VERSION = "extes-fast-2"  # 2: decode attention by the compiled kernel (cpu_kernels)


def fast_path_reason(base_config, adapters: list[str]) -> str | None:
    """Why the fast engine cannot serve this base + adapters (None when it can)."""
    from extes.models.fastllama import adapter_unsupported_reason, unsupported_reason

    why = unsupported_reason(base_config)
    if why:
        return why
    for a in adapters:
        why = adapter_unsupported_reason(a)
        if why:
            return f"adapter {a}: {why}"
    return None


ENGINE_KINDS = ("auto", "transformers")


def create_engine(base: str, adapters=(), dtype: str | None = "auto", engine: str = "auto", **kwargs) -> LocalEngine:
    """A FastEngine when the base is LLaMA-family and every adapter is plain LoRA, else a LocalEngine.

    dtype: the arm's `auto | float32 | bfloat16` (None = auto). The transformers path runs fp32 unless
    bfloat16 is asked for explicitly.
    engine: "auto" (the above), or "transformers" to force the transformers path: the reference the fast
    engine is tested against, and the first round's engine that `bench/load.py --baseline` measures."""
    if engine not in ENGINE_KINDS:
        raise ValueError(f"engine {engine!r} must be one of {list(ENGINE_KINDS)}")
    from transformers import AutoConfig

    from extes.base.loading import checkpoint_source

    adapters = [str(Path(a)) for a in dict.fromkeys(adapters)]
    cfg = AutoConfig.from_pretrained(checkpoint_source(base))
    why = fast_path_reason(cfg, adapters) if engine == "auto" else "asked for (engine='transformers')"
    if why is None:
        return FastEngine(base, adapters=adapters, dtype=dtype or "auto", **kwargs)
    log.info("base %s uses the transformers path: %s", Path(str(base)).name, why)
    legacy = None if dtype in (None, "auto") else dtype
    kwargs.pop("kv_cache_bytes", None)
    kwargs.pop("prefill_chunk", None)
    kwargs.pop("device", None)
    return LocalEngine(base, adapters=adapters, dtype=legacy, **kwargs)


class FastEngine(LocalEngine):
    """See the module docstring. Same public surface as LocalEngine (submit, close, alive, has_adapter,
    steps, max_rows_seen), plus `kv_cache` (the kept PrefixCache) and `precision`."""

    ENGINE_VERSION = ENGINE_VERSION

    def __init__(self, base: str, adapters=(), dtype: str = "auto", max_batch: int = 32,
                 max_context: int | None = None, gather_s: float = 0.01, model=None, tokenizer=None,
                 kv_cache_bytes: int | None = None, prefill_chunk: int = 256, prepack: bool = True,
                 device: str = "cpu"):
        self._dtype_request = dtype
        self._prepack = prepack
        self._device = device
        self.prefill_chunk = max(1, int(prefill_chunk))
        self._kv_cache_bytes = kv_cache_bytes
        super().__init__(base, adapters=adapters, dtype=None, max_batch=max_batch, max_context=max_context,
                         gather_s=gather_s, model=model, tokenizer=tokenizer)

    def _load(self, base, adapters, dtype, model, tokenizer):
        from extes.base.loading import load_base
        from extes.models.fastllama import FastLlama, load_lora
        from extes.models.kvcache import PrefixCache
        from extes.models.precision import resolve_precision

        self.precision = resolve_precision(self._dtype_request, self._device)
        self.dtype_name = self.precision.name
        if model is None:
            model, tokenizer = load_base(base)
        loras = [load_lora(p) for p in adapters]
        for i, path in enumerate(adapters):
            self._adapter_names[path] = f"adapter_{i}"
        self._adapter_index = {None: -1, **{p: i for i, p in enumerate(adapters)}}
        self.fast = FastLlama(model, loras, dtype=self.precision.torch_dtype, prepack=self._prepack,
                              device=self._device)
        if self.fast.attention_kernel is None:  # recorded with every reply: which attention computed it
            self.ENGINE_VERSION = f"{ENGINE_VERSION}/torch-attention"
        from extes.models.kvcache import default_budget_bytes

        budget = default_budget_bytes() if self._kv_cache_bytes is None else int(self._kv_cache_bytes)
        self.kv_cache = PrefixCache(budget)
        self._kv = None  # batch KV buffers: per layer (2, slots, n_kv, capacity, head_dim)
        log.info("fast engine on %s: %s weights (%s), %d adapter(s), matmuls via %s, decode attention via %s, "
                 "kept KV cache up to %.1f GB", Path(str(base)).name, self.dtype_name, self.precision.reason,
                 len(loras), self.fast.packed_with, self.fast.attention_with, budget / 1e9)
        return model, tokenizer

    def _after_load(self, model) -> None:
        self.window = min(self.window, self.fast.window)
        self.model = None  # the fast forward holds its own copy of the weights
        self.prefill_tokens = 0  # prompt tokens run through the model (tests, benchmarks)
        self.prefill_seconds = 0.0  # time spent in prefill chunks (the summary at close)
        self.step_times: deque[tuple[int, float]] = deque(maxlen=4096)  # (rows, seconds) per decode step
        self.decode_rows = 0  # rows summed over all decode steps, and their seconds (the summary at close)
        self.decode_seconds = 0.0
        self.kv_positions_read = 0  # cached positions attention read in decode steps (every row up to the
        self.kv_positions_used = 0  # longest), and of those the rows' own: their ratio is the padding

    # -- the forward pass (tests monkeypatch this) -------------------------------------------------------

    def _forward(self, ids, starts, kv, row_adapter):
        if self._device != "cpu":
            dev = self.fast.device
            ids, starts = ids.to(dev), starts.to(dev)
            row_adapter = None if row_adapter is None else row_adapter.to(dev)
            return self.fast.forward(ids, starts, kv, row_adapter).cpu()
        return self.fast.forward(ids, starts, kv, row_adapter)

    # -- worker ---------------------------------------------------------------------------------------------

    def _run(self) -> None:
        torch = self._torch
        rows: list[_Row] = []  # decoding; rows[i] lives in slot i of self._kv
        prefilling: deque[_Row] = deque()
        with torch.inference_mode():
            while True:
                try:
                    if not self._collect(block=not rows and not prefilling and not self._pending):
                        break
                    # a row asks the kept cache when its prefill starts, not now: a row admitted with it
                    # may by then have stored a prompt with the same beginning (see _prefill_rows)
                    prefilling.extend(self._take_pending(self.max_batch - len(rows) - len(prefilling)))
                    if prefilling:
                        self._prefill_chunk(prefilling, rows)
                    if rows:
                        self._decode_step(rows)
                except Exception as exc:  # deliver the failure to every caller waiting on this batch
                    log.error("generation worker failed: %s: %s", type(exc).__name__, exc)
                    for row in {id(r): r for r in rows + list(prefilling)}.values():
                        if not row.final_sent:
                            row.req.sink(exc)
                    rows.clear()
                    prefilling.clear()
            for row in rows + list(prefilling):
                row.finish = "cancelled"
                self._emit_final(row)
            for req in list(self._pending):
                self._finish_unstarted(req, "cancelled")

    def _start_prefill(self, row: _Row) -> None:
        """Give the row its own KV buffer (exactly its prompt's length), filled from the kept cache as far
        as its prompt matches."""
        n, entry = self.kv_cache.lookup(row.req.adapter, row.prompt_ids)
        row.kv = self.fast.new_kv(1, row.prompt_len, zeroed=False)  # filled in order from position 0
        if entry is not None:
            for buf, part in zip(row.kv, entry.kv):
                buf[:, 0, :, :n] = part[:, :, :n]
        row.length = row.cached = n

    def _prefill_chunk(self, prefilling: deque[_Row], rows: list[_Row]) -> None:
        t0 = time.perf_counter()
        try:
            self._prefill_rows(prefilling, rows)
        finally:
            self.prefill_seconds += time.perf_counter() - t0

    def _prefill_rows(self, prefilling: deque[_Row], rows: list[_Row]) -> None:
        torch = self._torch
        budget = self.prefill_chunk
        while prefilling and budget > 0:
            row = prefilling[0]
            if row.req.cancelled():
                prefilling.popleft()
                row.finish = "cancelled"
                self._finish_row(row, row.kv, 0)
                continue
            if row.kv is None:
                self._start_prefill(row)
            take = min(budget, row.prompt_len - row.length)
            ids = torch.tensor([row.prompt_ids[row.length:row.length + take]], dtype=torch.long)
            ra = None if row.req.adapter is None else torch.tensor([self._adapter_index[row.req.adapter]])
            logits = self._forward(ids, torch.tensor([row.length]), row.kv, ra)
            row.length += take
            budget -= take
            self.prefill_tokens += take
            if row.length < row.prompt_len:
                continue
            prefilling.popleft()
            # keep the prompt's keys/values now, not only when the reply ends: requests that arrived with
            # this one and start the same way (every first turn starts with its arm's system prompt) then
            # prefill only what differs. The row's own buffer is handed over (it is dropped once the row
            # joins the batch); the reply's entry replaces it later, as it extends these ids.
            self.kv_cache.store(row.req.adapter, row.prompt_ids, [buf[:, 0] for buf in row.kv])
            row.ttft = time.perf_counter() - row.req.submitted_at
            self._hold_eos(logits, [row])
            self._accept(row, _sample(logits[0], row.req.settings, row.seen, row.generator))
            if row.finish is not None:
                self._finish_row(row, row.kv, 0)
                continue
            self._enter_batch(row, rows)

    def _enter_batch(self, row: _Row, rows: list[_Row]) -> None:
        need = min(self.window, row.prompt_len + row.max_new)
        self._ensure_kv(len(rows) + 1, need)
        slot = len(rows)
        for buf, own in zip(self._kv, row.kv):
            buf[:, slot, :, :row.length] = own[:, 0, :, :row.length]
        row.kv = None
        rows.append(row)
        self.max_rows_seen = max(self.max_rows_seen, len(rows))

    def _ensure_kv(self, slots: int, capacity: int) -> None:
        if self._kv is not None and self._kv[0].shape[1] >= slots and self._kv[0].shape[3] >= capacity:
            return
        old = self._kv
        have_s, have_c = (old[0].shape[1], old[0].shape[3]) if old is not None else (0, 0)
        # each dimension doubles only when it is the one too small (doubling the slots along with a longer
        # row made a 3-row conversation's buffer 32 slots x 1384 positions: 2 GB, 2.7 s at turn 7)
        new_s = have_s if have_s >= slots else min(self.max_batch, max(slots, 2 * have_s, 4))
        new_c = have_c if have_c >= capacity else min(self.window, max(capacity, 2 * have_c, 64))
        new_c = max(new_c, capacity)
        # the compiled attention reads each row only up to its own length, all of it written before; torch's
        # batched matmul reads every row up to the longest, so there the unused positions must be zeros
        self._kv = self.fast.new_kv(new_s, new_c, zeroed=self.fast.attention_kernel is None)
        if old is not None:
            for dst, src in zip(self._kv, old):
                dst[:, :have_s, :, :have_c] = src

    def _decode_step(self, rows: list[_Row]) -> None:
        torch = self._torch
        t0 = time.perf_counter()
        b = len(rows)
        ids = torch.tensor([[r.last_token] for r in rows], dtype=torch.long)
        lengths = [r.length for r in rows]
        starts = torch.tensor(lengths, dtype=torch.long)
        idx = [self._adapter_index[r.req.adapter] for r in rows]
        ra = torch.tensor(idx, dtype=torch.long) if any(i >= 0 for i in idx) else None
        logits = self._forward(ids, starts, [buf[:, :b] for buf in self._kv], ra)
        self.steps += 1
        self._hold_eos(logits, rows)
        tokens = sample_rows(logits, [r.req.settings for r in rows], [r.seen for r in rows],
                             [r.generator for r in rows])
        for r, token in zip(rows, tokens):
            r.length += 1
            if r.req.cancelled():
                r.finish = "cancelled"
                continue
            self._accept(r, token)
        took = time.perf_counter() - t0
        self.step_times.append((b, took))
        self.decode_rows += b
        self.decode_seconds += took
        used = sum(lengths) + b
        # torch's batched matmul reads every row up to the longest; the compiled kernel reads each row's own
        self.kv_positions_read += used if self.fast.attention_kernel is not None else b * (max(lengths) + 1)
        self.kv_positions_used += used
        done = [i for i, r in enumerate(rows) if r.finish is not None]
        for i in reversed(done):  # from the end, so moving the last row into slot i is always valid
            row = rows[i]
            self._finish_row(row, self._kv, i)
            last = len(rows) - 1
            if i != last:
                moved = rows[last]
                for buf in self._kv:
                    buf[:, i, :, :moved.length] = buf[:, last, :, :moved.length]
                rows[i] = moved
            rows.pop()

    def _finish_row(self, row: _Row, kv, slot: int) -> None:
        """Send the final event, then keep the row's keys/values for the next turn."""
        self._emit_final(row)
        n = row.length
        if n <= 0:
            return
        ids = (row.prompt_ids + row.out_ids)[:n]
        kept = [buf[:, slot, :, :n].clone(memory_format=self._torch.contiguous_format) for buf in kv]
        self.kv_cache.store(row.req.adapter, ids, kept)


__all__ = ["ENGINE_KINDS", "FastEngine", "create_engine", "fast_path_reason", "GenRequest", "ENGINE_VERSION"]
