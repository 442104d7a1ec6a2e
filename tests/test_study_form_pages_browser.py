"""Feedback, wording and lockouts on the participant and research pages (issue 28, items 5, 7, 10), in
a real browser (Playwright driving Debian's Chromium, 1366x768).

Before: the send buttons stayed on while the models replied (a second send was dropped, its text left in
the box); the note about the browser keeping the code showed before consent and said "press the button";
the topic list had no placeholder; a wrong research password drew "Error" badges over the login form;
lockouts said "a few minutes" or "for a while".
"""

from __future__ import annotations

import re

import pytest
from study_helpers import FakePool, ServerThread, chromium_browser, make_protocol
from test_study_form_browser import shot

from extes.study import ui_research
from extes.study.limits import Limiter, RateLimited

pytestmark = [pytest.mark.browser, pytest.mark.slow]
TIMEOUT_MS = 60_000
DESKTOP = {"width": 1366, "height": 768}
SEND_BUTTONS = ["Send to Model A", "Send to Model B", "Send to Model C", "Send to all"]


def test_sending_is_off_while_the_models_reply_and_the_words_are_clear(tmp_path):
    from extes.study.app import build_app
    from extes.study.store import Store

    protocol = make_protocol(tmp_path, min_turns=3, conversations=2)
    store = Store(tmp_path / "study.sqlite")
    try:
        with (ServerThread(build_app(protocol, store, FakePool(delay=0.15, words=30))) as srv,
              chromium_browser() as browser):
            page = browser.new_context(viewport=DESKTOP).new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(srv.url)
            page.get_by_role("button", name="I agree", exact=True).wait_for()
            assert not page.locator("#browser-note").is_visible()  # before consent: nothing is kept yet
            page.get_by_role("button", name="I agree", exact=True).click()
            note = page.locator("#browser-note")
            note.wait_for()
            assert '"Forget my code on this browser"' in note.inner_text()  # names the button
            assert "press the button" not in note.inner_text()
            page.wait_for_function("() => document.querySelector('#topic input')?.placeholder === 'Choose a topic'")
            shot(page, tmp_path, "setup-topic-placeholder-desktop")
            page.get_by_label("What would you like to talk about?").click()
            page.get_by_role("option", name="Academic Stress", exact=True).click()
            page.get_by_role("button", name="Start the conversation").click()
            page.get_by_placeholder("Message to Model A").wait_for()

            box = page.get_by_label("Send the same message to all three models")
            box.fill("I cannot sleep before my exams.")
            page.get_by_role("button", name="Send to all", exact=True).click()
            buttons = [page.get_by_role("button", name=n, exact=True) for n in SEND_BUTTONS]
            page.wait_for_function("(names) => names.every(n => [...document.querySelectorAll('button')]"
                                   ".some(b => b.innerText.trim() === n && b.disabled))", arg=SEND_BUTTONS)
            assert page.get_by_text("The models are replying").is_visible()
            shot(page, tmp_path, "replying-buttons-off-desktop")
            # a second message typed meanwhile stays in its box: it cannot be sent silently into nothing
            other = page.get_by_placeholder("Message to Model B")
            other.fill("And one more thing")
            assert all(b.is_disabled() for b in buttons)
            page.wait_for_function("(names) => names.every(n => [...document.querySelectorAll('button')]"
                                   ".some(b => b.innerText.trim() === n && !b.disabled))", arg=SEND_BUTTONS)
            page.get_by_text("Model A: 2 more messages needed").wait_for()
            assert other.input_value() == "And one more thing"
            # Enter in a box sends when sending is on
            other.press("Enter")
            page.get_by_text("Model B: 1 more message needed").wait_for()
            assert other.input_value() == ""
            page.wait_for_function("(names) => names.every(n => [...document.querySelectorAll('button')]"
                                   ".some(b => b.innerText.trim() === n && !b.disabled))", arg=SEND_BUTTONS)
    finally:
        store.close()


def test_a_wrong_password_keeps_the_login_form_and_the_lockout_says_how_long(tmp_path, monkeypatch):
    from extes.study.app import build_app
    from extes.study.store import Store

    monkeypatch.setenv(ui_research.PASSWORD_ENV, "right-one")
    monkeypatch.setattr(ui_research, "FAIL_DELAY_S", 0.0)
    protocol = make_protocol(tmp_path, min_turns=1)
    store = Store(tmp_path / "study.sqlite")
    try:
        with ServerThread(build_app(protocol, store, FakePool())) as srv, chromium_browser() as browser:
            page = browser.new_context(viewport=DESKTOP).new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(srv.url + "research/")
            password = page.get_by_label("Password")
            password.fill("wrong")
            page.get_by_role("button", name="Open the dashboard").click()
            page.get_by_text("Wrong password.").wait_for()
            page.wait_for_timeout(500)
            shot(page, tmp_path, "research-wrong-password-desktop")
            assert page.get_by_text("Error", exact=True).count() == 0  # no badges
            assert password.is_visible() and page.get_by_role("button", name="Open the dashboard").is_enabled()
            for _ in range(5):
                password.fill("wrong")
                page.get_by_role("button", name="Open the dashboard").click()
                page.wait_for_timeout(300)
            page.get_by_text(re.compile(r"Please wait about 1[45] minutes")).wait_for()
            assert page.get_by_text("Error", exact=True).count() == 0
            shot(page, tmp_path, "research-locked-desktop")
    finally:
        store.close()


def test_lockouts_say_how_long(tmp_path):
    from extes.study.store import Store

    store = Store(tmp_path / "s.sqlite")
    limiter = Limiter(store, {"code": ((3, 600.0), (1000, 60.0)), "consent": ((1, 90.0), (1000, 60.0)),
                              "password": ((2, 900.0), (1000, 900.0))})
    for _ in range(3):
        limiter.hit("code", "10.0.0.1")
    with pytest.raises(RateLimited, match=r"Please wait about 10 minutes, then check your code"):
        limiter.hit("code", "10.0.0.1")
    with pytest.raises(RateLimited, match=r"Please wait about 10 minutes"):
        limiter.check("code", "10.0.0.1")
    limiter.hit("consent", "10.0.0.2")
    with pytest.raises(RateLimited, match=r"Please wait about 2 minutes"):
        limiter.hit("consent", "10.0.0.2")
    store.close()


def test_the_screened_out_page_does_not_call_its_code_a_completion_code(tmp_path):
    from extes.study.session import Study
    from extes.study.store import Store
    from extes.study.ui_participant import ParticipantUI
    from extes.study.views import SessionView

    study = Study(make_protocol(tmp_path), Store(tmp_path / "s.sqlite"), FakePool())
    ui = ParticipantUI(study)
    out = ui._completion_md(SessionView(stage="screened_out", code="", participant_id="",
                                        completion_url="https://example.org/x", completion_code="NOCONSENT1"))
    assert "completion code" not in out.lower() and "**NOCONSENT1**" in out
