"""The participant page (`/`): Gradio 6 components wired to `extes.study.session.Study`.

This module only draws: every rule lives in `Study`, every fact in the store. The browser holds the
participant code and the current conversation id (hidden fields, plus the code in localStorage so a
refresh resumes: BROWSER_NOTE says so on the page; Gradio's encryption of it uses a key every page
receives, so it is not counted on); each call sends them back and `Study` checks ownership.

Blinding: nothing here ever names an arm. Panes are "Model A/B/C"; errors from models are replaced by
a generic message; unexpected exceptions become a generic error. Model output and participant text are
HTML-escaped before Markdown rendering, so `<script>` shows as text.
"""

from __future__ import annotations

import html
import json
import logging
import threading
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

import gradio as gr
from gradio.blocks import Block

from extes.study.capacity import WAITING_NOTE, CapacityGate
from extes.study.limits import Limiter, RateLimited, client_of
from extes.study.session import SCENARIO_CHOICES, Study
from extes.study.ui_rating import SCROLL_JS, RatingForm
from extes.study.ui_style import CSS, PAGE_JS, SUPPORT_HTML  # noqa: F401 - app.py imports CSS from here
from extes.study.views import REPORT_OPTION, SessionView, StudyRefusal, UnknownCode, pane_label

log = logging.getLogger(__name__)

# What a handler returns: {component: new value or gr.update(...)}. Gradio orders it by the event's outputs and
# skips any output left out, so adding a component shifts nothing.
Updates = dict[Block, Any]

GENERIC_ERROR = "Something went wrong on our side. Please try again in a moment."
BROWSER_NOTE = ("This browser keeps your participant code (and nothing else) so that reloading the page brings "
                "you back. Anyone using this browser could continue as you: on a shared computer, press "
                "\"Forget my code on this browser\".")
TOPIC_PLACEHOLDER = "Choose a topic"
# Gradio's Dropdown has no placeholder: set it in the browser once the setup page is drawn (retried while
# the page renders it).
TOPIC_JS = ("() => { let n = 0; const set = () => { const el = document.querySelector('#topic input'); "
            f"if (el) {{ el.placeholder = '{TOPIC_PLACEHOLDER}'; }} if (++n < 20) {{ setTimeout(set, 150); }} }}; set(); }}")
RETURN_NOTE = ("## Welcome back\nTo continue where you left off, enter the participant code you were given "
               "when you started (it was shown at the top of the page). Your platform id alone does not open "
               "your conversations: others can see it.")
# Gradio's BrowserState encrypts with a key sent to every page: a fixed, public key says so honestly (and
# works the same on every app process and after restarts).
BROWSER_KEY = "not-a-secret:extes-study"
CODE_STORAGE_KEY = "extes-study-code"  # the BrowserState's localStorage key
# "Forget my code on this browser": Gradio's BrowserState never writes an empty value, so setting it to ""
# leaves the code in localStorage and a reload resumes. The key is removed in the browser instead, and the
# choice holds for this tab (sessionStorage): every later update that would store a code again (a rating,
# the next conversation, a resume) is followed by the same removal.
FORGET_JS = ("() => { sessionStorage.setItem('extes-forget', '1'); "
             f"localStorage.removeItem('{CODE_STORAGE_KEY}'); }}")
KEEP_FORGOTTEN_JS = ("() => { const drop = () => { if (sessionStorage.getItem('extes-forget') === '1') "
                     f"{{ localStorage.removeItem('{CODE_STORAGE_KEY}'); }} }}; drop(); setTimeout(drop, 250); }}")
STREAM_INTERVAL_S = 0.1  # at most ~10 page updates a second while replies stream
REDIRECT_DELAY_MS = 2500  # the completion code stays readable this long before the platform's page opens
# Runs in the browser after an event that may end the study: open the completion URL (set only when the
# protocol says redirect: true). The link and code stay on the page in case the redirect is blocked.
REDIRECT_JS = ("(url) => { if (url && /^https?:\\/\\//.test(url)) { setTimeout(() => { window.location.href = url; }, "
               f"{REDIRECT_DELAY_MS}); }} return url; }}")


def StrictTextbox(**kwargs: Any) -> gr.Textbox:  # noqa: N802 - used like a component class
    """A Textbox that takes only text: Gradio's own turns a list sent to the API into its Python repr
    (which was then stored). Control characters are refused by the study's checks, with the field named.
    (An instance attribute, not a subclass: Gradio writes a .pyi file next to any component subclass.)"""
    box = gr.Textbox(**kwargs)
    label = kwargs.get("label") or "This field"

    def preprocess(payload: Any) -> str | None:
        if payload is not None and not isinstance(payload, str):
            raise gr.Error(f"{label}: expected text.", print_exception=False)
        return payload

    box.preprocess = preprocess  # type: ignore[method-assign]
    return box


def with_request(fn: Callable, names: list[str]) -> Callable:
    """Give a handler taking *args an explicit signature (names..., request: gr.Request), so Gradio passes
    the request last (it only does so for a named parameter); used for the abuse limits."""
    import inspect

    P = inspect.Parameter
    params = [P(n, P.POSITIONAL_OR_KEYWORD) for n in names]
    params.append(P("request", P.POSITIONAL_OR_KEYWORD, annotation=gr.Request))
    fn.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    fn.__annotations__ = {"request": gr.Request}  # Gradio reads the type hints, not the signature's
    return fn


def _skip_all(outputs: list[Block]) -> Updates | None:
    """Leave every one of `outputs` as it is (None for an event without outputs)."""
    return {block: gr.skip() for block in outputs} if outputs else None


def request_of(args: tuple) -> gr.Request | None:
    return next((a for a in args if isinstance(a, gr.Request)), None)


def _params(text: str | None) -> dict[str, str]:
    """The platform parameters kept on the page (JSON of the URL's query parameters)."""
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        value = None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise StudyRefusal("Please open the study from the link on the recruitment platform.")
    return value


def safe_text(text: str) -> str:
    """Text for a Markdown renderer that must show it literally: HTML escaped, images not loaded."""
    return html.escape(text or "", quote=False).replace("![", "!\\[")


INTERRUPTED_NOTE = "\n\n*(this reply was interrupted)*"


def _chat_value(pane_state) -> list[dict[str, str]]:
    return [{"role": m["role"],
             "content": (safe_text(m["content"]) or "…") + (INTERRUPTED_NOTE if m.get("interrupted") else "")}
            for m in pane_state.messages]


def _counter_text(view: SessionView, i: int) -> str:
    ps = view.panes[i]
    if ps.remaining > 0:
        s = "" if ps.remaining == 1 else "s"
        return f"**{ps.label}**: {ps.remaining} more message{s} needed"
    return f"**{ps.label}**: minimum reached ({ps.turns} replies); you can continue or rate below"


class ParticipantUI:
    """Builds the Blocks and owns the mapping SessionView -> component updates."""

    def __init__(self, study: Study, concurrency: int = 16, limiter: Limiter | None = None):
        self.study = study
        self.limiter = limiter
        self.concurrency = concurrency  # generating events at once (the pool batches them)
        if study.gate is None:  # per client and per code caps on those (issue 24): sends over them wait
            study.gate = CapacityGate.for_concurrency(concurrency)
        # the queue lets the waiting sends in too, so that the gate, not the queue, decides who generates
        self.queue_limit = max(concurrency, study.gate.queue_limit)
        self.protocol = study.protocol

    # ------------------------------------------------------------------------------ rendering

    def _full(self, view: SessionView | None) -> Updates:
        """An update for every component in self.full_outputs, keyed by component."""
        if view is None:  # consent page, nothing known
            stage, code = "consent", ""
        else:
            stage, code = view.stage, view.code
        chat = stage == "chat"
        consent = stage == "consent" or view is None
        code_md = (f"Your participant code: **{code}** (write it down: with it you can come back later "
                   "and continue where you left off)") if code else ""
        progress = ""
        if view is not None and stage in ("setup", "chat"):
            progress = f"Conversation {view.number} of {view.total}"
        thanks = ""
        if stage == "thanks":
            thanks = (f"## Thank you!\nYour ratings are saved. The study asks for {view.total} conversations; "
                      "press \"Start the next conversation\" below (you can also come back later with your code).")
        elif stage == "done" and view.completion_url:
            thanks = self._completion_md(view)
        elif stage == "done":
            thanks = "## Thank you!\nYou have completed the study. You can close this page now."
        elif stage == "screened_out":
            thanks = self._completion_md(view)
        if view is not None and view.revealed and stage in ("thanks", "done"):
            thanks += "\n\nThe models were: " + ", ".join(
                f"{pane_label(pane)} = {safe_text(arm)}" for pane, arm in view.revealed.items())
        updates: Updates = {
            self.code_box: code,
            self.conv_box: view.conversation_id if (view is not None and chat) else "",
            self.saved_code: code,  # kept in the browser
            self.consent_col: gr.update(visible=consent),
            self.code_md: gr.update(value=code_md, visible=bool(code)),
            self.note_row: gr.update(visible=bool(code)),  # what the browser keeps: once there is a code
            self.setup_col: gr.update(visible=stage == "setup"),
            self.progress_md: gr.update(value=progress, visible=bool(progress)),
            self.scenario: gr.update(value=None) if stage == "setup" else gr.skip(),
            self.description: gr.update(value="") if stage == "setup" else gr.skip(),
            self.chat_col: gr.update(visible=chat),
            self.thanks_col: gr.update(visible=stage in ("thanks", "done", "screened_out")),
            self.thanks_md: gr.update(value=thanks),
            self.next_btn: gr.update(visible=stage == "thanks"),
        }
        updates |= self._chat_updates(view if chat else None)
        updates |= self._platform_updates(view)
        # The rating form as its draft holds it (a reload, a return), empty for a new conversation.
        updates |= self.form.restore(view)
        return updates

    # ------------------------------------------------------------------------------ platforms, attention

    def _completion_md(self, view: SessionView) -> str:
        """The end of the study for a participant from a recruitment platform: the code and the link back."""
        if view.stage == "screened_out":
            head = "## Thank you\nYou did not agree to take part, so the study ends here."
        else:
            head = "## Thank you!\nYou have completed the study."
        if not view.completion_url:
            return head + " Please return to the recruitment platform."
        code = safe_text(view.completion_code)
        what = "Your code for the recruitment platform" if view.stage == "screened_out" else "Your completion code"
        return (f"{head}\n\n{what}: **{code}**\n\n"
                f"[Return to the recruitment platform to record your submission]({view.completion_url})"
                + ("\n\nYou will be taken there in a moment." if self._redirects(view) else ""))

    def _redirects(self, view: SessionView | None) -> bool:
        rec = self.protocol.recruitment
        return bool(view is not None and view.completion_url and rec is not None and rec.redirect)

    def _platform_updates(self, view: SessionView | None) -> Updates:
        """Updates for self.platform_outputs: redirect URL, decline button, code screen, attention row."""
        platform_consent = view is not None and view.stage == "consent"
        returning = view is not None and view.stage == "return"
        return {
            self.redirect_box: view.completion_url if self._redirects(view) else "",
            self.decline_btn: gr.update(visible=platform_consent),
            # the code screen: for a new visitor, and for a platform arrival whose id is known (the id only
            # identifies; the participant code they hold resumes)
            self.resume_col: gr.update(visible=view is None or returning),
            self.resume_acc: gr.update(open=returning),
            self.return_md: gr.update(visible=returning),
            self.attention: gr.update(value=None),
        }

    def _chat_updates(self, view: SessionView | None, between: bool = False) -> Updates:
        """Updates for self.chat_outputs: banner, 3 chatbots, 3 counters, rate hint, rating column.

        between: an update in the middle of a stream, after the first. Gradio rebuilds a component (and its
        JSON schema) for every gr.update or gr.skip it is given, which under twenty streaming participants
        took half the app's CPU; a plain value only runs the component's postprocess. So between the
        first and the last update of a stream the banner (whose visibility the first update set) is sent
        as a plain value, and every other output already is one except the rating column. (Keyed updates
        keep this: Gradio fills a component left out of the dict with gr.skip(), so every output is named.)"""
        if view is None or not view.panes:
            return {self.banner: gr.update(visible=False), **{chat: [] for chat in self.chats},
                    **{counter: "" for counter in self.counters}, self.rate_hint: "",
                    self.rating_col: gr.update(visible=False)}
        banner = self.protocol.crisis.banner if between else gr.update(value=self.protocol.crisis.banner,
                                                                       visible=view.crisis)
        chats = [_chat_value(ps) for ps in view.panes]
        counters = [_counter_text(view, i) for i in range(len(view.panes))]
        if view.can_rate:
            hint = "Every model has enough replies: the rating form is open below. You can still keep chatting."
        elif view.waiting:
            hint = WAITING_NOTE
        elif view.streaming:
            hint = "The models are replying…"
        else:
            hint = f"The rating form opens when every model has at least {view.min_turns} replies."
        return {self.banner: banner, **dict(zip(self.chats, chats)), **dict(zip(self.counters, counters)),
                self.rate_hint: hint, self.rating_col: gr.update(visible=view.can_rate)}

    # ------------------------------------------------------------------------------ handlers

    def _limited(self, fn: Callable, args: tuple) -> None:
        """Before a handler that takes a code: refuse a client (or everyone) over the code-guessing limit."""
        if self.limiter is not None and fn.__name__ != "on_consent":
            self.limiter.check("code", client_of(request_of(args)))

    def _count_guess(self, exc: BaseException, args: tuple) -> None:
        if self.limiter is not None and isinstance(exc, UnknownCode):
            try:
                self.limiter.hit("code", client_of(request_of(args)))
            except RateLimited:
                pass  # this refusal is shown; the next attempt is refused up front

    def _guard(self, outputs: list[Block], fn: Callable) -> Callable:
        """Refusals: hints become a toast and change nothing (every one of `outputs` skipped); others a
        participant-safe error. Any other exception is logged (type only; never participant text) and shown
        as a generic error."""

        def handle(exc: BaseException):
            if isinstance(exc, RateLimited):
                raise gr.Error(str(exc), print_exception=False) from None
            if isinstance(exc, StudyRefusal):
                if exc.hint:
                    gr.Warning(str(exc))
                    return _skip_all(outputs)
                raise gr.Error(str(exc), print_exception=False) from None
            if isinstance(exc, gr.Error):
                raise exc
            log.error("participant UI handler %s failed: %s", fn.__name__, type(exc).__name__)
            raise gr.Error(GENERIC_ERROR, print_exception=False) from None

        @wraps(fn)
        def wrapper(*args):
            try:
                self._limited(fn, args)
                return fn(*args)
            except Exception as exc:  # noqa: BLE001 - translated for the browser
                self._count_guess(exc, args)
                return handle(exc)

        return wrapper

    def _stream_guard(self, outputs: list[Block], fn: Callable) -> Callable:
        @wraps(fn)
        def wrapper(*args):
            try:
                self._limited(fn, args)
                yield from fn(*args)
            except RateLimited as exc:
                raise gr.Error(str(exc), print_exception=False) from None
            except StudyRefusal as exc:
                self._count_guess(exc, args)
                if exc.hint:
                    gr.Warning(str(exc))
                    yield _skip_all(outputs)
                    return
                raise gr.Error(str(exc), print_exception=False) from None
            except gr.Error:
                raise
            except Exception as exc:  # noqa: BLE001
                log.error("participant UI stream failed: %s", type(exc).__name__)
                raise gr.Error(GENERIC_ERROR, print_exception=False) from None

        return wrapper

    def on_load(self, saved_code: str | None, request: gr.Request = None):
        params = dict(request.query_params) if request is not None and getattr(request, "query_params", None) else {}
        arrival = (self.study.platform_arrival(params, held_code=saved_code)
                   if self.protocol.recruitment is not None else None)
        if arrival is not None:  # from a recruitment platform: no code screen (the platform id resumes)
            return {**self._full(arrival), self.platform_params: json.dumps(params)}
        return {**self._on_load(saved_code, client_of(request)), self.platform_params: ""}

    def _ready(self) -> Updates:
        """After the load event, whether it succeeded or not: the first buttons may be pressed."""
        return {self.agree_btn: gr.update(interactive=True), self.resume_btn: gr.update(interactive=True)}

    def _on_load(self, saved_code: str | None, client: str | None = None):
        if saved_code:
            try:
                return self._full(self.study.resume(saved_code))
            except StudyRefusal as exc:
                if self.limiter is not None and isinstance(exc, UnknownCode):
                    try:  # a wrong saved code is a guess too (issue 24); the page still opens empty
                        self.limiter.hit("code", client)
                    except RateLimited:
                        pass
        return self._full(None)

    def on_consent(self, params: str | None = None, request: gr.Request = None):
        if self.limiter is not None:
            self.limiter.hit("consent", client_of(request))
        if params:
            return self._full(self.study.platform_consent(_params(params)))
        return self._full(self.study.consent())

    def on_decline(self, params: str | None = None, request: gr.Request = None):
        return self._full(self.study.platform_decline(_params(params)))

    def on_resume(self, code: str, request: gr.Request = None):
        return self._full(self.study.resume(code))

    def on_start(self, code: str, scenario: str, description: str, request: gr.Request = None):
        try:
            return self._full(self.study.start_conversation(code, scenario, description))
        except StudyRefusal as exc:
            if exc.hint:
                view = self.study.resume(code)
                if view.stage == "chat":  # a conversation is already in progress (another tab): show it
                    gr.Info(str(exc))
                    return self._full(view)
            raise

    def on_next(self, code: str, request: gr.Request = None):
        return self._full(self.study.next_conversation(code))

    def make_rate(self) -> Callable:
        """The rating handler: code, conversation id, one value per question, comment, and the request."""

        def rate(*args):
            code, conversation_id, *values = [a for a in args if not isinstance(a, gr.Request)]
            keyed, comment = self.form.answers(values)
            return self._full(self.study.submit_rating(code, conversation_id, keyed, comment))

        rate.__name__ = "on_rate"
        extra = ["attention"] if self.protocol.attention.instructed_response else []
        return with_request(rate, ["code", "conversation_id", *(f"q{i}" for i in range(len(self.radios))), "comment",
                                   *extra])

    def make_send(self, panes: str, box: gr.Textbox):
        """The send handler for `panes` ("A", "B", "C" or "ABC"), typed into `box` (its outputs: chat_outputs
        and the box)."""

        def send(code: str, conversation_id: str, text: str, request: gr.Request = None):
            cancel = threading.Event()
            stream = self.study.send(code, conversation_id, panes, text, cancel=cancel, client=client_of(request))
            first, last_sent, pending = True, 0.0, None
            try:
                for view in stream:
                    pending = view
                    now = time.monotonic()
                    if first or now - last_sent >= STREAM_INTERVAL_S or not view.streaming:
                        # Clear the box that was used (on the first update only, so typing can go on); the
                        # send buttons are off while the models reply (issue 28: a second send was dropped).
                        yield {**self._chat_updates(view, between=not first and view.streaming),
                               box: "" if first else gr.skip(), **self._sending(first or not view.streaming, view.streaming)}
                        first, last_sent, pending = False, now, None
                if pending is not None:
                    yield {**self._chat_updates(pending), box: gr.skip(), **self._sending(True, False)}
            finally:
                cancel.set()
                stream.close()

        send.__name__ = f"send_{panes.lower()}"
        return send

    def _sending(self, changed: bool, replying: bool) -> Updates:
        """The send buttons: off while the models reply (only sent when it changes: updates cost CPU)."""
        if not changed:
            return {}
        return {btn: gr.update(interactive=not replying) for btn in self.send_buttons}

    def on_sent(self, code: str, conversation_id: str) -> Updates:
        """After every send, however it ended (a refusal, an error, a dropped connection): the buttons are
        on again unless replies are still being written (a send from another tab or box)."""
        try:
            replying = bool(conversation_id) and self.study.replying(conversation_id)
        except Exception as exc:  # noqa: BLE001 - the buttons come back rather than stay off
            log.error("checking for replies in progress failed: %s", type(exc).__name__)
            replying = False
        return self._sending(True, replying)

    def make_report(self, pane: str):
        def report(code: str, conversation_id: str, data: gr.LikeData, request: gr.Request = None):
            if not isinstance(data.liked, str) or data.liked != REPORT_OPTION:  # only the page's option
                raise StudyRefusal("Use the reply's report button to report it.")  # issue 24: nothing stored
            index = data.index if isinstance(data.index, int) else data.index[0]
            self.study.report(code, conversation_id, pane, int(index), reason=REPORT_OPTION)
            gr.Info("Thank you: the reply was reported to the researchers.")

        report.__name__ = f"report_{pane.lower()}"
        return report

    # ------------------------------------------------------------------------------ layout

    def build(self) -> gr.Blocks:  # noqa: PLR0915 - a Gradio layout reads top to bottom as the page does
        p = self.protocol
        with gr.Blocks(title="Study", analytics_enabled=False, fill_width=True) as demo:
            self.code_box = StrictTextbox(visible=False, label="code")
            self.conv_box = StrictTextbox(visible=False, label="conversation")
            # What this browser keeps (localStorage): the participant code, nothing else, so that a reload
            # resumes. Gradio "encrypts" it with a key every visitor's page receives: that is no protection,
            # so the page says plainly what is kept and offers to forget it (BROWSER_NOTE).
            self.saved_code = gr.BrowserState("", storage_key=CODE_STORAGE_KEY, secret=BROWSER_KEY)
            gr.Markdown(f"# {safe_text(p.title)}")
            self.code_md = gr.Markdown(visible=False, elem_classes=["extes-code"])
            with gr.Row(visible=False) as self.note_row:
                gr.Markdown(BROWSER_NOTE, elem_id="browser-note")
                forget_btn = gr.Button("Forget my code on this browser", size="sm", scale=0, elem_id="forget-code")
            with gr.Column(visible=True) as self.consent_col:
                gr.Markdown(p.consent)
                if p.instructions:
                    gr.Markdown("**How it works.** " + p.instructions)
                # Off until the page has loaded: a click before the load event returns would be undone by it
                # (the consent page drawn again over the new code, and a second code on the next click).
                self.agree_btn = gr.Button("I agree", variant="primary", interactive=False)
                self.decline_btn = gr.Button("I do not agree", visible=False, elem_id="decline")
            with gr.Column(visible=True) as self.resume_col:
                self.return_md = gr.Markdown(RETURN_NOTE, visible=False, elem_id="return-note")
                with gr.Accordion("Coming back? Enter your participant code", open=False) as self.resume_acc:
                    resume_code = StrictTextbox(label="Participant code", max_lines=1, placeholder="XXXX-XXXX-XXXX")
                    self.resume_btn = gr.Button("Continue with this code", interactive=False)  # as agree_btn
            self.progress_md = gr.Markdown(visible=False)
            with gr.Column(visible=False) as self.setup_col:
                self.scenario = gr.Dropdown(choices=list(SCENARIO_CHOICES), value=None, elem_id="topic",
                                            label="What would you like to talk about?")
                self.description = StrictTextbox(
                    label="In one sentence, what is it about? (optional; not shown to the models)", max_lines=2)
                start_btn = gr.Button("Start the conversation", variant="primary")
            with gr.Column(visible=False) as self.chat_col:
                self.banner = gr.Markdown(visible=False, elem_classes=["extes-crisis"], elem_id="crisis-banner")
                if p.instructions:
                    with gr.Accordion("Instructions", open=False):
                        gr.Markdown(p.instructions)
                self.chats, self.counters, boxes, buttons = [], [], [], []
                gr.HTML("", elem_id="extes-tabs", js_on_load=None)  # the phone's pane tabs (ui_style.PAGE_JS)
                with gr.Row(equal_height=True, elem_id="extes-panes"):
                    for pane in p.pane_names:
                        with gr.Column(min_width=260, elem_classes=["extes-pane"], elem_id=f"pane-{pane.lower()}"):
                            self.counters.append(gr.Markdown(elem_id=f"counter-{pane.lower()}"))
                            self.chats.append(gr.Chatbot(
                                label=pane_label(pane), height=460, feedback_options=[REPORT_OPTION],
                                sanitize_html=True, render_markdown=True, latex_delimiters=[], buttons=[],
                                allow_tags=False, allow_file_downloads=False, autoscroll=True,
                                group_consecutive_messages=False, elem_classes=["extes-chat"],
                            ))
                            boxes.append(StrictTextbox(label=f"Message to {pane_label(pane)}", show_label=False,
                                                       placeholder=f"Message to {pane_label(pane)}",
                                                    max_lines=6, lines=1))
                            buttons.append(gr.Button(f"Send to {pane_label(pane)}"))
                with gr.Row(elem_id="extes-composer"):
                    every = "all three models" if p.panes == 3 else "both models"
                    all_box = StrictTextbox(label=f"Send the same message to {every}", max_lines=6, lines=1,
                                         scale=4)
                    all_btn = gr.Button("Send to all" if p.panes == 3 else "Send to both", variant="primary",
                                        scale=1)
                    gr.HTML(SUPPORT_HTML, elem_id="extes-support", js_on_load=None, scale=0)  # shown after a risk
                self.rate_hint = gr.Markdown(elem_id="rate-hint")
                self.form = RatingForm(self.study)
                with gr.Column(visible=False, elem_id="rating-form") as self.rating_col:
                    self.form.build()
                self.radios, self.comment, self.attention = self.form.radios, self.form.comment, self.form.attention
                submit_btn = self.form.submit_btn
            with gr.Column(visible=False) as self.thanks_col:
                self.thanks_md = gr.Markdown(elem_id="thanks")
                self.redirect_box = StrictTextbox(visible=False, label="redirect")
                self.next_btn = gr.Button("Start the next conversation", variant="primary", visible=False)

            self.chat_outputs = [self.banner, *self.chats, *self.counters, self.rate_hint, self.rating_col]
            self.full_outputs = [self.code_box, self.conv_box, self.saved_code, self.consent_col, self.code_md, self.note_row,
                                 self.setup_col, self.progress_md, self.scenario, self.description, self.chat_col,
                                 self.thanks_col, self.thanks_md, self.next_btn, *self.chat_outputs, *self.radios,
                                 self.comment]
            self.platform_outputs = [self.redirect_box, self.decline_btn, self.resume_col, self.resume_acc,
                                     self.return_md, self.attention]
            self.full_outputs += self.platform_outputs
            # the platform's URL parameters as read on load (JSON). A hidden field rather than a gr.State: a
            # State input kept the app from shutting down on SIGTERM after API calls; the page's own URL is
            # the participant's to change anyway, and the study checks the parameters again.
            self.platform_params = StrictTextbox(visible=False, label="platform parameters", value="")
            full = dict(outputs=self.full_outputs, concurrency_limit=None)
            code_conv = [self.code_box, self.conv_box]

            demo.load(fn=None, js=PAGE_JS, api_visibility="private")  # phone tabs, crisis dialog (ui_style)
            forget_btn.click(lambda: {self.saved_code: "",
                                      self.code_md: gr.update(value="Your code is no longer kept in this browser. "
                                                              "Write it down if you want to come back.")},
                             inputs=None, outputs=[self.saved_code, self.code_md], api_visibility="private",
                             concurrency_limit=None).then(fn=None, js=FORGET_JS)
            redirect = dict(fn=None, inputs=[self.redirect_box], outputs=None, js=REDIRECT_JS)
            forgotten = dict(fn=None, inputs=None, outputs=None, js=f"() => {{ ({KEEP_FORGOTTEN_JS})(); ({TOPIC_JS})(); }}")
            load_outputs = [*self.full_outputs, self.platform_params]
            demo.load(self._guard(load_outputs, self.on_load), inputs=[self.saved_code], api_visibility="private",
                      outputs=load_outputs, concurrency_limit=None).then(
                self._ready, outputs=[self.agree_btn, self.resume_btn], api_visibility="private",
                concurrency_limit=None).then(**redirect).then(**forgotten)
            self.agree_btn.click(self._guard(self.full_outputs, self.on_consent), inputs=[self.platform_params],
                            api_name="consent", **full).then(**forgotten)
            self.decline_btn.click(self._guard(self.full_outputs, self.on_decline), inputs=[self.platform_params],
                                   api_visibility="private", **full).then(**redirect)
            self.resume_btn.click(self._guard(self.full_outputs, self.on_resume), inputs=[resume_code], api_name="resume",
                             **full).then(**forgotten)
            start_btn.click(self._guard(self.full_outputs, self.on_start),
                            inputs=[self.code_box, self.scenario, self.description], api_name="start",
                            **full).then(**forgotten)
            self.next_btn.click(self._guard(self.full_outputs, self.on_next), inputs=[self.code_box], api_name="next",
                                **full).then(**forgotten)
            submit_btn.click(self._guard(self.full_outputs, self.make_rate()), inputs=[*code_conv, *self.form.inputs],
                             validator=self.form.validate, api_name="rate", js=f"(...args) => {{ ({SCROLL_JS})(); return args; }}",
                             **full).then(**redirect).then(**forgotten)  # js: to the first question marked unanswered
            self.form.wire(self.code_box, self.conv_box)
            self.send_buttons = [*buttons, all_btn]
            sent = dict(fn=self.on_sent, inputs=code_conv, outputs=self.send_buttons, api_visibility="private",
                        concurrency_limit=None, show_progress="hidden")
            for pane, box, btn, chat in zip(p.pane_names, boxes, buttons, self.chats):
                outs = [*self.chat_outputs, box, *self.send_buttons]
                fn = self._stream_guard(outs, self.make_send(pane, box))
                for trigger in (btn.click, box.submit):
                    trigger(fn, inputs=[*code_conv, box], outputs=outs, concurrency_id="generate",
                            concurrency_limit=self.queue_limit, api_name=f"send_{pane.lower()}" if trigger == btn.click else None,
                            api_visibility="public" if trigger == btn.click else "private").then(**sent)
                chat.like(self._guard([], self.make_report(pane)), inputs=code_conv, outputs=None,
                          api_visibility="private", concurrency_limit=None)
            outs = [*self.chat_outputs, all_box, *self.send_buttons]
            fn = self._stream_guard(outs, self.make_send("".join(p.pane_names), all_box))
            all_btn.click(fn, inputs=[*code_conv, all_box], outputs=outs, concurrency_id="generate",
                          concurrency_limit=self.queue_limit, api_name="send_all").then(**sent)
            all_box.submit(fn, inputs=[*code_conv, all_box], outputs=outs, concurrency_id="generate",
                           concurrency_limit=self.queue_limit, api_visibility="private").then(**sent)
        return demo


def build_participant_ui(study: Study, concurrency: int = 16, limiter: Limiter | None = None) -> gr.Blocks:
    return ParticipantUI(study, concurrency, limiter).build()
