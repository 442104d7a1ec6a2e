"""An async chat-completions client with our own rate limiting and retries.

The openai client is created with max_retries=0: every retry happens here, so it is counted,
journaled and paced by our limiter. Requests per minute and tokens per minute are token buckets;
a request first takes one request token and its estimated tokens (prompt estimate + max_tokens),
and the estimate is corrected by the real usage once the response arrives.
Retries: 429, 408/409, 5xx, timeouts and connection errors, with exponential backoff and full
jitter, or exactly the server's Retry-After / retry-after-ms when it sends one.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class TokenBucket:
    """`rate` tokens per second up to `capacity`. `acquire(n)` waits until n tokens are there.
    Waiters are served in arrival order (an asyncio lock), so big requests are not starved."""

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Any] = asyncio.sleep, initial: float | None = None):
        if rate <= 0 or capacity <= 0:
            raise ValueError(f"token bucket needs a positive rate and capacity, got {rate}, {capacity}")
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._sleep = sleep
        self._tokens = capacity if initial is None else min(capacity, initial)
        self._last = clock()
        self._lock: asyncio.Lock | None = None

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now

    async def acquire(self, n: float = 1.0) -> float:
        """Take n tokens (n above capacity is allowed: it waits for a full bucket and goes into debt).
        Returns the seconds waited."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        waited = 0.0
        async with self._lock:
            need = min(n, self.capacity)
            while True:
                self._refill()
                if self._tokens >= need:
                    self._tokens -= n
                    return waited
                delay = (need - self._tokens) / self.rate
                waited += delay
                await self._sleep(delay)

    def adjust(self, delta: float) -> None:
        """Give back (delta < 0 means take more) after the real cost is known."""
        self._refill()
        self._tokens = min(self.capacity, self._tokens - delta)


class RateLimiter:
    """Requests-per-minute and tokens-per-minute limits (either may be None = unlimited)."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None, request_catch_up_s: float = 0.25,
                 token_burst_s: float = 5.0):
        """Requests are evenly spaced: the bucket starts with one request and holds at most
        `request_catch_up_s` seconds' worth, enough to make up for a late event loop without a
        burst that would break the limit in a short window. Tokens may burst up to `token_burst_s`
        seconds' worth, since one request alone can need thousands of them."""
        self.rpm = rpm
        self.tpm = tpm
        self.requests = (TokenBucket(rpm / 60.0, max(1.0, rpm / 60.0 * request_catch_up_s), initial=1.0)
                         if rpm else None)
        self.tokens = TokenBucket(tpm / 60.0, max(1.0, tpm / 60.0 * token_burst_s)) if tpm else None

    async def acquire(self, est_tokens: int) -> float:
        waited = 0.0
        if self.requests is not None:
            waited += await self.requests.acquire(1)
        if self.tokens is not None:
            waited += await self.tokens.acquire(est_tokens)
        return waited

    def settle(self, est_tokens: int, real_tokens: int) -> None:
        if self.tokens is not None:
            self.tokens.adjust(real_tokens - est_tokens)


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    latency_s: float
    attempts: int
    model: str
    errors: list[str] = field(default_factory=list)


class RequestFailed(Exception):
    def __init__(self, message: str, attempts: int, errors: list[str], retryable: bool):
        super().__init__(message)
        self.attempts = attempts
        self.errors = errors
        self.retryable = retryable


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from retry-after-ms / Retry-After (seconds or an HTTP date); None if absent."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


@dataclass
class ClientStats:
    requests: int = 0        # HTTP attempts sent
    retries: int = 0
    rate_limited: int = 0    # 429s
    server_errors: int = 0   # 5xx
    timeouts: int = 0
    limiter_wait_s: float = 0.0
    backoff_wait_s: float = 0.0


class LLMClient:
    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        rpm: float | None = None,
        tpm: float | None = None,
        max_retries: int = 6,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        max_retry_after: float = 300.0,
        timeout: float = 120.0,
        seed: int | None = None,
    ):
        from openai import AsyncOpenAI

        self.model = model
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self.limiter = RateLimiter(rpm, tpm)
        self.token_param = "max_tokens"
        self.stats = ClientStats()
        self._rng = random.Random(seed)
        self._client = AsyncOpenAI(api_key=api_key or "not-needed", base_url=base_url,
                                   max_retries=0, timeout=timeout)

    async def close(self) -> None:
        await self._client.close()

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after)
        cap = min(self.backoff_max, self.backoff_base * (2 ** attempt))
        return self._rng.uniform(0, cap)  # full jitter

    def _status_error(self, exc) -> tuple[str, float | None, bool]:
        """(error text, Retry-After seconds or None, retryable) of an HTTP error response."""
        status = exc.status_code
        err = f"HTTP {status}: {str(exc)[:300]}"
        retry_after = parse_retry_after(getattr(exc.response, "headers", None))
        retryable = True
        if status == 400 and self.token_param == "max_tokens" and "max_completion_tokens" in str(exc):
            # newer OpenAI models refuse max_tokens and name its replacement: switch once
            self.token_param = "max_completion_tokens"
            retry_after = 0.0
        elif status == 429:
            self.stats.rate_limited += 1
        elif status >= 500:
            self.stats.server_errors += 1
        elif status not in (408, 409):
            retryable = False
        return err, retry_after, retryable

    def _completion(self, resp, est_tokens: int, max_tokens: int, latency: float, attempts: int,
                    errors: list[str]) -> Completion:
        usage = resp.usage
        pt = int(getattr(usage, "prompt_tokens", 0) or 0) if usage else 0
        ct = int(getattr(usage, "completion_tokens", 0) or 0) if usage else 0
        if not usage:  # no usage reported: keep our estimate so budgets stay conservative
            pt, ct = est_tokens, max_tokens
        self.limiter.settle(est_tokens + max_tokens, pt + ct)
        choice = resp.choices[0] if resp.choices else None
        text = (choice.message.content or "") if choice and choice.message else ""
        return Completion(text, pt, ct, choice.finish_reason if choice else None, latency,
                          attempts, getattr(resp, "model", self.model) or self.model, errors)

    async def complete(self, messages: list[dict[str, str]], est_tokens: int, max_tokens: int,
                       temperature: float, request_id: str = "",
                       on_retry: Callable[[int, str, float], None] | None = None) -> Completion:
        import openai

        errors: list[str] = []
        attempt = 0
        while True:
            self.stats.limiter_wait_s += await self.limiter.acquire(est_tokens + max_tokens)
            self.stats.requests += 1
            t0 = time.monotonic()
            retry_after: float | None = None
            retryable = True
            try:
                resp = await self._client.chat.completions.create(
                    model=self.model, messages=messages, temperature=temperature,
                    extra_headers={"X-Extes-Request-Id": request_id} if request_id else None,
                    **{self.token_param: max_tokens},
                )
            except openai.APITimeoutError:
                self.stats.timeouts += 1
                err = "timeout"
                self.limiter.settle(est_tokens + max_tokens, 0)
            except openai.APIConnectionError as exc:
                err = f"connection error: {exc}"
                self.limiter.settle(est_tokens + max_tokens, 0)
            except openai.APIStatusError as exc:
                self.limiter.settle(est_tokens + max_tokens, 0)
                err, retry_after, retryable = self._status_error(exc)
            else:
                return self._completion(resp, est_tokens, max_tokens, time.monotonic() - t0, attempt + 1, errors)
            errors.append(err)
            if not retryable or attempt >= self.max_retries:
                raise RequestFailed(f"{request_id or 'request'}: gave up after {attempt + 1} attempt(s): {err}",
                                    attempt + 1, errors, retryable)
            delay = self.backoff(attempt, retry_after)
            self.stats.retries += 1
            self.stats.backoff_wait_s += delay
            if on_retry is not None:
                on_retry(attempt + 1, err, delay)
            await asyncio.sleep(delay)
            attempt += 1
