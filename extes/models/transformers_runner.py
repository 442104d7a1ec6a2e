"""The transformers runner: any base transformers can load, with PEFT adapters, behind the `ModelRunner`
Protocol (extes.models.runner). The path for what the fast runner cannot run (GPT-2 and other
architectures, adaption-prompt adapters), and the reference the fast runner is tested against.

Every LoRA adapter of the arms on the base is a named adapter on one PEFT model; a sequence without one
runs on the base ("__base__"), and a batch of mixed adapters goes through PEFT's `adapter_names`. A
sequence prefills into its own `DynamicCache` (batch of one, no padding, in chunks as the scheduler asks);
joining the batch left-pads it to the batch's length and concatenates it with the running rows; released
rows leave at the next step, with the columns only padding used. This needs plain full-attention layers
(GPT-2 and most decoder-only models).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache

from extes.base.loading import load_base
from extes.models.text import end_of_turn_ids

ENGINE_VERSION = "transformers-2"  # 2: prompts prefilled one sequence at a time, in chunks (no left padding)
BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed batch


@dataclass(eq=False)
class HFSequence:
    """A sequence's keys/values: its own cache while it prefills, then a row of the batch cache."""

    adapter_name: str
    prompt_ids: list[int]
    length: int = 0
    cached: int = 0  # this runner keeps no cache across requests
    cache: Any = None  # its own DynamicCache while prefilling
    index: int = -1  # its row of the batch once joined
    dropped: bool = False


@dataclass
class BatchState:
    """The running batch: its KV cache, attention mask (left padded) and the next position of each row."""

    cache: Any = None
    mask: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    rows: list[HFSequence] = field(default_factory=list)


def _left_pad(x: torch.Tensor, extra: int, dim: int) -> torch.Tensor:
    if extra == 0:
        return x
    shape = list(x.shape)
    shape[dim] = extra
    return torch.cat([torch.zeros(shape, dtype=x.dtype), x], dim=dim)


@dataclass(eq=False)
class TransformersRunner:
    """dtype: a torch dtype name for the weights, or None for the checkpoint's default (fp32 on the CPU)."""

    base: str
    adapters: list[str] = field(default_factory=list)
    dtype: str | None = None
    max_context: int | None = None
    model: Any = None
    tokenizer: Any = None

    def load(self) -> None:
        model, tokenizer = (self.model, self.tokenizer) if self.model is not None else load_base(self.base, dtype=self.dtype)
        self.dtype_name = str(next(model.parameters()).dtype).replace("torch.", "")
        self._names: dict[str | None, str] = {None: BASE_ADAPTER}
        self._peft = bool(self.adapters)
        if self.adapters:
            from peft import PeftModel  # deliberately lazy: only bases with adapters need peft

            for i, path in enumerate(self.adapters):
                name = f"adapter_{i}"
                if i == 0:
                    model = PeftModel.from_pretrained(model, path, adapter_name=name, is_trainable=False)
                else:
                    model.load_adapter(path, adapter_name=name, is_trainable=False)
                self._names[path] = name
            self._active = "adapter_0"
        model.eval()
        self.model, self.tokenizer = model, tokenizer
        cfg = model.config
        window = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 2048
        self.window = int(min(window, self.max_context) if self.max_context else window)
        self.eos_ids = end_of_turn_ids(tokenizer, model.generation_config.eos_token_id)
        self.version = ENGINE_VERSION
        self.kv_cache = None
        self.kv_positions_read = 0
        self._state = BatchState()

    def has_adapter(self, path: str | None) -> bool:
        return (str(Path(path)) if path else None) in self._names

    def _forward(self, input_ids, mask, positions, cache, adapter_names: list[str]):
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

    # -- ModelRunner ----------------------------------------------------------------------------------------

    def open(self, adapter: str | None, prompt_ids: list[int]) -> HFSequence:
        return HFSequence(adapter_name=self._names[str(Path(adapter)) if adapter else None], prompt_ids=prompt_ids)

    def prefill(self, seq: HFSequence, n: int) -> torch.Tensor:
        start = seq.length
        ids = torch.tensor([seq.prompt_ids[start:start + n]], dtype=torch.long)
        mask = torch.ones((1, start + n), dtype=torch.long)
        positions = torch.arange(start, start + n, dtype=torch.long)[None]
        if seq.cache is None:
            seq.cache = DynamicCache(config=self.model.config)
        logits, seq.cache = self._forward(ids, mask, positions, seq.cache, [seq.adapter_name])
        seq.length += n
        return logits

    def join(self, seqs: list[HFSequence], capacity: int) -> None:
        """Append the sequences to the running batch, left padding whichever side is shorter."""
        self._compact()
        st = self._state
        blocks = [(st.cache, st.mask)] if st.rows else []
        blocks += [(s.cache, torch.ones((1, s.length), dtype=torch.long)) for s in seqs]
        t = max(mask.shape[1] for _, mask in blocks)
        batch_cache = st.cache if st.rows else seqs[0].cache
        for li, layer in enumerate(batch_cache.layers):
            keys = torch.cat([_left_pad(c.layers[li].keys, t - m.shape[1], 2) for c, m in blocks], dim=0)
            values = torch.cat([_left_pad(c.layers[li].values, t - m.shape[1], 2) for c, m in blocks], dim=0)
            layer.keys, layer.values = keys, values
        st.cache = batch_cache
        st.mask = torch.cat([_left_pad(m, t - m.shape[1], 1) for _, m in blocks], dim=0)
        new_pos = torch.tensor([s.length for s in seqs], dtype=torch.long)
        st.positions = torch.cat([st.positions, new_pos]) if st.rows else new_pos
        for s in seqs:
            s.cache, s.index = None, len(st.rows)
            st.rows.append(s)

    def decode(self, seqs: list[HFSequence], tokens: list[int]) -> torch.Tensor:
        self._compact()
        st = self._state
        b = len(st.rows)
        if len(seqs) != b:
            raise ValueError(f"decode needs every joined sequence: {len(seqs)} given, {b} in the batch")
        order = [s.index for s in seqs]
        ids = torch.empty((b, 1), dtype=torch.long)
        ids[order, 0] = torch.tensor(tokens, dtype=torch.long)
        mask = torch.cat([st.mask, torch.ones((b, 1), dtype=st.mask.dtype)], dim=1)
        logits, st.cache = self._forward(ids, mask, st.positions[:, None].clone(), st.cache,
                                         [s.adapter_name for s in st.rows])
        st.mask = mask
        st.positions = st.positions + 1
        for s in st.rows:
            s.length += 1
        self.kv_positions_read += b * mask.shape[1]
        return logits if order == list(range(b)) else logits[order]

    def release(self, seq: HFSequence, ids: list[int]) -> None:
        """The row leaves the batch at the next step (all rows released in one step leave together)."""
        seq.cache = None
        if seq.index >= 0:
            seq.dropped = True

    def reset(self) -> None:
        self._state = BatchState()

    def _compact(self) -> None:
        """Drop released rows and the cache columns only padding uses."""
        st = self._state
        if not any(s.dropped for s in st.rows):
            return
        keep = [i for i, s in enumerate(st.rows) if not s.dropped]
        for s in st.rows:
            if s.dropped:
                s.index = -1
        if not keep:
            self._state = BatchState()
            return
        idx = torch.tensor(keep, dtype=torch.long)
        mask = st.mask[idx]
        used = mask.any(0).nonzero()
        start = int(used[0]) if used.numel() else 0
        for layer in st.cache.layers:
            layer.keys = layer.keys[idx, :, start:]
            layer.values = layer.values[idx, :, start:]
        st.mask = mask[:, start:]
        st.positions = st.positions[idx]
        st.rows = [st.rows[i] for i in keep]
        for i, s in enumerate(st.rows):
            s.index = i


__all__ = ["BASE_ADAPTER", "ENGINE_VERSION", "HFSequence", "TransformersRunner"]
