"""The participant page's rating form (issue 28, item 1): questions, checks that mark a missing answer in
place, and a draft kept on the server.

- Submitting with a question unanswered used to raise into the handler's outputs: Gradio marked every
  component of the page with an "Error" badge and the form could no longer be used. The form's checks
  now run as the event's *validator* (Gradio runs it before the handler): only the unanswered questions
  are marked, "Please answer this", every answer stays, and the page scrolls to the first one marked.
  An API client gets the same messages as a validation error.
- Every answer and the comment are saved as the participant goes (`Study.save_draft`; the comment on
  each change, the last one winning while a save is running) and put back when the page is drawn again
  for the conversation: a reload, or a return with the code. The draft is participant text: it is kept
  only in the store, never logged, and deleted with the submission.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr
from gradio.blocks import Block

from extes.study.protocol import INSTRUCTED_LABEL, Protocol
from extes.study.rating import INSTRUCTED_KEY, missing_answers, pairs, questions
from extes.study.records import RatingDraft
from extes.study.session import Study
from extes.study.views import SessionView, StudyRefusal, pane_label

log = logging.getLogger(__name__)

MISSING = "Please answer this"
FORM_ID = "rating-form"
# Runs in the browser when "Submit ratings" is pressed: once the validator has marked the unanswered
# questions (Gradio draws a ".validation-error" in each), bring the first into view and focus its choices.
SCROLL_JS = ("() => { let tries = 0; const show = (box) => { const top = box.getBoundingClientRect().top + "
             "window.scrollY - window.innerHeight / 4; window.scrollTo({top: Math.max(0, top)}); "
             "const r = box.querySelector('input'); if (r) { r.focus({preventScroll: true}); } }; "
             "const find = () => { const form = document.getElementById('" + FORM_ID + "'); "
             "const err = form && form.querySelector('.validation-error'); "
             "if (err) { const box = err.closest('fieldset') || err.parentElement; show(box); "
             "setTimeout(() => show(box), 400); } "
             "else if (++tries < 100) { setTimeout(find, 100); } }; setTimeout(find, 100); }")


class RatingForm:
    """The rating column's components and the handlers that check and keep what is filled in."""

    def __init__(self, study: Study):
        self.study = study
        self.protocol: Protocol = study.protocol
        self.keys = [q.key for q in questions(self.protocol)]
        self.instructed = bool(self.protocol.attention.instructed_response)

    def build(self) -> None:
        """Draw the form inside the current column (the questions, the comment and the submit button)."""
        from extes.study.ui_participant import StrictTextbox, safe_text  # lazy: that module imports this one

        p = self.protocol
        which = "each pair of models" if p.panes == 3 else "the two models"
        gr.Markdown(f"## Your ratings\nFor each question, compare {which}. "
                    "All questions are required. Your answers are saved as you go.")
        self.attention = gr.Radio(visible=False, value=None)
        self.radios: list[gr.Radio] = []
        for i, aspect in enumerate(p.aspects):
            if i == min(1, len(p.aspects) - 1) and self.instructed:
                # the instructed-response row, among the questions (stored, never a vote)
                self.attention = gr.Radio(choices=[("Model A better", "left"), ("Tie", "tie"),
                                                   ("Model B better", "right")],
                                          label=INSTRUCTED_LABEL, value=None, elem_id="attention-row")
            gr.Markdown(f"### {safe_text(aspect.label)}\n{safe_text(aspect.question)}")
            with gr.Row():
                for left, right in pairs(p):
                    self.radios.append(gr.Radio(
                        choices=[(f"{pane_label(left)} better", "left"), ("Tie", "tie"),
                                 (f"{pane_label(right)} better", "right")],
                        label=f"{pane_label(left)} vs {pane_label(right)}", value=None,
                        elem_id=f"q-{self.keys[len(self.radios)].replace(':', '-')}",
                    ))
        self.comment = StrictTextbox(label="Anything you would like to add? (optional)", lines=2, max_lines=8,
                                  elem_id="rating-comment")
        self.submit_btn = gr.Button("Submit ratings", variant="primary", elem_id="submit-ratings")

    # ------------------------------------------------------------------------------ values

    @property
    def inputs(self) -> list[Block]:
        """The form's inputs in the order the rating event takes them (after code and conversation id)."""
        return [*self.radios, self.comment, *([self.attention] if self.instructed else [])]

    def answers(self, values: list[Any]) -> tuple[dict[str, Any], str]:
        """(answers by question key, comment) from the values of `inputs`."""
        values = list(values)
        attention = values.pop() if self.instructed else None
        *answers, comment = values
        keyed = dict(zip(self.keys, answers))
        if self.instructed:
            keyed[INSTRUCTED_KEY] = attention
        return keyed, comment if isinstance(comment, str) else ""

    def values(self, draft: RatingDraft | None) -> dict[Block, Any]:
        """The form as `draft` holds it (empty without one), for every input."""
        out: dict[Block, Any] = {radio: (draft.answer(key) if draft else None) for radio, key in zip(self.radios, self.keys)}
        out[self.comment] = draft.comment if draft else ""
        out[self.attention] = draft.answer(INSTRUCTED_KEY) if draft else None
        return out

    def restore(self, view: SessionView | None) -> dict[Block, Any]:
        """The form's values for a page drawn at `view`: its conversation's draft while chatting."""
        draft = None
        if view is not None and view.stage == "chat" and view.conversation_id:
            try:
                draft = self.study.draft(view.code, view.conversation_id)
            except StudyRefusal:
                draft = None
        return self.values(draft)

    # ------------------------------------------------------------------------------ handlers

    def validate(self, code: str, conversation_id: str, *values: Any) -> list[dict]:
        """The rating event's validator: one gr.validate per input, marking each unanswered question and a
        comment over the length limit; the code and conversation are the handler's to check."""
        values = [v for v in values if not isinstance(v, gr.Request)]
        keyed, comment = self.answers(values)
        missing = set(missing_answers(self.protocol, keyed))
        marks = [gr.validate(key not in missing, MISSING) for key in self.keys]
        limit = self.protocol.max_message_chars
        n = len(comment.strip())
        marks.append(gr.validate(n <= limit, f"Please keep the comment under {limit:,} characters (it has {n:,})."))
        if self.instructed:
            marks.append(gr.validate(INSTRUCTED_KEY not in missing, MISSING))
        return [gr.validate(True, ""), gr.validate(True, ""), *marks]

    def save(self, code: str, conversation_id: str, *values: Any) -> None:
        """Keep the form as it is now. Quiet: a draft that cannot be kept (the conversation was rated in
        another tab, a code that is gone) changes nothing on the page."""
        values = [v for v in values if not isinstance(v, gr.Request)]
        keyed, comment = self.answers(values)
        try:
            self.study.save_draft(code, conversation_id, keyed, comment)
        except StudyRefusal:
            return
        except Exception as exc:  # noqa: BLE001 - never the participant's text in the log
            log.error("saving a rating draft failed: %s", type(exc).__name__)

    def wire(self, code_box: Block, conv_box: Block) -> None:
        """Save the draft on every answer and on every change of the comment."""
        inputs = [code_box, conv_box, *self.inputs]
        opts = dict(inputs=inputs, outputs=None, api_visibility="private", concurrency_limit=None,
                    show_progress="hidden")
        for radio in [*self.radios, *([self.attention] if self.instructed else [])]:
            radio.input(self.save, **opts)
        self.comment.change(self.save, trigger_mode="always_last", **opts)  # (fill() fires no .input)
