"""A whole participant session in a real browser (Playwright driving Debian's Chromium, headless) against
the real app on a loopback port with tiny model arms: consent, turns in all three panes until the
minimum, the rating form, submit; then the store is read back. A researcher then opens /research.

Screenshots (three panes, rating form, thanks page, dashboard) go to the test's tmp_path and to
results/test-output/e2e/ (gitignored) for a person to look at.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from study_helpers import ARM_NAMES, ServerThread, chromium_browser, make_protocol, tiny_arm_dicts

OUT = Path(__file__).resolve().parents[1] / "results" / "test-output" / "e2e"
MIN_TURNS = 2
TIMEOUT_MS = 60_000

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def browser_page():
    with chromium_browser() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        yield page


def shot(page, tmp_path: Path, name: str, locator=None) -> None:
    path = tmp_path / f"{name}.png"
    (locator or page).screenshot(path=str(path), **({} if locator is not None else {"full_page": True}))
    OUT.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, OUT / path.name)


def counter_text(pane: str, turns: int) -> str:
    """What the pane's counter says after `turns` replies (the participant page's wording)."""
    if turns >= MIN_TURNS:
        return f"Model {pane}: minimum reached ({turns} replies)"
    left = MIN_TURNS - turns
    return f"Model {pane}: {left} more message{'' if left == 1 else 's'} needed"


def send(page, turns: dict[str, int], panes: str, text: str) -> None:
    """Type and send to one pane ("A") or all ("ABC"), then wait until every targeted pane's counter shows
    the new reply. A send while the previous replies are still finishing is refused with a hint (and
    nothing stored), so retry then, as a person would."""
    if panes == "ABC":
        box = page.get_by_label("Send the same message to all three models")
        button = page.get_by_role("button", name="Send to all", exact=True)
    else:
        box = page.get_by_placeholder(f"Message to Model {panes}")
        button = page.get_by_role("button", name=f"Send to Model {panes}", exact=True)
    for _attempt in range(20):
        box.fill(text)
        button.click()
        try:  # the box is cleared when the message is taken
            page.wait_for_function("(el) => el.value === ''", arg=box.element_handle(), timeout=3000)
            break
        except Exception:  # noqa: BLE001 - refused while busy: try again
            page.wait_for_timeout(500)
    else:
        raise AssertionError(f"the message to {panes} was never accepted")
    for pane in panes:
        turns[pane] += 1
    expected = [counter_text(p, turns[p]) for p in panes]
    page.wait_for_function("(texts) => texts.every(t => document.body.innerText.includes(t))", arg=expected,
                           timeout=TIMEOUT_MS)


def conv_id_of(store, code: str) -> str:
    return store.conversations_of(store.participant_by_code(code).id)[0].id


def test_participant_session_in_a_real_browser(browser_page, tmp_path, tiny_llama, monkeypatch):
    from extes.models import ArmPool
    from extes.study.app import build_app
    from extes.study.store import Store

    page = browser_page
    monkeypatch.setenv("EXTES_RESEARCH_PASSWORD", "e2e-password")
    arms = tiny_arm_dicts(tiny_llama, max_new_tokens=12)
    for i, arm in enumerate(arms):
        arm["generation"]["seed"] = i  # three different (random-model) voices
    protocol = make_protocol(tmp_path, arms=arms, min_turns=MIN_TURNS, conversations=1)
    store = Store(tmp_path / "study.sqlite")
    pool = ArmPool(list(protocol.arms))
    try:
        with ServerThread(build_app(protocol, store, pool)) as srv:
            page.goto(srv.url)
            page.get_by_role("button", name="I agree").click()
            page.get_by_text("Your participant code:").wait_for()
            code = re.search(r"[A-Z0-9]{4}-[A-Z0-9]{4}-[A-Z0-9]{4}", page.inner_text("body")).group(0)
            page.get_by_label("What would you like to talk about?").click()
            page.get_by_role("option", name="Academic Stress", exact=True).click()
            page.get_by_role("button", name="Start the conversation").click()
            page.get_by_placeholder("Message to Model A").wait_for()

            # One turn in each pane on its own (one with HTML in it), then "send to all" to the minimum.
            turns = {p: 0 for p in "ABC"}
            send(page, turns, "A", "My exams are next week and I cannot sleep.")
            send(page, turns, "B", "I feel <b>lost</b> <script>window.x=1</script>")
            send(page, turns, "C", "Everyone expects so much, I want to die.")
            page.get_by_text("If you are thinking about hurting yourself").first.wait_for()  # the crisis banner
            page.get_by_role("alertdialog").get_by_role("button", name="I have read this").click()  # and dialog
            assert page.get_by_text("Your ratings").count() == 0 or not page.get_by_text("Your ratings").is_visible()
            for i in range(MIN_TURNS - 1):
                send(page, turns, "ABC", f"What could I do tonight? ({i})")
            page.get_by_role("heading", name="Your ratings").wait_for()
            assert page.get_by_text("<b>lost</b>", exact=False).count() >= 1  # HTML shown as text
            assert page.evaluate("() => window.x") is None  # and not run
            html = page.content()
            assert not any(name in html for name in ARM_NAMES) and str(tiny_llama) not in html
            panes = page.locator(".row").filter(has=page.get_by_placeholder("Message to Model A")).first
            shot(page, tmp_path, "01-three-panes", panes)

            # The rating form: every aspect x pair; answer "Tie" everywhere except one.
            form = page.locator("div").filter(has=page.get_by_role("heading", name="Your ratings")).filter(
                has=page.get_by_role("button", name="Submit ratings")).last
            form.scroll_into_view_if_needed()
            radios = form.get_by_role("radio", name="Tie")
            n = len(protocol.aspects) * 3
            assert radios.count() == n
            for i in range(n):
                radios.nth(i).check()
            form.get_by_role("radio", name="Model A better").first.check()
            form.get_by_label("Anything you would like to add? (optional)").fill("Model A was kind.")
            shot(page, tmp_path, "02-rating-form", form)
            form.get_by_role("button", name="Submit ratings").click()
            page.get_by_text("You have completed the study").wait_for()
            shot(page, tmp_path, "03-thanks")

            # A researcher looks at the result.
            page.goto(srv.url + "research/")
            page.get_by_label("Password").fill("e2e-password")
            page.get_by_role("button", name="Open the dashboard").click()
            page.get_by_text("Rated conversations").wait_for()
            page.wait_for_function("() => document.body.innerText.includes('rating session')", timeout=TIMEOUT_MS)
            body = page.inner_text("body")
            assert "| 1 |" not in body  # rendered as a table, not raw Markdown
            assert "suicide" in body  # the flagged conversation is listed
            page.get_by_role("button", name="Prepare CSV downloads").click()
            link = page.get_by_role("link", name="Download votes.csv, judge_votes.csv and ratings.csv (zip)")
            link.wait_for()
            with page.expect_download() as download:
                link.click()
            export_zip = tmp_path / "export.zip"
            download.value.save_as(export_zip)
            import zipfile

            votes_csv = tmp_path / "downloaded-votes.csv"
            votes_csv.write_bytes(zipfile.ZipFile(export_zip).read("votes.csv"))
            page.get_by_label("Conversation id").fill(conv_id_of(store, code))
            page.get_by_role("button", name="Show transcript").click()
            page.get_by_text("window.x=1").last.wait_for()  # the transcript, participant HTML shown as text
            assert page.evaluate("() => window.x") is None
            shot(page, tmp_path, "04-research")

        # Everything is in the store.
        (participant,) = [p for p in [store.participant_by_code(code)] if p]
        (conv,) = store.conversations_of(participant.id)
        assert conv.status == "rated" and conv.scenario == "Academic Stress"
        assert conv.comment == "Model A was kind."
        msgs = store.messages(conv.id)
        for pane in "ABC":
            roles = [m.role for m in msgs if m.pane == pane]
            assert roles == ["user", "assistant"] * MIN_TURNS, pane
        assert any("<script>" in m.text for m in msgs if m.role == "user" and m.pane == "B")
        assert all(m.latency_s is not None for m in msgs if m.role == "assistant")
        assert [f.category for f in store.flags(conv.id)] == ["suicide"]
        votes = store.votes_frame()
        import pandas as pd

        downloaded = pd.read_csv(votes_csv, dtype=str)
        assert list(downloaded.columns) == list(votes.columns) and len(downloaded) == len(votes)
        assert len(votes) == len(protocol.aspects) * 3 and set(votes["outcome"]) == {"tie", "a"}
        first = votes.iloc[0]
        assert (first["outcome"], first["arm_a"], first["arm_b"]) == ("a", conv.arm_order[0], conv.arm_order[1])
        for name in ("01-three-panes", "02-rating-form", "03-thanks", "04-research"):
            assert (tmp_path / f"{name}.png").stat().st_size > 5_000
    finally:
        pool.close()
        store.close()


def test_judge_session_in_a_real_browser(browser_page, tmp_path):
    """/annotate: an invited judge enters their code, judges a study conversation blind (pairwise form) and a dataset
    dialogue (Likert form), and then is told nothing is left; the store has both."""
    import json

    from study_helpers import FakePool, full_answers

    from extes.study.app import build_app
    from extes.study.session import Study
    from extes.study.store import Store

    page = browser_page
    data = tmp_path / "mini.json"
    data.write_text(json.dumps([{"scene": "Academic Stress", "description": "",
                                 "content": [{"User": "My exams <i>scare</i> me."}, {"AI": "That sounds stressful."}]}]))
    protocol = make_protocol(tmp_path, min_turns=1, conversations=1,
                             annotation={"judges_per_item": 2, "dataset": str(data), "judges_see_conversations": True})
    store = Store(tmp_path / "study.sqlite")
    study = Study(protocol, store, FakePool())
    v = study.consent()
    v = study.start_conversation(v.code, "Academic Stress", "")
    for _ in study.send(v.code, v.conversation_id, "ABC", "I cannot focus <b>at all</b>."):
        pass
    study.submit_rating(v.code, v.conversation_id, full_answers(study))
    try:
        with ServerThread(build_app(protocol, store, FakePool(), study=study)) as srv:
            from extes.study import annotation as ann

            [judge_code] = ann.invite_judges(store, protocol, 1)
            page.goto(srv.url + "annotate/")
            page.get_by_label("Judge code").fill(judge_code)
            page.get_by_role("button", name="Start judging").click()
            page.get_by_text("Your judge code:").wait_for()
            html = page.content()
            assert not any(name in html for name in ARM_NAMES) and "mini" not in page.inner_text("body")
            for _item in range(2):
                submit = page.get_by_role("button", name="Submit and show the next item")
                submit.wait_for()
                if page.get_by_text("Your judgment").is_visible():
                    assert page.get_by_text("I cannot focus <b>at all</b>.").count() == 3  # three panes, as text
                    radios = page.get_by_role("radio", name="Tie")
                    for i in range(radios.count()):
                        radios.nth(i).check()
                    shot(page, tmp_path, "05-annotate-pairwise")
                else:
                    page.get_by_text("My exams <i>scare</i> me.").wait_for()
                    for i in range(len(protocol.annotation.likert_aspects)):
                        label = ["0: not at all", "1: a little", "2: mostly", "3: fully"][i % 4]
                        page.get_by_role("radio", name=label).nth(i).check()  # the i-th metric's group
                    shot(page, tmp_path, "06-annotate-likert")
                submit.click()
                page.get_by_text("Saved.").wait_for()
            page.get_by_text("There is nothing more for you to judge").wait_for()
        judged = store.votes_frame("judge")
        assert len(judged) == 15 and set(judged["outcome"]) == {"tie"}
        likert = store.ratings_frame().query("source != 'pairwise'")  # Likert rows carry their dataset's source
        assert sorted(likert["label"].astype(int)) == sorted(i % 4 for i in range(5))
    finally:
        store.close()
