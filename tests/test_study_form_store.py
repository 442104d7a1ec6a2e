"""The rating form's draft (issue 28, item 1), on SQLite and PostgreSQL: saved per conversation as the
participant answers, restored on return, gone with the submission, and still there after a kill -9.
Before: nothing of an unsubmitted form was kept anywhere; a reload restored no answer and no comment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from study_helpers import FakePool, full_answers, make_protocol

from extes.study.rating import INSTRUCTED_KEY, MissingAnswers, missing_answers
from extes.study.session import Study, StudyRefusal
from extes.study.store import Store

TESTS = Path(__file__).resolve().parent


def _ready(tmp_path, db_url, **kw):
    protocol = make_protocol(tmp_path, min_turns=1, conversations=2, **kw)
    store = Store(db_url)
    study = Study(protocol, store, FakePool())
    view = study.start_conversation(study.consent().code, "Academic Stress")
    list(study.send(view.code, view.conversation_id, "ABC", "hello there"))
    return study, store, view.code, view.conversation_id


def test_a_draft_is_kept_replaced_and_gone_with_the_submission(tmp_path, db_url):
    study, store, code, conv = _ready(tmp_path, db_url)
    keys = [q.key for q in study.questions()]
    assert study.draft(code, conv) is None
    study.save_draft(code, conv, {keys[0]: "left", keys[3]: "tie"}, "first words")
    study.save_draft(code, conv, {keys[0]: "right", keys[3]: "tie", keys[4]: "left"}, "my comment, longer")
    d = study.draft(code, conv)
    assert dict(d.answers) == {keys[0]: "right", keys[3]: "tie", keys[4]: "left"}
    assert d.comment == "my comment, longer" and d.participant_id == store.participant_by_code(code).id
    # only the form's own questions and answers are kept, whatever a request carries
    study.save_draft(code, conv, {keys[1]: "tie", "not-a-question": "left", keys[2]: "<b>x</b>"}, "")
    assert dict(study.draft(code, conv).answers) == {keys[1]: "tie"}
    other = study.consent().code  # another participant can neither read nor write it
    with pytest.raises(StudyRefusal):
        study.draft(other, conv)
    with pytest.raises(StudyRefusal):
        study.save_draft(other, conv, {keys[0]: "left"}, "")
    study.submit_rating(code, conv, full_answers(study), "done")
    assert store.draft(conv) is None  # deleted in the submission's transaction
    with pytest.raises(StudyRefusal):  # nothing more is kept for a rated conversation
        study.save_draft(code, conv, {keys[0]: "left"}, "again")
    assert store.draft(conv) is None
    store.close()


def test_missing_answers_name_each_question(tmp_path):
    protocol = make_protocol(tmp_path, min_turns=1, attention={"instructed_response": True})
    study = Study(protocol, Store(tmp_path / "s.sqlite"), FakePool())
    answers = full_answers(study)
    keys = list(answers)
    del answers[keys[2]], answers[keys[7]]
    assert missing_answers(protocol, answers) == [keys[2], keys[7], INSTRUCTED_KEY]
    view = study.start_conversation(study.consent().code, "Academic Stress")
    list(study.send(view.code, view.conversation_id, "ABC", "hello there"))
    with pytest.raises(MissingAnswers) as err:
        study.submit_rating(view.code, view.conversation_id, answers)
    assert err.value.keys == [keys[2], keys[7], INSTRUCTED_KEY]


CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from study_helpers import FakePool
    from extes.study.protocol import load_protocol
    from extes.study.session import Study
    from extes.study.store import Store

    study = Study(load_protocol({protocol!r}), Store({db!r}), FakePool())
    view = study.start_conversation(study.consent().code, "Academic Stress")
    list(study.send(view.code, view.conversation_id, "ABC", "hello there"))
    key = study.questions()[5].key
    study.save_draft(view.code, view.conversation_id, {{key: "tie"}}, "half a thought")
    print("SAVED", view.code, view.conversation_id, key, flush=True)
    time.sleep(60)
""")


def test_kill_9_after_a_draft_save_keeps_the_draft(tmp_path, db_url):
    protocol = make_protocol(tmp_path, min_turns=1, conversations=2)
    script = CHILD.format(tests=str(TESTS), protocol=protocol.source, db=db_url)
    env = {**os.environ, "PYTHONPATH": str(TESTS.parent)}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    tag, code, conv, key = line.split()
    assert tag == "SAVED"
    store = Store(db_url)
    study = Study(protocol, store, FakePool())
    d = study.draft(code, conv)
    assert d is not None and dict(d.answers) == {key: "tie"} and d.comment == "half a thought"
    store.close()
