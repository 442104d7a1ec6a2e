"""The build client against a scripted OpenAI-compatible server on loopback: retries, Retry-After,
timeouts, give-up and the rate limiter's arithmetic."""

import asyncio
import time

import pytest

from extes.llm.client import LLMClient, RequestFailed, TokenBucket, parse_retry_after
from extes.testing.scripted import ScriptedServer

MSGS = [{"role": "user", "content": 'scenario type "Academic Stress"'}]


def complete(srv, **kw):
    async def go():
        client = LLMClient("scripted", srv.base_url, "k", backoff_base=0.01, seed=0, **kw)
        retries = []
        try:
            comp = await client.complete(MSGS, 10, 100, 0.7, request_id="r1-000001",
                                         on_retry=lambda a, e, d: retries.append((a, e, d)))
            return comp, retries, client.stats
        except RequestFailed as exc:
            return exc, retries, client.stats
        finally:
            await client.close()

    return asyncio.run(go())


def test_retries_429_with_retry_after_then_500_then_success():
    with ScriptedServer([{"kind": "429", "retry_after": "0.3"}, "500", "good"]) as srv:
        t0 = time.monotonic()
        comp, retries, stats = complete(srv)
        elapsed = time.monotonic() - t0
    assert comp.attempts == 3 and comp.prompt_tokens == 1000 and comp.completion_tokens == 500
    assert [r[0] for r in retries] == [1, 2]
    assert retries[0][2] == pytest.approx(0.3)  # the server's Retry-After, not our backoff
    assert "HTTP 429" in retries[0][1] and "HTTP 500" in retries[1][1]
    assert stats.requests == 3 and stats.retries == 2 and stats.rate_limited == 1 and stats.server_errors == 1
    assert elapsed >= 0.3
    assert srv.count() == 3  # the openai client itself never retried (max_retries=0)


def test_gives_up_after_max_retries_and_does_not_retry_client_errors():
    with ScriptedServer(["500", "503", "502", "good"]) as srv:
        exc, retries, stats = complete(srv, max_retries=2)
    assert isinstance(exc, RequestFailed) and exc.retryable and exc.attempts == 3
    assert len(retries) == 2 and srv.count() == 3
    with ScriptedServer(["401", "good"]) as srv:
        exc, retries, stats = complete(srv)
    assert isinstance(exc, RequestFailed) and not exc.retryable and exc.attempts == 1
    assert retries == [] and srv.count() == 1


def test_timeout_and_dropped_connection_are_retried():
    with ScriptedServer([{"kind": "good", "delay": 3.0}, "drop", "good"]) as srv:
        comp, retries, stats = complete(srv, timeout=1.0)
    assert comp.attempts == 3 and stats.timeouts == 1
    assert retries[0][1] == "timeout" and "connection" in retries[1][1]


def test_parse_retry_after_forms():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert parse_retry_after({"retry-after": "soon"}) is None


def test_token_bucket_paces_with_a_fake_clock():
    now = [0.0]

    async def fake_sleep(s):
        now[0] += s

    async def go():
        b = TokenBucket(rate=2.0, capacity=1.0, clock=lambda: now[0], sleep=fake_sleep)
        times = []
        for _ in range(5):
            await b.acquire(1)
            times.append(now[0])
        return times

    assert asyncio.run(go()) == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])

    async def debt():
        now[0] = 0.0
        b = TokenBucket(rate=10.0, capacity=5.0, clock=lambda: now[0], sleep=fake_sleep)
        await b.acquire(20)  # bigger than the bucket: waits for a full bucket, then owes the rest
        t = now[0]
        await b.acquire(1)
        return t, now[0]

    t1, t2 = asyncio.run(debt())
    assert t1 == 0.0 and t2 == pytest.approx(1.6)  # 15 owed + 1 needed at 10/s


def test_switches_to_max_completion_tokens_when_the_server_asks():
    with ScriptedServer(default="new_api") as srv:
        comp, retries, stats = complete(srv)
    assert comp.attempts == 2 and "max_completion_tokens" in retries[0][1] and retries[0][2] == 0.0
    assert [e["status"] for e in srv.log] == [400, 200]
