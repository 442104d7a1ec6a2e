"""How many generations each client and each participant code may run at once (issue 24, item 4).

Before: 17 participant codes from one address, each streaming a long reply, took every generation slot and
pushed a legitimate "send to all" from 0.1 s to 15 s. The gate caps concurrent generations per client and
per code, and keeps `reserve` slots for clients with none running: a client that already runs one may take a
slot only while more than `reserve` are free, so a client with nothing running is admitted at once even
while another floods.

A send over a client's cap WAITS for a slot (`CapacityGate.wait`, bounded in time and in how many sends may
wait) rather than being refused: one address may be a whole class behind a NAT, and its participants are
served in turn. Only a send past the waiting bounds is refused (it stores nothing), and a second send of a
code that already generates (the page refuses overlapping sends of one conversation anyway).

The page's Gradio queue must let `capacity + max_waiting` sends in at once (`queue_limit`): a waiting send
holds a queue slot, and one client can hold at most `per_client + waiting_per_client` of them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum


class Admission(Enum):
    CLIENT_BUSY = "client_busy"  # the client is at its own cap
    CODE_BUSY = "code_busy"  # this participant code already generates
    FULL = "full"  # no slot (or only reserved ones, for a client that already runs one)
    QUEUE_FULL = "queue_full"  # too many sends of this client (or in all) wait already
    TIMED_OUT = "timed_out"  # waited `timeout` seconds without a slot


WAIT_MESSAGE = "Please wait for your other replies to finish before sending again."
BUSY_MESSAGE = "The study is very busy just now. Please send your message again in a minute."
WAITING_NOTE = "Waiting for a free slot: many replies are being written just now. Your message goes out in a moment."
WAIT_TIMEOUT_S = 60.0  # the longest a send waits for a slot
WAIT_TICK_S = 0.5  # while waiting, the page is told so at least this often


@dataclass(frozen=True)
class Ticket:
    client: str
    code: str


@dataclass
class CapacityGate:
    """Thread-safe counts of running and waiting generations (module docstring)."""

    capacity: int = 16
    per_client: int = 4
    per_code: int = 1
    reserve: int = 4
    waiting_per_client: int = 8
    max_waiting: int = 16
    _clients: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _codes: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _waiting: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _running: int = field(default=0, init=False, repr=False)
    _cond: threading.Condition = field(default_factory=threading.Condition, init=False, repr=False)

    def __post_init__(self) -> None:
        if not (self.capacity >= 1 and self.per_client >= 1 and self.per_code >= 1
                and 0 <= self.reserve < self.capacity and self.waiting_per_client >= 0 and self.max_waiting >= 0):
            raise ValueError(f"CapacityGate: bad limits capacity={self.capacity} per_client={self.per_client} "
                             f"per_code={self.per_code} reserve={self.reserve} "
                             f"waiting_per_client={self.waiting_per_client} max_waiting={self.max_waiting}")

    @classmethod
    def for_concurrency(cls, concurrency: int) -> CapacityGate:
        """The gate of a page that generates `concurrency` sends at once: a client runs at most a quarter
        of them (at least 1), a quarter is kept for clients with none running, as many sends may wait."""
        quarter = concurrency // 4
        return cls(capacity=concurrency, per_client=max(1, quarter), per_code=1, reserve=quarter,
                   waiting_per_client=max(4, quarter * 2), max_waiting=concurrency)

    @property
    def queue_limit(self) -> int:
        """How many sends the page's queue must run at once: every running and every waiting one."""
        return self.capacity + self.max_waiting

    # ------------------------------------------------------------------------------ admission

    def _take(self, client: str, code: str) -> Ticket | Admission:  # with the lock held
        if self._codes.get(code, 0) >= self.per_code:
            return Admission.CODE_BUSY
        mine = self._clients.get(client, 0)
        if mine >= self.per_client:
            return Admission.CLIENT_BUSY
        free = self.capacity - self._running
        if free <= 0 or (mine > 0 and free <= self.reserve):
            return Admission.FULL
        self._clients[client] = mine + 1
        self._codes[code] = self._codes.get(code, 0) + 1
        self._running += 1
        return Ticket(client, code)

    def acquire(self, client: str | None, code: str) -> Ticket | Admission:
        """A slot now, or why not (never waits)."""
        with self._cond:
            return self._take(client or "?", code)

    def wait(self, client: str | None, code: str, timeout: float = WAIT_TIMEOUT_S,
             tick: float = WAIT_TICK_S) -> Iterator[Ticket | Admission | None]:
        """Take a slot, waiting for one when the client is at its cap or the slots are full. Yields None
        every `tick` seconds while waiting (so the caller can say so), then once a Ticket (the caller
        releases it) or an Admission refusal: CODE_BUSY at once, QUEUE_FULL when the client already has
        `waiting_per_client` sends waiting (or `max_waiting` wait in all), TIMED_OUT after `timeout`.
        Closing the generator while it waits gives up the wait."""
        client = client or "?"
        with self._cond:
            got = self._take(client, code)
            queued = not isinstance(got, Ticket) and got is not Admission.CODE_BUSY
            if queued and (self._waiting.get(client, 0) >= self.waiting_per_client
                           or sum(self._waiting.values()) >= self.max_waiting):
                got, queued = Admission.QUEUE_FULL, False
            if queued:
                self._waiting[client] = self._waiting.get(client, 0) + 1
        if not queued:
            yield got
            return
        deadline = time.monotonic() + timeout
        try:
            yield None  # the caller says so at once
            while True:
                with self._cond:
                    left = deadline - time.monotonic()
                    if left > 0:
                        self._cond.wait(min(tick, left))
                    got = self._take(client, code)
                if isinstance(got, Ticket) or got is Admission.CODE_BUSY:
                    break
                if time.monotonic() >= deadline:
                    got = Admission.TIMED_OUT
                    break
                yield None
        finally:
            with self._cond:
                self._waiting[client] -= 1
                if self._waiting[client] <= 0:
                    del self._waiting[client]
        yield got

    def release(self, ticket: Ticket) -> None:
        with self._cond:
            self._running -= 1
            for counts, key in ((self._clients, ticket.client), (self._codes, ticket.code)):
                counts[key] -= 1
                if counts[key] <= 0:
                    del counts[key]
            self._cond.notify_all()

    # ------------------------------------------------------------------------------ counts

    def running(self, client: str | None = None) -> int:
        """Generations running now (of `client`, when given)."""
        with self._cond:
            return self._running if client is None else self._clients.get(client, 0)

    def waiting(self, client: str | None = None) -> int:
        """Sends waiting for a slot now (of `client`, when given)."""
        with self._cond:
            return sum(self._waiting.values()) if client is None else self._waiting.get(client, 0)
