"""The participant page's wiring, fast, with a FakePool: streaming through the API, reports, rendering."""

from __future__ import annotations

import types

import pytest
from study_helpers import ARM_NAMES, FakePool, ServerThread, make_protocol, named

from extes.study.app import build_app
from extes.study.session import Study
from extes.study.store import Store
from extes.study.ui_participant import ParticipantUI, safe_text


@pytest.fixture
def study(tmp_path):
    s = Study(make_protocol(tmp_path), Store(tmp_path / "s.sqlite"), FakePool(delay=0.08, words=6))
    yield s
    s.store.close()


def test_safe_text_shows_markup_as_text():
    assert safe_text("<img src=x onerror=alert(1)> & ![t](http://x/p.png)") == \
        "&lt;img src=x onerror=alert(1)&gt; &amp; !\\[t](http://x/p.png)"


def test_replies_stream_to_the_client_and_panes_fill_together(study):
    from gradio_client import Client

    app = build_app(study.protocol, study.store, study.pool, study=study)
    with ServerThread(app) as server:
        c = Client(server.url, verbose=False)
        code = named(c, "/consent", c.predict(api_name="/consent"))["code"]
        conv = named(c, "/start", c.predict(code, "Academic Stress", "", api_name="/start"))["conversation"]
        job = c.submit(code, conv, "hello", api_name="/send_all")
        job.result(timeout=60)
        outputs = [named(c, "/send_all", out) for out in job.outputs()]
    assert len(outputs) >= 4  # the user's message, partial replies, the final state

    def reply_len(out, i):
        chat = out[f"Model {'ABC'[i]}"]
        if not chat or chat[-1]["role"] != "assistant":
            return 0
        return len("".join(p.get("text", "") for p in chat[-1]["content"]))

    finals = [reply_len(outputs[-1], i) for i in range(3)]
    partial = [out for out in outputs[:-1] if all(0 < reply_len(out, i) < finals[i] for i in range(3))]
    assert partial, "no update showed all three panes part-way through their replies"
    assert outputs[0]["Send the same message to all three models"] == ""  # cleared with the first update


def test_report_handler_and_resume_from_browser_state(study):
    ui = ParticipantUI(study)
    ui.build()
    view = study.start_conversation(study.consent().code, "Academic Stress")
    list(study.send(view.code, view.conversation_id, "B", "hi"))
    ui.make_report("B")(view.code, view.conversation_id, types.SimpleNamespace(index=1, liked="This response is harmful"))
    assert [r.reason for r in study.store.reports()] == ["This response is harmful"]

    outputs = ui.on_load(view.code)  # a refresh: the code comes back from the browser's storage
    assert outputs[ui.conv_box] == view.conversation_id
    assert [len(outputs[chat]) for chat in ui.chats] == [0, 2, 0]
    fresh = ui.on_load("NOPE-NOPE-NOPE")
    assert fresh[ui.code_box] == "" and fresh[ui.consent_col]["visible"] is True  # the consent page again
    blob = repr(outputs) + repr(fresh)
    assert not any(name in blob for name in ARM_NAMES)


def test_hints_leave_the_page_as_it_is(study):
    import gradio as gr

    ui = ParticipantUI(study)
    ui.build()
    code = study.consent().code
    start = ui._guard(ui.full_outputs, ui.on_start)
    out = start(code, None, "what I typed")  # no scenario picked: a hint, the typed text stays
    assert out == {component: gr.skip() for component in ui.full_outputs}
    assert study.store.counts()["conversations"] == 0
    with pytest.raises(gr.Error, match="No participant"):
        ui._guard(ui.full_outputs, ui.on_resume)("AAAA-AAAA-AAAA")


def test_an_added_output_shifts_nothing(study, monkeypatch):
    """Handlers name the components they update. With one more component put second in every event's outputs
    (as a new feature would add one), each endpoint still updates the same components and leaves the new
    one alone. (Positional updates were one value short: every endpoint failed.)"""
    import gradio as gr
    from gradio_client import Client

    from extes.study import app as app_module

    built = app_module.build_participant_ui

    def with_extra(*args, **kw):
        demo = built(*args, **kw)
        with demo:
            extra = gr.Textbox("untouched", visible=False, label="extra", elem_id="extra")
            for fn in demo.fns.values():
                if fn.outputs:
                    fn.outputs = [fn.outputs[0], extra, *fn.outputs[1:]]
        return demo

    monkeypatch.setattr(app_module, "build_participant_ui", with_extra)
    SKIPPED = gr.skip()  # what the client receives for an output the handler left alone
    with ServerThread(build_app(study.protocol, study.store, study.pool, study=study)) as server:
        c = Client(server.url, verbose=False)
        r = named(c, "/consent", c.predict(api_name="/consent"))
        code = r["code"]
        assert code and r["conversation"] == "" and r["extra"] == SKIPPED
        r = named(c, "/start", c.predict(code, "Academic Stress", "", api_name="/start"))
        conv = r["conversation"]
        assert conv.startswith("c-") and r["Model A"] == [] and r["extra"] == SKIPPED
        r = named(c, "/send_b", c.predict(code, conv, "hello", api_name="/send_b"))
        assert [len(r[f"Model {p}"]) for p in "ABC"] == [0, 2, 0] and "1 more message" in r["counter-b"]
        assert r["extra"] == SKIPPED
        r = named(c, "/resume", c.predict(code, api_name="/resume"))
        assert r["conversation"] == conv and [len(r[f"Model {p}"]) for p in "ABC"] == [0, 2, 0]
        assert r["extra"] == SKIPPED


def test_streaming_rebuilds_no_component_between_first_and_last_update(study, monkeypatch):
    """Gradio rebuilds a component for every gr.update / gr.skip it gets (costly under many streams): between
    the first and the last update of a stream only the rating column and the used box may get one, whatever
    the stream's length; chats, counters and the hint are plain values, and the banner is one in between."""
    from gradio.state_holder import SessionState
    from gradio_client import Client

    rebuilt: list[int] = []
    original = SessionState._update_config

    def counting(self, key):
        rebuilt.append(key)
        return original(self, key)

    monkeypatch.setattr(SessionState, "_update_config", counting)
    study.pool.words = 12
    app = build_app(study.protocol, study.store, study.pool, study=study)
    with ServerThread(app) as server:
        c = Client(server.url, verbose=False)
        code = named(c, "/consent", c.predict(api_name="/consent"))["code"]
        conv = named(c, "/start", c.predict(code, "Academic Stress", "", api_name="/start"))["conversation"]
        ids = {comp["props"].get("elem_id") or comp["props"].get("label"): comp["id"] for comp in c.config["components"]
               if comp["type"] in ("markdown", "chatbot", "textbox")}
        rebuilt.clear()
        job = c.submit(code, conv, "hello", api_name="/send_all")
        job.result(timeout=60)
        outputs = [named(c, "/send_all", out) for out in job.outputs()]
    assert len(outputs) >= 6  # a real stream: first, several in between, last
    # the updates that are not "in between": the first, and those after the replies ended
    ends = 1 + sum(out["rate-hint"] != "The models are replying…" for out in outputs[1:])
    assert ends < len(outputs) - 3
    count = {name: rebuilt.count(ids[name]) for name in
             ("Model A", "Model B", "Model C", "counter-a", "counter-c", "rate-hint", "crisis-banner",
              "Send the same message to all three models")}
    assert count["Model A"] == count["Model B"] == count["Model C"] == 0
    assert count["counter-a"] == count["counter-c"] == count["rate-hint"] == 0
    assert count["crisis-banner"] == ends  # its visibility is set at the first update and the last ones only
    assert count["Send the same message to all three models"] == len(outputs) - 1  # cleared once, then skipped
