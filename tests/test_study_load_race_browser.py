"""A participant who presses "I agree" before the page has finished loading (a slow phone connection) in a
real browser (Playwright driving Debian's Chromium).

The page's load event draws the screen for what it knows (nothing yet: the consent page). When a click on
"I agree" was answered before that load event, the late load drew the consent page again over the new
code: the participant saw consent twice, and the second click made a second participant. The first
buttons are now off until the load event has returned; this test slows the load event and clicks at once.
"""

from __future__ import annotations

import time

import pytest
from study_helpers import FakePool, ServerThread, chromium_browser, make_protocol

pytestmark = [pytest.mark.browser, pytest.mark.slow]
TIMEOUT_MS = 60_000
LOAD_DELAY_S = 3.0


def test_agree_before_the_page_has_loaded_is_not_undone(tmp_path, monkeypatch):
    from extes.study.app import build_app
    from extes.study.store import Store
    from extes.study.ui_participant import ParticipantUI

    original = ParticipantUI.on_load

    def slow_load(self, *args, **kwargs):
        time.sleep(LOAD_DELAY_S)  # a slow connection, or a busy server
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ParticipantUI, "on_load", slow_load)
    protocol = make_protocol(tmp_path, min_turns=1, conversations=1)
    store = Store(tmp_path / "study.sqlite")
    try:
        with ServerThread(build_app(protocol, store, FakePool())) as srv, chromium_browser() as browser:
            page = browser.new_context(viewport={"width": 390, "height": 844}).new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(srv.url)
            agree = page.get_by_role("button", name="I agree", exact=True)
            agree.wait_for()
            # a press as soon as the button is drawn; a button that is off takes no click
            agree.click(force=True)
            agree.click()  # Playwright waits until it is on (the load event has returned), then presses
            topic = page.get_by_label("What would you like to talk about?")
            topic.wait_for()
            page.wait_for_timeout(LOAD_DELAY_S * 1000 + 1500)  # any late load event has landed by now
            assert topic.is_visible(), "the page went back to the consent text after 'I agree'"
            assert not agree.is_visible()
            assert store.counts()["participants"] == 1
    finally:
        store.close()
