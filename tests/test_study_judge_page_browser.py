"""The judges' page and the researcher's dashboard in a real browser (Playwright driving Debian's Chromium,
headless) against the real app with instant FakePool arms (issue 28, items 8-10):
- with the default protocol an invited judge gets nothing to judge, and both pages say why;
- a judge reads judge-worded questions ("the person's problems", not "your situation"), the scenario,
  panes that open at the top, and after the last item no "Here is your next item" above "nothing more";
- the dashboard's Agreement section says a sentence (not the validator's row dump), a risk flag is resolved
  with a note, and the one-time download holds the transcripts and works once.

Screenshots go to /work/notes/shots/research/ (when that folder's parent exists) and results/test-output/
research/ (gitignored) for a person to look at.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import zipfile
from pathlib import Path

import httpx
import pytest
from study_helpers import FakePool, ServerThread, chromium_browser, full_answers, make_protocol

from extes.study import annotation as ann
from extes.study import ui_research as ui
from extes.study.app import build_app
from extes.study.session import Study
from extes.study.store import Store

OUT = Path(__file__).resolve().parents[1] / "results" / "test-output" / "research"
NOTES_SHOTS = Path("/work/notes/shots/research")
TIMEOUT_MS = 60_000
DESKTOP = {"width": 1366, "height": 768}
PHONE = {"width": 390, "height": 844}
PASSWORD = "judge-page-password"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def browser():
    with chromium_browser() as b:
        yield b


def new_page(browser, viewport=DESKTOP):
    page = browser.new_context(viewport=viewport, accept_downloads=True).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    return page


def shot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    for folder in (OUT, NOTES_SHOTS):
        if folder.parent.exists():
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, folder / path.name)


def serve(tmp_path: Path, monkeypatch, **protocol_kw):
    monkeypatch.setenv(ui.PASSWORD_ENV, PASSWORD)
    monkeypatch.setattr(ui, "FAIL_DELAY_S", 0.0)
    protocol = make_protocol(tmp_path, min_turns=1, conversations=1, **protocol_kw)
    store = Store(tmp_path / "study.sqlite")
    study = Study(protocol, store, FakePool(words=40), rng=random.Random(0))
    return protocol, store, study, ServerThread(build_app(protocol, store, FakePool(words=40), study=study))


def finished_conversation(study: Study, turns: int = 5, risky: bool = False) -> str:
    v = study.consent()
    v = study.start_conversation(v.code, "Academic Stress", "My finals are next week and I panic.")
    for i in range(turns):
        text = "Sometimes I want to kill myself" if risky and i == 0 else f"I keep worrying about exam {i}"
        for _ in study.send(v.code, v.conversation_id, "ABC", text):
            pass
    study.submit_rating(v.code, v.conversation_id, full_answers(study))
    return v.conversation_id


def log_in_dashboard(page, url: str) -> None:
    page.goto(url + "research/")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Open the dashboard").click()
    page.get_by_text("Rated conversations").wait_for()


def judge_logs_in(page, url: str, code: str) -> None:
    page.goto(url + "annotate/")
    page.get_by_label("Judge code").fill(code)
    page.get_by_role("button", name="Start judging").click()
    page.get_by_text("Your judge code:").wait_for()


def test_default_protocol_says_why_judges_get_nothing_on_both_pages(browser, tmp_path, monkeypatch):
    protocol, store, study, server = serve(tmp_path, monkeypatch)
    assert not protocol.annotation.judges_see_conversations and not protocol.annotation.dataset
    finished_conversation(study, turns=1)
    [code] = ann.invite_judges(store, protocol, 1)
    with server as srv:
        page = new_page(browser)
        judge_logs_in(page, srv.url, code)
        page.get_by_text("There is nothing more for you to judge").wait_for()
        body = page.inner_text("body")
        assert "No conversations are queued for judging" in body and "not set up to show conversations" in body
        shot(page, tmp_path, "judge-nothing-default-protocol")
        log_in_dashboard(page, srv.url)
        page.get_by_text("Judges have nothing to judge.").wait_for()
        assert "judges_see_conversations: false" in page.inner_text("body")
        shot(page, tmp_path, "dashboard-judges-nothing")
    store.close()


def chat_scroll_tops(page) -> list[int]:
    """scrollTop of the scrolled box inside each judge chat pane (the element that overflows)."""
    return page.evaluate("""() => [...document.querySelectorAll('.extes-judge-chat')].map(pane => {
        const boxes = [pane, ...pane.querySelectorAll('*')].filter(el => el.scrollHeight > el.clientHeight + 20
            && ['auto', 'scroll'].includes(getComputedStyle(el).overflowY));
        return boxes.length ? Math.round(boxes[0].scrollTop) : -1; })""")


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_a_judge_reads_judge_questions_the_scenario_and_panes_from_the_top(browser, tmp_path, monkeypatch,
                                                                          viewport):
    protocol, store, study, server = serve(tmp_path, monkeypatch, annotation={
        "judges_per_item": 1, "judges_see_conversations": True})
    finished_conversation(study)
    [code] = ann.invite_judges(store, protocol, 1)
    name = "desktop" if viewport is DESKTOP else "phone"
    with server as srv:
        page = new_page(browser, viewport)
        judge_logs_in(page, srv.url, code)
        page.get_by_text("Topic the person chose:").wait_for()
        page.get_by_text("I keep worrying about exam 4").first.wait_for()
        page.wait_for_timeout(800)  # let the chats settle (an autoscroll would have run by now)
        body = page.inner_text("body")
        assert "Academic Stress" in body and "My finals are next week and I panic." in body
        assert "identified the person's problems" in body and "your situation" not in body
        assert "Here is your next item" not in body
        tops = chat_scroll_tops(page)
        assert len(tops) == 3 and all(t == 0 for t in tops), tops  # every pane overflows, opened at its top
        shot(page, tmp_path, f"judge-item-{name}")
        for radio in page.get_by_role("radio", name="Tie").all():
            radio.check()
        page.get_by_role("button", name="Submit and show the next item").click()
        page.get_by_text("There is nothing more for you to judge").wait_for()
        body = page.inner_text("body")
        assert "Saved." in body and "Here is your next item" not in body
        assert "Every item has all the judgments it needs for now" in body
        shot(page, tmp_path, f"judge-done-{name}")
    assert sum(a.status == "done" for a in store.assignments()) == 1
    store.close()


def test_dashboard_agreement_sentence_flag_resolution_and_transcript_download(browser, tmp_path, monkeypatch):
    protocol, store, study, server = serve(tmp_path, monkeypatch)
    cid = finished_conversation(study, turns=2, risky=True)
    (flag,) = store.flags()
    with server as srv:
        page = new_page(browser)
        log_in_dashboard(page, srv.url)
        page.get_by_text("Agreement is not computed yet").wait_for()
        body = page.inner_text("body")
        assert "row 0 (item_id=" not in body and "invalid ratings" not in body
        assert "| Open flags | 1 |" not in body and "Open flags\t1" in body

        page.get_by_label("Open flag to resolve").click()
        page.get_by_role("option", name=f"flag {flag.id}: suicide in {cid}", exact=False).click()
        page.get_by_label("Note: what was done").fill("Emailed the crisis resources to the participant")
        page.get_by_role("button", name="Resolve flag").click()
        page.get_by_text(f"Flag {flag.id} (suicide in {cid}) resolved.").wait_for()
        page.wait_for_function("() => document.body.innerText.includes('Open flags\\t0')", timeout=TIMEOUT_MS)
        assert "Emailed the crisis resources to the participant" in page.inner_text("body")  # the table's note
        shot(page, tmp_path, "dashboard-flag-resolved")

        page.get_by_role("button", name="Prepare CSV downloads").click()
        link = page.get_by_role("link", name="Download votes.csv, judge_votes.csv and ratings.csv (zip)")
        link.wait_for()
        href = link.get_attribute("href")
        with page.expect_download() as download:
            link.click()
        data = Path(download.value.path()).read_bytes()
        lines = [json.loads(x) for x in zipfile.ZipFile(io.BytesIO(data)).read("transcripts.jsonl").splitlines()]
        assert len(lines) == 12 and {x["conversation_id"] for x in lines} == {cid}
        assert {x["arm"] for x in lines} == set(store.conversation(cid).arm_order)
        assert [x["text"] for x in lines if x["role"] == "user"][0] == "Sometimes I want to kill myself"
        again = httpx.get(srv.url.rstrip("/") + href, timeout=30)
        assert again.status_code == 404 and b"transcripts" not in again.content  # a used link gives nothing
        shot(page, tmp_path, "dashboard-download")
    assert store.flags()[0].note == "Emailed the crisis resources to the participant"
    store.close()
