"""Abuse limits of the study app, counted in the store so they hold across app processes.

- `consent`: new participant codes (300 codes in 16 s was possible);
- `code`: failed code look-ups (resume, send, page load, annotate logins), so a code cannot be guessed
  by trying many (30 guesses/s was possible);
- `password`: wrong research passwords; while a client is locked, even its right password is refused.

Only clients are ever refused (issue 24): a client at its own limit is refused. The study-wide count
never refuses everyone (that let a handful of addresses lock out every participant and the researcher);
over its threshold it logs one warning per window (no address, no participant data) and, while it lasts,
refuses the clients that took part in it (those past `FLOOD_SHARE` of their own limit). A clean client,
with a code that exists or the right password, is never refused for others' attempts.

A client is its address as the server sees it (behind a reverse proxy, the proxy must pass it on:
docs/deployment.md); only a keyed hash of it is stored, never the address.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import threading
import time
from dataclasses import dataclass, field

from extes.study.store import Store

# (per client: attempts, window s), (all clients: attempts, window s)
LIMITS: dict[str, tuple[tuple[int, float], tuple[int, float]]] = {
    "consent": ((30, 600.0), (300, 600.0)),  # a class behind one address still fits
    "code": ((10, 300.0), (100, 60.0)),
    "password": ((5, 900.0), (30, 900.0)),
}
# Each says how long to wait ({wait}: "about 4 minutes"), from the client's own attempts in the store.
MESSAGES = {
    "consent": "Too many new participant codes were requested just now. Please wait {wait}, then try again.",
    "code": "Too many attempts with codes that do not exist. Please wait {wait}, then check your code.",
    "password": "Too many wrong passwords: the dashboard is locked. Please wait {wait}, then try again.",
}


def wait_words(seconds: float) -> str:
    """'about 1 minute', 'about 12 minutes' (rounded up: never less than the wait)."""
    minutes = max(1, math.ceil(seconds / 60))
    return f"about {minutes} minute{'' if minutes == 1 else 's'}"


FLOOD_SHARE = 0.2  # while a study-wide flood is on, a client past this share of its own limit is refused
log = logging.getLogger(__name__)


class RateLimited(PermissionError):
    """An attempt over a limit; the message is safe to show in a browser."""


@dataclass
class Limiter:
    store: Store
    limits: dict[str, tuple[tuple[int, float], tuple[int, float]]] = None  # type: ignore[assignment]
    _alerted: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.limits = dict(self.limits or LIMITS)
        self._key = self.store.meta_value("rate_limit_key", lambda: __import__("secrets").token_hex(16)).encode()

    def _client_bucket(self, kind: str, client: str | None) -> str:
        digest = hmac.new(self._key, (client or "?").encode("utf-8"), hashlib.sha256).hexdigest()[:20]
        return f"{kind}:c:{digest}"

    def _flooded(self, kind: str) -> bool:
        """Whether the study-wide count is over its threshold; logs one warning per window when it is."""
        _per, (all_n, all_s) = self.limits[kind]
        if self.store.count_and_record([(f"{kind}:all", all_n, all_s)], record=False) is None:
            return False
        with self._lock:
            last = self._alerted.get(kind)
            if last is None or time.monotonic() - last >= all_s:
                self._alerted[kind] = time.monotonic()
                log.warning("study-wide %r limit reached (%d in %.0f s): refusing only the clients taking "
                            "part; check the server's access log", kind, all_n, all_s)
        return True

    def _refuse_if_flooding(self, kind: str, client: str | None) -> None:
        """During a study-wide flood, refuse a client past its share of its own limit (it took part)."""
        (per_n, per_s), _all = self.limits[kind]
        share = max(1, int(per_n * FLOOD_SHARE))
        bucket = self._client_bucket(kind, client)
        if (self.store.count_and_record([(bucket, share, per_s)], record=False) is not None
                and self._flooded(kind)):
            raise self._refusal(kind, bucket, share, per_s)

    def _refusal(self, kind: str, bucket: str, limit: int, window_s: float) -> RateLimited:
        """The refusal for a client at `limit` in `bucket`, saying how long until it may try again."""
        wait = self.store.retry_after(bucket, limit, window_s) or window_s
        return RateLimited(MESSAGES[kind].format(wait=wait_words(wait)))

    def hit(self, kind: str, client: str | None) -> None:
        """Count one attempt (a consent, a failed look-up); RateLimited when the client is at its limit,
        or takes part in a study-wide flood."""
        (per_n, per_s), (_all_n, all_s) = self.limits[kind]
        self._refuse_if_flooding(kind, client)  # judged on the attempts before this one
        bucket = self._client_bucket(kind, client)
        if self.store.count_and_record([(bucket, per_n, per_s), (f"{kind}:all", 2**62, all_s)]) is not None:
            raise self._refusal(kind, bucket, per_n, per_s)
        self._flooded(kind)  # the alert, as soon as the threshold is reached

    def check(self, kind: str, client: str | None) -> None:
        """RateLimited when the client is at its limit, or takes part in a study-wide flood; records nothing."""
        (per_n, per_s), _all = self.limits[kind]
        bucket = self._client_bucket(kind, client)
        if self.store.count_and_record([(bucket, per_n, per_s)], record=False):
            raise self._refusal(kind, bucket, per_n, per_s)
        self._refuse_if_flooding(kind, client)


def client_of(request) -> str | None:
    """The client address of a Gradio request (None outside a request)."""
    try:
        return request.client.host if request is not None and request.client else None
    except AttributeError:
        return None
