"""Floods from other addresses lock out nobody legitimate (issue 24, item 3).

Distinct clients are real addresses passed by a trusted reverse proxy: the test server (uvicorn, as in
docs/deployment.md) trusts `X-Forwarded-For` from 127.0.0.1, so each request below appears to come from
the address it names. The limits are lowered for speed; the proportions are the issue's.

Before: the study-wide buckets refused everyone. About 100 wrong codes from a handful of addresses made
every valid code refused, 300 consents from 10 addresses stopped every new participant, and 30 wrong
passwords from 6 addresses locked the researcher out.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from gradio_client import Client
from study_helpers import FakePool, ServerThread, make_protocol

from extes.study import limits
from extes.study import ui_research as ui
from extes.study.app import build_app
from extes.study.limits import Limiter
from extes.study.session import Study
from extes.study.store import Store
from extes.study.ui_participant import ParticipantUI


def _client(srv, address: str) -> Client:
    return Client(srv.url, verbose=False, headers={"X-Forwarded-For": address})


@pytest.fixture
def served(tmp_path, monkeypatch):
    # per client (n, window), study-wide (n, window): the study-wide threshold is met by a few clients
    monkeypatch.setitem(limits.LIMITS, "code", ((5, 300.0), (25, 60.0)))
    monkeypatch.setitem(limits.LIMITS, "consent", ((3, 600.0), (30, 600.0)))
    protocol = make_protocol(tmp_path, min_turns=1, conversations=1)
    store = Store(tmp_path / "floods.sqlite")
    study = Study(protocol, store, FakePool())
    with ServerThread(build_app(protocol, store, FakePool(), study=study)) as srv:
        yield srv, store, study
    store.close()


def test_forwarded_addresses_are_distinct_clients(served):
    srv, *_ = served
    a, b = _client(srv, "203.0.113.1"), _client(srv, "203.0.113.2")
    for _ in range(3):
        a.predict(api_name="/consent")
    with pytest.raises(Exception, match="Too many new participant codes"):
        a.predict(api_name="/consent")
    b.predict(api_name="/consent")  # another address: its own limit


def test_wrong_codes_from_five_addresses_refuse_no_valid_code_from_a_sixth(served, caplog):
    srv, _store, study = served
    real = study.consent().code
    (per_n, _), (all_n, _) = limits.LIMITS["code"]
    caplog.set_level(logging.WARNING, logger="extes.study.limits")
    flooders = [_client(srv, f"198.51.100.{i}") for i in range(all_n // per_n)]
    for n, c in enumerate(flooders):
        for i in range(per_n):
            with pytest.raises(Exception, match="No participant"):
                c.predict(f"AAAA-BBBB-{n:02d}{i:02d}", api_name="/resume")
    clean = _client(srv, "192.0.2.77")
    clean.predict(real, api_name="/resume")  # a code that exists, from a clean client, during the flood
    with pytest.raises(Exception, match="Too many attempts"):  # the offenders stay refused, even a real code
        flooders[0].predict(real, api_name="/resume")
    alerts = [r for r in caplog.records if "study-wide" in r.getMessage()]
    assert len(alerts) == 1  # one alert per window, without any address
    assert not any(f"198.51.100.{i}" in r.getMessage() for r in alerts for i in range(len(flooders)))


def test_consents_from_ten_addresses_do_not_stop_an_eleventh(served):
    srv, store, _ = served
    (per_n, _), (all_n, _) = limits.LIMITS["consent"]
    for i in range(all_n // per_n):
        c = _client(srv, f"198.51.100.{i}")
        for _ in range(per_n):
            c.predict(api_name="/consent")
    before = store.counts()["participants"]
    _client(srv, "192.0.2.11").predict(api_name="/consent")  # a new participant, during the flood
    assert store.counts()["participants"] == before + 1
    with pytest.raises(Exception, match="Too many new participant codes"):
        _client(srv, "198.51.100.0").predict(api_name="/consent")


def test_wrong_passwords_from_six_addresses_do_not_lock_out_a_seventh(tmp_path, monkeypatch):
    monkeypatch.setenv(ui.PASSWORD_ENV, "s3cret")
    monkeypatch.setattr(ui, "FAIL_DELAY_S", 0.0)
    store = Store(tmp_path / "r.sqlite")
    board = ui.Dashboard(store, make_protocol(tmp_path))
    (per_n, _), (all_n, _) = limits.LIMITS["password"]
    for i in range(all_n // per_n):  # 30 wrong passwords from 6 addresses
        for _ in range(per_n):
            with pytest.raises(ui.NotLoggedIn):
                board.login("guess", client=f"198.51.100.{i}")
    assert board.login("s3cret", client="192.0.2.7")  # the researcher, from a clean address
    with pytest.raises(ui.NotLoggedIn, match="locked"):
        board.login("s3cret", client="198.51.100.0")  # a guessing client stays locked
    store.close()


def test_wrong_saved_codes_on_page_load_count_as_guesses(tmp_path):
    protocol = make_protocol(tmp_path, min_turns=1, conversations=1)
    store = Store(tmp_path / "load.sqlite")
    study = Study(protocol, store, FakePool())
    limiter = Limiter(store)
    page = ParticipantUI(study, limiter=limiter)
    page.build()
    request = SimpleNamespace(client=SimpleNamespace(host="198.51.100.9"), query_params={})
    per_n = limits.LIMITS["code"][0][0]
    for i in range(per_n):
        page.on_load(f"AAAA-BBBB-{i:04d}", request=request)  # the page opens (empty) each time
    with pytest.raises(limits.RateLimited):
        limiter.check("code", "198.51.100.9")
    limiter.check("code", "192.0.2.1")  # another client is not affected
    store.close()


def test_reports_take_only_the_reason_the_page_offers(tmp_path):
    """Issue 24 item 7: a report's reason is the page's one option; any other value is refused, unstored."""
    from extes.study.session import StudyRefusal
    from extes.study.ui_participant import REPORT_OPTION

    protocol = make_protocol(tmp_path, min_turns=1, conversations=1)
    store = Store(tmp_path / "rep.sqlite")
    study = Study(protocol, store, FakePool())
    page = ParticipantUI(study)
    page.build()
    view = study.start_conversation(study.consent().code, "Academic Stress")
    list(study.send(view.code, view.conversation_id, "B", "hi"))
    for bad in ["<script>x</script> " * 500, True, False, None, "harmful"]:
        with pytest.raises(StudyRefusal):
            page.make_report("B")(view.code, view.conversation_id, SimpleNamespace(index=1, liked=bad))
    assert store.reports() == []
    page.make_report("B")(view.code, view.conversation_id, SimpleNamespace(index=1, liked=REPORT_OPTION))
    assert [r.reason for r in store.reports()] == [REPORT_OPTION]
    store.close()


def test_unqueued_run_routes_of_streaming_sends_are_refused(served):
    """Issue 24 item 7: `/gradio_api/run/send_*` (and `/api/`) bypassed the queue, left empty "streaming"
    rows and blocked the conversation; refused with 405 and nothing stored."""
    import httpx

    srv, store, study = served
    view = study.start_conversation(study.consent().code, "Academic Stress")
    before = store.counts()
    for route in ["run/send_all", "run/send_a", "api/send_b", "run/send_c/"]:
        r = httpx.post(srv.url + "gradio_api/" + route, json={"data": [view.code, view.conversation_id, "hi"]},
                       timeout=30)
        assert r.status_code == 405, (route, r.status_code)
        assert "queue" in r.text
    assert store.counts() == before
