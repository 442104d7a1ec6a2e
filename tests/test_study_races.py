"""Races decided by the database (issue 13), on SQLite and PostgreSQL, with two Study/Store pairs standing
for two app processes.

Before: ten simultaneous Start calls for one code created up to 8 conversations "chatting" (limit 2):
the checks ran outside any transaction and the only lock was in-process.
"""

from __future__ import annotations

import random
import threading

from study_helpers import FakePool, full_answers, make_protocol

from extes.study import annotation as ann
from extes.study.records import Assignment
from extes.study.session import Study, StudyRefusal
from extes.study.store import Store


def _together(n: int, fn) -> list:
    """Run fn(i) in n threads released at once; returns results or exceptions."""
    barrier = threading.Barrier(n)
    out: list = [None] * n

    def run(i):
        barrier.wait()
        try:
            out[i] = fn(i)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertions
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread never finished"
    return out


def test_simultaneous_starts_for_one_code_make_one_conversation(tmp_path, db_url):
    protocol = make_protocol(tmp_path, min_turns=1, conversations=2)
    studies = [Study(protocol, Store(db_url), FakePool()) for _ in range(2)]  # two "processes"
    code = studies[0].consent().code
    results = _together(10, lambda i: studies[i % 2].start_conversation(code, "Academic Stress"))
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, StudyRefusal)]
    assert len(ok) == 1 and len(refused) == 9, results
    pid = studies[0].store.participant_by_code(code).id
    assert [c.status for c in studies[0].store.conversations_of(pid)] == ["chatting"]
    # After rating it, again ten at once: exactly one more, then the limit of 2 holds.
    view = ok[0]
    list(studies[0].send(code, view.conversation_id, "ABC", "hi"))
    studies[0].submit_rating(code, view.conversation_id, full_answers(studies[0]))
    results = _together(10, lambda i: studies[i % 2].start_conversation(code, "Academic Stress"))
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    convs = studies[0].store.conversations_of(pid)
    assert [c.seq for c in convs] == [1, 2] and sum(c.status == "chatting" for c in convs) == 1
    for s in studies:
        s.store.close()


def test_order_balance_holds_across_processes(tmp_path, db_url):
    protocol = make_protocol(tmp_path, min_turns=1, conversations=1)
    studies = [Study(protocol, Store(db_url), FakePool(), rng=random.Random(i)) for i in range(2)]
    codes = [studies[0].consent().code for _ in range(12)]
    _together(12, lambda i: studies[i % 2].start_conversation(codes[i], "Academic Stress"))
    assert studies[0].store.order_counts() == [2] * 6  # 12 conversations, each of the six orders twice
    for s in studies:
        s.store.close()


def test_one_vote_set_per_conversation(tmp_path, db_url):
    protocol = make_protocol(tmp_path, min_turns=1, conversations=1)
    studies = [Study(protocol, Store(db_url), FakePool()) for _ in range(2)]
    view = studies[0].start_conversation(studies[0].consent().code, "Academic Stress")
    list(studies[0].send(view.code, view.conversation_id, "ABC", "hi"))
    results = _together(8, lambda i: studies[i % 2].submit_rating(view.code, view.conversation_id,
                                                                  full_answers(studies[i % 2])))
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, StudyRefusal) for r in results if isinstance(r, BaseException))
    assert len(studies[0].store.votes()) == 15
    for s in studies:
        s.store.close()


def test_item_quotas_hold_for_simultaneous_judges(tmp_path, db_url):
    from test_study_annotation import make_protocol as ann_protocol
    from test_study_annotation import rated_conversation

    protocol = ann_protocol(tmp_path, judges=2)
    stores = [Store(db_url) for _ in range(2)]
    for _ in range(3):
        rated_conversation(stores[0])
    ann.sync_items(stores[0], protocol)
    judges = [ann.new_judge(stores[0], protocol).id for _ in range(10)]
    results = _together(10, lambda i: ann.next_assignment(stores[i % 2], protocol, judges[i]))
    got = [r for r in results if isinstance(r, Assignment)]
    assert len(got) == 6 and all(r is None for r in results if not isinstance(r, Assignment))  # 3 items x 2 judges
    per_item: dict[str, int] = {}
    for a in stores[0].assignments():
        per_item[a.item_id] = per_item.get(a.item_id, 0) + 1
    assert sorted(per_item.values()) == [2, 2, 2]
    for s in stores:
        s.close()
