"""`extes serve`: local arms behind an OpenAI-compatible API (FastAPI + uvicorn).

    GET  /v1/models             the arms, as models
    POST /v1/chat/completions   `model` = arm name; plain JSON or SSE streaming (`stream: true`)

Errors are OpenAI-style JSON (`{"error": {"message", "type", "param", "code"}}`): unknown model 404,
empty or malformed messages 400, a body over the size limit or a conversation that does not fit the
model's window even after dropping old turns 413. The server binds to 127.0.0.1 unless told otherwise.
A strategy arm's replies come without the tag; the strategy is an extra `strategy` field on the choice
(and its message). Message contents are never logged.
"""


import argparse
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from extes.models.arms import ArmConfigError
from extes.models.engine import ContextTooLongError
from extes.models.pool import ArmPool, MessageError, UnknownArmError

DEFAULT_MAX_BODY_BYTES = 1_000_000
_SETTING_PARAMS = {"max_tokens": "max_new_tokens", "max_completion_tokens": "max_new_tokens",
                   "temperature": "temperature", "top_p": "top_p", "seed": "seed",
                   "repetition_penalty": "repetition_penalty"}


class APIError(Exception):
    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.type = status, message, code, param, type_

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _finish_reason(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def _parse_request(raw: bytes, pool: ArmPool) -> tuple[str, list, dict, bool, bool]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise APIError(400, "the request body is not valid JSON", "invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", "invalid_body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "`model` (an arm name) is required", "missing_model", "model")
    if model not in pool.arms:
        raise APIError(404, f"the model {model!r} does not exist; available: {pool.names}",
                       "model_not_found", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "`messages` must be a non-empty list", "invalid_messages", "messages")
    if body.get("n", 1) != 1:
        raise APIError(400, "only n=1 is supported", "unsupported_parameter", "n")
    override: dict[str, Any] = {}
    for key, setting in _SETTING_PARAMS.items():
        if body.get(key) is not None:
            override[setting] = body[key]
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, "`stream` must be true or false", "invalid_stream", "stream")
    opts = body.get("stream_options") or {}
    include_usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
    return model, messages, override, stream, include_usage


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

    @app.exception_handler(APIError)
    async def _api_error(_request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(APIError(exc.status_code, str(exc.detail), code).body(), status_code=exc.status_code)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "extes",
             "strategies": pool.arms[name].strategies} for name in pool.names]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > max_body_bytes:
            raise APIError(413, f"the request body is over {max_body_bytes} bytes", "request_too_large")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > max_body_bytes:
                raise APIError(413, f"the request body is over {max_body_bytes} bytes", "request_too_large")
        model, messages, override, stream, include_usage = _parse_request(raw, pool)
        cancel = threading.Event()
        try:
            events = pool.stream(model, messages, cancel=cancel, settings_override=override)
        except MessageError as exc:
            raise APIError(400, str(exc), "invalid_messages", "messages") from None
        except ArmConfigError as exc:
            raise APIError(400, str(exc), "invalid_parameter") from None
        except UnknownArmError as exc:  # pragma: no cover - checked above
            raise APIError(404, str(exc), "model_not_found", "model") from None

        async def next_event():
            try:
                return await anyio.to_thread.run_sync(next, events, None, abandon_on_cancel=True)
            except ContextTooLongError as exc:
                raise APIError(413, str(exc), "context_length_exceeded", "messages") from None
            except (MessageError, ValueError) as exc:
                raise APIError(400, str(exc), "invalid_request") from None

        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        try:
            first = await next_event()  # errors found before the first token still get a status code
        except BaseException:
            cancel.set()
            raise
        if not stream:
            try:
                ev = first
                text = ""
                while ev is not None:
                    text += ev.delta
                    if ev.done:
                        break
                    ev = await next_event()
            finally:
                cancel.set()
            reply = ev.reply
            choice = {"index": 0, "message": {"role": "assistant", "content": reply.text,
                                              "strategy": reply.strategy},
                      "finish_reason": _finish_reason(reply.finish_reason), "strategy": reply.strategy}
            return {"id": cid, "object": "chat.completion", "created": created, "model": model,
                    "choices": [choice], "usage": _usage(reply)}

        def chunk(delta: dict, finish: str | None = None, **extra) -> str:
            choice = {"index": 0, "delta": delta, "finish_reason": finish, **extra}
            payload = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                       "choices": [choice]}
            return f"data: {json.dumps(payload)}\n\n"

        async def sse():
            try:
                yield chunk({"role": "assistant", "content": ""})
                ev = first
                while ev is not None:
                    if ev.delta:
                        yield chunk({"content": ev.delta})
                    if ev.done:
                        reply = ev.reply
                        yield chunk({}, _finish_reason(reply.finish_reason), strategy=reply.strategy)
                        if include_usage:
                            payload = {"id": cid, "object": "chat.completion.chunk", "created": created,
                                       "model": model, "choices": [], "usage": _usage(reply)}
                            yield f"data: {json.dumps(payload)}\n\n"
                        break
                    try:
                        ev = await next_event()
                    except APIError as exc:
                        yield f"data: {json.dumps(exc.body())}\n\n"
                        break
                    except Exception as exc:
                        err = APIError(500, f"generation failed: {type(exc).__name__}", "server_error",
                                       type_="server_error")
                        yield f"data: {json.dumps(err.body())}\n\n"
                        break
                yield "data: [DONE]\n\n"
            finally:
                cancel.set()  # the client went away or we are done: stop generating

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


def _usage(reply) -> dict[str, int]:
    return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.n_tokens,
            "total_tokens": reply.prompt_tokens + reply.n_tokens}


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
    parser.add_argument("--max-batch", type=int, default=32, help="most sequences decoded together per base")
    parser.add_argument("--max-context", type=int, default=None,
                        help="cap the context window (tokens); default: the model's own")
    parser.add_argument("--engine-threads", type=int, default=None, metavar="N",
                        help="torch threads of each model process (default: every CPU but one, left to the server)")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES)


def run_serve(args: argparse.Namespace) -> int:
    import sys

    import uvicorn

    from extes.models.arms import load_arms

    if args.vllm_command:
        from extes.models.vllm import print_vllm_plan

        host = args.host if args.host not in {"127.0.0.1", "localhost", "::1"} else "127.0.0.1"
        arms = load_arms(args.vllm_command)
        print(print_vllm_plan(arms, host=host, port=args.port, tensor_parallel=args.tensor_parallel,
                              local_weights=args.vllm_local_weights), end="")
        if args.vllm_arms_out:
            from extes.models.vllm import vllm_plan

            plan = vllm_plan(arms, host=host, port=args.port, tensor_parallel=args.tensor_parallel,
                             local_weights=args.vllm_local_weights)
            args.vllm_arms_out.write_text(plan.arms_yaml(), encoding="utf-8")
        return 0
    if not args.arms:
        from extes.errors import CLIError

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
