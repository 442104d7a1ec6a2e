"""A loopback OpenAI-compatible chat-completions server whose answers come from a Python function.

For tests of clients that need content-aware answers (the LLM judge): ``answer(messages) -> str`` or
``-> (status, message)`` for an HTTP error. Every request is logged with its status and usage.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from extes.testing.scripted import QuietServer

Answer = str | tuple[int, str]


class FunctionChatServer:
    def __init__(self, answer: Callable[[list[dict[str, Any]]], Answer], usage: tuple[int, int] = (300, 20),
                 host: str = "127.0.0.1"):
        self.answer = answer
        self.usage = usage
        self.log: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                out = server.answer(body.get("messages", []))
                status, text = (out if isinstance(out, tuple) else (200, out))
                with server._lock:
                    server.log.append({"status": status, "t": time.monotonic(),
                                       "id": self.headers.get("X-Extes-Request-Id", "")})
                if status != 200:
                    self._send(status, {"error": {"message": text, "type": "scripted"}})
                    return
                pt, ct = server.usage
                self._send(200, {
                    "id": "chatcmpl-fn", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model", "fn"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
                })

        self.httpd = QuietServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def count(self, status: int | None = None) -> int:
        with self._lock:
            return sum(1 for e in self.log if status is None or e["status"] == status)

    def __enter__(self) -> FunctionChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
