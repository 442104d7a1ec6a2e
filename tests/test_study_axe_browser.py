"""Accessibility in a real browser (Playwright driving Debian's Chromium, headless) against the real app with
instant FakePool arms: axe-core (tests/axe_helpers.py) finds no serious or critical violation on the
participant page (consent, chat, rating, thanks), the judges' page and the researcher's dashboard, on a desktop
(1366x768) and a phone (390x844); every control has a name; Enter sends; Tab walks the chat page in the order
it is drawn.

Each run writes what axe found (rule, impact, page, viewport) to results/test-output/axe/violations.json
(gitignored), so the numbers in a closing note come from a run, not from memory.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from axe_helpers import axe_script, axe_violations
from study_helpers import FakePool, ServerThread, chromium_browser, make_protocol

from extes.study import annotation as ann
from extes.study import ui_research as ui
from extes.study.app import build_app
from extes.study.session import Study
from extes.study.store import Store

OUT = Path(__file__).resolve().parents[1] / "results" / "test-output" / "axe"
NOTES_SHOTS = Path("/work/notes/shots/research")
TIMEOUT_MS = 60_000
VIEWPORTS = {"desktop": {"width": 1366, "height": 768}, "phone": {"width": 390, "height": 844}}
PASSWORD = "axe-password"
SEND_LABEL = "Send the same message to all three models"
ALL_IMPACTS = ("minor", "moderate", "serious", "critical")

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def served(tmp_path, monkeypatch):
    axe_script()  # skip early, saying how to install axe-core, where it is missing
    monkeypatch.setenv(ui.PASSWORD_ENV, PASSWORD)
    monkeypatch.setattr(ui, "FAIL_DELAY_S", 0.0)
    protocol = make_protocol(tmp_path, min_turns=1, conversations=1,
                             annotation={"judges_per_item": 1, "judges_see_conversations": True})
    store = Store(tmp_path / "study.sqlite")
    study = Study(protocol, store, FakePool(), rng=random.Random(0))
    with ServerThread(build_app(protocol, store, FakePool(), study=study)) as srv:
        yield srv, protocol, store, study
    store.close()


@pytest.fixture(scope="module")
def browser():
    with chromium_browser() as b:
        yield b


def record(found: dict, where: str, page) -> None:
    """Every violation axe finds (all impacts, for the record) under `where`, once Gradio has drawn the page
    (outputs still pending are drawn faded, which axe would read as low contrast)."""
    try:
        page.wait_for_function("() => ![...document.querySelectorAll('.pending, .generating, .translucent')]"
                               ".some(el => el.offsetParent !== null)", timeout=5000)
    except Exception:  # noqa: BLE001 - a component that stays marked: axe then reports what it sees
        pass
    page.wait_for_timeout(500)
    violations = axe_violations(page, impacts=ALL_IMPACTS)
    if any(v.impact in ("serious", "critical") for v in violations):  # a fade still running: look once more
        page.wait_for_timeout(1500)
        violations = axe_violations(page, impacts=ALL_IMPACTS)
    found[where] = [{"rule": v.rule, "impact": v.impact, "targets": list(v.targets[:3])} for v in violations]


def write_record(found: dict, name: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(found, indent=1))


def blocking(found: dict) -> dict[str, list[str]]:
    return {where: [f"{v['impact']}: {v['rule']} at {', '.join(v['targets'])}" for v in vs
                    if v["impact"] in ("serious", "critical")] for where, vs in found.items()
            if any(v["impact"] in ("serious", "critical") for v in vs)}


def participant_pages(page, url: str, found: dict, tag: str) -> None:
    page.goto(url)
    page.get_by_role("button", name="I agree").wait_for()
    record(found, f"consent/{tag}", page)
    page.get_by_role("button", name="I agree").click()
    page.get_by_label("What would you like to talk about?").click()
    page.get_by_role("option", name="Academic Stress", exact=True).click()
    page.get_by_role("button", name="Start the conversation").click()
    page.get_by_placeholder("Message to Model A").wait_for()
    box = page.get_by_label(SEND_LABEL)
    box.fill("My exams are next week and I cannot sleep.")
    box.press("Enter")  # Enter sends
    page.get_by_role("heading", name="Your ratings").wait_for()
    assert box.input_value() == ""
    record(found, f"chat+rating/{tag}", page)
    if NOTES_SHOTS.parent.exists():  # for a person to look at the buttons' new contrast
        NOTES_SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(NOTES_SHOTS / f"axe-chat-{tag}.png"))
    form = page.locator("div").filter(has=page.get_by_role("heading", name="Your ratings")).filter(
        has=page.get_by_role("button", name="Submit ratings")).last
    for radio in form.get_by_role("radio", name="Tie").all():
        radio.check()
    form.get_by_role("radio", name="Model A better").first.check()
    form.get_by_role("button", name="Submit ratings").click()
    page.get_by_text("You have completed the study").wait_for()
    record(found, f"thanks/{tag}", page)


def judge_page(page, url: str, code: str, found: dict, tag: str) -> None:
    page.goto(url + "annotate/")
    page.get_by_label("Judge code").wait_for()
    record(found, f"judge-login/{tag}", page)
    page.get_by_label("Judge code").fill(code)
    page.get_by_role("button", name="Start judging").click()
    page.get_by_text("Your judge code:").wait_for()
    page.get_by_text("Topic the person chose:").wait_for()
    record(found, f"judge-item/{tag}", page)


def dashboard(page, url: str, found: dict, tag: str) -> None:
    page.goto(url + "research/")
    page.get_by_label("Password").wait_for()
    record(found, f"dashboard-login/{tag}", page)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Open the dashboard").click()
    page.get_by_text("Rated conversations").wait_for()
    page.wait_for_function("() => document.body.innerText.includes('rating session')", timeout=TIMEOUT_MS)
    record(found, f"dashboard/{tag}", page)


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
def test_no_serious_or_critical_axe_violations(browser, served, viewport):
    srv, protocol, store, study = served
    found: dict = {}
    context = browser.new_context(viewport=VIEWPORTS[viewport])
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    participant_pages(page, srv.url, found, viewport)
    [code] = ann.invite_judges(store, protocol, 1)
    judge_page(page, srv.url, code, found, viewport)
    dashboard(page, srv.url, found, viewport)
    context.close()
    write_record(found, f"violations-{viewport}")
    assert blocking(found) == {}


CONTROLS = "input, textarea, select, button, [role=radio], [role=button], [role=combobox], [role=textbox]"
NAMELESS = """() => [...document.querySelectorAll('""" + CONTROLS + """')].filter(el => el.offsetParent !== null && el.type !== 'hidden')
    .filter(el => {
        const named = el.getAttribute('aria-label') || el.getAttribute('aria-labelledby') || el.title
            || (el.labels && [...el.labels].some(l => l.innerText.trim())) || el.closest('label')?.innerText.trim()
            || (['BUTTON'].includes(el.tagName) && el.innerText.trim());
        return !named; }).map(el => el.outerHTML.slice(0, 120))"""

# Tab from the top of the chat page: what a keyboard user reaches, as the accessible names of the focused controls.
FOCUSED = """() => { const el = document.activeElement; if (!el) return '';
    return el.getAttribute('aria-label') || (el.labels && el.labels[0] && el.labels[0].innerText.trim())
        || el.placeholder || el.innerText.trim().slice(0, 40) || el.tagName; }"""
TOP_OF = """(label) => { const el = [...document.querySelectorAll('textarea, input, [role="tab"]')]
    .find(e => e.placeholder === label || e.getAttribute('aria-label') === label
               || (e.getAttribute('role') === 'tab' && e.innerText.trim() === label)
               || (e.labels && e.labels[0] && e.labels[0].innerText.trim() === label));
    return el ? el.getBoundingClientRect().top + window.scrollY : null; }"""


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
def test_chat_controls_are_named_and_tab_follows_the_page(browser, served, viewport):
    srv, *_ = served
    page = browser.new_context(viewport=VIEWPORTS[viewport]).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(srv.url)
    page.get_by_role("button", name="I agree").click()
    page.get_by_label("What would you like to talk about?").click()
    page.get_by_role("option", name="Academic Stress", exact=True).click()
    page.get_by_role("button", name="Start the conversation").click()
    page.get_by_placeholder("Message to Model A").wait_for()
    assert page.evaluate(NAMELESS) == []
    page.locator("body").click(position={"x": 1, "y": 1})
    reached = []
    for _ in range(60):
        page.keyboard.press("Tab")
        reached.append(page.evaluate(FOCUSED))
    if viewport == "phone":
        # One pane at a time behind tabs (the ARIA tabs pattern: only the selected tab is in the Tab order,
        # arrow keys move between tabs); the hidden panes' boxes must not take focus.
        fields = ["Model A", "Message to Model A", SEND_LABEL]
        hidden = {"Message to Model B", "Message to Model C"}
        assert not hidden & set(reached), reached
    else:
        fields = ["Message to Model A", "Message to Model B", "Message to Model C", SEND_LABEL]
    firsts = [reached.index(f) for f in fields if f in reached]
    assert len(firsts) == len(fields), reached  # every shown message box is reachable by Tab
    tops = [page.evaluate(TOP_OF, f) for f in fields]
    drawn = sorted(fields, key=lambda f: (round(tops[fields.index(f)]), fields.index(f)))
    assert sorted(fields, key=lambda f: reached.index(f)) == drawn, (reached, tops)
    page.context.close()
