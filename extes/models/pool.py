"""ArmPool: the one object callers use to generate with arms.

The pool loads each base model once, puts every LoRA adapter of the arms on that base onto that one
copy (see extes.models.engine), and creates an openai client backend for `backend: openai` arms.
`stream`, `stream_many`, `generate` and `generate_batch` may be called from any number of threads at
once; the local engines' worker threads are the only ones touching the models.

Messages are OpenAI-style dicts (`role` system/user/assistant, `content`). When they have no system
message the arm's system prompt is prepended. For a strategy-trained arm an assistant message may carry
`"strategy": "Emotional Validation"`; the pool writes the tag back into the context the model sees,
because that is how the model saw its own turns in training.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any

from extes.base.loading import checkpoint_source
from extes.models.arms import Arm, GenerationSettings, load_arms, read_adapter_info
from extes.models.engine_process import EngineProcess
from extes.models.openai_backend import OpenAIBackend
from extes.models.types import ENGINE_KINDS, MAX_BATCH, Backend, Event, LocalBackend, Reply, Request
from extes.taxonomy import STRATEGY_TAG_RE, format_strategy_tag

ROLES = ("system", "user", "assistant")
_MIXABLE = {"LORA"}  # adapter types PEFT can mix in one batch; others get a base copy of their own


class UnknownArmError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown arm"


class MessageError(ValueError):
    """Malformed chat messages; the message names the index and the reason."""


def _content_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: keep the text parts
        parts = []
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                raise MessageError(f"{where}.content[{j}]: only text parts are supported")
        return "".join(parts)
    raise MessageError(f"{where}.content must be a string, got {type(content).__name__}")


def prepare_messages(arm: Arm, messages: Any) -> list[dict[str, str]]:
    """Validate messages and build the context the arm's model sees."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise MessageError("messages must be a non-empty list of {role, content} objects")
    out: list[dict[str, str]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise MessageError(f"{where} must be an object with role and content")
        role = m.get("role")
        if role not in ROLES:
            raise MessageError(f"{where}.role must be one of {list(ROLES)}, got {role!r}")
        content = _content_text(m.get("content"), where)
        if role == "assistant" and arm.strategies and m.get("strategy") and not STRATEGY_TAG_RE.match(content):
            content = format_strategy_tag(str(m["strategy"])) + content
        out.append({"role": role, "content": content})
    if all(m["role"] == "system" for m in out):
        raise MessageError("messages need at least one user or assistant message")
    if out[-1]["role"] != "user":
        raise MessageError(f"the last message must come from the user, got {out[-1]['role']!r}")
    if arm.system_prompt and not any(m["role"] == "system" for m in out):
        out.insert(0, {"role": "system", "content": arm.system_prompt})
    return out


class ArmPool:
    def __init__(self, arms: Sequence[Arm] | str | Path, *, max_batch: int = MAX_BATCH, max_context: int | None = None,
                 dtype: str | None = None, gather_s: float = 0.01, kv_cache_bytes: int | None = None,
                 device: str = "cpu", isolate: bool = False, engine_threads: int | None = None,
                 engine: str = "auto"):
        """dtype: overrides every local arm's `dtype` (auto | float32 | bfloat16) when given.
        kv_cache_bytes: per base engine, the budget of the KV cache kept across turns (None: a quarter of the
        memory available when the engine starts, 1 to 8 GiB; see extes.models.kvcache.default_budget_bytes).
        device: where the fast engine runs ("cpu" or "cuda"; the transformers path stays on the CPU).
        isolate: run each base model's engine in its own process (extes.models.engine_process), as the study
        app and `extes serve` do, so a web server's Python threads never slow its decode steps.
        engine_threads: with isolate, torch threads per engine process (None: every usable CPU but one, see
        extes.models.engine_process.default_engine_threads). In-process engines use torch's global setting.
        engine: "auto" (the fast engine where it can run) or "transformers" (force the transformers path)."""
        if engine not in ENGINE_KINDS:
            raise ValueError(f"engine {engine!r} must be one of {list(ENGINE_KINDS)}")
        if engine_threads is not None and not isolate:
            raise ValueError("engine_threads applies to isolated engines (isolate=True) only")
        if isinstance(arms, (str, Path)):
            arms = load_arms(arms)
        arms = list(arms)
        if not arms:
            raise ValueError("an ArmPool needs at least one arm")
        self.arms: dict[str, Arm] = {}
        for arm in arms:
            if arm.name in self.arms:
                raise ValueError(f"duplicate arm name {arm.name!r}")
            self.arms[arm.name] = arm
        self._backends: dict[str, Backend] = {}
        self._engines: list[LocalBackend] = []
        self._closed = False
        groups: dict[tuple[str, str | None, str], list[Arm]] = {}
        for arm in arms:
            if arm.backend == "openai":
                self._backends[arm.name] = OpenAIBackend(arm)
                continue
            key_adapter = None
            if arm.adapter and read_adapter_info(Path(arm.adapter))["peft_type"] not in _MIXABLE:
                key_adapter = arm.adapter
            arm_dtype = dtype or arm.dtype
            groups.setdefault((checkpoint_source(arm.base), key_adapter, arm_dtype), []).append(arm)
        try:
            for (base, _, arm_dtype), group in groups.items():
                options = dict(adapters=[a.adapter for a in group if a.adapter], dtype=arm_dtype,
                               max_batch=max_batch, max_context=max_context, gather_s=gather_s,
                               kv_cache_bytes=kv_cache_bytes, device=device, engine=engine)
                made: LocalBackend
                if isolate:
                    made = EngineProcess(base, threads=engine_threads, **options)
                else:
                    from extes.models.engine import create_engine  # deliberately lazy: loads torch

                    made = create_engine(base, **options)
                self._engines.append(made)
                for arm in group:
                    self._backends[arm.name] = made
        except BaseException:
            self.close()
            raise

    # -- helpers --------------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self.arms)

    def engine_for(self, arm_name: str) -> Backend:
        """What generates this arm's replies: its base's engine (`extes.models.scheduler.Engine`, or an
        `EngineProcess` with isolate), or its `OpenAIBackend`."""
        return self._backends[self._arm(arm_name).name]

    def _arm(self, name: str) -> Arm:
        if self._closed:
            raise RuntimeError("the ArmPool is closed")
        try:
            return self.arms[name]
        except KeyError:
            raise UnknownArmError(f"unknown arm {name!r}; this pool has {self.names}") from None

    def _request(self, arm_name: str, messages: Any, sink, cancel: threading.Event | None,
                 settings: GenerationSettings | None = None) -> tuple[Request, Backend]:
        arm = self._arm(arm_name)
        req = Request(messages=prepare_messages(arm, messages), settings=settings or arm.generation,
                         sink=sink, adapter=arm.adapter, strategies=arm.strategies, external_cancel=cancel)
        return req, self._backends[arm.name]

    @staticmethod
    def _next(q: queue.Queue, backends: list[Backend]):
        while True:
            try:
                return q.get(timeout=1.0)
            except queue.Empty:
                if not all(b.alive for b in backends):
                    raise RuntimeError("a generation worker stopped") from None

    # -- generation -----------------------------------------------------------------------------------

    def stream(self, arm_name: str, messages: Any, cancel: threading.Event | None = None,
               settings_override: dict | None = None) -> Iterator[Event]:
        """Yield Events for one reply; closing the iterator early (or setting `cancel`) cancels it.
        Messages are validated before this returns (MessageError); generation errors are raised
        by the iterator (e.g. ContextTooLongError)."""
        q: queue.Queue = queue.Queue()
        settings = None
        if settings_override:
            settings = self._arm(arm_name).generation.updated(settings_override, where="settings")
        req, backend = self._request(arm_name, messages, q.put, cancel, settings)
        backend.submit(req)
        return self._drain_one(q, req, backend)

    def _drain_one(self, q: queue.Queue, req: Request, backend: Backend) -> Iterator[Event]:
        try:
            while True:
                item = self._next(q, [backend])
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.done:
                    return
        finally:
            req.cancel.set()

    def stream_many(self, requests: dict[Hashable, tuple[str, Any]],
                    cancel: threading.Event | None = None) -> Iterator[tuple[Hashable, Event]]:
        """Stream several replies at once (e.g. three panes); all are submitted together so the engine
        batches them. Yields (key, Event). A request that fails yields a final Event with `failed` True and
        `error` saying why (reply None), and the others go on. Every request is validated before any is submitted."""
        q: queue.Queue = queue.Queue()
        prepared = []
        for key, (arm_name, messages) in requests.items():
            req, backend = self._request(arm_name, messages, lambda ev, k=key: q.put((k, ev)), cancel)
            prepared.append((key, req, backend))
        for _, req, backend in prepared:
            backend.submit(req)
        return self._drain_many(q, prepared)

    def _drain_many(self, q: queue.Queue, prepared) -> Iterator[tuple[Hashable, Event]]:
        open_keys = {key for key, _, _ in prepared}
        backends = [b for _, _, b in prepared]
        try:
            while open_keys:
                key, item = self._next(q, backends)
                if key not in open_keys:
                    continue
                if isinstance(item, BaseException):
                    item = Event.failure(f"{type(item).__name__}: {item}")
                if item.done:
                    open_keys.discard(key)
                yield key, item
        finally:
            for _, req, _ in prepared:
                req.cancel.set()

    def generate(self, arm_name: str, messages: Any) -> Reply:
        reply = None
        for ev in self.stream(arm_name, messages):
            if ev.done:
                reply = ev.reply
        assert reply is not None
        return reply

    def generate_batch(self, arm_name: str, list_of_messages: Sequence[Any],
                       settings_override: dict | None = None) -> list[Reply]:
        """Replies for many conversations with one arm (evaluation, dataset generation), batched."""
        arm = self._arm(arm_name)
        settings = arm.generation.updated(settings_override, where=f"settings_override for arm {arm_name!r}")
        q: queue.Queue = queue.Queue()
        reqs = []
        for i, messages in enumerate(list_of_messages):
            try:
                req, backend = self._request(arm_name, messages, lambda ev, i=i: q.put((i, ev)), None, settings)
            except MessageError as exc:
                raise MessageError(f"conversation {i}: {exc}") from None
            reqs.append((req, backend))
        for req, backend in reqs:
            backend.submit(req)
        replies: list[Reply | None] = [None] * len(reqs)
        remaining = len(reqs)
        try:
            while remaining:
                i, item = self._next(q, [b for _, b in reqs[:1]])
                if isinstance(item, BaseException):
                    raise type(item)(f"conversation {i}: {item}") if isinstance(item, ValueError) else item
                if item.done:
                    replies[i] = item.reply
                    remaining -= 1
        finally:
            for req, _ in reqs:
                req.cancel.set()
        return [r for r in replies if r is not None]

    def close(self) -> None:
        self._closed = True
        for backend in {id(b): b for b in [*self._engines, *self._backends.values()]}.values():
            backend.close()

    def __enter__(self) -> ArmPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
