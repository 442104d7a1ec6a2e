"""The participant page on a phone and on a desktop, in a real browser (Playwright driving Debian's Chromium,
headless) against the real app with instant FakePool arms (issue 28, items 2, 3 and the pane chip of 7).

- Phone (390x844, is_mobile, touch, device_scale_factor 3): one pane at a time behind tabs built from the
  panes on the page; after every turn (send to all, send to one pane) the send box with its button and the
  newest reply of the shown pane are both wholly on the screen, with nobody scrolling; a tab marks a pane
  with a reply not yet seen, and showing it shows that reply. Before the fix the panes stacked and "Send to
  all" sat about 2,600 px below the top.
- Desktop (1366x768): the three panes side by side as before; no tabs.
- Crisis: after a risky message a dialog (role "alertdialog", focus inside) with the crisis resources is on
  the screen, desktop and phone; after "I have read this" a "Support resources" button next to the send box
  opens it again. Before the fix the banner appeared at the top only (about 1,380 px above the send box on
  a phone).
- The pane's label chip sits above the messages, not over the first visible line of a scrolled pane.
"""

from __future__ import annotations

import pytest
from study_helpers import FakePool, ServerThread, chromium_browser, make_protocol

pytestmark = [pytest.mark.browser, pytest.mark.slow]
TIMEOUT_MS = 60_000
PHONE = dict(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, device_scale_factor=3)
DESKTOP = dict(viewport={"width": 1366, "height": 768})
ALL_LABEL = "Send the same message to all three models"
RISKY = "Everything is too much and I want to die."


@pytest.fixture
def served(tmp_path):
    """A running app (FakePool replies of 30 words: several lines on a phone) and a browser."""
    from extes.study.app import build_app
    from extes.study.store import Store

    protocol = make_protocol(tmp_path, min_turns=2, conversations=2)
    store = Store(tmp_path / "study.sqlite")
    try:
        with ServerThread(build_app(protocol, store, FakePool(words=30))) as srv, chromium_browser() as browser:
            yield srv, browser
    finally:
        store.close()


def open_chat(served, device: dict):
    srv, browser = served
    page = browser.new_context(**device).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(srv.url)
    # "I agree" is enabled once the page's load event has run (the click waits for that); no wait for
    # "networkidle", which Gradio's open connections can hold off past any timeout
    page.get_by_role("button", name="I agree", exact=True).click()
    page.get_by_text("Your participant code:").first.wait_for()
    page.get_by_label("What would you like to talk about?").click()
    page.get_by_role("option", name="Academic Stress", exact=True).click()
    page.get_by_role("button", name="Start the conversation").click()
    page.get_by_placeholder("Message to Model A").wait_for(state="attached")
    page.wait_for_timeout(300)
    return page


def chat_of(page, pane: str):
    return page.locator(".extes-chat").nth("ABC".index(pane))


def send(page, target: str, text: str, expect: dict[str, int]) -> None:
    """Send `text` to one pane ("B") or to all ("ABC") and wait until each pane has `expect[pane]` replies and
    the page settled (no reply streaming)."""
    if target == "ABC":
        box = page.get_by_label(ALL_LABEL)
        button = page.get_by_role("button", name="Send to all", exact=True)
    else:
        box = page.get_by_placeholder(f"Message to Model {target}")
        button = page.get_by_role("button", name=f"Send to Model {target}", exact=True)
    box.fill(text)
    button.click()
    page.wait_for_function(
        """(want) => Object.entries(want).every(([i, n]) =>
             document.querySelectorAll('.extes-chat')[i].querySelectorAll('[data-testid="bot"]').length >= n)
           && !(document.querySelector('#rate-hint') || {textContent: ''}).textContent.includes('replying')""",
        arg={str("ABC".index(p)): n for p, n in expect.items()}, timeout=TIMEOUT_MS)
    page.wait_for_timeout(400)  # the page's own layout step runs on the next animation frame


def on_screen(page, locator, what: str) -> None:
    """`locator` is wholly inside the viewport as the page stands (nobody scrolls here)."""
    box = locator.bounding_box()
    assert box is not None, f"{what} is not shown"
    w, h = page.evaluate("() => [window.innerWidth, window.innerHeight]")
    assert box["y"] >= -0.5 and box["y"] + box["height"] <= h + 0.5, f"{what} is not on the screen: {box} (height {h})"
    assert box["x"] >= -0.5 and box["x"] + box["width"] <= w + 0.5, f"{what} is cut off at the side: {box}"


def newest_reply_on_screen(page, pane: str) -> None:
    chat = chat_of(page, pane)
    reply = chat.locator("[data-testid='bot']").last
    on_screen(page, reply, f"the newest reply of Model {pane}")
    inside = reply.evaluate("""(el) => { const log = el.closest('.bubble-wrap').getBoundingClientRect();
        const r = el.getBoundingClientRect(); return r.top >= log.top - 0.5 && r.bottom <= log.bottom + 0.5; }""")
    assert inside, f"the newest reply of Model {pane} is scrolled out of its pane"


def send_row_on_screen(page, target: str) -> None:
    if target == "ABC":
        on_screen(page, page.get_by_label(ALL_LABEL), "the 'send to all' box")
        on_screen(page, page.get_by_role("button", name="Send to all", exact=True), "the 'Send to all' button")
    else:
        on_screen(page, page.get_by_placeholder(f"Message to Model {target}"), f"Model {target}'s box")
        on_screen(page, page.get_by_role("button", name=f"Send to Model {target}", exact=True),
                  f"the 'Send to Model {target}' button")


def unread(page, pane: str) -> bool:
    return page.get_by_role("tab", name=f"Model {pane}, new reply").count() == 1


def test_phone_keeps_the_send_box_and_the_newest_reply_on_screen_at_every_turn(served):
    page = open_chat(served, PHONE)
    replies = {"A": 0, "B": 0, "C": 0}

    def turn(target: str, shown: str) -> None:
        for p in target if target != "ABC" else "ABC":
            replies[p] += 1
        send(page, target, f"Turn {sum(replies.values())}: I keep worrying about my exams.", dict(replies))
        send_row_on_screen(page, target)
        newest_reply_on_screen(page, shown)
        if target != "ABC":
            send_row_on_screen(page, "ABC")  # the 'send to all' row stays in view too

    turn("ABC", "A")
    tabs = page.get_by_role("tab")
    assert tabs.count() == 3, "a phone shows one pane at a time, with a tab per pane"
    assert [t.inner_text().strip() for t in tabs.all()] == ["Model A", "Model B", "Model C"]
    assert page.get_by_role("tab", name="Model A").get_attribute("aria-selected") == "true"
    assert chat_of(page, "A").is_visible() and not chat_of(page, "B").is_visible()
    assert unread(page, "B") and unread(page, "C") and not unread(page, "A")
    page.get_by_role("tab", name="Model B").click()
    page.wait_for_timeout(300)
    assert chat_of(page, "B").is_visible() and not chat_of(page, "A").is_visible()
    newest_reply_on_screen(page, "B")
    assert not unread(page, "B") and unread(page, "C")
    turn("B", "B")
    turn("ABC", "B")
    assert unread(page, "A") and unread(page, "C")
    page.get_by_role("tab", name="Model C").click()
    page.wait_for_timeout(300)
    newest_reply_on_screen(page, "C")
    turn("C", "C")
    turn("ABC", "C")
    turn("ABC", "C")
    # the arrow keys move between tabs (the ARIA tabs pattern)
    page.get_by_role("tab", name="Model C").focus()
    page.keyboard.press("ArrowRight")
    page.wait_for_timeout(300)
    assert page.get_by_role("tab", name="Model A", exact=False).get_attribute("aria-selected") == "true"
    newest_reply_on_screen(page, "A")


def test_desktop_keeps_three_columns_and_no_tabs(served):
    page = open_chat(served, DESKTOP)
    send(page, "ABC", "Hello there.", {"A": 1, "B": 1, "C": 1})
    boxes = [chat_of(page, p).bounding_box() for p in "ABC"]
    assert all(b is not None for b in boxes), "every pane is shown on a desktop"
    assert len({round(b["y"]) for b in boxes}) == 1, f"the panes are side by side: {boxes}"
    assert boxes[0]["x"] < boxes[1]["x"] < boxes[2]["x"]
    assert all(b["height"] == pytest.approx(460, abs=2) for b in boxes)
    assert page.get_by_role("tab").filter(visible=True).count() == 0
    send_row_on_screen(page, "ABC")


@pytest.mark.parametrize("device", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_crisis_resources_open_where_the_participant_looks_and_stay_reachable(served, device):
    page = open_chat(served, device)
    send(page, "ABC", RISKY, {"A": 1, "B": 1, "C": 1})
    dialog = page.get_by_role("alertdialog")
    dialog.wait_for(timeout=5000)
    on_screen(page, dialog, "the crisis dialog")
    assert "please reach out now" in dialog.inner_text()
    assert dialog.get_attribute("aria-modal") == "true"
    assert page.evaluate("() => document.activeElement && document.activeElement.textContent") == "I have read this"
    dialog.get_by_role("button", name="I have read this").click()
    dialog.wait_for(state="hidden")

    support = page.get_by_role("button", name="Support resources")
    on_screen(page, support, "the 'Support resources' button")
    box, button = page.get_by_label(ALL_LABEL).bounding_box(), support.bounding_box()
    gap = max(button["y"] - (box["y"] + box["height"]), box["y"] - (button["y"] + button["height"]))
    assert gap < 120, f"'Support resources' is next to the send box ({gap:.0f} px apart)"
    # the next turn keeps it and does not open the dialog again by itself
    send(page, "ABC", "Thank you, I will call someone.", {"A": 2, "B": 2, "C": 2})
    assert not dialog.is_visible()
    support.click()
    dialog.wait_for()
    on_screen(page, dialog, "the crisis dialog, opened again")
    assert "116 123" in dialog.inner_text()
    page.keyboard.press("Escape")
    dialog.wait_for(state="hidden")


def test_pane_label_chip_does_not_cover_a_scrolled_pane(served):
    page = open_chat(served, DESKTOP)
    for i in range(4):
        send(page, "A", f"Message {i}", {"A": i + 1})
    chat = chat_of(page, "A")
    log = chat.locator(".bubble-wrap")
    log.evaluate("(el) => { el.scrollTop = el.scrollHeight / 2; }")
    page.wait_for_timeout(200)
    chip = chat.locator("[data-testid='block-label']")
    assert chip.inner_text().strip() == "Model A"
    chip_box, log_box = chip.bounding_box(), log.bounding_box()
    assert chip_box["y"] + chip_box["height"] <= log_box["y"] + 0.5, (
        f"the label chip ({chip_box}) overlaps the messages ({log_box})")


@pytest.mark.parametrize("device", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_tabs_dialog_and_support_button_have_no_serious_axe_violations(served, device):
    from axe_helpers import axe_script, axe_violations

    axe_script()  # skips where axe-core is not installed (make setup)
    # The theme's primary buttons (white on orange) fail colour contrast on every page: the theme's, not
    # this layout's, so they are left out here.
    theirs = (".primary",)
    page = open_chat(served, device)
    send(page, "ABC", "Hello there.", {"A": 1, "B": 1, "C": 1})
    assert axe_violations(page, exclude=theirs) == []
    send(page, "ABC", RISKY, {"A": 2, "B": 2, "C": 2})
    page.get_by_role("alertdialog").wait_for()
    assert axe_violations(page, exclude=theirs) == []
    page.get_by_role("button", name="I have read this").click()
    assert axe_violations(page, exclude=theirs) == []
