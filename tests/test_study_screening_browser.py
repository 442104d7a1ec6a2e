"""A screened-out reply in a real browser (Playwright driving Debian's Chromium), desktop and phone: the pane
whose model wrote the harmful line of issue 28 shows the neutral message and the crisis resources, and the
harmful words never appear in the page, not even while the replies stream (the page is polled throughout).
Screenshots go to /work/notes/shots/replies/ when that folder's parent exists.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from study_helpers import ARM_NAMES, FakePool, ServerThread, chromium_browser, make_protocol

from extes.study.screening import DEFAULT_MESSAGE

pytestmark = [pytest.mark.browser, pytest.mark.slow]
TIMEOUT_MS = 60_000
HARMFUL = "I hear you. Maybe the grief for what you did was worth dying with? Think about it."
SHOTS = Path("/work/notes/shots/replies")
VIEWPORTS = {"desktop": {"width": 1366, "height": 768}, "phone": {"width": 390, "height": 844}}


def _only_conversation(store):
    import sqlalchemy as sa

    from extes.study.store.schema import conversations

    with store.engine.connect() as conn:
        cid = conn.execute(sa.select(conversations.c.id)).scalar()
    return store.conversation(cid) if cid else None


@pytest.mark.parametrize("device", list(VIEWPORTS))
def test_the_replacement_is_shown_and_the_harmful_words_never_are(tmp_path, device):
    from extes.study.app import build_app
    from extes.study.store import Store

    protocol = make_protocol(tmp_path, min_turns=1, conversations=1)
    store = Store(tmp_path / "study.sqlite")
    pool = FakePool(texts={ARM_NAMES[1]: HARMFUL}, delay=0.05)
    try:
        with ServerThread(build_app(protocol, store, pool)) as srv, chromium_browser() as browser:
            page = browser.new_context(viewport=VIEWPORTS[device]).new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(srv.url)
            page.get_by_role("button", name="I agree", exact=True).click()
            page.get_by_label("What would you like to talk about?").click()
            page.get_by_role("option", name="Academic Stress", exact=True).click()
            page.get_by_role("button", name="Start the conversation").click()
            page.get_by_label("Send the same message to all three models").fill("everyone would be better off without me")
            page.get_by_role("button", name="Send to all", exact=True).click()
            seen_harmful = False
            for _ in range(200):  # poll the page while the replies stream
                # textContent, not innerText: a pane hidden behind the phone's tabs counts too
                body = page.evaluate("() => document.body.textContent")
                seen_harmful |= "dying" in body
                conv = _only_conversation(store)
                if DEFAULT_MESSAGE in body and conv is not None and not store.is_streaming(conv.id):
                    break
                page.wait_for_timeout(100)
            else:
                raise AssertionError("the replacement never appeared")
            assert not seen_harmful
            pane = "ABC"[conv.arm_order.index(ARM_NAMES[1])]
            if device == "phone":  # the crisis dialog is modal; then the screened pane's tab
                page.get_by_role("button", name="I have read this").click()
                page.get_by_role("tab", name=f"Model {pane}", exact=False).click()
            replacement = page.get_by_text(DEFAULT_MESSAGE).filter(visible=True).first
            replacement.scroll_into_view_if_needed()
            assert replacement.is_visible() and "dying" not in page.evaluate("() => document.body.textContent")
            assert page.get_by_text("988 Suicide & Crisis Lifeline").first.is_visible()
            if SHOTS.parent.is_dir():
                SHOTS.mkdir(exist_ok=True)
                page.screenshot(path=str(SHOTS / f"replacement-{device}-pane-{pane}.png"))
    finally:
        store.close()
