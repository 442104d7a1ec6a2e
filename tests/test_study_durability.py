"""What the participant saw is never lost (issue 13), on SQLite and PostgreSQL.

Before: a reply was stored only when it finished, so kill -9 mid-stream lost text already shown and the
next send was merged into the unanswered message; replies cut off by a closed page counted towards
min_user_turns; a rating could be stored while a pane was still streaming (replies after rated_at).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from study_helpers import ARM_NAMES, FakePool, full_answers, make_protocol

from extes.study.session import Study, StudyRefusal
from extes.study.store import Store
from extes.study.store import base as store_base

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from study_helpers import FakePool
    from extes.study.protocol import load_protocol
    from extes.study.session import Study
    from extes.study.store import Store

    study = Study(load_protocol({protocol!r}), Store({db!r}), FakePool(delay=0.05, words=400))
    view = study.start_conversation(study.consent().code, "Academic Stress")
    print("CONV", view.code, view.conversation_id, flush=True)
    for v in study.send(view.code, view.conversation_id, "ABC", "first message"):
        shown = [p.messages[-1]["content"] if p.messages[-1]["role"] == "assistant" else "" for p in v.panes]
        print("SHOWN", time.monotonic(), "|".join(shown), flush=True)
""")


def _child_run(tmp_path, db: str):
    """Start a study process that streams long replies; return it with a reader of its lines."""
    protocol = make_protocol(tmp_path, min_turns=1, conversations=1)
    script = CHILD.format(tests=str(TESTS), protocol=protocol.source, db=db)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    return proc, protocol


def test_kill_9_mid_stream_keeps_what_was_shown_marked_interrupted(tmp_path, db_url, monkeypatch):
    proc, protocol = _child_run(tmp_path, db_url)
    shown_at: list[tuple[float, list[str]]] = []
    try:
        code, conv = proc.stdout.readline().split()[1:3]
        while True:
            line = proc.stdout.readline()
            assert line, "the study process ended early"
            _tag, stamp, texts = line.rstrip("\n").split(" ", 2)
            shown_at.append((float(stamp), texts.split("|")))
            if len(shown_at[-1][1][0].split()) >= 40:  # a good part of each reply is on screen
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        proc.wait()
    # Everything shown up to a persistence interval (plus slack) before the kill is in the store.
    before = [texts for t, texts in shown_at if t <= killed - 0.6]
    assert before, "the test killed too early to check anything"
    monkeypatch.setattr(store_base, "STREAM_STALE_S", 0.5)  # the dead process's heartbeat is long gone
    time.sleep(0.6)
    store = Store(db_url)
    study = Study(protocol, store, FakePool())
    rows = store.messages(conv)
    for i, pane in enumerate("ABC"):
        replies = [m for m in rows if m["pane"] == pane and m["role"] == "assistant"]
        assert len(replies) == 1
        r = replies[0]
        assert r["partial"] and r["finish_reason"] == "interrupted"
        assert r["text"].startswith(before[-1][i]) and len(r["text"]) >= len(before[-1][i]) > 0
    view = study.resume(code)
    assert all(ps.messages[-1]["interrupted"] and ps.messages[-1]["content"] for ps in view.panes)
    from extes.study.ui_participant import INTERRUPTED_NOTE, _chat_value

    assert _chat_value(view.panes[0])[-1]["content"].endswith(INTERRUPTED_NOTE)  # the page says so
    assert [ps.remaining for ps in view.panes] == [1, 1, 1] and not view.can_rate  # not a complete reply
    # The conversation goes on; nothing is merged into the earlier message.
    list(study.send(code, conv, "A", "second message"))
    a = [(m["role"], m["text"]) for m in store.messages(conv, "A")]
    assert [role for role, _ in a] == ["user", "assistant", "user", "assistant"]
    assert a[0][1] == "first message" and a[2][1] == "second message"
    store.close()


def test_replies_are_written_while_they_stream(tmp_path, db_url):
    protocol = make_protocol(tmp_path, min_turns=1)
    store = Store(db_url)
    study = Study(protocol, store, FakePool(delay=0.02, words=60))
    view = study.start_conversation(study.consent().code, "Academic Stress")
    stream = study.send(view.code, view.conversation_id, "A", "hello")
    seen = []
    for v in stream:
        shown = v.panes[0].messages[-1]["content"]
        stored = [m for m in store.messages(view.conversation_id, "A") if m["role"] == "assistant"]
        if stored and v.streaming:
            seen.append((len(shown), len(stored[0]["text"]), stored[0]["finish_reason"]))
    assert any(n_stored > 0 and reason == "streaming" for _n, n_stored, reason in seen)  # written mid-stream
    assert all(n_stored <= n_shown for n_shown, n_stored, _ in seen)  # never ahead of what was shown
    store.close()


def test_only_complete_replies_count_towards_the_minimum(tmp_path, db_url):
    protocol = make_protocol(tmp_path, min_turns=2)
    store = Store(db_url)
    study = Study(protocol, store, FakePool(words=12))
    view = study.start_conversation(study.consent().code, "Academic Stress")
    for text in ("one", "two"):  # two replies cut off by a closed page
        stream = study.send(view.code, view.conversation_id, "ABC", text)
        for _ in range(8):
            next(stream)
        stream.close()
    view = study.resume(view.code)
    assert [ps.remaining for ps in view.panes] == [2, 2, 2] and not view.can_rate
    with pytest.raises(StudyRefusal, match="needs 2 more"):
        study.submit_rating(view.code, view.conversation_id, full_answers(study))
    store.close()


def test_no_rating_while_a_pane_streams_in_this_or_another_process(tmp_path, db_url):
    protocol = make_protocol(tmp_path, min_turns=1)
    store = Store(db_url)
    study = Study(protocol, store, FakePool(words=10))
    view = study.start_conversation(study.consent().code, "Academic Stress")
    list(study.send(view.code, view.conversation_id, "ABC", "one"))
    stream = study.send(view.code, view.conversation_id, "ABC", "two")
    for _ in range(5):
        next(stream)
    other = Study(protocol, Store(db_url), FakePool())  # another app process on the same database
    for s in (study, other):
        with pytest.raises(StudyRefusal, match="wait until every reply is finished"):
            s.submit_rating(view.code, view.conversation_id, full_answers(s))
    with pytest.raises(StudyRefusal, match="wait"):  # nor a second send to a streaming pane
        list(other.send(view.code, view.conversation_id, "A", "three"))
    list(stream)
    study.submit_rating(view.code, view.conversation_id, full_answers(study))
    rated_at = store.conversation(view.conversation_id).rated_at
    assert all(m["created_at"] <= rated_at and m["finish_reason"] == "stop"
               for m in store.messages(view.conversation_id) if m["role"] == "assistant")
    assert len(store.votes()) == 15
    assert ARM_NAMES  # (imported for symmetry with the other study tests)
    store.close()
