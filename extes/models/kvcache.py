"""The conversation's KV cache kept across turns: a byte budget, LRU eviction, reuse by token-id prefix.

When a reply finishes, the keys/values of every token it fed through the model (the prompt and the
generated tokens) are kept under the arm's adapter and those token ids. The next turn's prompt is the
same conversation plus the reply and a new message, so it starts with (most of) those ids: the engine
copies the longest common prefix's keys/values and prefills only the rest.

Correctness rests on one fact: the keys/values at position p depend only on the tokens 0..p and the
weights (causal attention, absolute positions). So reuse is exact for any common prefix of token ids,
and everything else is a miss: oldest turns truncated (the prefix ends after the system prompt), a
stored reply that differs from the generated tokens (sentence trimming, stripped strategy tags: the
prefix ends where they differ), another adapter (another key). An eviction only costs recomputation.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

GIB = 1 << 30


def default_budget_bytes(meminfo: str = "/proc/meminfo") -> int:
    """The kept cache's default budget: a quarter of the memory available now, between 1 and 8 GiB (1 GiB
    where that cannot be read). A study's conversations outgrow a fixed 1 GiB quickly: at about 46 KB per
    token (SmolLM2-135M, fp32), 20 participants x 3 panes x 3 turns already need about 1.4 GB, and 10 turns
    several GB; an eviction costs a re-prefill of that pane's whole history at its next turn."""
    try:
        with open(meminfo) as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError, IndexError):
        return GIB
    return int(min(8 * GIB, max(GIB, available // 4)))


@dataclass
class CachedPrefix:
    adapter: str | None
    ids: tuple[int, ...]
    kv: list[torch.Tensor]  # per layer (2, n_kv, len(ids), head_dim), fp32
    nbytes: int = 0


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    reused_tokens: int = 0
    evictions: int = 0
    stored: int = 0
    extra: dict = field(default_factory=dict)


class PrefixCache:
    """Keys/values of finished sequences, looked up by the longest common token-id prefix."""

    def __init__(self, budget_bytes: int, min_reuse: int = 1):
        self.budget = int(budget_bytes)
        self.min_reuse = min_reuse
        self._entries: OrderedDict[int, CachedPrefix] = OrderedDict()
        self._next = 0
        self.bytes = 0
        self.stats = CacheStats()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, adapter: str | None, ids: list[int]) -> tuple[int, CachedPrefix | None]:
        """(n, entry): the first n ids of `ids` have keys/values in entry.kv[..., :n, :]. n < len(ids)
        always (the last prompt token must run to give the next token's logits)."""
        best_n, best_key = 0, None
        limit = len(ids) - 1
        with self._lock:
            for key, e in self._entries.items():
                if e.adapter != adapter or not e.ids or e.ids[0] != ids[0]:
                    continue
                n = min(len(os.path.commonprefix([e.ids, tuple(ids[:len(e.ids)])])), limit)
                if n > best_n:
                    best_n, best_key = n, key
            if best_key is None or best_n < self.min_reuse:
                self.stats.misses += 1
                return 0, None
            self._entries.move_to_end(best_key)
            self.stats.hits += 1
            self.stats.reused_tokens += best_n
            return best_n, self._entries[best_key]

    def store(self, adapter: str | None, ids: list[int], kv: list[torch.Tensor]) -> None:
        """Keep kv (per layer (2, n_kv, len(ids), D), owned by the cache from now on) for these ids.
        Entries of the same adapter whose ids are a prefix of these are dropped (this one covers them)."""
        entry = CachedPrefix(adapter, tuple(ids), kv, sum(t.numel() * t.element_size() for t in kv))
        if entry.nbytes > self.budget or not ids:
            return
        with self._lock:
            for key in [k for k, e in self._entries.items()
                        if e.adapter == adapter and len(e.ids) <= len(entry.ids) and entry.ids[:len(e.ids)] == e.ids]:
                self._drop(key)
            while self.bytes + entry.nbytes > self.budget and self._entries:
                self._drop(next(iter(self._entries)))
                self.stats.evictions += 1
            self._entries[self._next] = entry
            self._next += 1
            self.bytes += entry.nbytes
            self.stats.stored += 1

    def _drop(self, key: int) -> None:
        e = self._entries.pop(key)
        self.bytes -= e.nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0
