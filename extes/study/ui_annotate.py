"""The judges' page (`/annotate`): judge code, next item, blind transcript, form, submit.

Only draws: the rules (who gets which item, what a complete form is) live in `extes.study.annotation`.
The browser holds the judge code and the current assignment id in hidden fields; every call sends
them back and the annotation module checks that the assignment belongs to that code. Nothing shown
names an arm, a model or a dataset; transcripts are HTML-escaped before Markdown rendering.

Only invited judges get in: codes made by the researcher (`extes.study.annotation.invite_judges`);
there is no way to make a code from this page.

Hook: `extes.study.app.build_app` calls `build_annotate_ui(protocol, store, pool)` and mounts the
returned Blocks at `/annotate`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any

import gradio as gr

from extes.study import annotation as ann
from extes.study.limits import Limiter, RateLimited, client_of
from extes.study.protocol import Protocol
from extes.study.records import Participant
from extes.study.store import Store
from extes.study.ui_participant import StrictTextbox, Updates, request_of, safe_text, with_request

log = logging.getLogger(__name__)

GENERIC_ERROR = "Something went wrong on our side. Please try again in a moment."
# build_app mounts this page without page CSS, so the rule travels in the page itself: clearing a
# transcript would only hide it locally and confuse the judge.
STYLE = ('<style>.extes-judge-chat button[title="Clear"], .extes-judge-chat button[aria-label="Clear"] '
         '{display: none !important;}</style>')
LIKERT_HELP = {0: "0: not at all", 1: "1: a little", 2: "2: mostly", 3: "3: fully"}
INTRO = """# Judging conversations
Read each conversation and answer every question. You do not know, and we do not tell you, which model
is which. There are two kinds of items:
- **Study conversations**: the same person talked with three models (Model A, Model B, Model C). For each
  aspect, compare each pair.
- **Dataset dialogues**: one conversation between a person and a supporter. Score each quality from
  the lowest to the highest value of the scale.

Enter the judge code the researchers gave you (it also brings you back to where you left off)."""


def _chat(turns: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"role": "user" if role == "user" else "assistant", "content": safe_text(text) or "…"}
            for role, text in turns]


class AnnotateUI:
    def __init__(self, store: Store, protocol: Protocol):
        self.store = store
        self.limiter = Limiter(store)
        self.protocol = protocol
        lo, hi = protocol.annotation.likert_scale
        self.scale = list(range(lo, hi + 1))

    # ------------------------------------------------------------------------------ rendering

    def _updates(self, judge: Participant | None, message: str = "") -> Updates:
        """An update for every component in self.outputs: the judge's next item (or the login / all-done
        state), keyed by component."""
        updates: Updates = {radio: gr.update(value=None) for radio in self.pair_radios + self.likert_radios}
        # no item open (the panes of one kind are shown below, over these)
        updates |= {self.conv_col: gr.update(visible=False), **{chat: [] for chat in self.chats},
                    self.dlg_col: gr.update(visible=False), self.scene_md: "", self.dlg_chat: [],
                    self.conv_scene_md: "",
                    self.submit_btn: gr.update(visible=False)}
        if judge is None:
            return updates | {self.code_box: "", self.assignment_box: "", self.login_col: gr.update(visible=True),
                              self.code_md: gr.update(value="", visible=False), self.status_md: message}
        ann.sync_items(self.store, self.protocol)
        a = ann.next_assignment(self.store, self.protocol, judge.id)
        prog = ann.progress(self.store, self.protocol, judge.id)
        code_md = (f"Your judge code: **{judge.code}** (keep it: it brings you back to your next item). "
                   f"Items done: {prog['done']}.")
        updates |= {self.code_box: judge.code, self.login_col: gr.update(visible=False),
                    self.code_md: gr.update(value=code_md, visible=True)}
        if a is None:
            why = ann.IDLE_FOR_JUDGE[ann.idle_reason(self.store, self.protocol)]
            text = (message + "\n\n" if message else "") + (
                f"### Thank you!\nThere is nothing more for you to judge right now. {why}")
            return updates | {self.assignment_box: "", self.status_md: text}
        view = ann.item_view(self.store, judge.id, a.id)
        updates |= {self.assignment_box: str(a.id), self.submit_btn: gr.update(visible=True),
                    self.status_md: message + (" Here is your next item." if message else "")}
        if view.kind == "conversation":
            scene = f"**Topic the person chose:** {safe_text(view.scene)}" if view.scene else ""
            if view.description:
                scene += f"\n\n**What the person wrote about it before chatting:** {safe_text(view.description)}"
            return updates | {self.conv_col: gr.update(visible=True), self.conv_scene_md: scene,
                              **{chat: _chat(turns) for chat, turns in zip(self.chats, view.panes)}}
        scene = f"**Topic:** {safe_text(view.scene)}" if view.scene else ""
        return updates | {self.dlg_col: gr.update(visible=True), self.scene_md: scene,
                          self.dlg_chat: _chat(view.turns)}

    # ------------------------------------------------------------------------------ handlers

    def _guard(self, fn: Callable) -> Callable:
        """AnnotationError: shown as is (it names no arm); anything else: logged by type, generic error."""

        @wraps(fn)
        def wrapper(*args):
            client = client_of(request_of(args))
            try:
                self.limiter.check("code", client)  # code guessing: refused up front once over the limit
                return fn(*args)
            except RateLimited as exc:
                raise gr.Error(str(exc), print_exception=False) from None
            except ann.AnnotationError as exc:
                if "unknown code" in str(exc):
                    try:
                        self.limiter.hit("code", client)
                    except RateLimited:
                        pass
                raise gr.Error(str(exc), print_exception=False) from None
            except gr.Error:
                raise
            except Exception as exc:  # noqa: BLE001 - translated for the browser
                log.error("annotation handler %s failed: %s", fn.__name__, type(exc).__name__)
                raise gr.Error(GENERIC_ERROR, print_exception=False) from None

        return wrapper

    def on_login(self, code: str, request: gr.Request = None):
        return self._updates(ann.judge_by_code(self.store, code))

    def on_submit(self, code: str, assignment_id: str, *values):
        values = tuple(v for v in values if not isinstance(v, gr.Request))
        judge = ann.judge_by_code(self.store, code)
        if not str(assignment_id or "").isdigit():
            raise ann.AnnotationError("No item is open; press 'Start judging' first.")
        aid = int(assignment_id)
        n_pairs = len(self.pair_radios)
        pair_values, likert_values = values[:n_pairs], values[n_pairs:]
        view = ann.item_view(self.store, judge.id, aid)
        if view.kind == "conversation":
            choices = {}
            for (aspect_key, k), value in zip(self.pair_keys, pair_values):
                choices[(aspect_key, k)] = value
            ann.submit_pairwise(self.store, self.protocol, judge.id, aid, choices)
        else:
            scores = dict(zip(self.protocol.annotation.likert_aspects, likert_values))
            ann.submit_likert(self.store, self.protocol, judge.id, aid, scores)
        return self._updates(judge, "Saved.")

    # ------------------------------------------------------------------------------ layout

    def render(self) -> None:
        """Build the page's components inside the current `gr.Blocks` (or route) context."""
        p = self.protocol
        gr.HTML(STYLE, padding=False)
        self.code_box = StrictTextbox(visible=False, label="judge code")
        self.assignment_box = StrictTextbox(visible=False, label="assignment")
        gr.Markdown(INTRO)
        self.code_md = gr.Markdown(visible=False)
        with gr.Column(visible=True) as self.login_col:
            code_in = StrictTextbox(label="Judge code", max_lines=1, placeholder="XXXX-XXXX-XXXX",
                                 elem_id="annotate-code")
            login_btn = gr.Button("Start judging", variant="primary", elem_id="annotate-login")
        self.status_md = gr.Markdown()
        self.pair_radios: list[gr.Radio] = []
        self.pair_keys: list[tuple[str, int]] = []
        with gr.Column(visible=False) as self.conv_col:
            self.conv_scene_md = gr.Markdown(elem_id="annotate-scene")
            self.chats: list[gr.Chatbot] = []
            with gr.Row(equal_height=True):
                for pane in p.pane_names:
                    with gr.Column(min_width=260):
                        self.chats.append(gr.Chatbot(
                            label=f"Model {pane}", height=420, feedback_options=[], sanitize_html=True,
                            autoscroll=False,  # a judge reads from the top
                            render_markdown=True, latex_delimiters=[], buttons=[], allow_tags=False,
                            allow_file_downloads=False, group_consecutive_messages=False,
                            elem_classes=["extes-judge-chat"],
                        ))
            gr.Markdown("## Your judgment\nFor each question, compare each pair of models. All are required.")
            for aspect in p.aspects:
                question = ann.JUDGE_QUESTIONS.get(aspect.key, aspect.question)
                gr.Markdown(f"### {safe_text(aspect.label)}\n{safe_text(question)}")
                with gr.Row():
                    for k, (left, right) in enumerate(ann.pair_labels(p.panes)):
                        self.pair_radios.append(gr.Radio(
                            choices=[(f"Model {left} better", "left"), ("Tie", "tie"), (f"Model {right} better", "right")],
                            label=f"Model {left} vs Model {right}", value=None,
                        ))
                        self.pair_keys.append((aspect.key, k))
        self.likert_radios: list[gr.Radio] = []
        with gr.Column(visible=False) as self.dlg_col:
            self.scene_md = gr.Markdown()
            self.dlg_chat = gr.Chatbot(label="Dialogue", height=460, feedback_options=[], sanitize_html=True,
                                  autoscroll=False,
                                  render_markdown=True, latex_delimiters=[], buttons=[], allow_tags=False,
                                  allow_file_downloads=False, group_consecutive_messages=False,
                                  elem_classes=["extes-judge-chat"])
            lo, hi = self.scale[0], self.scale[-1]
            gr.Markdown(f"## Your scores\nScore the supporter's side of the dialogue from {lo} (worst) to {hi} (best) "
                        "on each quality. All are required.")
            for aspect in p.annotation.likert_aspects:
                self.likert_radios.append(gr.Radio(
                    choices=[(LIKERT_HELP.get(v, str(v)) if (lo, hi) == (0, 3) else str(v), str(v)) for v in self.scale],
                    label=aspect, value=None,
                ))
        self.submit_btn = gr.Button("Submit and show the next item", variant="primary", visible=False,
                                    elem_id="annotate-submit")

        self.outputs = [self.code_box, self.assignment_box, self.login_col, self.code_md, self.status_md,
                        self.conv_col, self.conv_scene_md, *self.chats, self.dlg_col, self.scene_md, self.dlg_chat, self.submit_btn,
                        *self.pair_radios, *self.likert_radios]
        kw = dict(outputs=self.outputs, concurrency_limit=None)
        login_btn.click(self._guard(self.on_login), inputs=[code_in], api_name="annotate_login", **kw)
        code_in.submit(self._guard(self.on_login), inputs=[code_in], api_visibility="private", **kw)
        n_values = len(self.pair_radios) + len(self.likert_radios)
        on_submit = with_request(lambda *a: self.on_submit(*a), ["code", "assignment_id",
                                                                 *(f"v{i}" for i in range(n_values))])
        on_submit.__name__ = "on_submit"
        self.submit_btn.click(self._guard(on_submit),
                              inputs=[self.code_box, self.assignment_box, *self.pair_radios, *self.likert_radios],
                              api_name="annotate_submit", **kw)


def render_annotate(store: Store, protocol: Protocol) -> AnnotateUI:
    ui = AnnotateUI(store, protocol)
    ui.render()
    return ui


def build_annotate_ui(protocol: Protocol, store: Store, pool: Any = None) -> gr.Blocks | None:
    """The `/annotate` Blocks (mounted by extes.study.app.build_app); None when the protocol turns
    annotation off (`annotation.enabled: false`: the path then answers "not available")."""
    if not protocol.annotation.enabled:
        return None
    with gr.Blocks(title="Judging", analytics_enabled=False, fill_width=True) as demo:
        render_annotate(store, protocol)
    return demo
