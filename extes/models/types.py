"""The engine's words, defined once: a request, the events and the reply it produces, the engine's
counters, and the Protocols of what generates for an arm (a local engine, in this process or its own,
or an OpenAI-compatible endpoint).

No torch here: the pool, the servers and the study import these types without loading a model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from extes.models.arms import GenerationSettings

if TYPE_CHECKING:
    from extes.models.kvcache import CacheStats

MAX_BATCH = 32  # rows one engine decodes together, by default (the pool, create_engine and the engine)
PREFILL_CHUNK = 256  # prompt tokens prefilled per scheduler iteration, by default
ENGINE_KINDS = ("auto", "transformers")  # create_engine's `engine`: the fast path where it can run, or not


class ContextTooLongError(ValueError):
    """Even the system prompt plus the last message do not fit the model's context window."""


class EngineClosed(RuntimeError):
    """A request was submitted to an engine that is closed (or whose process stopped)."""


@dataclass
class Reply:
    """A finished reply and how it was made."""

    text: str  # what people see (strategy tag removed for strategy arms)
    strategy: str | None
    raw_text: str  # the model's output as written (with the tag)
    n_tokens: int
    latency_s: float
    ttft_s: float | None
    finish_reason: str  # "stop" | "length" | "cancelled"
    settings: dict[str, Any]
    prompt_tokens: int = 0
    dropped_messages: int = 0
    token_ids: list[int] = field(default_factory=list)
    dtype: str = ""  # weight dtype of the engine that wrote it ("float32", "bfloat16")
    engine_version: str = ""  # which engine path and version ("transformers-2", "extes-fast-2")
    cached_prompt_tokens: int = 0  # prompt tokens whose keys/values came from the kept KV cache


@dataclass(frozen=True)
class Event:
    """A streamed piece of a reply: visible text only (never the strategy tag).

    Three kinds, told apart by typed fields (no attribute probing needed):
    - text: `done` False, `delta` the new visible text;
    - the end of a reply: `done` True, `reply` the Reply (`delta` any text not streamed yet);
    - a failure (only in `ArmPool.stream_many`, where the other requests go on): `done` True,
      `reply` None, `error` saying why (`failed` is True).
    """

    delta: str
    done: bool = False
    reply: Reply | None = None
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.done and self.reply is None

    @classmethod
    def final(cls, reply: Reply, delta: str = "") -> Event:
        return cls(delta=delta, done=True, reply=reply)

    @classmethod
    def failure(cls, error: str) -> Event:
        return cls(delta="", done=True, reply=None, error=error)


Sink = Callable[[Event | BaseException], None]


@dataclass
class Request:
    """One reply to generate: the prompt's messages, the arm's settings and where its events go."""

    messages: list[dict[str, str]]
    settings: GenerationSettings
    sink: Sink
    adapter: str | None = None  # adapter path (None = the base model)
    strategies: bool = False
    cancel: threading.Event = field(default_factory=threading.Event)
    external_cancel: threading.Event | None = None
    submitted_at: float = field(default_factory=time.perf_counter)

    def cancelled(self) -> bool:
        return self.cancel.is_set() or (self.external_cancel is not None and self.external_cancel.is_set())

    def unstarted_reply(self, reason: str, dtype: str = "", engine_version: str = "") -> Reply:
        """The reply of a request that ended before its first token (cancelled while it waited)."""
        return Reply(text="", strategy=None, raw_text="", n_tokens=0, latency_s=time.perf_counter() - self.submitted_at,
                     ttft_s=None, finish_reason=reason, settings=self.settings.to_dict(), dtype=dtype,
                     engine_version=engine_version)


GenRequest = Request  # the name callers used before the types had their own module


@dataclass
class EngineStats:
    """An engine's counters, for tests, benchmarks and the line logged at close (never text)."""

    steps: int = 0  # decode forward passes
    max_rows_seen: int = 0
    prefill_tokens: int = 0  # prompt tokens run through the model
    prefill_seconds: float = 0.0
    decode_rows: int = 0  # rows summed over all decode steps
    decode_seconds: float = 0.0
    kv_positions_read: int = 0  # cached positions decode attention read
    kv_positions_used: int = 0  # of those, the rows' own (the rest is padding)
    step_times: list[tuple[int, float]] = field(default_factory=list)  # (rows, seconds), the latest steps
    kv_cache: CacheStats | None = None  # the kept KV cache's counters (None: the path keeps none)
    torch_threads: int = 0
    cancels_received: int = 0  # cancellations an engine process received from its parent

    def summary(self) -> str:
        """One line: how full the decode batches were, how long a step took, padding, prefill, cache."""
        line = f"{self.steps} decode steps"
        if self.steps and self.decode_rows and self.decode_seconds:
            line += (f", {self.decode_rows / self.steps:.1f} rows per step on average, "
                     f"{1000 * self.decode_seconds / self.steps:.0f} ms per step, "
                     f"{self.decode_rows / self.decode_seconds:.0f} decoded tokens/s while decoding")
        if self.kv_positions_read:
            line += f", attention read {100 * (1 - self.kv_positions_used / self.kv_positions_read):.0f}% padding"
        line += f", {self.prefill_tokens} prompt tokens prefilled in {self.prefill_seconds:.1f} s"
        if self.kv_cache is not None:
            st = self.kv_cache
            line += (f", kept KV cache {st.hits} hits / {st.misses} misses, {st.reused_tokens} prompt tokens "
                     f"reused, {st.evictions} evictions")
        return line


class Backend(Protocol):
    """What `ArmPool` needs from whatever generates an arm's replies: take a request (its events go to
    `req.sink`), say whether it can still answer, and close."""

    @property
    def alive(self) -> bool: ...

    def submit(self, req: Request) -> None: ...

    def close(self) -> None: ...


class LocalBackend(Backend, Protocol):
    """A base model's engine: `extes.models.scheduler.Engine` in this process, or
    `extes.models.engine_process.EngineProcess` in its own."""

    window: int
    dtype_name: str

    @property
    def engine_version(self) -> str: ...

    def has_adapter(self, path: str | None) -> bool: ...

    def stats(self) -> EngineStats: ...
