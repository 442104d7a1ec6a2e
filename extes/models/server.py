"""`extes serve`: local arms behind an OpenAI-compatible API (FastAPI + uvicorn).

    GET  /v1/models             the arms, as models
    GET  /v1/models/{id}        one arm
    POST /v1/chat/completions   `model` = arm name; plain JSON or SSE streaming (`stream: true`)

Bodies are the pydantic models of extes.models.openai_protocol, validated with OpenAI's ranges; what the
server does not implement (tools, JSON mode, logprobs, ...) is a 400 naming `param` and `code`. Errors
are OpenAI-style JSON (`{"error": {"message", "type", "param", "code"}}`): unknown model 404, a bad
request 400, a body over the size limit or a conversation that does not fit the model's window even after
dropping old turns 413. `stop` is applied here, over the engine's streamed text: text is held back while
it could be the start of a stop string, and when one appears the request is cancelled, no part of the
stop string is sent, and `finish_reason` is "stop" (usage counts the tokens the engine generated).
The server binds to 127.0.0.1 unless told otherwise. A strategy arm's replies come without the tag; the
strategy is an extra `strategy` field on the choice (and its message). Message contents are never logged.
"""


import argparse
import json
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import uvicorn

from extes.errors import CLIError
from extes.models.arms import ArmConfigError, load_arms
from extes.models.engine import ContextTooLongError, Event, Reply
from extes.models.openai_protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    ModelCard,
    ModelList,
    ProtocolError,
    Usage,
    parse_request,
)
from extes.models.pool import ArmPool, MessageError, UnknownArmError
from extes.models.types import MAX_BATCH
from extes.models.vllm import print_vllm_plan, vllm_plan

DEFAULT_MAX_BODY_BYTES = 1_000_000


class APIError(ProtocolError):
    """An error answered with `status` (kept for callers that built it positionally)."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message, code, param, status=status, type_=type_)


class StopFilter:
    """Apply stop strings to text that arrives in pieces: `feed` returns what may be sent now, holding
    back a tail that could be the start of a stop string; once one appears, `stopped` is set and nothing
    from it on is ever returned."""

    def __init__(self, stops: list[str] | None):
        self.stops = stops or []
        self.text = ""
        self.sent = 0
        self.stopped = False

    def feed(self, delta: str) -> str:
        if not self.stops:
            self.text += delta
            self.sent = len(self.text)
            return delta
        if self.stopped:
            return ""
        self.text += delta
        hits = [i for i in (self.text.find(s, self.sent) for s in self.stops) if i >= 0]
        if hits:  # a stop cannot begin before `sent`: its start would have been held back
            return self._send_to(min(hits), stopped=True)
        return self._send_to(len(self.text) - self._held())

    def flush(self) -> str:
        """The end of the reply: what was held back as a possible stop's start is text after all."""
        return "" if self.stopped else self._send_to(len(self.text))

    def _held(self) -> int:
        tail = self.text[self.sent:]
        held = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(tail)), held, -1):
                if tail.endswith(stop[:k]):
                    held = k
                    break
        return held

    def _send_to(self, end: int, stopped: bool = False) -> str:
        out = self.text[self.sent:end]
        self.sent = end
        self.stopped = stopped
        return out

    @property
    def visible(self) -> str:
        return self.text[:self.sent]


class _Completion:
    """One request's run: the engine's events, the stop filter, and the cancel flag."""

    def __init__(self, pool: ArmPool, request: ChatCompletionRequest, next_in_thread: Callable):
        self.request = request
        self.cancel = threading.Event()
        self.filter = StopFilter(request.stop)
        self._next_in_thread = next_in_thread
        try:
            self.events = pool.stream(request.model, request.pool_messages(), cancel=self.cancel,
                                      settings_override=request.settings_override())
        except MessageError as exc:
            raise APIError(400, str(exc), "invalid_value", "messages") from None
        except ArmConfigError as exc:
            raise APIError(400, str(exc), "invalid_value", _setting_param(str(exc))) from None
        except UnknownArmError as exc:  # pragma: no cover - checked before
            raise APIError(404, str(exc), "model_not_found", "model") from None
        self.reply: Reply | None = None
        self.first: Event | None = None

    async def next_event(self) -> Event | None:
        try:
            return await self._next_in_thread(self.events)
        except ContextTooLongError as exc:
            raise APIError(413, str(exc), "context_length_exceeded", "messages") from None
        except (MessageError, ValueError) as exc:
            raise APIError(400, str(exc), "invalid_request") from None

    async def start(self) -> None:
        """Wait for the first event, so errors found before the first token still get a status code."""
        try:
            self.first = await self.next_event()
        except BaseException:
            self.cancel.set()
            raise

    async def deltas(self) -> AsyncIterator[str]:
        """The visible text in pieces, stop strings applied; `reply` is set when it ends."""
        ev = self.first
        while ev is not None:
            piece = self.filter.feed(ev.delta) if ev.delta else ""
            if self.filter.stopped:
                self.cancel.set()  # the stop string appeared: stop generating, then collect the reply
            if piece:
                yield piece
            if ev.done:
                self.reply = ev.reply
                rest = self.filter.flush()
                if rest:
                    yield rest
                return
            ev = await self.next_event()

    def finish_reason(self) -> str:
        assert self.reply is not None
        return "length" if self.reply.finish_reason == "length" and not self.filter.stopped else "stop"

    def text(self) -> str:
        assert self.reply is not None
        return self.filter.visible if self.filter.stopped else self.reply.text

    def usage(self) -> Usage:
        reply = self.reply
        assert reply is not None
        return Usage(prompt_tokens=reply.prompt_tokens, completion_tokens=reply.n_tokens,
                     total_tokens=reply.prompt_tokens + reply.n_tokens)


def _setting_param(message: str) -> str | None:
    names = {"max_new_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p", "seed": "seed",
             "repetition_penalty": "repetition_penalty"}
    for setting, param in names.items():
        if f": {setting}: " in message:  # "<where>: <key>: <reason>" (extes.config)
            return param
    return None


async def _read_body(request, max_body_bytes: int) -> Any:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_body_bytes:
        raise APIError(413, f"the request body is over {max_body_bytes} bytes", "request_too_large")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > max_body_bytes:
            raise APIError(413, f"the request body is over {max_body_bytes} bytes", "request_too_large")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise APIError(400, "the request body is not valid JSON", "invalid_json") from None


def create_app(pool_or_arms: ArmPool | list | str | Path, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
    """The FastAPI app. Give it an ArmPool (the caller closes it) or arms / an arms YAML (the app owns
    and closes the pool it builds)."""
    from contextlib import asynccontextmanager

    import anyio
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    owns = not isinstance(pool_or_arms, ArmPool)
    pool = ArmPool(pool_or_arms) if owns else pool_or_arms

    @asynccontextmanager
    async def lifespan(_app):
        yield
        if owns:
            pool.close()

    app = FastAPI(title="extes arms", lifespan=lifespan)
    app.state.pool = pool

    @app.exception_handler(ProtocolError)
    async def _api_error(_request, exc: ProtocolError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(APIError(exc.status_code, str(exc.detail), code).body(), status_code=exc.status_code)

    def card(name: str) -> ModelCard:
        return ModelCard(id=name, strategies=pool.arms[name].strategies)

    def known(model: str) -> str:
        if model not in pool.arms:
            raise APIError(404, f"the model {model!r} does not exist; available: {pool.names}",
                           "model_not_found", "model")
        return model

    @app.get("/v1/models")
    async def models() -> ModelList:
        return ModelList(data=[card(name) for name in pool.names])

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> ModelCard:
        return card(known(model_id))

    async def next_in_thread(events):
        return await anyio.to_thread.run_sync(next, events, None, abandon_on_cancel=True)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _read_body(request, max_body_bytes)
        if isinstance(body, dict) and isinstance(body.get("model"), str) and body["model"]:
            known(body["model"])  # an unknown model is a 404 before any other complaint
        req = parse_request(body)
        run = _Completion(pool, req, next_in_thread)
        await run.start()
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if not req.stream:
            try:
                async for _ in run.deltas():
                    pass
            finally:
                run.cancel.set()
            assert run.reply is not None
            strategy = run.reply.strategy
            choice = Choice(message=AssistantMessage(content=run.text(), strategy=strategy),
                            finish_reason=run.finish_reason(), strategy=strategy)
            return ChatCompletion(id=cid, created=created, model=req.model, choices=[choice], usage=run.usage())
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(_sse(run, cid, created, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


async def _sse(run: _Completion, cid: str, created: int, include_usage: bool) -> AsyncIterator[str]:
    model = run.request.model

    def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        body = ChatCompletionChunk(id=cid, created=created, model=model, choices=choices, usage=usage)
        return f"data: {body.model_dump_json(exclude_none=True)}\n\n"

    try:
        yield chunk([ChunkChoice(delta=Delta(role="assistant", content=""))])
        try:
            async for piece in run.deltas():
                yield chunk([ChunkChoice(delta=Delta(content=piece))])
        except ProtocolError as exc:
            yield f"data: {json.dumps(exc.body())}\n\n"
        except Exception as exc:
            err = APIError(500, f"generation failed: {type(exc).__name__}", "server_error", type_="server_error")
            yield f"data: {json.dumps(err.body())}\n\n"
        else:
            assert run.reply is not None
            yield chunk([ChunkChoice(delta=Delta(), finish_reason=run.finish_reason(), strategy=run.reply.strategy)])
            if include_usage:
                yield chunk([], usage=run.usage())
        yield "data: [DONE]\n\n"
    finally:
        run.cancel.set()  # the client went away or we are done: stop generating


# ----------------------------------------------------------------------------------------------------------
# CLI


def configure_serve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arms", help="arms YAML, or a study protocol YAML with `arms:`")
    parser.add_argument("--vllm-command", metavar="PROTOCOL",
                        help="print the `vllm serve` command(s) for this protocol's (or arms YAML's) local arms "
                             "and the arms YAML that points the study at them, then exit")
    parser.add_argument("--tensor-parallel", type=int, default=1,
                        help="with --vllm-command: GPUs per vLLM server (tensor parallel)")
    parser.add_argument("--vllm-local-weights", action="store_true",
                        help="with --vllm-command: serve the local checkpoint folder (no hub access) under the "
                             "hub id")
    parser.add_argument("--vllm-arms-out", type=Path, help="with --vllm-command: also write the arms YAML here")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch", type=int, default=MAX_BATCH, help="most sequences decoded together per base")
    parser.add_argument("--max-context", type=int, default=None,
                        help="cap the context window (tokens); default: the model's own")
    parser.add_argument("--engine-threads", type=int, default=None, metavar="N",
                        help="torch threads of each model process (default: every CPU but one, left to the server)")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)


def run_serve(args: argparse.Namespace) -> int:
    if args.vllm_command:
        host = args.host if args.host not in {"127.0.0.1", "localhost", "::1"} else "127.0.0.1"
        arms = load_arms(args.vllm_command)
        print(print_vllm_plan(arms, host=host, port=args.port, tensor_parallel=args.tensor_parallel,
                              local_weights=args.vllm_local_weights), end="")
        if args.vllm_arms_out:
            plan = vllm_plan(arms, host=host, port=args.port, tensor_parallel=args.tensor_parallel,
                             local_weights=args.vllm_local_weights)
            args.vllm_arms_out.write_text(plan.arms_yaml(), encoding="utf-8")
        return 0
    if not args.arms:
        raise CLIError("extes serve needs --arms (or --vllm-command PROTOCOL)")
    arms = load_arms(args.arms)
    local = [a for a in arms if a.backend == "local"]
    if not local:
        raise ValueError(f"{args.arms}: no local arms to serve (openai arms are served elsewhere already)")
    if args.host not in {"127.0.0.1", "localhost", "::1"}:
        print(f"warning: binding to {args.host}: anyone who can reach this port can use the models",
              file=sys.stderr)
    pool = ArmPool(local, max_batch=args.max_batch, max_context=args.max_context, isolate=True,
                   engine_threads=args.engine_threads)
    try:
        app = create_app(pool, max_body_bytes=args.max_body_bytes)
        print(f"serving {', '.join(pool.names)} at http://{args.host}:{args.port}/v1", file=sys.stderr)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        pool.close()
    return 0
