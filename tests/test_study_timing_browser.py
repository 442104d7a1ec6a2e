"""Single-pane sends do not tell the strategy arm by timing, measured in the page (issue 24, item 5).

Real Chromium against the real app with a scripted pool in which one arm starts ~300 ms late (as while its
leading strategy tag is written and held back). For single-pane sends to every pane, the page itself
records (a 5 ms poll in the browser) when the pane first shows reply text and when its counter shows the
reply complete; per arm the medians must be within 10% of each other. The start delay (2 s) is large
against the page's update interval (0.1 s), so the bound is not noise. Fails with pacing off (the late arm
shows ~300 ms after the others; see tests/test_study_timing.py for the same at the session level).
"""

from __future__ import annotations

import re
import statistics

import pytest
from study_helpers import ARM_NAMES, FakePool, ServerThread, chromium_browser, make_protocol

from extes.study.app import build_app
from extes.study.protocol import PANES
from extes.study.session import Study
from extes.study.store import Store
from extes.study.turn import Pacing

pytestmark = [pytest.mark.browser, pytest.mark.slow]
TIMEOUT_MS = 60_000
ROUNDS = 3

# Clicks the pane's send button and records, in page time, when the pane first shows reply text ("Th" of
# "That sounds hard", the scripted reply) and when its counter shows `turns` replies.
MEASURE_JS = """([idx, pane, turns]) => new Promise((resolve) => {
  const chat = document.querySelectorAll('.extes-chat')[idx];
  const counter = document.getElementById('counter-' + pane.toLowerCase());
  const count = () => (chat.innerText.match(/Th/g) || []).length;
  const before = count();
  const button = [...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Send to Model ' + pane);
  const t0 = performance.now();
  let first = null;
  button.click();
  const timer = setInterval(() => {
    const now = performance.now() - t0;
    if (first === null && count() > before) first = now;
    if (counter.innerText.includes('(' + turns + ' replies)') || counter.innerText.includes('(' + turns + ' reply)')) {
      clearInterval(timer);
      resolve([first, now]);
    }
    if (now > 30000) { clearInterval(timer); resolve([first, null]); }
  }, 5);
})"""


def _spread(values: list[float]) -> float:
    return max(values) / min(values) - 1


def test_time_to_first_and_final_text_in_the_page_is_the_same_for_every_arm(tmp_path):
    protocol = make_protocol(tmp_path, min_turns=1, conversations=1)
    store = Store(tmp_path / "timing.sqlite")
    pool = FakePool(delay=0.05, words=12, late_arm=ARM_NAMES[1], late_steps=6)
    study = Study(protocol, store, pool)
    study.pacing = Pacing(start_delay_s=2.0, chars_per_s=60.0)  # the scripted models stay ahead of it
    firsts: dict[str, list[float]] = {}
    finals: dict[str, list[float]] = {}
    try:
        with ServerThread(build_app(protocol, store, pool, study=study)) as srv, chromium_browser() as browser:
            page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(srv.url)
            page.get_by_role("button", name="I agree", exact=True).click()
            page.get_by_text("Your participant code:").wait_for()
            page.get_by_label("What would you like to talk about?").click()
            page.get_by_role("option", name="Academic Stress", exact=True).click()
            page.get_by_role("button", name="Start the conversation").click()
            page.get_by_placeholder("Message to Model A").wait_for()
            code = re.search(r"[A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4}", page.inner_text("body")).group(0)
            (conv,) = store.conversations_of(store.participant_by_code(code).id)
            for r in range(ROUNDS):
                for i, pane in enumerate(PANES):
                    page.get_by_placeholder(f"Message to Model {pane}").fill(f"round {r} for {pane}")
                    first, final = page.evaluate(MEASURE_JS, [i, pane, r + 1])
                    assert first is not None and final is not None, (pane, r, first, final)
                    firsts.setdefault(pane, []).append(first)
                    finals.setdefault(pane, []).append(final)
                    page.wait_for_timeout(300)  # the send is over on the server too
    finally:
        store.close()
    by_arm = {conv.arm(pane): (statistics.median(firsts[pane]), statistics.median(finals[pane])) for pane in PANES}
    print("per arm (first text ms, final text ms):", {a: (round(f), round(e)) for a, (f, e) in by_arm.items()})
    assert _spread([f for f, _ in by_arm.values()]) <= 0.10, by_arm
    assert _spread([e for _, e in by_arm.values()]) <= 0.10, by_arm
