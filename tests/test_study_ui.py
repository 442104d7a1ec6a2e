"""The participant page's wiring, fast, with a FakePool: streaming through the API, reports, rendering."""

from __future__ import annotations

import types

import pytest
from study_helpers import ARM_NAMES, FakePool, ServerThread, make_protocol

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
        code = c.predict(api_name="/consent")[0]
        conv = c.predict(code, "Academic Stress", "", api_name="/start")[1]
        job = c.submit(code, conv, "hello", api_name="/send_all")
        job.result(timeout=60)
        outputs = job.outputs()
    assert len(outputs) >= 4  # the user's message, partial replies, the final state

    def reply_len(out, i):
        chat = out[1 + i]
        if not chat or chat[-1]["role"] != "assistant":
            return 0
        return len("".join(p.get("text", "") for p in chat[-1]["content"]))

    finals = [reply_len(outputs[-1], i) for i in range(3)]
    partial = [out for out in outputs[:-1] if all(0 < reply_len(out, i) < finals[i] for i in range(3))]
    assert partial, "no update showed all three panes part-way through their replies"
    assert outputs[0][-1] == ""  # the used box is cleared with the first update


def test_report_handler_and_resume_from_browser_state(study):
    ui = ParticipantUI(study)
    ui.build()
    view = study.start_conversation(study.consent().code, "Academic Stress")
    list(study.send(view.code, view.conversation_id, "B", "hi"))
    ui.make_report("B")(view.code, view.conversation_id, types.SimpleNamespace(index=1, liked="This response is harmful"))
    assert [r.reason for r in study.store.reports()] == ["This response is harmful"]

    outputs = ui.on_load(view.code)  # a refresh: the code comes back from the browser's storage
    by_component = dict(zip(ui.full_outputs, outputs))
    assert by_component[ui.full_outputs[1]] == view.conversation_id
    chats = outputs[ui.full_outputs.index(ui.chat_outputs[1]):][:3]
    assert [len(c) for c in chats] == [0, 2, 0]
    fresh = ui.on_load("NOPE-NOPE-NOPE")
    assert fresh[0] == "" and fresh[3]["visible"] is True  # the consent page again
    blob = repr(outputs) + repr(fresh)
    assert not any(name in blob for name in ARM_NAMES)


def test_hints_leave_the_page_as_it_is(study):
    import gradio as gr

    ui = ParticipantUI(study)
    ui.build()
    code = study.consent().code
    start = ui._guard(len(ui.full_outputs), ui.on_start)
    out = start(code, None, "what I typed")  # no scenario picked: a hint, the typed text stays
    assert out == [gr.skip()] * len(ui.full_outputs)
    assert study.store.counts()["conversations"] == 0
    with pytest.raises(gr.Error, match="No participant"):
        ui._guard(len(ui.full_outputs), ui.on_resume)("AAAA-AAAA-AAAA")
