"""Two guards on every HTTP request the study app serves, as one plain ASGI middleware.

**Request-body size.** Nothing the study receives is large: a message is at most `max_message_chars`
characters, a rating form a few hundred bytes. Without a limit, four parallel 100 MB bodies took the app to
1.5 GB (Starlette reads a JSON body whole before a handler sees it). A body above the limit (1 MiB by
default, `EXTES_MAX_BODY_BYTES` to change it) is answered with 413 before it is read: at once when its
`Content-Length` says so, and, for a chunked body with no length, as soon as the bytes received pass the
limit (the handler then sees a disconnect and what it sends is dropped). The reverse proxy's own limit
(nginx `client_max_body_size`, docs/deploy.md) stays the first line; this one holds without it.

**Security headers.** Every response gets `X-Frame-Options: DENY` and a Content-Security-Policy with
`frame-ancestors 'none'` (no page can be framed: clickjacking the consent or the send buttons),
`X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer` (the study link carries the platform's
participant id in its query; a click on the crisis banner's helpline link must not send it along), a
`Permissions-Policy` that turns off camera, microphone and location, and `Cross-Origin-Opener-Policy`.
The CSP allows scripts from the app's own origin only, plus the inline scripts of the page being served,
each by its SHA-256 hash (Gradio writes its configuration into inline scripts, different on every page and
start, so the hashes are computed from the HTML as it is sent); no `'unsafe-inline'` for scripts, so an
injected `<script>` or `onerror=` does not run. `'unsafe-eval'` stays: Gradio 6 compiles the app's own
`js=` event snippets (the participant page's "forget my code" and redirect) with `new AsyncFunction`, and
the page stays on "Loading..." without it; what it evaluates is our code, not participants' text. Styles
keep `'unsafe-inline'`: Gradio's components set `style` attributes at run time.
tests/test_study_http_guard.py loads the participant page in headless Chromium and finds no CSP
violation.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
MAX_BODY_ENV = "EXTES_MAX_BODY_BYTES"
MAX_HTML_BYTES = 16 * 1024 * 1024  # an HTML page larger than this is sent with the base policy (no inline scripts)

CSP_BASE = ("default-src 'self'; script-src 'self' 'unsafe-eval'{hashes}; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; media-src 'self' data: blob:; "
            "worker-src 'self' blob:; object-src 'none'; base-uri 'self'; form-action 'self'; "
            "frame-ancestors 'none'")
STATIC_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
_INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc\s*=)[^>]*>(.*?)</script\s*>", re.S | re.I)


def max_body_bytes_from_env(default: int = DEFAULT_MAX_BODY_BYTES) -> int:
    raw = os.environ.get(MAX_BODY_ENV, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{MAX_BODY_ENV}={raw!r}: expected a whole number of bytes") from None
    if value < 1024:
        raise ValueError(f"{MAX_BODY_ENV}={value}: too small for the study's own requests (at least 1024)")
    return value


def content_security_policy(html: bytes | None = None) -> str:
    """The policy for a response; for an HTML page, its inline scripts are allowed by hash."""
    hashes = ""
    if html:
        digests = dict.fromkeys(base64.b64encode(hashlib.sha256(m.group(1)).digest()).decode()
                                for m in _INLINE_SCRIPT.finditer(html))
        hashes = "".join(f" 'sha256-{d}'" for d in digests)
    return CSP_BASE.format(hashes=hashes)


def _with_headers(headers: list[tuple[bytes, bytes]], csp: str) -> list[tuple[bytes, bytes]]:
    replaced = {name for name, _ in STATIC_HEADERS} | {b"content-security-policy"}
    kept = [(k, v) for k, v in headers if k.lower() not in replaced]
    return kept + list(STATIC_HEADERS) + [(b"content-security-policy", csp.encode())]


async def _too_large(send: Send, limit: int) -> None:
    body = f"Request body too large (the limit is {limit} bytes)".encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": _with_headers([(b"content-type", b"text/plain; charset=utf-8"),
                                          (b"content-length", str(len(body)).encode()),
                                          (b"connection", b"close")], content_security_policy())})
    await send({"type": "http.response.body", "body": body})


# Gradio's non-queued routes run an event outside the queue: for the streaming send endpoints they left three
# empty "streaming" rows and blocked the conversation for up to 30 s (issue 24). Refused here; the queued
# `/gradio_api/call/...` and the page's own queue stay the way to send.
UNQUEUED_STREAMING = re.compile(r"/gradio_api/(?:run|api)/send_[a-z]+/?$")


async def _not_here(send: Send) -> None:
    body = b"This endpoint streams: call it through the queue (/gradio_api/call/...), not /run or /api."
    await send({"type": "http.response.start", "status": 405,
                "headers": _with_headers([(b"content-type", b"text/plain; charset=utf-8"),
                                          (b"content-length", str(len(body)).encode())], content_security_policy())})
    await send({"type": "http.response.body", "body": body})


class HttpGuard:
    """ASGI middleware: body-size limit and security headers (module docstring)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if UNQUEUED_STREAMING.search(scope.get("path") or ""):
            await _not_here(send)
            return
        limit = self.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_large = int(declared) > limit
            except ValueError:
                too_large = True  # not a length: refuse rather than guess
            if too_large:
                await _too_large(send, limit)
                return
        await _Exchange(self.app, scope, receive, send, limit).run()


class _Exchange:
    """One request: counts the body as it is received, adds the headers to the response."""

    def __init__(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send, limit: int):
        self.app, self.scope, self._receive, self._send, self.limit = app, scope, receive, send, limit
        self.received = 0
        self.refused = False  # a 413 went out: the app's own response is dropped
        self.started = False
        self.html_start: Message | None = None  # an HTML response is held until its body is complete
        self.html_body: list[bytes] = []

    async def run(self) -> None:
        await self.app(self.scope, self.receive, self.send)

    async def receive(self) -> Message:
        if self.refused:
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.refused = True
                if not self.started:
                    await _too_large(self._send, self.limit)
                return {"type": "http.disconnect"}
        return message

    async def send(self, message: Message) -> None:
        if self.refused:
            return
        if message["type"] == "http.response.start":
            self.started = True
            headers = list(message.get("headers") or [])
            ctype = dict((k.lower(), v) for k, v in headers).get(b"content-type", b"")
            if ctype.startswith(b"text/html"):
                self.html_start = message
                return
            await self._send({**message, "headers": _with_headers(headers, content_security_policy())})
            return
        if message["type"] == "http.response.body" and self.html_start is not None:
            await self._html_body(message)
            return
        await self._send(message)

    async def _html_body(self, message: Message) -> None:
        self.html_body.append(message.get("body", b""))
        size = sum(len(b) for b in self.html_body)
        if message.get("more_body", False) and size <= MAX_HTML_BYTES:
            return
        html = b"".join(self.html_body)
        start, self.html_start, self.html_body = self.html_start, None, []
        csp = content_security_policy(html if size <= MAX_HTML_BYTES else None)
        await self._send({**start, "headers": _with_headers(list(start.get("headers") or []), csp)})
        await self._send({"type": "http.response.body", "body": html, "more_body": message.get("more_body", False)})


def install_http_guard(app: Any, max_body_bytes: int | None = None) -> None:
    """Wrap a Starlette/FastAPI app (outermost, so it runs before every other middleware and route)."""
    app.add_middleware(HttpGuard, max_body_bytes=max_body_bytes or max_body_bytes_from_env())
