"""What the scheduler needs from a model: the `ModelRunner` Protocol, and the `KVHandle` each sequence
holds. Two implementations: `extes.models.fast_runner.FastRunner` (the compact LLaMA forward with gathered
LoRA and a kept KV cache) and `extes.models.transformers_runner.TransformersRunner` (transformers + PEFT,
for every other base). The scheduler (`extes.models.scheduler.Engine`) imports neither.

A sequence's life, as the scheduler drives it (one worker thread makes every call):
1. `open(adapter, prompt_ids)`: a handle, with `length` positions already there when a kept cache held
   the prompt's beginning (`cached` of them);
2. `prefill(handle, n)` as often as needed: the next n prompt tokens, chunk by chunk; the last position's
   logits (1, vocab) come back;
3. `join(handles, capacity)`: sequences whose prompt is done enter the running batch;
4. `decode(handles, tokens)`: one step for exactly the joined sequences (any order): each handle's next
   token in, logits (B, vocab) out in the same order;
5. `release(handle, ids)`: the sequence is done (finished, cancelled, failed to start); `ids` are the
   tokens whose keys/values it holds, which the runner may keep for a later prompt that starts with them.
`reset()` forgets every sequence (after a failed step; the scheduler has told their callers).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from extes.models.kvcache import PrefixCache


class KVHandle(Protocol):
    """A sequence's keys/values in a runner: how many positions it holds, and how many of those came from
    the kept cache."""

    length: int
    cached: int


class ModelRunner(Protocol):
    tokenizer: Any  # a transformers tokenizer with a chat template
    window: int  # positions a sequence may use (the model's, or less when asked)
    eos_ids: frozenset[int]
    dtype_name: str  # base weights' dtype ("float32", "bfloat16")
    version: str  # recorded with every reply ("extes-fast-2", "transformers-2")
    kv_cache: PrefixCache | None  # keys/values kept across requests (None: the runner keeps none)
    kv_positions_read: int  # cached positions decode attention has read, padding included

    def load(self) -> None:
        """Load the weights and adapters; `tokenizer`, `window`, `eos_ids`, `dtype_name` are set after."""

    def has_adapter(self, path: str | None) -> bool: ...

    def open(self, adapter: str | None, prompt_ids: list[int]) -> KVHandle: ...

    def prefill(self, handle: KVHandle, n: int) -> torch.Tensor: ...

    def join(self, handles: list[KVHandle], capacity: int) -> None: ...

    def decode(self, handles: list[KVHandle], tokens: list[int]) -> torch.Tensor: ...

    def release(self, handle: KVHandle, ids: list[int]) -> None: ...

    def reset(self) -> None: ...
