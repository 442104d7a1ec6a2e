"""The participant flow as plain Python: every rule of the study lives here, testable without a browser.

consent -> participant code -> scenario -> three panes (turn counts) -> rating form gate -> submit ->
next conversation (or done). Everything a participant has done is in the store, so `resume(code)`
rebuilds exactly where they were: the UI keeps no state of its own beyond the code and conversation id.

Every call that names a conversation checks that it belongs to the participant code given; refusals
(`StudyRefusal`) change nothing stored, and their messages are safe to show in a browser: they never
contain arm names, model names or adapter paths. Participant messages are never logged.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from extes.study.assignment import balanced_chooser
from extes.study.protocol import PANES, Protocol
from extes.study.safety import RiskChecker, record_risks
from extes.study.store import DuplicateError, Store
from extes.taxonomy import OTHER_SCENARIO, SCENARIO_NAMES

log = logging.getLogger(__name__)

SCENARIO_CHOICES: tuple[str, ...] = (*SCENARIO_NAMES, OTHER_SCENARIO)
PAIRS: tuple[tuple[str, str], ...] = (("A", "B"), ("A", "C"), ("B", "C"))
ANSWERS = {"left": "a", "right": "b", "tie": "tie", "a": "a", "b": "b"}
MAX_DESCRIPTION_CHARS = 500


def pane_label(pane: str) -> str:
    return f"Model {pane}"


def answer_key(aspect_key: str, pair: tuple[str, str]) -> str:
    """Key of one rating-form question: 'fluency:AB'."""
    return f"{aspect_key}:{pair[0]}{pair[1]}"



def trim_to_sentence(text: str, keep: float = 0.5) -> str:
    """A reply cut by the length cap ends mid-sentence ("... That could help. If you"): show it up to its
    last complete sentence, when that keeps at least `keep` of the text (the raw text is stored too)."""
    cut = max(text.rfind(c) for c in ".!?")
    if cut < 0:
        return text
    end = cut + 1
    while end < len(text) and text[end] in "\"')]*":
        end += 1
    return text[:end].rstrip() if end >= keep * len(text) else text


class StudyRefusal(ValueError):
    """A request the study refuses; nothing was stored. `hint=True` for gentle nudges (an empty message)."""

    def __init__(self, message: str, hint: bool = False):
        super().__init__(message)
        self.hint = hint


@dataclass
class PaneState:
    pane: str
    label: str
    messages: list[dict[str, Any]]  # {"role", "content", "id" (None while streaming)}
    turns: int
    remaining: int


@dataclass
class SessionView:
    """Everything the participant page shows. Holds no arm names (unless `revealed`, after rating, when the
    protocol allows it)."""

    stage: str  # setup | chat | thanks (only right after rating) | done
    code: str
    participant_id: str
    conversation_id: str = ""
    number: int = 0  # 1-based number of the current (or next) conversation
    total: int = 1
    panes: list[PaneState] = field(default_factory=list)
    min_turns: int = 0
    can_rate: bool = False
    crisis: bool = False
    scenario: str = ""
    revealed: dict[str, str] | None = None
    streaming: bool = False


class Study:
    """The study run: protocol + store + model pool. Thread-safe; holds no participant state in memory
    except which conversations are generating right now (to refuse overlapping sends)."""

    def __init__(self, protocol: Protocol, store: Store, pool: Any, rng: random.Random | None = None):
        self.protocol = protocol
        self.store = store
        self.pool = pool
        self.risk = RiskChecker.from_protocol(protocol)
        self._chooser = balanced_chooser(protocol.arm_names, rng)
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()

    # ---------------------------------------------------------------------------------- lookups

    def _participant(self, code: str) -> dict[str, Any]:
        p = self.store.participant_by_code(code or "")
        if p is None:
            raise StudyRefusal("No participant with this code. Please check the code and try again.")
        if p["role"] != "participant":
            raise StudyRefusal("This code is not a participant code.")
        return p

    def _owned(self, code: str, conversation_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
        p = self._participant(code)
        conv = self.store.conversation(conversation_id or "") if conversation_id else None
        if conv is None or conv.get("participant_id") != p["id"]:
            # Same answer whether it does not exist or belongs to someone else.
            raise StudyRefusal("This conversation does not belong to this participant code.")
        return p, conv

    def _arm(self, conv: dict[str, Any], pane: str):
        return self.protocol.arm(conv["arm_order"][PANES.index(pane)])

    # ---------------------------------------------------------------------------------- views

    def _pane_states(self, conv: dict[str, Any], rows: list[dict[str, Any]] | None = None) -> list[PaneState]:
        rows = self.store.messages(conv["id"]) if rows is None else rows
        out = []
        for pane in PANES:
            msgs = [{"role": r["role"], "content": r["text"], "id": r["id"]} for r in rows if r["pane"] == pane]
            turns = sum(1 for m in msgs if m["role"] == "assistant")
            out.append(PaneState(pane, pane_label(pane), msgs, turns, max(0, self.protocol.min_user_turns - turns)))
        return out

    def _has_risk(self, conversation_id: str) -> bool:
        return bool(self.store.flags(conversation_id))

    def view(self, code: str) -> SessionView:
        """Where the participant with `code` is now (the resume logic)."""
        p = self._participant(code)
        total = self.protocol.conversations_per_participant
        convs = self.store.conversations_of(p["id"])
        base = dict(code=p["code"], participant_id=p["id"], total=total, min_turns=self.protocol.min_user_turns)
        if not convs:
            return SessionView(stage="setup", number=1, **base)
        last = convs[-1]
        if last["status"] == "chatting":
            return self._chat_view(p, last, base)
        rated = sum(1 for c in convs if c["status"] == "rated")
        if rated < total:  # between conversations: straight to picking the next issue
            return SessionView(stage="setup", number=rated + 1, **base)
        return SessionView(stage="done", number=rated, conversation_id=last["id"], **base)

    def _after_rating(self, code: str, conv: dict[str, Any]) -> SessionView:
        """The thanks page right after a rating (a later visit goes straight to the next conversation)."""
        v = self.view(code)
        revealed = None
        if self.protocol.reveal_identities == "after_rating":
            revealed = {pane: arm for pane, arm in zip(PANES, conv["arm_order"])}
        stage = "thanks" if v.stage == "setup" else "done"
        return SessionView(stage=stage, code=v.code, participant_id=v.participant_id, conversation_id=conv["id"],
                           number=v.number, total=v.total, min_turns=v.min_turns, revealed=revealed)

    def _chat_view(self, p: dict[str, Any], conv: dict[str, Any], base: dict[str, Any],
                   panes: list[PaneState] | None = None, streaming: bool = False,
                   crisis: bool | None = None) -> SessionView:
        if panes is None:
            panes = self._pane_states(conv)
        else:  # a snapshot: the caller keeps updating its own lists while streaming
            panes = [PaneState(ps.pane, ps.label, [dict(m) for m in ps.messages], ps.turns, ps.remaining)
                     for ps in panes]
        return SessionView(
            stage="chat", conversation_id=conv["id"], number=conv["seq"], panes=panes,
            can_rate=all(ps.remaining == 0 for ps in panes) and not streaming,
            crisis=self._has_risk(conv["id"]) if crisis is None else crisis, scenario=conv["scenario"],
            streaming=streaming, **base,
        )

    # ---------------------------------------------------------------------------------- flow

    def consent(self) -> SessionView:
        """The participant agreed: issue a code. Nothing is stored before this call."""
        p = self.store.create_participant(role="participant", protocol=self.protocol.source)
        log.info("participant %s consented", p["id"])
        return self.view(p["code"])

    def resume(self, code: str) -> SessionView:
        return self.view(code)

    def start_conversation(self, code: str, scenario: str, description: str = "") -> SessionView:
        p = self._participant(code)
        convs = self.store.conversations_of(p["id"])
        if convs and convs[-1]["status"] == "chatting":
            raise StudyRefusal("You already have a conversation in progress; it has been reopened.", hint=True)
        if len(convs) >= self.protocol.conversations_per_participant:
            raise StudyRefusal("You have completed all conversations of this study. Thank you!")
        if scenario not in SCENARIO_CHOICES:
            raise StudyRefusal("Please pick the kind of issue you would like to talk about from the list.", hint=True)
        description = (description or "").strip()
        if len(description) > MAX_DESCRIPTION_CHARS:
            raise StudyRefusal(f"Please keep the description under {MAX_DESCRIPTION_CHARS} characters "
                               f"(it has {len(description)}).")
        conv = self.store.create_conversation(p["id"], scenario, description, self._chooser,
                                              protocol=self.protocol.source)
        log.info("participant %s started conversation %s", p["id"], conv["id"])
        return self.view(code)

    def next_conversation(self, code: str) -> SessionView:
        """After the thanks page: the setup page for the next conversation (nothing is stored yet)."""
        return self.view(code)

    # ---------------------------------------------------------------------------------- chatting

    def check_message(self, text: str) -> str:
        text = (text or "").strip()
        if not text:
            raise StudyRefusal("Type a message first, then press send.", hint=True)
        limit = self.protocol.max_message_chars
        if len(text) > limit:
            raise StudyRefusal(f"Your message is {len(text):,} characters long; the limit is {limit:,}. "
                               "Please shorten it and send it again.")
        return text

    def _context(self, conv: dict[str, Any], pane: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The model's view of one pane: its own history (consecutive same-role turns merged, e.g. after an
        interrupted reply), with the scenario in the system prompt only when the protocol says so."""
        arm = self._arm(conv, pane)
        out: list[dict[str, Any]] = []
        if self.protocol.scenario_to_models:
            about = f"The person would like to talk about: {conv['scenario']}."
            if conv.get("description"):
                about += f" In their words: {conv['description']}"
            out.append({"role": "system", "content": ((arm.system_prompt or "") + "\n\n" + about).strip()})
        for r in rows:
            if r["pane"] != pane:
                continue
            if out and out[-1]["role"] == r["role"] and r["role"] != "system":
                out[-1]["content"] += "\n\n" + r["text"]
                continue
            m: dict[str, Any] = {"role": r["role"], "content": r["text"]}
            if r["role"] == "assistant" and getattr(arm, "strategies", False) and r.get("strategy"):
                m["strategy"] = r["strategy"]
            out.append(m)
        return out

    def send(self, code: str, conversation_id: str, panes: str | list[str], text: str,
             cancel: threading.Event | None = None) -> Iterator[SessionView]:
        """Send `text` to one pane ("A") or several ("ABC"); yields views as replies stream in.

        All checks happen before anything is stored. The user's message is committed before generation
        starts and each reply as soon as it is complete; if the stream is abandoned (page closed), the
        partial replies shown so far are stored too, marked finish_reason="interrupted".
        """
        p, conv = self._owned(code, conversation_id)
        if conv["status"] != "chatting":
            raise StudyRefusal("This conversation is finished and rated; no more messages can be sent.")
        if any(arm not in self.protocol.arm_names for arm in conv["arm_order"]):
            # Started under another protocol whose models are not loaded now.
            raise StudyRefusal("This conversation cannot be continued in the current study.")
        targets = list(dict.fromkeys(panes))
        if not targets or any(t not in PANES for t in targets):
            raise StudyRefusal("Unknown chat pane.")
        text = self.check_message(text)
        with self._busy_lock:
            if conv["id"] in self._busy:
                raise StudyRefusal("Please wait until the current replies are finished.", hint=True)
            self._busy.add(conv["id"])
        try:
            yield from self._send(p, conv, targets, text, cancel or threading.Event())
        finally:
            with self._busy_lock:
                self._busy.discard(conv["id"])

    def _send(self, p, conv, targets, text, cancel) -> Iterator[SessionView]:
        ids = self.store.add_messages([
            {"conversation_id": conv["id"], "pane": t, "arm": conv["arm_order"][PANES.index(t)],
             "role": "user", "text": text} for t in targets
        ])
        record_risks(self.store, self.risk, conv["id"], p["id"], text, message_id=ids[0])
        base = dict(code=p["code"], participant_id=p["id"], total=self.protocol.conversations_per_participant,
                    min_turns=self.protocol.min_user_turns)
        rows = self.store.messages(conv["id"])
        panes = self._pane_states(conv, rows)
        crisis = self._has_risk(conv["id"])
        yield self._chat_view(p, conv, base, panes, streaming=True, crisis=crisis)

        requests = {t: (conv["arm_order"][PANES.index(t)], self._context(conv, t, rows)) for t in targets}
        partial: dict[str, str] = {t: "" for t in targets}
        done: set[str] = set()
        by_pane = {ps.pane: ps for ps in panes}
        for t in targets:
            by_pane[t].messages.append({"role": "assistant", "content": "", "id": None})
        finished = False
        events = self.pool.stream_many(requests, cancel=cancel)
        try:
            for pane, event in events:
                if pane in done:
                    continue
                slot = by_pane[pane].messages[-1]
                if event.delta:
                    partial[pane] += event.delta
                if event.done and event.reply is None and getattr(event, "error", None):
                    # this pane's model failed (the others go on): keep what was shown, as for an
                    # interrupted reply; the participant is asked to send again below
                    if partial[pane]:
                        self._store_reply(conv, pane, partial[pane], None, finish_reason="error")
                    else:
                        by_pane[pane].messages.pop()
                    log.error("generation failed in conversation %s (pane %s)", conv["id"], pane)
                    continue
                if event.done:
                    reply = event.reply
                    reply_text = reply.text if reply is not None else partial[pane]
                    if reply is not None and reply.finish_reason == "length":
                        reply_text = trim_to_sentence(reply_text)
                    mid = self._store_reply(conv, pane, reply_text, reply)
                    slot.update(content=reply_text, id=mid)
                    by_pane[pane].turns += 1
                    by_pane[pane].remaining = max(0, by_pane[pane].remaining - 1)
                    done.add(pane)
                else:
                    slot["content"] = partial[pane]
                yield self._chat_view(p, conv, base, panes, streaming=len(done) < len(targets), crisis=crisis)
            finished = True
        except GeneratorExit:
            cancel.set()
            raise
        except Exception as exc:  # a model failed: keep what finished, tell the participant to resend
            cancel.set()
            log.error("generation failed in conversation %s: %s", conv["id"], type(exc).__name__)
            raise StudyRefusal("A model could not reply just now. Please send your message again.") from None
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()  # let the pool release the requests now, not when garbage-collected
            if not finished:
                for t in targets:
                    if t not in done and partial[t]:
                        self._store_reply(conv, t, partial[t], None, finish_reason="interrupted")
        if len(done) < len(targets):  # the pool ended without finishing a pane
            raise StudyRefusal("A model could not reply just now. Please send your message again.")
        yield self._chat_view(p, conv, base, self._pane_states(conv))

    def _store_reply(self, conv, pane: str, text: str, reply: Any, finish_reason: str | None = None) -> int:
        arm = conv["arm_order"][PANES.index(pane)]
        if reply is None:
            return self.store.add_message(conv["id"], pane, arm, "assistant", text, finish_reason=finish_reason)
        return self.store.add_message(
            conv["id"], pane, arm, "assistant", text, raw_text=reply.raw_text, strategy=reply.strategy,
            latency_s=reply.latency_s, ttft_s=reply.ttft_s, n_tokens=reply.n_tokens,
            finish_reason=finish_reason or reply.finish_reason, settings=reply.settings,
        )

    def report(self, code: str, conversation_id: str, pane: str, index: int, reason: str = "harmful") -> int:
        """The participant reported the model reply at position `index` of `pane` as harmful."""
        p, conv = self._owned(code, conversation_id)
        if pane not in PANES:
            raise StudyRefusal("Unknown chat pane.")
        rows = self.store.messages(conv["id"], pane=pane)
        if not isinstance(index, int) or not 0 <= index < len(rows):
            raise StudyRefusal("Please wait until the reply is finished before reporting it.", hint=True)
        row = rows[index]
        if row["role"] != "assistant":
            raise StudyRefusal("Only model replies can be reported.", hint=True)
        try:
            rid = self.store.add_report(conv["id"], row["id"], p["id"], reason=str(reason)[:200])
        except DuplicateError:
            raise StudyRefusal("You already reported this reply. Thank you.", hint=True) from None
        log.info("participant %s reported message %s", p["id"], row["id"])
        return rid

    # ---------------------------------------------------------------------------------- rating

    def questions(self) -> list[tuple[str, str, str, tuple[str, str]]]:
        """(key, aspect label, question, pair) for every question of the rating form, in order."""
        return [(answer_key(a.key, pair), a.label, a.question, pair)
                for a in self.protocol.aspects for pair in PAIRS]

    def submit_rating(self, code: str, conversation_id: str, answers: dict[str, str | None],
                      comment: str = "") -> SessionView:
        """Store the whole rating form (all aspects x pairs required) atomically and move on."""
        p, conv = self._owned(code, conversation_id)
        if conv["status"] != "chatting":
            raise StudyRefusal("This conversation has already been rated; your ratings were kept.")
        panes = self._pane_states(conv)
        short = [ps for ps in panes if ps.remaining > 0]
        if short:
            need = ", ".join(f"{ps.label} needs {ps.remaining} more" for ps in short)
            raise StudyRefusal(f"Each model needs at least {self.protocol.min_user_turns} replies before rating: {need}.")
        missing, rows = [], []
        for key, label, _q, (left, right) in self.questions():
            value = ANSWERS.get(str(answers.get(key) or "").strip().lower())
            if value is None:
                missing.append(f"{label} ({pane_label(left)} vs {pane_label(right)})")
                continue
            rows.append({"aspect": key.split(":")[0], "pane_a": left, "pane_b": right,
                         "arm_a": conv["arm_order"][PANES.index(left)],
                         "arm_b": conv["arm_order"][PANES.index(right)], "outcome": value})
        if missing:
            raise StudyRefusal("Please answer every question before submitting. Missing: " + "; ".join(missing))
        comment = (comment or "").strip()
        if len(comment) > self.protocol.max_message_chars:
            raise StudyRefusal(f"Please keep the comment under {self.protocol.max_message_chars:,} characters.")
        try:
            self.store.submit_votes(conv["id"], p["id"], rows, comment=comment)
        except DuplicateError:
            raise StudyRefusal("This conversation has already been rated; your ratings were kept.") from None
        log.info("participant %s rated conversation %s", p["id"], conv["id"])
        return self._after_rating(code, conv)
