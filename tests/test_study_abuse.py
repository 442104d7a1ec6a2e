"""Abuse limits (issue 13), through the running app's API as an attacker would call it.

Before: 300 participant codes were minted in 16 s; codes could be guessed at 30/s and research passwords
at ~10/s; Gradio's upload route took 50 MB without a login; exported CSVs were served to anyone by
`/gradio_api/file=` and their temporary folders never deleted; a list sent as text was stored as its
repr and NUL went into the database; Gradio printed "Received inputs: [code, text]" to stderr.
"""

from __future__ import annotations

import os
import tempfile

import httpx
import pytest
from gradio_client import Client
from study_helpers import FakePool, ServerThread, make_protocol

from extes.study import ui_research as ui
from extes.study.app import build_app
from extes.study.limits import LIMITS
from extes.study.session import Study
from extes.study.store import Store


@pytest.fixture
def served(tmp_path, monkeypatch):
    monkeypatch.setenv(ui.PASSWORD_ENV, "s3cret")
    protocol = make_protocol(tmp_path, min_turns=1, conversations=1)
    store = Store(tmp_path / "abuse.sqlite")
    study = Study(protocol, store, FakePool())
    with ServerThread(build_app(protocol, store, FakePool(), study=study)) as srv:
        yield srv, store, study
    store.close()


def test_minting_participant_codes_is_rate_limited(served):
    srv, store, _ = served
    c = Client(srv.url, verbose=False)
    per_client = LIMITS["consent"][0][0]
    errors = []
    for _ in range(per_client + 5):
        try:
            c.predict(api_name="/consent")
        except Exception as exc:  # noqa: BLE001
            errors.append(str(exc))
    assert store.counts()["participants"] == per_client
    assert len(errors) == 5 and all("Too many new participant codes" in e for e in errors)


def test_guessing_codes_is_rate_limited_and_then_refused_up_front(served):
    srv, _store, study = served
    real = study.consent().code
    c = Client(srv.url, verbose=False)
    per_client = LIMITS["code"][0][0]
    messages = []
    for i in range(per_client + 3):
        with pytest.raises(Exception) as err:
            c.predict(f"AAAA-BBBB-{i:04d}", api_name="/resume")
        messages.append(str(err.value))
    assert all("No participant" in m for m in messages[:per_client])
    assert all("Too many attempts" in m for m in messages[per_client:])
    with pytest.raises(Exception, match="Too many attempts"):  # even a real code, from this client, for now
        c.predict(real, api_name="/resume")


def test_research_password_locks_out_per_client(tmp_path, monkeypatch):
    """Per client only: many clients guessing never lock out a clean one (issue 24; test_study_floods)."""
    monkeypatch.setenv(ui.PASSWORD_ENV, "s3cret")
    monkeypatch.setattr(ui, "FAIL_DELAY_S", 0.0)
    store = Store(tmp_path / "r.sqlite")
    board = ui.Dashboard(store, make_protocol(tmp_path))
    (per_n, _), _all = LIMITS["password"]
    for _ in range(per_n):
        with pytest.raises(ui.NotLoggedIn, match="Wrong password"):
            board.login("guess", client="10.0.0.1")
    with pytest.raises(ui.NotLoggedIn, match="locked"):
        board.login("s3cret", client="10.0.0.1")  # locked: even the right password
    assert board.login("s3cret", client="10.0.0.2")  # another client is not locked by that one
    store.close()


def test_upload_route_is_off(served):
    srv, *_ = served
    for prefix in ("", "annotate/", "research/"):
        r = httpx.post(srv.url + prefix + "gradio_api/upload", files={"files": ("x.bin", b"0" * 1024)}, timeout=30)
        assert r.status_code == 404, prefix


def test_exports_go_only_to_a_logged_in_researcher_and_leave_no_files(served, tmp_path, monkeypatch):
    srv, store, study = served
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    before = set(os.listdir(tempfile.gettempdir()))
    from extes.study.ui_research import Dashboard, OneTimeDownloads

    downloads = OneTimeDownloads()
    board = Dashboard(store, study.protocol, downloads)
    with pytest.raises(ui.NotLoggedIn):
        board.export(False)
    token = board.export(True)
    assert set(os.listdir(tempfile.gettempdir())) == before  # nothing written to disk
    assert downloads.take(token) and downloads.take(token) is None  # one download only
    # Through the app: a random token gets nothing.
    assert httpx.get(srv.url + "research-download/" + "x" * 32, timeout=30).status_code == 404


def test_text_inputs_take_only_text_without_control_characters(served):
    srv, store, study = served
    view = study.start_conversation(study.consent().code, "Academic Stress")
    c = Client(srv.url, verbose=False)
    before = store.counts()["messages"]
    with pytest.raises(Exception, match="control character"):
        c.predict(view.code, view.conversation_id, "a\x00b", api_name="/send_a")
    r = httpx.post(srv.url + "gradio_api/call/send_a", json={"data": [view.code, view.conversation_id, ["a", "list"]]},
                   timeout=30)
    events = httpx.get(srv.url + "gradio_api/call/send_a/" + r.json()["event_id"], timeout=30).text
    assert "expected text" in events
    assert store.counts()["messages"] == before  # nothing stored
    with pytest.raises(Exception, match="description contains a control character"):
        c.predict(study.consent().code, "Academic Stress", "x\x07", api_name="/start")


def test_participant_text_never_reaches_the_logs(served, capfd):
    srv, _store, study = served
    view = study.start_conversation(study.consent().code, "Academic Stress")
    marker = "MARKER-7f3a private words"
    # A malformed call (too few inputs) and one that fails preprocessing: Gradio quoted both in stderr.
    for data in ([marker], [view.code, view.conversation_id, [marker]]):
        r = httpx.post(srv.url + "gradio_api/call/send_a", json={"data": data}, timeout=30)
        httpx.get(srv.url + "gradio_api/call/send_a/" + r.json()["event_id"], timeout=30)
    Client(srv.url, verbose=False).predict(view.code, view.conversation_id, marker, api_name="/send_a")  # a real one
    out, err = capfd.readouterr()
    assert marker not in out and marker not in err


def test_handlers_with_many_inputs_get_the_request_and_keep_every_value(served):
    """The rating and judging handlers take one value per question: Gradio must still pass the request
    (for the guessing limit) without shifting the values (the comment was once lost that way)."""
    srv, store, study = served
    view = study.start_conversation(study.consent().code, "Academic Stress")
    list(study.send(view.code, view.conversation_id, "ABC", "hi"))
    list(study.send(view.code, view.conversation_id, "ABC", "again"))
    c = Client(srv.url, verbose=False)
    n = len(study.questions())
    c.predict(view.code, view.conversation_id, *(["tie"] * n), "my comment", api_name="/rate")
    assert store.conversation(view.conversation_id).comment == "my comment"
    for i in range(LIMITS["code"][0][0]):
        with pytest.raises(Exception, match="No participant"):
            c.predict(f"ZZZZ-YYYY-{i:04d}", view.conversation_id, *(["tie"] * n), "", api_name="/rate")
    with pytest.raises(Exception, match="Too many attempts"):
        c.predict(view.code, api_name="/resume")  # the guesses through /rate counted for this client
