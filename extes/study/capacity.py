"""How many generations each client and each participant code may run at once (issue 24, item 4).

Before: 17 participant codes from one address, each streaming a long reply, took every generation slot and
pushed a legitimate "send to all" from 0.1 s to 15 s. The gate caps concurrent generations per client and
per code, and keeps `reserve` slots for clients with none running: a client that already runs one may take a
slot only while more than `reserve` are free. A refused send stores nothing and is told to wait.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from enum import Enum


class Admission(Enum):
    ADMITTED = "admitted"
    CLIENT_BUSY = "client_busy"  # the client is at its own cap
    CODE_BUSY = "code_busy"  # this participant code already generates
    FULL = "full"  # no slot (or only reserved ones, for a client that already runs one)


WAIT_MESSAGE = "Please wait for your other replies to finish before sending again."


@dataclass(frozen=True)
class Ticket:
    client: str
    code: str


@dataclass
class CapacityGate:
    """Thread-safe counts of running generations; `acquire` gives a Ticket or an Admission refusal."""

    capacity: int = 16
    per_client: int = 2
    per_code: int = 1
    reserve: int = 4
    _clients: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _codes: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _running: int = field(default=0, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        if not (self.capacity >= 1 and self.per_client >= 1 and self.per_code >= 1
                and 0 <= self.reserve < self.capacity):
            raise ValueError(f"CapacityGate: bad limits capacity={self.capacity} per_client={self.per_client} "
                             f"per_code={self.per_code} reserve={self.reserve}")

    def acquire(self, client: str | None, code: str) -> Ticket | Admission:
        client = client or "?"
        with self._lock:
            mine = self._clients.get(client, 0)
            if mine >= self.per_client:
                return Admission.CLIENT_BUSY
            if self._codes.get(code, 0) >= self.per_code:
                return Admission.CODE_BUSY
            free = self.capacity - self._running
            if free <= 0 or (mine > 0 and free <= self.reserve):
                return Admission.FULL
            self._clients[client] = mine + 1
            self._codes[code] = self._codes.get(code, 0) + 1
            self._running += 1
            return Ticket(client, code)

    def release(self, ticket: Ticket) -> None:
        with self._lock:
            self._running -= 1
            for counts, key in ((self._clients, ticket.client), (self._codes, ticket.code)):
                counts[key] -= 1
                if counts[key] <= 0:
                    del counts[key]

    def running(self) -> int:
        with self._lock:
            return self._running
