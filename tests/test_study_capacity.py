"""One client cannot take the generation capacity (issue 24, item 4).

Before: 17 codes from one address each streaming a long reply took every slot; a legitimate "send to all"
from another address waited for them (0.1 s -> 15 s)."""

from __future__ import annotations

import threading

import pytest

from extes.study.capacity import Admission, CapacityGate, Ticket


def test_gate_caps_per_client_per_code_and_keeps_a_reserve():
    gate = CapacityGate(capacity=4, per_client=3, per_code=1, reserve=2)
    a1 = gate.acquire("a", "c1")
    assert isinstance(a1, Ticket)
    assert gate.acquire("a", "c1") is Admission.CODE_BUSY
    assert isinstance(gate.acquire("a", "c2"), Ticket)
    assert gate.acquire("a", "c3") is Admission.FULL  # only reserved slots left: kept for idle clients
    assert isinstance(gate.acquire("b", "c4"), Ticket)  # a client with none running gets one
    gate.release(a1)
    assert gate.running() == 2
    with pytest.raises(ValueError, match="CapacityGate"):
        CapacityGate(capacity=2, reserve=2)


def test_gate_is_thread_safe():
    gate = CapacityGate(capacity=8, per_client=8, per_code=8, reserve=0)
    got: list = []
    barrier = threading.Barrier(32)

    def take(i):
        barrier.wait()
        got.append(gate.acquire(f"c{i % 3}", f"k{i}"))

    threads = [threading.Thread(target=take, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(isinstance(t, Ticket) for t in got) == 8 == gate.running()
