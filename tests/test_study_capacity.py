"""One client cannot take the generation capacity (issue 24, item 4).

Before: 17 codes from one address each streaming a long reply took every slot; a legitimate "send to all"
from another address waited for them (0.1 s -> 15 s)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
from study_helpers import FakePool, make_protocol

from extes.study.capacity import Admission, CapacityGate, Ticket
from extes.study.session import Study, StudyRefusal
from extes.study.store import Store
from extes.study.ui_participant import ParticipantUI


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


def test_a_one_client_flood_leaves_room_for_another_clients_send_to_all(tmp_path):
    protocol = make_protocol(tmp_path, min_turns=1, conversations=1)
    store = Store(tmp_path / "cap.sqlite")
    study = Study(protocol, store, FakePool(delay=0.05, words=400))
    page = ParticipantUI(study, concurrency=16)
    page.build()
    flooder = SimpleNamespace(client=SimpleNamespace(host="198.51.100.1"), query_params={})
    views = [study.start_conversation(study.consent().code, "Academic Stress") for _ in range(17)]
    running, refused = [], 0
    for v in views:  # 17 codes from one address, each starting a long reply
        gen = page.make_send("ABC", page.code_box)(v.code, v.conversation_id, "hi", request=flooder)
        try:
            next(gen)
            running.append(gen)
        except StudyRefusal:
            refused += 1
    assert len(running) == page.gate.per_client and refused == 17 - len(running)
    legit = study.start_conversation(study.consent().code, "Academic Stress")
    other = SimpleNamespace(client=SimpleNamespace(host="192.0.2.5"), query_params={})
    mine = page.make_send("ABC", page.code_box)(legit.code, legit.conversation_id, "hello", request=other)
    first = next(mine)
    assert first  # admitted, its first update arrived while the flood still runs
    assert page.gate.running() == len(running) + 1
    for gen in [*running, mine]:
        gen.close()
    assert page.gate.running() == 0
    store.close()
