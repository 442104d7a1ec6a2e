"""One client cannot take the generation capacity (issue 24, item 4).

Before: 17 codes from one address each streaming a long reply took every slot; a legitimate "send to all"
from another address waited for them (0.1 s -> 15 s)."""

from __future__ import annotations

import threading
import time

import pytest
from study_helpers import FakePool, make_protocol

from extes.study.capacity import Admission, CapacityGate, Ticket
from extes.study.session import SessionView, Study, StudyRefusal
from extes.study.store import Store


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


# ---------------------------------------------------------------------------------- waiting (issue 24, item 4)

def test_a_send_over_the_clients_cap_waits_then_gets_the_freed_slot():
    gate = CapacityGate(capacity=4, per_client=1, per_code=1, reserve=1, waiting_per_client=1, max_waiting=4)
    first = gate.acquire("a", "c1")
    assert isinstance(first, Ticket)
    waiter = gate.wait("a", "c2", timeout=30, tick=0.01)
    assert next(waiter) is None and gate.waiting("a") == 1  # told it waits
    assert list(gate.wait("a", "c3", timeout=30)) == [Admission.QUEUE_FULL]  # one may wait per client here
    assert list(gate.wait("a", "c1", timeout=30)) == [Admission.CODE_BUSY]  # never waits
    gate.release(first)
    got = next(g for g in waiter if g is not None)
    assert isinstance(got, Ticket) and got.code == "c2" and gate.waiting() == 0 and gate.running("a") == 1


def test_a_wait_is_bounded_and_giving_up_leaves_no_trace():
    gate = CapacityGate(capacity=2, per_client=1, per_code=1, reserve=0)
    gate.acquire("a", "c1")
    assert list(gate.wait("a", "c2", timeout=0.05, tick=0.01))[-1] is Admission.TIMED_OUT
    waiter = gate.wait("a", "c3", timeout=30, tick=0.01)
    next(waiter)
    waiter.close()  # the page was closed while it waited
    assert gate.waiting() == 0 and gate.running() == 1


def test_for_concurrency_keeps_a_reserve_and_lets_the_queue_hold_the_waiting():
    gate = CapacityGate.for_concurrency(16)
    assert (gate.per_client, gate.reserve, gate.queue_limit) == (4, 4, 32)
    one = CapacityGate.for_concurrency(1)
    assert (one.per_client, one.reserve) == (1, 0)


class ScriptedPool(FakePool):
    """FakePool whose reply to a message containing "long" is `long_words` words (the flood), others short;
    `stop` ends every stream at its next step (to end the flood when the test is done)."""

    def __init__(self, long_words: int = 400, **kw):
        super().__init__(**kw)
        self.long_words = long_words
        self.stop = threading.Event()
        self.finished_long = 0  # flood replies that ran to their end

    def _reply_words(self, messages):
        if "long" in messages[-1]["content"]:
            return ("I hear you. " * self.long_words).split()[: self.long_words]
        return super()._reply_words(messages)

    def stream_many(self, requests, cancel=None):
        long = any("long" in m[-1]["content"] for _arm, m in requests.values())
        for item in super().stream_many(requests, cancel=cancel):
            if self.stop.is_set():
                return
            yield item
        if long and not (cancel is not None and cancel.is_set()):
            with self.lock:
                self.finished_long += 1


def _run(study, code, conv, panes, text, client, out: list, cancel=None):
    try:
        for view in study.send(code, conv, panes, text, client=client, cancel=cancel):
            out.append(view)
        out.append("done")
    except StudyRefusal as exc:
        out.append(exc)


def _until(cond, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.01)


def test_one_client_flood_waits_behind_itself_and_another_client_is_admitted_at_once(tmp_path):
    """Session level (what a direct API call reaches): 17 codes from one address each start a long reply;
    the address runs `per_client` of them, `waiting_per_client` wait (told so), the rest are told to wait
    for their replies, nothing stored for them; another address's "send to all" is admitted at once and
    finishes while the flood still holds its slots."""
    protocol = make_protocol(tmp_path, min_turns=1, conversations=1)
    store = Store(tmp_path / "cap.sqlite")
    pool = ScriptedPool(delay=0.02)
    gate = CapacityGate.for_concurrency(16)
    study = Study(protocol, store, pool, gate=gate)
    flood = [study.start_conversation(study.consent().code, "Academic Stress") for _ in range(17)]
    outs: list[list] = [[] for _ in flood]
    threads = [threading.Thread(target=_run, args=(study, v.code, v.conversation_id, "ABC", "a long one",
                                                   "198.51.100.1", out), daemon=True)
               for v, out in zip(flood, outs)]
    for t in threads:
        t.start()
    _until(lambda: gate.running("198.51.100.1") == gate.per_client and gate.waiting("198.51.100.1")
           == gate.waiting_per_client and sum(isinstance(o[-1], StudyRefusal) for o in outs if o) == 5
           and sum(bool(o) and isinstance(o[-1], SessionView) and o[-1].waiting for o in outs) == 8,
           "the flood holds its slots")
    refused = [o[-1] for o in outs if o and isinstance(o[-1], StudyRefusal)]
    assert all(r.hint for r in refused)
    waiting = [o for o in outs if o and isinstance(o[-1], SessionView) and o[-1].waiting]
    assert len(waiting) == gate.waiting_per_client  # their page says they wait
    legit = study.start_conversation(study.consent().code, "Academic Stress")
    mine: list = []
    _run(study, legit.code, legit.conversation_id, "ABC", "hello", "192.0.2.5", mine)
    assert mine[-1] == "done" and not any(v.waiting for v in mine[:-1])  # admitted at once, never waited
    assert gate.running("198.51.100.1") == gate.per_client  # ... while the flood still held its slots
    assert all(t.is_alive() for t, o in zip(threads, outs) if not isinstance(o[-1], StudyRefusal))
    assert [m.role for m in store.messages(legit.conversation_id)].count("assistant") == 3
    pool.stop.set()
    for t in threads:
        t.join(timeout=60)
    assert gate.running() == 0 and gate.waiting() == 0
    store.close()


def test_four_participants_behind_one_address_are_all_served_in_turn(tmp_path):
    """A class behind one NAT address: over the per-client cap, sends wait for a slot, none is refused."""
    protocol = make_protocol(tmp_path, min_turns=1, conversations=1)
    store = Store(tmp_path / "nat.sqlite")
    gate = CapacityGate.for_concurrency(4)  # one generation at a time per client
    study = Study(protocol, store, ScriptedPool(delay=0.01, words=30), gate=gate)
    views = [study.start_conversation(study.consent().code, "Academic Stress") for _ in range(4)]
    outs: list[list] = [[] for _ in views]
    threads = [threading.Thread(target=_run, args=(study, v.code, v.conversation_id, "ABC", f"hi {i}",
                                                   "203.0.113.9", out))
               for i, (v, out) in enumerate(zip(views, outs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(o[-1] == "done" for o in outs), [o[-1] for o in outs]
    assert any(v.waiting for o in outs for v in o[:-1])  # some waited for the one slot ...
    for v in views:  # ... and every one was answered
        assert [m.role for m in store.messages(v.conversation_id)].count("assistant") == 3
    store.close()


def test_a_gradio_client_flood_from_one_proxied_address_does_not_hold_up_another(tmp_path):
    """Through the real app (uvicorn trusting X-Forwarded-For from the local proxy, as deployed): 17 codes
    from one address each call /send_all for a long reply with gradio_client; another address's /send_all
    completes while every flood reply is still streaming. Before: the queue ran 16 flood sends and the
    legitimate one waited for the first of them to end."""
    from gradio_client import Client
    from study_helpers import ServerThread, named

    from extes.study.app import build_app
    from extes.study.capacity import WAITING_NOTE

    protocol = make_protocol(tmp_path, min_turns=1, conversations=1)
    store = Store(tmp_path / "api.sqlite")
    pool = ScriptedPool(long_words=2000, delay=0.02)
    study = Study(protocol, store, pool)
    flood = [study.start_conversation(study.consent().code, "Academic Stress") for _ in range(17)]
    legit = study.start_conversation(study.consent().code, "Academic Stress")
    with ServerThread(build_app(protocol, store, pool, concurrency=16, study=study)) as srv:
        attacker = Client(srv.url, verbose=False, headers={"X-Forwarded-For": "198.51.100.1"})
        jobs = [attacker.submit(v.code, v.conversation_id, "a long one", api_name="/send_all") for v in flood]
        gate = study.gate
        _until(lambda: len(pool.calls) >= 3 * gate.per_client and gate.waiting("198.51.100.1")
               == gate.waiting_per_client, "the flood holds its slots")
        other = Client(srv.url, verbose=False, headers={"X-Forwarded-For": "192.0.2.5"})
        out = named(other, "/send_all", other.submit(legit.code, legit.conversation_id, "hello",
                                                     api_name="/send_all").result(timeout=120))
        assert pool.finished_long == 0  # served while every flood reply still streamed
        assert gate.running("198.51.100.1") == gate.per_client  # the flood was capped to its share
        chat = out["Model A"]
        assert [m["role"] for m in chat] == ["user", "assistant"] and chat[1]["content"]  # hello, and a reply
        _until(lambda: any(named(attacker, "/send_all", o)["rate-hint"] == WAITING_NOTE
                           for j in jobs for o in j.outputs()), "a waiting flood send shows the note")
        pool.stop.set()
        for j in jobs:
            try:
                j.result(timeout=60)
            except Exception:  # noqa: BLE001 - the stopped flood replies end in an error
                pass
    assert gate.running() == 0 and gate.waiting() == 0
    store.close()
