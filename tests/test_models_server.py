"""`extes serve` through the real openai client on a loopback port, and the openai backend."""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest
from models_helpers import SYSTEM, LiveServer, shared_base_and_adapters, tiny_arms, user

from extes.models import Arm, ArmPool, GenerationSettings
from extes.models.openai_backend import BackendError, OpenAIBackend
from extes.models.pool import prepare_messages
from extes.models.server import create_app


@pytest.fixture(scope="module")
def setup(tiny_llama, tmp_path_factory):
    base, adapters = shared_base_and_adapters(tiny_llama, tmp_path_factory)
    pool = ArmPool(tiny_arms(base, adapters))
    with LiveServer(create_app(pool, max_body_bytes=20_000)) as server:
        yield pool, server
    pool.close()


@pytest.fixture()
def client(setup):
    _, server = setup
    with openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=30) as c:
        yield c


def test_models_endpoint(client):
    assert [m.id for m in client.models.list()] == ["plain", "lora", "strat"]


def test_plain_completion_matches_the_pool(setup, client):
    pool, _ = setup
    expected = pool.generate("lora", user("I feel so alone since the breakup"))
    r = client.chat.completions.create(model="lora", messages=user("I feel so alone since the breakup"))
    assert r.choices[0].message.content == expected.text
    assert r.usage.completion_tokens == expected.n_tokens
    assert r.choices[0].finish_reason in {"stop", "length"}


def test_streaming_three_arms_at_once_with_strategy_field(setup, client):
    pool, _ = setup
    results = {}

    def run(arm):
        stream = client.chat.completions.create(model=arm, messages=user("I feel so alone since the breakup"),
                                                stream=True, stream_options={"include_usage": True})
        text, strategy, usage, n_chunks = "", None, None, 0
        for chunk in stream:
            if chunk.usage:
                usage = chunk.usage
            if not chunk.choices:
                continue
            text += chunk.choices[0].delta.content or ""
            n_chunks += bool(chunk.choices[0].delta.content)
            strategy = getattr(chunk.choices[0], "strategy", None) or strategy
        results[arm] = (text, strategy, usage, n_chunks)

    threads = [threading.Thread(target=run, args=(arm,)) for arm in ("plain", "lora", "strat")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for arm in ("plain", "lora", "strat"):
        expected = pool.generate(arm, user("I feel so alone since the breakup"))
        text, strategy, usage, n_chunks = results[arm]
        assert text == expected.text and n_chunks > 1
        assert strategy == expected.strategy
        assert usage.completion_tokens == expected.n_tokens
    assert results["strat"][1] == "Emotional Validation" and "[" not in results["strat"][0]


def test_request_settings_are_applied(client):
    r = client.chat.completions.create(model="plain", messages=user("hi"), max_tokens=3, temperature=0)
    assert r.usage.completion_tokens <= 3 and r.choices[0].finish_reason in {"length", "stop"}


def test_error_paths(setup, client):
    _, server = setup
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=user("hi"))
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="`messages`: must not be empty"):
        client.chat.completions.create(model="plain", messages=[])
    with pytest.raises(openai.BadRequestError, match=r"messages\[0\].role"):
        client.chat.completions.create(model="plain", messages=[{"role": "wizard", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="plain", messages=user("hi"), temperature=-1)
    # a message too long for the window even after dropping old turns: 413, streamed or not
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(model="plain", messages=user("word " * 1500), stream=stream)
        assert e.value.status_code == 413 and e.value.body["code"] == "context_length_exceeded"
    raw = httpx.post(f"{server.url}/chat/completions", content=b"{not json", timeout=10)
    assert raw.status_code == 400 and raw.json()["error"]["code"] == "invalid_json"
    big = httpx.post(f"{server.url}/chat/completions", timeout=10,
                     content=json.dumps({"model": "plain", "messages": user("x" * 30_000)}))
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    missing = httpx.get(f"{server.url}/nothing", timeout=10)
    assert missing.status_code == 404 and "error" in missing.json()


def test_openai_backend_arms_through_our_server(setup):
    """An `openai` arm pointing at `extes serve` gives the same reply as the local arm, tag split too."""
    pool, server = setup
    remote = [Arm(f"remote-{name}", backend="openai", base_url=server.url, model=name, system_prompt=SYSTEM,
                  generation=GenerationSettings(max_new_tokens=12, temperature=0.0, repetition_penalty=1.0),
                  strategies=pool.arms[name].strategies)
              for name in ("plain", "strat")]
    with ArmPool(remote) as rp:
        out = {}
        for key, ev in rp.stream_many({n: (f"remote-{n}", user("I feel so alone since the breakup"))
                                       for n in ("plain", "strat")}):
            if ev.done:
                out[key] = ev.reply
        for n in ("plain", "strat"):
            local = pool.generate(n, user("I feel so alone since the breakup"))
            assert out[n].text == local.text and out[n].strategy == local.strategy
        assert out["strat"].strategy == "Emotional Validation"


def _sse(text_pieces):
    lines = []
    for i, piece in enumerate(text_pieces):
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                 "choices": [{"index": 0, "delta": {"content": piece},
                              "finish_reason": "stop" if i == len(text_pieces) - 1 else None}]}
        lines.append(f"data: {json.dumps(chunk)}\n\n")
    return ("".join(lines) + "data: [DONE]\n\n").encode()


def _backend_with(handler, arm):
    client = openai.OpenAI(base_url="http://fake.test/v1", api_key="k", max_retries=0,
                           http_client=httpx.Client(transport=httpx.MockTransport(handler)))
    return OpenAIBackend(arm, client=client, backoff_s=0.001)


def _run(backend, messages):
    from queue import Queue

    from extes.models.engine import GenRequest

    q: Queue = Queue()
    req = GenRequest(messages=prepare_messages(backend.arm, messages), settings=backend.arm.generation,
                     sink=q.put, strategies=backend.arm.strategies)
    backend.submit(req)
    events = []
    while True:
        item = q.get(timeout=10)
        if isinstance(item, BaseException):
            raise item
        events.append(item)
        if item.done:
            return events


def test_openai_backend_retries_then_streams_and_splits_tags():
    calls = []

    def handler(request):
        calls.append(json.loads(request.content))
        if len(calls) <= 2:
            return httpx.Response(503, json={"error": {"message": "busy"}})
        return httpx.Response(200, content=_sse(["[Emotional Val", "idation] That", " sounds hard."]),
                              headers={"content-type": "text/event-stream"})

    arm = Arm("r", backend="openai", base_url="http://fake.test/v1", model="m", strategies=True, max_retries=3,
              generation=GenerationSettings(max_new_tokens=7, temperature=0.2, repetition_penalty=1.3, seed=5))
    events = _run(_backend_with(handler, arm), user("hi"))
    assert len(calls) == 3
    sent = calls[-1]
    assert sent["max_tokens"] == 7 and sent["seed"] == 5 and sent["repetition_penalty"] == 1.3 and sent["stream"]
    assert sent["messages"][0]["role"] == "system"
    reply = events[-1].reply
    assert reply.strategy == "Emotional Validation" and reply.text == "That sounds hard."
    assert "".join(e.delta for e in events) == "That sounds hard."


def test_openai_backend_gives_up_after_its_retry_budget():
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(500, json={"error": {"message": "down"}})

    arm = Arm("r", backend="openai", base_url="http://fake.test/v1", model="m", max_retries=2)
    with pytest.raises(BackendError, match="arm 'r'.*InternalServerError"):
        _run(_backend_with(handler, arm), user("hi"))
    assert len(calls) == 3

    def not_found(request):
        calls.append(1)
        return httpx.Response(404, json={"error": {"message": "no such model"}})

    calls.clear()
    with pytest.raises(BackendError, match="HTTP 404"):
        _run(_backend_with(not_found, arm), user("hi"))
    assert len(calls) == 1  # not retried


def test_openai_backend_needs_a_key_for_openai_itself(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    arm = Arm("r", backend="openai", model="gpt-4o-mini", api_key_env="NO_SUCH_KEY_VAR")
    with pytest.raises(BackendError, match="NO_SUCH_KEY_VAR is not set"):
        OpenAIBackend(arm).client()


def test_chat_cli_loop(setup):
    from extes.models.chat_cli import chat_loop

    pool, _ = setup
    inputs = iter(["I feel so alone since the breakup", "/reset", "", "hello", "/quit"])
    out = []
    chat_loop(pool, "strat", read=lambda _prompt: next(inputs), write=out.append)
    text = "".join(out)
    expected = pool.generate("strat", user("I feel so alone since the breakup"))
    assert f"strat> {expected.text}  [Emotional Validation]\n" in text
    assert "(new conversation)" in text


# ---------------------------------------------------------------------------------------------------------
# OpenAI conformance through the official SDK: stop, /v1/models/{id}, developer, ranges, refusals


def _stream_pieces(client, **kw) -> tuple[list[str], str | None, object]:
    pieces, finish, usage = [], None, None
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    return pieces, finish, usage


def _stop_across_pieces(pieces: list[str]) -> tuple[str, int]:
    """A stop string that spans two streamed pieces and first occurs there; and where it starts."""
    text = "".join(pieces)
    boundary = 0
    for piece in pieces[:-1]:
        boundary += len(piece)
        for left, right in ((2, 2), (1, 1), (1, 2), (2, 1)):
            stop = text[max(0, boundary - left):boundary + right]
            if len(stop) == left + right and text.find(stop) == boundary - left and stop.strip():
                return stop, boundary - left
    raise AssertionError("no stop string spans two pieces")


MSG = user("I feel so alone since the breakup")


def test_stop_string_spanning_deltas_streamed_and_not(client):
    full_pieces, full_finish, full_usage = _stream_pieces(client, model="plain", messages=MSG, max_tokens=40)
    assert len(full_pieces) > 3
    stop, at = _stop_across_pieces(full_pieces[:len(full_pieces) // 2 + 1])
    text = "".join(full_pieces)
    for stops in (stop, [stop], ["\x00never\x00", stop]):
        pieces, finish, usage = _stream_pieces(client, model="plain", messages=MSG, max_tokens=40, stop=stops)
        assert "".join(pieces) == text[:at] and finish == "stop"
        assert usage.completion_tokens < full_usage.completion_tokens  # the request was cancelled
        r = client.chat.completions.create(model="plain", messages=MSG, max_tokens=40, stop=stops)
        assert r.choices[0].message.content == text[:at] and r.choices[0].finish_reason == "stop"
    # a stop string that never appears changes nothing
    pieces, finish, _ = _stream_pieces(client, model="plain", messages=MSG, max_tokens=40, stop="\x00none\x00")
    assert "".join(pieces) == text and finish == full_finish


def test_stop_filter_never_sends_part_of_a_stop_string():
    import random

    from extes.models.server import StopFilter

    rng = random.Random(0)
    for _ in range(500):
        text = "".join(rng.choice("ab.c") for _ in range(rng.randint(0, 30)))
        stops = ["".join(rng.choice("ab.c") for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 8))))
        pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]
        f = StopFilter(stops)
        sent = "".join(f.feed(p) for p in pieces) + f.flush()
        hits = [i for i in (text.find(s) for s in stops) if i >= 0]
        assert sent == text[:min(hits)] if hits else sent == text
        assert f.stopped == bool(hits)


def test_retrieve_one_model(client):
    card = client.models.retrieve("strat")
    assert card.id == "strat" and card.object == "model" and card.strategies is True
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("nope")
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"


def test_developer_role_is_a_system_message(client):
    def reply(role):
        return client.chat.completions.create(model="plain", messages=[
            {"role": role, "content": "You are brief and kind."}, *MSG]).choices[0].message.content

    assert reply("developer") == reply("system")
    default = client.chat.completions.create(model="plain", messages=MSG).choices[0].message.content
    assert reply("developer") != default  # the developer message reached the model


@pytest.mark.parametrize(("kwargs", "param", "code"), [
    ({"temperature": 5}, "temperature", "decimal_above_max_value"),
    ({"temperature": -0.5}, "temperature", "decimal_below_min_value"),
    ({"top_p": 1.5}, "top_p", "decimal_above_max_value"),
    ({"top_p": 0}, "top_p", "invalid_value"),  # OpenAI's range allows 0; the engine needs > 0
    ({"max_tokens": 0}, "max_tokens", "decimal_below_min_value"),
    ({"max_completion_tokens": 0}, "max_completion_tokens", "decimal_below_min_value"),
    ({"presence_penalty": 3}, "presence_penalty", "decimal_above_max_value"),
    ({"frequency_penalty": -3}, "frequency_penalty", "decimal_below_min_value"),
    ({"top_logprobs": 30}, "top_logprobs", "decimal_above_max_value"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
    ({"stop": ""}, "stop", "invalid_value"),
    ({"n": 2}, "n", "unsupported_parameter"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]},
     "tools", "unsupported_parameter"),
    ({"tool_choice": "required"}, "tool_choice", "unsupported_parameter"),
    ({"response_format": {"type": "json_object"}}, "response_format", "unsupported_parameter"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
     "response_format", "unsupported_parameter"),
    ({"logprobs": True}, "logprobs", "unsupported_parameter"),
    ({"logprobs": True, "top_logprobs": 2}, "logprobs", "unsupported_parameter"),
    ({"top_logprobs": 2}, "top_logprobs", "unsupported_parameter"),
    ({"logit_bias": {"50": 10}}, "logit_bias", "unsupported_parameter"),
    ({"presence_penalty": 0.5}, "presence_penalty", "unsupported_parameter"),
    ({"frequency_penalty": 0.5}, "frequency_penalty", "unsupported_parameter"),
    ({"modalities": ["text", "audio"]}, "modalities", "unsupported_parameter"),
    ({"reasoning_effort": "low"}, "reasoning_effort", "unsupported_parameter"),
    ({"extra_body": {"top_k": 5}}, "top_k", "unknown_parameter"),
    ({"extra_body": {"guided_json": {}}}, "guided_json", "unknown_parameter"),
    ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, "messages[0].role", "invalid_value"),
    ({"messages": [{"role": "user", "content": "hi", "name": "ann"}]}, "messages[0].name", "unknown_parameter"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0].type", "invalid_value"),
])
def test_out_of_range_and_unsupported_options_are_400_with_param_and_code(client, kwargs, param, code):
    kwargs = {"model": "plain", "messages": MSG, **kwargs}
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(stream=stream, **kwargs)
        assert (e.value.body["param"], e.value.body["code"]) == (param, code), e.value.body
        assert e.value.body["type"] == "invalid_request_error" and param.split("[")[0] in e.value.body["message"]


def test_supported_no_op_values_are_accepted(client):
    r = client.chat.completions.create(model="plain", messages=MSG, response_format={"type": "text"},
                                       logprobs=False, presence_penalty=0, frequency_penalty=0, n=1,
                                       tool_choice="none", user="participant-7", temperature=2, top_p=1,
                                       max_completion_tokens=4, seed=3)
    assert r.choices[0].message.content is not None and r.usage.completion_tokens <= 4
    assert r.choices[0].logprobs is None
