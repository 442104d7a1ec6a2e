""""Forget my code on this browser" in a real browser (Playwright driving Debian's Chromium): the code is gone
from localStorage, a reload does not resume, and it stays forgotten when a later step would keep it again.
Gradio's BrowserState never writes an empty value, so before the fix the button changed the page's words
and left the code where a reload found it.
"""

from __future__ import annotations

import pytest
from study_helpers import FakePool, ServerThread, chromium_browser, make_protocol

from extes.study.ui_participant import CODE_STORAGE_KEY

pytestmark = [pytest.mark.browser, pytest.mark.slow]
TIMEOUT_MS = 60_000


def stored(page) -> str | None:
    return page.evaluate(f"() => localStorage.getItem('{CODE_STORAGE_KEY}')")


def test_forget_clears_the_browser_and_a_reload_does_not_resume(tmp_path):
    from extes.study.app import build_app
    from extes.study.store import Store

    protocol = make_protocol(tmp_path, min_turns=1, conversations=2)
    store = Store(tmp_path / "study.sqlite")
    try:
        with ServerThread(build_app(protocol, store, FakePool())) as srv, chromium_browser() as browser:
            page = browser.new_context(viewport={"width": 1366, "height": 768}).new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(srv.url)
            page.get_by_role("button", name="I agree", exact=True).click()
            page.get_by_text("Your participant code:").wait_for()
            page.wait_for_function(f"() => !!localStorage.getItem('{CODE_STORAGE_KEY}')")
            page.reload()  # kept: a reload resumes (the promise the page makes)
            page.get_by_text("Your participant code:").wait_for()

            page.get_by_role("button", name="Forget my code on this browser").click()
            page.get_by_text("no longer kept in this browser").wait_for()
            page.wait_for_function(f"() => localStorage.getItem('{CODE_STORAGE_KEY}') === null")
            # the page still works for this visit: start a conversation (a step that would store the code)
            page.get_by_label("What would you like to talk about?").click()
            page.get_by_role("option", name="Academic Stress", exact=True).click()
            page.get_by_role("button", name="Start the conversation").click()
            page.get_by_placeholder("Message to Model A").wait_for()
            page.wait_for_timeout(600)
            assert stored(page) is None

            page.reload()
            page.get_by_role("button", name="I agree", exact=True).wait_for()  # the consent page: not resumed
            page.wait_for_timeout(600)
            assert stored(page) is None
            assert not page.get_by_text("Your participant code:").is_visible()
    finally:
        store.close()
