"""The `openai` backend: an arm served by any chat-completions endpoint, through the official client.

Works with OpenAI itself, vLLM (also serving LoRA adapters by name), TGI, llama.cpp server, Ollama, and
our own `extes serve`. The API key comes from the environment variable the arm names (`api_key_env`);
for a self-hosted endpoint (base_url set) a missing key is fine.

Each request runs in its own thread and streams into the request's sink, like the local engine. Errors
that happen before the first token (connection refused, timeout, 429, 5xx) are retried with exponential
backoff and jitter, `max_retries` times (the client's own retries are off so the budget is ours); after
the first token a failure is reported, not retried, because the reader has already seen the text.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time

from extes.models.arms import Arm
from extes.models.text import split_reply, visible_text
from extes.models.types import Event, Reply, Request

log = logging.getLogger(__name__)

_OPENAI_HOST = "api.openai.com"


class BackendError(RuntimeError):
    """A remote endpoint failed for an arm; the message names the arm and the endpoint."""


class OpenAIBackend:
    """An arm served by a chat-completions endpoint: the `Backend` Protocol (extes.models.types)."""

    alive = True  # each request has its own thread; a failure is reported to that request

    def __init__(self, arm: Arm, client=None, backoff_s: float = 0.5):
        self.arm = arm
        self._client = client
        self._lock = threading.Lock()
        self.backoff_s = backoff_s
        self._closed = False

    @property
    def where(self) -> str:
        return f"arm {self.arm.name!r} ({self.arm.base_url or 'https://api.openai.com/v1'}, model {self.arm.model!r})"

    def client(self):
        with self._lock:
            if self._client is None:
                import openai

                key = os.environ.get(self.arm.api_key_env)
                if not key:
                    if self.arm.base_url is None or _OPENAI_HOST in self.arm.base_url:
                        raise BackendError(
                            f"{self.where}: the API key variable {self.arm.api_key_env} is not set"
                        )
                    key = "not-needed"  # self-hosted servers usually ignore it, the client insists on one
                self._client = openai.OpenAI(base_url=self.arm.base_url, api_key=key,
                                             timeout=self.arm.timeout_s, max_retries=0)
            return self._client

    def submit(self, req: Request) -> None:
        if self._closed:
            raise BackendError(f"{self.where}: backend is closed")
        threading.Thread(target=self._run, args=(req,), name=f"extes-openai:{self.arm.name}", daemon=True).start()

    def close(self) -> None:
        self._closed = True
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # pragma: no cover - best effort
                pass

    # ------------------------------------------------------------------------------------------------

    def _params(self, req: Request) -> dict:
        s = req.settings
        params = dict(model=self.arm.model, messages=req.messages, stream=True,
                      max_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p)
        if s.seed is not None:
            params["seed"] = s.seed
        # OpenAI itself rejects unknown parameters; vLLM, TGI, llama.cpp and our server take this one.
        if self.arm.base_url and _OPENAI_HOST not in self.arm.base_url and s.repetition_penalty != 1.0:
            params["extra_body"] = {"repetition_penalty": s.repetition_penalty}
        return params

    def _run(self, req: Request) -> None:
        try:
            req.sink(self._generate(req))
        except Exception as exc:
            req.sink(exc if isinstance(exc, BackendError) else BackendError(f"{self.where}: {exc}"))

    def _generate(self, req: Request) -> Event:
        import openai

        retryable = (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
                     openai.InternalServerError)
        attempt = 0
        while True:
            state = {"raw": "", "emitted": "", "chunks": 0, "ttft": None, "finish": None,
                     "strategy": None, "usage": None}
            try:
                return self._stream_once(req, state)
            except retryable as exc:
                if state["emitted"] or attempt >= self.arm.max_retries or req.cancelled():
                    raise BackendError(f"{self.where}: {type(exc).__name__}: {exc}") from exc
                delay = self._retry_after(exc)
                if delay is None:
                    delay = self.backoff_s * (2 ** attempt) * (0.5 + random.random())
                attempt += 1
                log.warning("%s: %s, retry %d/%d in %.1fs", self.where, type(exc).__name__, attempt,
                            self.arm.max_retries, delay)
                end = time.monotonic() + min(delay, 30.0)
                while time.monotonic() < end and not req.cancelled():
                    time.sleep(0.05)
            except openai.APIStatusError as exc:
                raise BackendError(f"{self.where}: HTTP {exc.status_code}: {exc.message}") from exc

    @staticmethod
    def _retry_after(exc) -> float | None:
        response = getattr(exc, "response", None)
        value = response.headers.get("retry-after") if response is not None else None
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None

    def _stream_once(self, req: Request, st: dict) -> Event:
        stream = self.client().chat.completions.create(**self._params(req))
        try:
            for chunk in stream:
                if req.cancelled():
                    st["finish"] = "cancelled"
                    break
                usage = getattr(chunk, "usage", None)
                if usage is not None:
                    st["usage"] = usage
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                strategy = getattr(choice, "strategy", None) or getattr(choice.delta, "strategy", None)
                if strategy:
                    st["strategy"] = strategy
                if choice.finish_reason:
                    st["finish"] = choice.finish_reason
                piece = choice.delta.content if choice.delta is not None else None
                if not piece:
                    continue
                if st["ttft"] is None:
                    st["ttft"] = time.perf_counter() - req.submitted_at
                st["chunks"] += 1
                st["raw"] += piece
                vis = visible_text(st["raw"], req.strategies, final=False)
                if len(vis) > len(st["emitted"]) and vis.startswith(st["emitted"]):
                    req.sink(Event(delta=vis[len(st["emitted"]):]))
                    st["emitted"] = vis
        finally:
            stream.close()
        strategy, text = split_reply(st["raw"], req.strategies)
        strategy = st["strategy"] or strategy
        delta = text[len(st["emitted"]):] if text.startswith(st["emitted"]) else ""
        usage = st["usage"]
        reply = Reply(
            text=text, strategy=strategy, raw_text=st["raw"].strip(),
            n_tokens=int(getattr(usage, "completion_tokens", 0) or st["chunks"]),
            latency_s=time.perf_counter() - req.submitted_at, ttft_s=st["ttft"],
            finish_reason=st["finish"] or "stop", settings=req.settings.to_dict(),
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        )
        return Event.final(reply, delta)
