"""A five-arm study in two panes in a real browser (Playwright driving Debian's Chromium): consent, start, send
the same message to both models, rate each aspect for the one pair on screen, thanks. The page shows two
chats, says "both models", and asks no question about a third pane; the stored conversation holds two of
the five arms and the votes compare exactly those two. Screenshots at a laptop's and a phone's size go to
results/test-output/panes/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from study_helpers import FakePool, ServerThread, chromium_browser, make_protocol

pytestmark = [pytest.mark.browser, pytest.mark.slow]
TIMEOUT_MS = 60_000
FIVE = ("arm-one", "arm-two", "arm-three", "arm-four", "arm-five")
OUT = Path(__file__).resolve().parents[1] / "results" / "test-output" / "panes"


def shot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    OUT.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, OUT / path.name)
    return path


def participant_run(page, url: str, tmp_path: Path, size: str) -> None:
    page.goto(url)
    page.get_by_role("button", name="I agree", exact=True).click()
    page.get_by_label("What would you like to talk about?").click()
    page.get_by_role("option", name="Academic Stress", exact=True).click()
    page.get_by_role("button", name="Start the conversation").click()
    page.get_by_placeholder("Message to Model A").wait_for()
    if size == "phone":  # one pane at a time behind tabs: exactly two tabs, and B's box behind the second
        assert page.get_by_role("tab").filter(visible=True).count() == 2
        page.get_by_role("tab", name="Model B").click()
    page.get_by_placeholder("Message to Model B").wait_for()
    assert page.get_by_placeholder("Message to Model C").count() == 0
    assert page.get_by_role("button", name="Send to all", exact=True).count() == 0
    box = page.get_by_label("Send the same message to both models")
    box.fill("I am worried about my exams next week.")
    page.get_by_role("button", name="Send to both", exact=True).click()
    for pane in ("A", "B"):
        if size == "phone":  # innerText skips the hidden pane, so look at each pane in turn
            page.get_by_role("tab", name=f"Model {pane}", exact=False).click()
        page.wait_for_function("(t) => document.body.innerText.includes(t)",
                               arg=f"Model {pane}: minimum reached (1 replies)", timeout=TIMEOUT_MS)
    shot(page, tmp_path, f"{size}-01-two-panes")
    form = page.locator("div").filter(has=page.get_by_role("heading", name="Your ratings")).filter(
        has=page.get_by_role("button", name="Submit ratings")).last
    form.scroll_into_view_if_needed()
    ties = form.get_by_role("radio", name="Tie")
    assert ties.count() == 5  # five aspects x the one pair on screen
    for i in range(5):
        ties.nth(i).check()
    form.get_by_role("radio", name="Model B better").first.check()
    assert "Model C" not in form.inner_text()
    shot(page, tmp_path, f"{size}-02-rating-form")
    form.get_by_role("button", name="Submit ratings").click()
    page.get_by_text("You have completed the study").wait_for()
    page.wait_for_timeout(1500)  # the page's follow-up events settle (their pending state greys the text)
    shot(page, tmp_path, f"{size}-03-thanks")


def test_five_arms_in_two_panes_in_a_real_browser(tmp_path):
    from extes.study.app import build_app
    from extes.study.store import Store

    protocol = make_protocol(tmp_path, arms=[{"name": n} for n in FIVE], min_turns=1, conversations=1, panes=2,
                             title="Talking about something that weighs on you: two support chatbots")
    store = Store(tmp_path / "study.sqlite")
    try:
        with ServerThread(build_app(protocol, store, FakePool(FIVE))) as srv, chromium_browser() as browser:
            for size, (w, h) in {"laptop": (1366, 768), "phone": (390, 844)}.items():
                page = browser.new_context(viewport={"width": w, "height": h}).new_page()
                page.set_default_timeout(TIMEOUT_MS)
                participant_run(page, srv.url, tmp_path, size)
                page.context.close()
        convs = store.all_conversations()
        assert len(convs) == 2 and all(c.status == "rated" and len(c.arm_order) == 2 for c in convs)
        assert len({frozenset(c.arm_order) for c in convs}) == 2  # balanced: two different pairs
        votes = store.votes_frame()
        assert len(votes) == 10
        for conv in convs:
            mine = votes[votes["conversation_id"] == conv.id]
            assert set(zip(mine["arm_a"], mine["arm_b"])) == {tuple(conv.arm_order)}
            assert mine.set_index("aspect").loc["fluency", "outcome"] == "b"
            panes = {m.pane for m in store.messages(conv.id)}
            assert panes == {"A", "B"}
    finally:
        store.close()
