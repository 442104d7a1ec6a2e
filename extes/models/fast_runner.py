"""The fast runner: a LLaMA-family base with gathered multi-LoRA and a KV cache kept across turns, behind
the `ModelRunner` Protocol (extes.models.runner) that the scheduler (extes.models.scheduler) drives.

- The forward is `extes.models.fastllama.FastLlama`: base matmuls once for the whole batch, each row's
  own LoRA delta, keys/values written in place into preallocated buffers.
- A sequence's prefill runs in its own buffer (exactly its prompt's length). When it opens, the kept KV
  cache (`PrefixCache`) is asked for the longest stored prefix of its token ids under the arm's adapter;
  those keys/values are copied in and only the rest is prefilled. When its prompt is done, the prompt's
  keys/values are kept at once (requests that came with it and share its beginning, such as the system
  prompt, reuse them).
- Joining the batch copies it into slot i of the batch buffers (grown by doubling the dimension that is
  too small, never concatenated per step). A released sequence hands its keys/values to the kept cache
  under its token ids; the last slot moves into its place.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from extes.base.loading import load_base
from extes.models.fastllama import FastLlama, adapter_unsupported_reason, load_lora, unsupported_reason
from extes.models.kvcache import PrefixCache, default_budget_bytes
from extes.models.precision import Precision, resolve_precision
from extes.models.text import end_of_turn_ids

log = logging.getLogger(__name__)

ENGINE_VERSION = "extes-fast-2"  # 2: decode attention by the compiled kernel (cpu_kernels)


def fast_path_reason(base_config, adapters: list[str]) -> str | None:
    """Why the fast runner cannot serve this base + adapters (None when it can)."""
    why = unsupported_reason(base_config)
    if why:
        return why
    for a in adapters:
        why = adapter_unsupported_reason(a)
        if why:
            return f"adapter {a}: {why}"
    return None


@dataclass(eq=False)
class FastSequence:
    """A sequence's keys/values in the fast runner: its own buffers while it prefills, then a batch slot."""

    adapter: str | None
    adapter_index: int  # -1: the base
    prompt_ids: list[int]
    length: int = 0
    cached: int = 0
    own: list[torch.Tensor] | None = None  # per layer (2, 1, n_kv, prompt length, head_dim) while prefilling
    slot: int = -1  # its row of the batch buffers once joined


@dataclass(eq=False)
class FastRunner:
    """See the module docstring. Options: the arm's dtype (`auto | float32 | bfloat16`), the context
    limit, the kept cache's byte budget (None: `default_budget_bytes()`), oneDNN/MKL prepacking, and the
    device ("cpu" or "cuda"). `model`/`tokenizer` skip loading (tests)."""

    base: str
    adapters: list[str] = field(default_factory=list)
    dtype: str = "auto"
    max_context: int | None = None
    kv_cache_bytes: int | None = None
    prepack: bool = True
    device: str = "cpu"
    model: object = None
    tokenizer: object = None

    def load(self) -> None:
        self.precision: Precision = resolve_precision(self.dtype, self.device)
        self.dtype_name = self.precision.name
        model, tokenizer = (self.model, self.tokenizer) if self.model is not None else load_base(self.base)
        self.tokenizer = tokenizer
        self.model = None  # the fast forward holds its own copy of the weights
        loras = [load_lora(p) for p in self.adapters]
        self.adapter_index = {None: -1, **{p: i for i, p in enumerate(self.adapters)}}
        self.fast = FastLlama(model, loras, dtype=self.precision.torch_dtype, prepack=self.prepack, device=self.device)
        self.window = min(self.fast.window, self.max_context) if self.max_context else self.fast.window
        self.eos_ids = end_of_turn_ids(tokenizer, model.generation_config.eos_token_id)
        # recorded with every reply: which attention computed it
        self.version = ENGINE_VERSION if self.fast.attention_kernel is not None else f"{ENGINE_VERSION}/torch-attention"
        budget = default_budget_bytes() if self.kv_cache_bytes is None else int(self.kv_cache_bytes)
        self.kv_cache: PrefixCache | None = PrefixCache(budget)
        self.kv_positions_read = 0
        self._kv: list[torch.Tensor] | None = None  # batch buffers: per layer (2, slots, n_kv, capacity, head_dim)
        self._batch: list[FastSequence] = []  # _batch[i] lives in slot i
        log.info("fast engine on %s: %s weights (%s), %d adapter(s), matmuls via %s, decode attention via %s, "
                 "kept KV cache up to %.1f GB", Path(str(self.base)).name, self.dtype_name, self.precision.reason,
                 len(loras), self.fast.packed_with, self.fast.attention_with, budget / 1e9)

    def has_adapter(self, path: str | None) -> bool:
        return (str(Path(path)) if path else None) in self.adapter_index

    # -- the forward pass ---------------------------------------------------------------------------------

    def _forward(self, ids: torch.Tensor, starts: torch.Tensor, kv: list[torch.Tensor],
                 row_adapter: torch.Tensor | None) -> torch.Tensor:
        if self.device != "cpu":
            dev = self.fast.device
            ids, starts = ids.to(dev), starts.to(dev)
            row_adapter = None if row_adapter is None else row_adapter.to(dev)
            return self.fast.forward(ids, starts, kv, row_adapter).cpu()
        return self.fast.forward(ids, starts, kv, row_adapter)

    # -- ModelRunner ----------------------------------------------------------------------------------------

    def open(self, adapter: str | None, prompt_ids: list[int]) -> FastSequence:
        """A sequence with its own buffer (exactly its prompt's length), filled from the kept cache as far
        as its prompt matches."""
        key = str(Path(adapter)) if adapter else None
        seq = FastSequence(adapter=key, adapter_index=self.adapter_index[key], prompt_ids=prompt_ids)
        n, entry = self.kv_cache.lookup(key, prompt_ids)
        seq.own = self.fast.new_kv(1, len(prompt_ids), zeroed=False)  # filled in order from position 0
        if entry is not None:
            for buf, part in zip(seq.own, entry.kv):
                buf[:, 0, :, :n] = part[:, :, :n]
        seq.length = seq.cached = n
        return seq

    def prefill(self, seq: FastSequence, n: int) -> torch.Tensor:
        ids = torch.tensor([seq.prompt_ids[seq.length:seq.length + n]], dtype=torch.long)
        ra = None if seq.adapter_index < 0 else torch.tensor([seq.adapter_index])
        logits = self._forward(ids, torch.tensor([seq.length]), seq.own, ra)
        seq.length += n
        if seq.length == len(seq.prompt_ids):
            # keep the prompt's keys/values now, not only when the reply ends: requests that arrived with
            # this one and start the same way (every first turn starts with its arm's system prompt) then
            # prefill only what differs. The buffer is handed over (the sequence drops it when it joins
            # the batch); the reply's entry replaces it later, as it extends these ids.
            self.kv_cache.store(seq.adapter, seq.prompt_ids, [buf[:, 0] for buf in seq.own])
        return logits

    def join(self, seqs: list[FastSequence], capacity: int) -> None:
        self._ensure_kv(len(self._batch) + len(seqs), capacity)
        for seq in seqs:
            seq.slot = len(self._batch)
            for buf, own in zip(self._kv, seq.own):
                buf[:, seq.slot, :, :seq.length] = own[:, 0, :, :seq.length]
            seq.own = None
            self._batch.append(seq)

    def decode(self, seqs: list[FastSequence], tokens: list[int]) -> torch.Tensor:
        b = len(self._batch)
        if len(seqs) != b:
            raise ValueError(f"decode needs every joined sequence: {len(seqs)} given, {b} in the batch")
        slots = [s.slot for s in seqs]
        ids = torch.empty((b, 1), dtype=torch.long)
        ids[slots, 0] = torch.tensor(tokens, dtype=torch.long)
        lengths = [s.length for s in self._batch]
        idx = [s.adapter_index for s in self._batch]
        ra = torch.tensor(idx, dtype=torch.long) if any(i >= 0 for i in idx) else None
        logits = self._forward(ids, torch.tensor(lengths, dtype=torch.long), [buf[:, :b] for buf in self._kv], ra)
        for s in self._batch:
            s.length += 1
        # torch's batched matmul reads every row up to the longest; the compiled kernel reads each row's own
        self.kv_positions_read += (sum(lengths) + b if self.fast.attention_kernel is not None
                                   else b * (max(lengths) + 1))
        return logits if slots == list(range(b)) else logits[slots]

    def release(self, seq: FastSequence, ids: list[int]) -> None:
        """Keep the sequence's keys/values for the next turn; free its slot (the last one moves in)."""
        n = len(ids)
        if seq.slot >= 0:
            kv, slot = self._kv, seq.slot
        else:
            kv, slot = seq.own, 0
        if n > 0 and kv is not None:
            kept = [buf[:, slot, :, :n].clone(memory_format=torch.contiguous_format) for buf in kv]
            self.kv_cache.store(seq.adapter, ids, kept)
        if seq.slot >= 0:
            last = self._batch.pop()
            if last is not seq:
                for buf in self._kv:
                    buf[:, slot, :, :last.length] = buf[:, last.slot, :, :last.length]
                last.slot = slot
                self._batch[slot] = last
        seq.slot, seq.own = -1, None

    def reset(self) -> None:
        self._batch = []

    # -- the batch buffers ----------------------------------------------------------------------------------

    def _ensure_kv(self, slots: int, capacity: int) -> None:
        if self._kv is not None and self._kv[0].shape[1] >= slots and self._kv[0].shape[3] >= capacity:
            return
        old = self._kv
        have_s, have_c = (old[0].shape[1], old[0].shape[3]) if old is not None else (0, 0)
        # each dimension doubles only when it is the one too small (doubling the slots along with a longer
        # row made a 3-row conversation's buffer 32 slots x 1384 positions: 2 GB, 2.7 s at turn 7)
        new_s = have_s if have_s >= slots else max(slots, 2 * have_s, 4)
        new_c = have_c if have_c >= capacity else min(self.window, max(capacity, 2 * have_c, 64))
        new_c = max(new_c, capacity)
        # the compiled attention reads each row only up to its own length, all of it written before; torch's
        # batched matmul reads every row up to the longest, so there the unused positions must be zeros
        self._kv = self.fast.new_kv(new_s, new_c, zeroed=self.fast.attention_kernel is None)
        if old is not None:
            for dst, src in zip(self._kv, old):
                dst[:, :have_s, :, :have_c] = src


__all__ = ["ENGINE_VERSION", "FastRunner", "FastSequence", "fast_path_reason"]
