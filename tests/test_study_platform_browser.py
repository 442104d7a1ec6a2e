"""A Prolific-style participant in a real browser (Playwright driving Debian's Chromium, headless) against the
real app with instant FakePool arms: the platform link (PROLIFIC_PID, STUDY_ID, SESSION_ID) skips the code
screen; a second tab with the same id is refused; consent, two conversations with ratings (with the
attention row), a dropout mid-study and a return with the same link that asks for the participant code (the
platform id alone opens nothing) and then resumes; the end shows the
completion code and link and redirects to the completion URL (intercepted with page.route).

Screenshots go to the test's tmp_path and results/test-output/e2e/ (gitignored) for a person to look at.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlencode

import pytest
from study_helpers import FakePool, ServerThread, chromium_browser, make_protocol

OUT = Path(__file__).resolve().parents[1] / "results" / "test-output" / "e2e"
TIMEOUT_MS = 60_000
PID = "5f8e3b2a9c1d4e6f7a8b9c0d"
PARAMS = {"PROLIFIC_PID": PID, "STUDY_ID": "study-e2e", "SESSION_ID": "session-e2e"}
COMPLETE = "https://app.prolific.com/submissions/complete"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def browser():
    with chromium_browser() as b:
        yield b


def new_page(browser):
    """A fresh browser profile (no saved code in localStorage): only the platform link can resume."""
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    return page


def shot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    OUT.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, OUT / path.name)


def send_all(page, text: str) -> None:
    box = page.get_by_label("Send the same message to all three models")
    for _attempt in range(20):
        box.fill(text)
        page.get_by_role("button", name="Send to all", exact=True).click()
        try:
            page.wait_for_function("(el) => el.value === ''", arg=box.element_handle(), timeout=3000)
            break
        except Exception:  # noqa: BLE001 - refused while busy: try again
            page.wait_for_timeout(500)
    page.get_by_role("heading", name="Your ratings").wait_for()


def start(page, scenario: str) -> None:
    page.get_by_label("What would you like to talk about?").click()
    page.get_by_role("option", name=scenario, exact=True).click()
    page.get_by_role("button", name="Start the conversation").click()
    page.get_by_placeholder("Message to Model A").wait_for()


def rate(page, n_questions: int) -> None:
    form = page.locator("div").filter(has=page.get_by_role("heading", name="Your ratings")).filter(
        has=page.get_by_role("button", name="Submit ratings")).last
    form.scroll_into_view_if_needed()
    ties = form.get_by_role("radio", name="Tie")
    assert ties.count() == n_questions + 1  # every aspect x pair, and the attention row
    for i in range(ties.count()):
        ties.nth(i).check()
    form.get_by_role("radio", name="Model A better").first.check()  # not straight-lined
    form.get_by_role("button", name="Submit ratings").click()


def enter_code(page, code: str) -> None:
    """A known platform id asks for the participant code (the id alone opens nothing)."""
    page.get_by_text("Welcome back").wait_for()
    assert "Message to Model A" not in page.content() or not page.get_by_placeholder("Message to Model A").is_visible()
    page.get_by_label("Participant code").fill(code)
    page.get_by_role("button", name="Continue with this code").click()


def return_and_finish(back, link: str, code: str, complete, redirected: list[str], tmp_path: Path,
                      n_questions: int) -> None:
    """The participant comes back with the platform link in a fresh browser, enters their code, finishes,
    and is redirected."""
    back.route(f"{COMPLETE}*", complete)
    back.goto(link)  # the same link from the platform, in a fresh browser: asks for the code
    back.get_by_text("Welcome back").wait_for()
    shot(back, tmp_path, "p3-welcome-back")
    enter_code(back, code)
    back.get_by_placeholder("Message to Model A").wait_for()
    back.get_by_text("Conversation 2 of 2").wait_for()
    back.get_by_text("We broke up last month and I still think about it.").first.wait_for()  # the chat so far
    shot(back, tmp_path, "p3-resumed")
    rate(back, n_questions)
    back.get_by_text("Your completion code:").wait_for()
    body = back.inner_text("body")
    assert "C1A2B3" in body and PID not in body
    assert back.get_by_role("link", name="Return to the recruitment platform").get_attribute("href") == \
        f"{COMPLETE}?cc=C1A2B3"
    shot(back, tmp_path, "p4-completion")
    back.wait_for_url(f"{COMPLETE}*", timeout=TIMEOUT_MS)  # the redirect
    assert redirected and redirected[-1] == f"{COMPLETE}?cc=C1A2B3"



def after_the_end(again, link: str, code: str):
    """After the end, in a fresh browser: the id alone shows no completion code; the participant code does."""
    again.goto(link)
    again.get_by_text("Welcome back").wait_for()
    assert "C1A2B3" not in again.inner_text("body")
    enter_code(again, code)
    again.get_by_text("Your completion code:").wait_for()
    return again


def dashboard(page, url: str, tmp_path: Path) -> None:
    """The researcher sees the platform session on /research (started, completed, minutes)."""
    page.goto(url + "research/")
    page.get_by_label("Password").fill("e2e-password")
    page.get_by_role("button", name="Open the dashboard").click()
    page.get_by_text("1 started, 1 completed, 0 screened out, 0 dropped out, 0 in progress").wait_for()
    assert PID not in page.inner_text("body")
    shot(page, tmp_path, "p5-dashboard")


def check_store(store, n_questions: int) -> None:
    """What the browser session left in the store."""
    (session,) = store.platform_sessions()
    assert session.completed_at and session.last_stage == "done" and session.raw_id is None
    assert session.study_id == "study-e2e" and session.session_id == "session-e2e"
    convs = store.all_conversations()
    assert [c.status for c in convs] == ["rated", "rated"]
    assert all(store.rating_checks(c.id).instructed_answer == "tie" for c in convs)
    assert store.conversation_flags() == []
    assert len(store.votes()) == 2 * n_questions  # the attention row is never a vote


def check_shots(tmp_path: Path) -> None:
    for name in ("p1-platform-consent", "p2-second-start-refused", "p3-welcome-back", "p3-resumed", "p4-completion", "p5-dashboard"):
        assert (tmp_path / f"{name}.png").stat().st_size > 5_000


def test_prolific_participant_in_a_real_browser(browser, tmp_path, monkeypatch):
    from extes.study.app import build_app
    from extes.study.store import Store

    monkeypatch.setenv("EXTES_PLATFORM_SALT", "e2e-salt-0123456789abcdef")
    monkeypatch.setenv("EXTES_RESEARCH_PASSWORD", "e2e-password")
    protocol = make_protocol(
        tmp_path, min_turns=1, conversations=2,
        recruitment={"platform": "prolific", "completion_code": "C1A2B3", "screened_out_code": "NOCONSENT"},
        attention={"instructed_response": True, "flag_straight_lining": True,
                   "exclude": ["failed_attention", "straight_lined"]})
    n_questions = len(protocol.aspects) * 3
    store = Store(tmp_path / "study.sqlite")
    link_query = "?" + urlencode(PARAMS)
    try:
        with ServerThread(build_app(protocol, store, FakePool())) as srv:
            link = srv.url + link_query
            page, other = new_page(browser), new_page(browser)
            redirected: list[str] = []

            def complete(route):
                redirected.append(route.request.url)
                route.fulfill(status=200, content_type="text/html", body="<h1>Prolific: submission complete</h1>")

            page.route(f"{COMPLETE}*", complete)
            page.goto(link)
            other.goto(link)
            page.get_by_role("button", name="I do not agree").wait_for()  # a platform arrival
            assert not page.get_by_text("Coming back? Enter your participant code").is_visible()  # no code screen
            shot(page, tmp_path, "p1-platform-consent")

            page.get_by_role("button", name="I agree", exact=True).click()
            page.get_by_text("Your participant code:").wait_for()
            code = page.locator(".extes-code strong").inner_text().strip()
            # the same platform id, started in a second tab: refused, nothing stored
            other.get_by_role("button", name="I agree", exact=True).click()
            other.get_by_text("cannot be started twice").first.wait_for()
            shot(other, tmp_path, "p2-second-start-refused")
            assert store.counts()["participants"] == 1

            start(page, "Academic Stress")
            send_all(page, "My exams are next week and I cannot sleep.")
            rate(page, n_questions)
            page.get_by_role("button", name="Start the next conversation").click()
            start(page, "Breakups or Divorce")
            send_all(page, "We broke up last month and I still think about it.")
            page.reload()  # the same browser kept the code: the link resumes without asking
            page.get_by_text("We broke up last month and I still think about it.").first.wait_for()
            assert not page.get_by_text("Welcome back").is_visible()
            page.close()  # dropout in the middle of the second conversation, before rating it

            return_and_finish(new_page(browser), link, code, complete, redirected, tmp_path, n_questions)
            again = after_the_end(new_page(browser), link, code)
            assert store.counts()["participants"] == 1
            dashboard(again, srv.url, tmp_path)
    finally:
        store.close()

    check_store(store, n_questions)
    check_shots(tmp_path)
