"""The rating form never loses answers (issue 28, item 1), in a real browser (Playwright driving Debian's
Chromium) on a desktop (1366x768) and a phone (390x844).

Before: submitting with one question unanswered raised into the handler's outputs, Gradio drew a red
"Error" badge on every component and the form could no longer be used; a reload restored nothing.
Now only the unanswered questions are marked "Please answer this", every answer and the comment stay,
the first marked question is scrolled into view, and a reload (or a return) restores the form from the
draft kept on the server, which goes away with the submission.

Screenshots go to /work/notes/shots/form/ when that folder exists (for a person to look at), else to
results/test-output/form/.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from study_helpers import FakePool, ServerThread, chromium_browser, make_protocol

pytestmark = [pytest.mark.browser, pytest.mark.slow]
TIMEOUT_MS = 60_000
SHOTS = Path("/work/notes/shots/form")
OUT = SHOTS if SHOTS.parent.exists() else Path(__file__).resolve().parents[1] / "results" / "test-output" / "form"
VIEWPORTS = {"desktop": {"width": 1366, "height": 768}, "phone": {"width": 390, "height": 844}}


def shot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path))
    OUT.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, OUT / path.name)


def start_chat(page, url: str) -> str:
    """Consent, pick a topic, start; returns the participant code."""
    page.goto(url)
    for _attempt in range(5):  # a click before the page has wired its buttons does nothing: again
        page.get_by_role("button", name="I agree", exact=True).click()
        try:
            page.get_by_text("Your participant code:").wait_for(timeout=15_000)
            break
        except Exception:  # noqa: BLE001
            continue
    code = re.search(r"[A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4}", page.inner_text("body")).group(0)
    page.get_by_label("What would you like to talk about?").click()
    page.get_by_role("option", name="Academic Stress", exact=True).click()
    page.get_by_role("button", name="Start the conversation").click()
    page.get_by_placeholder("Message to Model A").wait_for()
    return code


def send_all(page, text: str) -> None:
    box = page.get_by_label("Send the same message to all three models")
    box.fill(text)
    page.get_by_role("button", name="Send to all", exact=True).click()


def question(page, key: str):
    return page.locator(f"#q-{key.replace(':', '-')}")


def reload_restores(page, store, conv: str, keys: list[str], blank: list[str]) -> None:
    """A reload restores the form from the server's draft (answers and comment)."""
    for _ in range(50):  # the comment's last save may still be on its way
        d = store.draft(conv)
        if d is not None and d.comment == "Model A listened well.":
            break
        page.wait_for_timeout(100)
    page.reload()
    page.get_by_role("heading", name="Your ratings").wait_for()
    page.wait_for_function("() => document.querySelector('#rating-comment textarea')?.value === "
                           "'Model A listened well.'")
    assert question(page, keys[0]).get_by_role("radio", name="Model A better").is_checked()
    assert all(question(page, k).get_by_role("radio", name="Tie").is_checked() for k in keys[1:] if k not in blank)
    assert not any(question(page, k).get_by_role("radio", name=n).is_checked()
                   for k in blank for n in ("Tie", "Model A better"))


@pytest.mark.parametrize("device", list(VIEWPORTS))
def test_a_blank_answer_is_marked_in_place_and_a_reload_restores_the_form(tmp_path, device):
    from extes.study.app import build_app
    from extes.study.rating import questions
    from extes.study.store import Store

    protocol = make_protocol(tmp_path, min_turns=1, conversations=2)
    keys = [q.key for q in questions(protocol)]
    blank = [keys[4], keys[10]]
    store = Store(tmp_path / "study.sqlite")
    try:
        with ServerThread(build_app(protocol, store, FakePool())) as srv, chromium_browser() as browser:
            page = browser.new_context(viewport=VIEWPORTS[device]).new_page()
            page.set_default_timeout(TIMEOUT_MS)
            code = start_chat(page, srv.url)
            send_all(page, "I cannot sleep before my exams.")
            page.get_by_role("heading", name="Your ratings").wait_for()
            for key in keys:
                if key not in blank:
                    question(page, key).get_by_role("radio", name="Tie").check()
            question(page, keys[0]).get_by_role("radio", name="Model A better").check()
            page.get_by_label("Anything you would like to add? (optional)").fill("Model A listened well.")
            page.get_by_role("button", name="Submit ratings").click()

            # only the two blank questions are marked, in place; no error badges; nothing lost
            try:
                page.wait_for_function("() => document.querySelectorAll('#rating-form .validation-error').length === 2",
                                       timeout=20_000)
            finally:
                shot(page, tmp_path, f"rating-missing-{device}")
            for key in blank:
                assert question(page, key).get_by_text("Please answer this").is_visible()
            assert page.get_by_text("Error", exact=True).count() == 0
            assert question(page, keys[0]).get_by_role("radio", name="Model A better").is_checked()
            assert question(page, keys[1]).get_by_role("radio", name="Tie").is_checked()
            comment = page.get_by_label("Anything you would like to add? (optional)")
            assert comment.input_value() == "Model A listened well."
            # the first marked question is scrolled into view
            page.wait_for_function(
                "(id) => { const r = document.getElementById(id).getBoundingClientRect(); "
                "return r.top >= 0 && r.bottom <= window.innerHeight; }",
                arg=f"q-{blank[0].replace(':', '-')}", timeout=5000)
            shot(page, tmp_path, f"rating-missing-{device}")
            assert store.counts()["votes"] == 0

            conv = store.conversations_of(store.participant_by_code(code).id)[0].id
            reload_restores(page, store, conv, keys, blank)
            shot(page, tmp_path, f"rating-restored-{device}")

            for key in blank:
                question(page, key).get_by_role("radio", name="Tie").check()
            page.get_by_role("button", name="Submit ratings").click()
            page.get_by_text("Your ratings are saved").wait_for()
            assert store.counts()["votes"] == len(keys)
            assert store.draft(conv) is None  # the draft went with the submission
            assert store.conversation(conv).comment == "Model A listened well."
    finally:
        store.close()
