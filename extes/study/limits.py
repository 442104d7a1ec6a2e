"""Abuse limits of the study app, counted in the store so they hold across app processes.

- `consent`: new participant codes, per client and for the whole study (300 codes in 16 s was possible);
- `code`: failed code look-ups (resume, send, annotate logins), per client and for the whole study, so a
  code cannot be guessed by trying many (30 guesses/s was possible);
- `password`: wrong research passwords, per client and globally; while locked, even the right password
  is refused, so parallel sessions cannot keep guessing (about 10 guesses/s was possible).

A client is its address as the server sees it (behind a reverse proxy, the proxy must pass it on:
docs/deployment.md); only a keyed hash of it is stored, never the address.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from extes.study.store import Store

# (per client: attempts, window s), (all clients: attempts, window s)
LIMITS: dict[str, tuple[tuple[int, float], tuple[int, float]]] = {
    "consent": ((30, 600.0), (300, 600.0)),  # a class behind one address still fits
    "code": ((10, 300.0), (100, 60.0)),
    "password": ((5, 900.0), (30, 900.0)),
}
MESSAGES = {
    "consent": "Too many new participant codes were requested just now. Please try again in a few minutes.",
    "code": "Too many attempts with codes that do not exist. Please wait a few minutes and check your code.",
    "password": "Too many wrong passwords: the dashboard is locked for a while. Try again later.",
}


class RateLimited(PermissionError):
    """An attempt over a limit; the message is safe to show in a browser."""


@dataclass
class Limiter:
    store: Store
    limits: dict[str, tuple[tuple[int, float], tuple[int, float]]] = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.limits = dict(self.limits or LIMITS)
        self._key = self.store.meta_value("rate_limit_key", lambda: __import__("secrets").token_hex(16)).encode()

    def _buckets(self, kind: str, client: str | None) -> list[tuple[str, int, float]]:
        (per_n, per_s), (all_n, all_s) = self.limits[kind]
        digest = hmac.new(self._key, (client or "?").encode("utf-8"), hashlib.sha256).hexdigest()[:20]
        return [(f"{kind}:c:{digest}", per_n, per_s), (f"{kind}:all", all_n, all_s)]

    def hit(self, kind: str, client: str | None) -> None:
        """Count one attempt (a consent, a failed look-up); RateLimited when a limit is reached."""
        if self.store.count_and_record(self._buckets(kind, client)) is not None:
            raise RateLimited(MESSAGES[kind])

    def check(self, kind: str, client: str | None) -> None:
        """RateLimited when the client (or everyone) is at a limit; records nothing."""
        if self.store.count_and_record(self._buckets(kind, client), record=False) is not None:
            raise RateLimited(MESSAGES[kind])


def client_of(request) -> str | None:
    """The client address of a Gradio request (None outside a request)."""
    try:
        return request.client.host if request is not None and request.client else None
    except AttributeError:
        return None
