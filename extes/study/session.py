"""The participant flow as plain Python: every rule of the study lives here, testable without a browser.

consent -> participant code -> scenario -> three panes (turn counts) -> rating form gate -> submit ->
next conversation (or done). Everything a participant has done is in the store, so `resume(code)`
rebuilds exactly where they were: the UI keeps no state of its own beyond the code and conversation id.

Every call that names a conversation checks that it belongs to the participant code given; refusals
(`StudyRefusal`) change nothing stored, and their messages are safe to show in a browser: they never
contain arm names, model names or adapter paths. Participant messages are never logged.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Generator, Iterator, Mapping
from typing import Any

from extes.analysis.pairwise import pair_interval_widths
from extes.models.arms import Arm
from extes.models.types import Event, Reply
from extes.study.arrivals import PlatformArrivals
from extes.study.blinding import strip_tags
from extes.study.capacity import BUSY_MESSAGE, WAIT_MESSAGE, Admission, CapacityGate, Ticket
from extes.study.design import Chooser, chooser
from extes.study.protocol import Protocol
from extes.study.rating import (
    INSTRUCTED_KEY,
    PAIRS,
    Question,
    attention_checks,
    draft_answers,
    questions,
    votes_from_answers,
)
from extes.study.records import Message, Participant, RatingDraft, Role
from extes.study.safety import RiskChecker, record_risks
from extes.study.screening import UNSAFE_REPLY, ReplyScreen, Verdict, replacement_text, trim_to_sentence
from extes.study.store import HEARTBEAT_S, Conversation, DuplicateError, LimitError, Store
from extes.study.streaming import Done, ReplyPool, final_text, pane_context
from extes.study.turn import Pacing, TurnStream
from extes.study.views import (
    REPORT_OPTION,
    REPORT_REASONS,
    PaneState,
    SessionView,
    StudyRefusal,
    UnknownCode,
    clean_input,
    pane_label,
)
from extes.taxonomy import OTHER_SCENARIO, SCENARIO_NAMES

# Re-exported: the pages and tests import the flow's words from here.
__all__ = ["INSTRUCTED_KEY", "PAIRS", "SCENARIO_CHOICES", "PaneState", "ReplyPool", "SessionView", "Study",
           "StudyRefusal", "UnknownCode", "clean_input", "pane_label", "trim_to_sentence"]

log = logging.getLogger(__name__)

SCENARIO_CHOICES: tuple[str, ...] = (*SCENARIO_NAMES, OTHER_SCENARIO)
MAX_DESCRIPTION_CHARS = 500
PACED_TICK_S = 0.05  # a paced send's text grows this often once its model is done
EXCLUSION_RULE_META = "exclusion_rule"  # the running protocol's `attention.exclude`, JSON, in the store's meta


class Study:
    """The study run: protocol + store + model pool. Thread-safe; holds no participant state in memory
    except which conversations are generating right now (to refuse overlapping sends)."""

    def __init__(self, protocol: Protocol, store: Store, pool: ReplyPool, rng: random.Random | None = None,
                 gate: CapacityGate | None = None):
        self.protocol = protocol
        self.store = store
        self.pool = pool
        # concurrent generations per client and per code (None: ungated; the participant page sets one)
        self.gate = gate
        # single-pane sends are released against the clock, so timing does not tell the arm (None: off)
        self.pacing: Pacing | None = Pacing()
        self.risk = RiskChecker.from_protocol(protocol)
        self.screen = ReplyScreen.from_protocol(protocol)  # every reply, before it is shown
        self.replacement = replacement_text(protocol)
        self._rng = rng
        self._chooser = chooser(protocol.design, protocol.arm_names, rng)
        self._busy: set[str] = set()
        self._busy_lock = threading.Lock()
        self._live: set[int] = set()  # reply rows streaming in this process (kept fresh by the heartbeat)
        self._heartbeat: threading.Thread | None = None
        # the running protocol's exclusion rule, for `extes analyze --exclusions protocol` from the database alone
        store.set_meta(EXCLUSION_RULE_META, json.dumps(list(protocol.attention.exclude)))
        self.arrivals = PlatformArrivals(protocol, store, self) if protocol.recruitment is not None else None

    def _beat(self) -> None:
        """Refresh the replies streaming here, so other processes (and this one after a restart) can
        tell them from those of a dead process (Store.STREAM_STALE_S)."""
        while True:
            time.sleep(HEARTBEAT_S)
            with self._busy_lock:
                ids = sorted(self._live)
            if ids:
                try:
                    self.store.touch_replies(ids)
                except Exception as exc:  # noqa: BLE001 - the next beat tries again
                    log.warning("heartbeat of streaming replies failed: %s", type(exc).__name__)

    def _track(self, ids: list[int], live: bool) -> None:
        with self._busy_lock:
            if live:
                self._live.update(ids)
                if self._heartbeat is None:
                    self._heartbeat = threading.Thread(target=self._beat, name="extes-heartbeat", daemon=True)
                    self._heartbeat.start()
            else:
                self._live.difference_update(ids)

    # ---------------------------------------------------------------------------------- lookups

    def participant(self, code: str) -> Participant:
        """The participant with this code; UnknownCode (a guess, counted by the page's limits) otherwise."""
        code = clean_input(code, "participant code", multiline=False)
        p = self.store.participant_by_code(code)
        if p is None:
            raise UnknownCode("No participant with this code. Please check the code and try again.")
        if p.role is not Role.PARTICIPANT:
            raise UnknownCode("This code is not a participant code.")
        return p

    def _owned(self, code: str, conversation_id: str) -> tuple[Participant, Conversation]:
        p = self.participant(code)
        conversation_id = clean_input(conversation_id, "conversation id", multiline=False)
        conv = self.store.conversation(conversation_id or "") if conversation_id else None
        if conv is None or conv.participant_id != p.id:
            # Same answer whether it does not exist or belongs to someone else.
            raise UnknownCode("This conversation does not belong to this participant code.")
        return p, conv

    def _arm(self, conv: Conversation, pane: str) -> Arm:
        return self.protocol.arm(conv.arm(pane))

    # ---------------------------------------------------------------------------------- views

    def _pane_states(self, conv: Conversation, rows: list[Message] | None = None) -> list[PaneState]:
        rows = self.store.messages(conv.id) if rows is None else rows
        out = []
        for pane in conv.panes:
            # a reply row with no text that is not streaming any more (its process died before the first
            # word) showed nothing: not drawn
            mine = [r for r in rows if r.pane == pane and not (r.cut_off and not r.text)]
            msgs = [{"role": r.role, "content": r.text, "id": r.id, "interrupted": r.cut_off} for r in mine]
            # only complete replies count towards the minimum (not ones cut off by a crash or a closed page)
            turns = sum(1 for r in mine if r.counts)
            out.append(PaneState(pane, pane_label(pane), msgs, turns, max(0, self.protocol.min_user_turns - turns)))
        return out

    def _has_risk(self, conversation_id: str) -> bool:
        return bool(self.store.flags(conversation_id))

    def view(self, code: str) -> SessionView:
        """Where the participant with `code` is now (the resume logic)."""
        p = self.participant(code)
        total = self.protocol.conversations_per_participant
        convs = self.store.conversations_of(p.id)
        base = dict(code=p.code, participant_id=p.id, total=total, min_turns=self.protocol.min_user_turns)
        convs = [c for c in convs if c.status in ("chatting", "rated")]
        if not convs:
            return SessionView(stage="setup", number=1, **base)
        last = convs[-1]
        if last.status == "chatting":
            return self._chat_view(p, last, base)
        rated = sum(1 for c in convs if c.status == "rated")
        if rated < total:  # between conversations: straight to picking the next issue
            return SessionView(stage="setup", number=rated + 1, **base)
        return SessionView(stage="done", number=rated, conversation_id=last.id, **base)

    def _after_rating(self, code: str, conv: Conversation) -> SessionView:
        """The thanks page right after a rating (a later visit goes straight to the next conversation)."""
        v = self.view(code)
        revealed = None
        if self.protocol.reveal_identities == "after_rating":
            revealed = {pane: arm for pane, arm in zip(conv.panes, conv.arm_order)}
        stage = "thanks" if v.stage == "setup" else "done"
        return SessionView(stage=stage, code=v.code, participant_id=v.participant_id, conversation_id=conv.id,
                           number=v.number, total=v.total, min_turns=v.min_turns, revealed=revealed)

    def _chat_view(self, p: Participant, conv: Conversation, base: dict[str, Any],
                   panes: list[PaneState] | None = None, streaming: bool = False,
                   crisis: bool | None = None, waiting: bool = False) -> SessionView:
        if panes is None:
            panes = self._pane_states(conv)
            streaming = streaming or conv.id in self._busy or self.store.is_streaming(conv.id)
        else:  # a snapshot: the caller keeps updating its own lists while streaming
            panes = [PaneState(ps.pane, ps.label, [dict(m) for m in ps.messages], ps.turns, ps.remaining)
                     for ps in panes]
        return SessionView(
            stage="chat", conversation_id=conv.id, number=conv.seq, panes=panes,
            can_rate=all(ps.remaining == 0 for ps in panes) and not streaming,
            crisis=self._has_risk(conv.id) if crisis is None else crisis, scenario=conv.scenario,
            streaming=streaming, waiting=waiting, **base,
        )

    # ---------------------------------------------------------------------------------- flow

    def consent(self) -> SessionView:
        """The participant agreed: issue a code. Nothing is stored before this call."""
        p = self.store.create_participant(role="participant", protocol=self.protocol.source)
        log.info("participant %s consented", p.id)
        return self.view(p.code)

    def resume(self, code: str) -> SessionView:
        return self._seen(self.view(code))

    def start_conversation(self, code: str, scenario: str, description: str = "") -> SessionView:
        """Start the participant's next conversation. The limits (one in progress, at most
        conversations_per_participant) are checked again inside the store's write transaction, so
        simultaneous Start calls, in one process or several, cannot create more."""
        p = self.participant(code)
        in_progress = StudyRefusal("You already have a conversation in progress; it has been reopened.", hint=True)
        complete = StudyRefusal("You have completed all conversations of this study. Thank you!")
        convs = [c for c in self.store.conversations_of(p.id) if c.status in ("chatting", "rated")]
        if convs and convs[-1].status == "chatting":
            raise in_progress
        if len(convs) >= self.protocol.conversations_per_participant:
            raise complete
        scenario = clean_input(scenario, "issue", multiline=False)
        if scenario not in SCENARIO_CHOICES:
            raise StudyRefusal("Please pick the kind of issue you would like to talk about from the list.", hint=True)
        description = clean_input(description, "description").strip()
        if len(description) > MAX_DESCRIPTION_CHARS:
            raise StudyRefusal(f"Please keep the description under {MAX_DESCRIPTION_CHARS} characters "
                               f"(it has {len(description)}).")
        try:
            conv = self.store.create_conversation(p.id, scenario, description, self._choose(),
                                                  protocol=self.protocol.source,
                                                  max_conversations=self.protocol.conversations_per_participant,
                                                  n_orders=self.protocol.design.size)
        except LimitError as exc:
            raise (in_progress if exc.reason == "in_progress" else complete) from None
        log.info("participant %s started conversation %s", p.id, conv.id)
        return self._seen(self.view(code))

    def _choose(self) -> Chooser:
        """The design's choice for the next conversation: balanced, or (`assignment: adaptive`) the pair
        whose Bradley-Terry interval is widest in the participants' votes so far (`extes.study.design`).
        The votes are read before the store's write transaction; a vote landing meanwhile only shifts
        which pair is widest."""
        if self.protocol.assignment != "adaptive":
            return self._chooser

        names = list(self.protocol.arm_names)
        votes = self.store.votes_frame("participant")
        if votes.empty:
            return self._chooser
        index = {n: i for i, n in enumerate(names)}
        widths = {(index[a], index[b]): w for (a, b), w in pair_interval_widths(votes, names).items()}
        return chooser(self.protocol.design, names, self._rng, widths=widths)

    def next_conversation(self, code: str) -> SessionView:
        """After the thanks page: the setup page for the next conversation (nothing is stored yet)."""
        return self._seen(self.view(code))

    # ---------------------------------------------------------------------------------- chatting

    def check_message(self, text: str) -> str:
        text = clean_input(text, "message").strip()
        if not text:
            raise StudyRefusal("Type a message first, then press send.", hint=True)
        limit = self.protocol.max_message_chars
        if len(text) > limit:
            raise StudyRefusal(f"Your message is {len(text):,} characters long; the limit is {limit:,}. "
                               "Please shorten it and send it again.")
        return text

    def send(self, code: str, conversation_id: str, panes: str | list[str], text: str,
             cancel: threading.Event | None = None, client: str | None = None) -> Iterator[SessionView]:
        """Send `text` to one pane ("A") or several ("ABC"); yields views as replies stream in.

        All checks happen before anything is stored. The user's message and an empty reply row per pane
        (marked streaming) are committed in one transaction before generation starts; the shown text of
        each reply is written every `turn.PERSIST_INTERVAL_S` while it streams and completed in place when it
        ends, so a crash (kill -9) loses at most the last fraction of a second of what was shown, and the
        reply stays where it was, marked interrupted. If the stream is abandoned (page closed), the
        replies are stored as shown, marked interrupted.

        Blinding: every strategy tag is stripped (`extes.study.blinding`), and the panes' text is released
        in step: a pane shows its k-th piece only when every pane still replying has produced k pieces,
        so a pane whose model starts later (for example one that writes a strategy tag first, which is
        held back) does not show up as the last to start.

        Capacity: with a `gate`, the send takes a generation slot for `client` (the sender's address) and
        this participant first, waiting for one (views with `waiting` set) when the client is at its cap
        or the slots are full (`extes.study.capacity`); nothing is stored while it waits.
        """
        p, conv = self._owned(code, conversation_id)
        if conv.status != "chatting":
            raise StudyRefusal("This conversation is finished and rated; no more messages can be sent.")
        if any(arm not in self.protocol.arm_names for arm in conv.arm_order):
            # Started under another protocol whose models are not loaded now.
            raise StudyRefusal("This conversation cannot be continued in the current study.")
        if isinstance(panes, str):
            panes = list(panes)
        targets = list(dict.fromkeys(panes)) if isinstance(panes, list) else []
        if not targets or any(t not in conv.panes for t in targets):
            raise StudyRefusal("Unknown chat pane.")
        text = self.check_message(text)
        with self._busy_lock:
            if conv.id in self._busy:
                raise StudyRefusal("Please wait until the current replies are finished.", hint=True)
            self._busy.add(conv.id)
        ticket = None
        try:
            ticket = yield from self._slot(p, conv, client)
            yield from self._send(p, conv, targets, text, cancel or threading.Event())
        finally:
            if ticket is not None:
                self.gate.release(ticket)
            with self._busy_lock:
                self._busy.discard(conv.id)

    def _slot(self, p: Participant, conv: Conversation, client: str | None
              ) -> Generator[SessionView, None, Ticket | None]:
        """A generation slot from the gate (None without one), yielding `waiting` views while it waits."""
        if self.gate is None:
            return None
        waiter = self.gate.wait(client, p.id)
        base = dict(code=p.code, participant_id=p.id, total=self.protocol.conversations_per_participant,
                    min_turns=self.protocol.min_user_turns)
        try:
            for got in waiter:
                if got is None:
                    yield self._chat_view(p, conv, base, streaming=True, waiting=True)
                elif isinstance(got, Ticket):
                    return got
                elif got is Admission.CODE_BUSY:
                    raise StudyRefusal(WAIT_MESSAGE, hint=True)
                else:
                    log.warning("a send got no generation slot (%s)", got.value)
                    raise StudyRefusal(BUSY_MESSAGE, hint=True)
        finally:
            waiter.close()
        return None

    def replying(self, conversation_id: str) -> bool:  # here or in another app process
        return conversation_id in self._busy or self.store.is_streaming(conversation_id)

    def _send(self, p, conv, targets, text, cancel) -> Iterator[SessionView]:
        try:
            ids = self.store.open_turn(conv.id, text, [(t, conv.arm(t)) for t in targets])
        except LimitError as exc:
            if exc.reason == "streaming":  # another tab or app process is generating in this conversation
                raise StudyRefusal("Please wait until the current replies are finished.", hint=True) from None
            raise StudyRefusal("This conversation is finished and rated; no more messages can be sent.") from None
        reply_ids = {t: rid for t, (_uid, rid) in zip(targets, ids)}
        self._track(list(reply_ids.values()), True)
        try:
            yield from self._stream(p, conv, targets, text, cancel, ids, reply_ids)
        finally:
            self._track(list(reply_ids.values()), False)

    def _stream(self, p, conv, targets, text, cancel, ids, reply_ids) -> Iterator[SessionView]:
        """Generate the replies of one send and yield views as they stream. The rules of what is shown and
        saved when are `TurnStream`'s; this wires it to the pool, the store and the view."""
        record_risks(self.store, self.risk, conv.id, p.id, text, message_id=ids[0][0])
        base = dict(code=p.code, participant_id=p.id, total=self.protocol.conversations_per_participant,
                    min_turns=self.protocol.min_user_turns)
        rows = self.store.messages(conv.id)
        history = [r for r in rows if r.id not in reply_ids.values()]  # without the empty reply rows
        panes = self._pane_states(conv, history)
        crisis = self._has_risk(conv.id)
        yield self._chat_view(p, conv, base, panes, streaming=True, crisis=crisis)
        by_pane = {ps.pane: ps for ps in panes}
        slots = {}
        for t in targets:
            slots[t] = {"role": "assistant", "content": "", "id": reply_ids[t], "interrupted": False}
            by_pane[t].messages.append(slots[t])

        requests = {t: (conv.arm(t), pane_context(conv, t, self._arm(conv, t), history, self.protocol.scenario_to_models)) for t in targets}
        turn = TurnStream(reply_ids, pacing=self.pacing if len(targets) == 1 else None, screen=self.screen,
                          replacement=self.replacement)
        done = Done(conv, reply_ids)  # paced replies whose model finished, stored once shown in full
        finished = False
        events = self.pool.stream_many(requests, cancel=cancel)
        try:
            for pane, event in events:
                if turn.ended(pane):
                    continue
                turn.delta(pane, event.delta)
                if event.done and not self._end_pane(conv, pane, event, turn, reply_ids[pane], done):
                    slots[pane]["interrupted"] = True
                self._show(turn, by_pane, slots, done)
                self.store.update_replies(turn.due_saves())
                yield self._chat_view(p, conv, base, panes, streaming=not turn.complete, crisis=crisis)
            while turn.pacing_left:  # the model is done; the paced text is still being shown
                time.sleep(PACED_TICK_S)
                self._show(turn, by_pane, slots, done)
                self.store.update_replies(turn.due_saves())
                yield self._chat_view(p, conv, base, panes, streaming=not turn.complete, crisis=crisis)
            finished = True
        except GeneratorExit:
            cancel.set()
            raise
        except Exception as exc:  # a model failed: keep what finished, tell the participant to resend
            cancel.set()
            log.error("generation failed in conversation %s: %s", conv.id, type(exc).__name__)
            raise StudyRefusal("A model could not reply just now. Please send your message again.") from None
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()  # let the pool release the requests now, not when garbage-collected
            for t in [*turn.unfinished(), *done.replies]:  # ended early: keep what was shown, marked interrupted
                self._end_reply(reply_ids[t], turn.shown(t), "interrupted" if not finished else "error",
                                self._screened_out(conv, reply_ids[t], turn.blocked(t)), turn.text(t))
        if not turn.all_finished:  # a pane failed, or the pool ended without finishing it
            raise StudyRefusal("A model could not reply just now. Please send your message again.")
        yield self._chat_view(p, conv, base, self._pane_states(conv))

    def _show(self, turn: TurnStream, by_pane: dict[str, PaneState], slots: dict[str, dict], done: Done) -> None:
        """Release what the turn may show now into the view's panes (turn counts of completed ones); a paced
        reply is stored complete once it is shown in full (what is saved is what was shown)."""
        for done_pane in turn.release():
            if done_pane in done.replies:
                reply, streamed = done.replies.pop(done_pane)
                self._finish(done.conv, done_pane, done.reply_ids[done_pane], reply, streamed, turn.blocked(done_pane))
            by_pane[done_pane].turns += 1
            by_pane[done_pane].remaining = max(0, by_pane[done_pane].remaining - 1)
        for t, slot in slots.items():
            slot["content"] = turn.shown(t)

    def _end_pane(self, conv: Conversation, pane: str, event: Event, turn: TurnStream, reply_id: int,
                  done: Done) -> bool:
        """A pane's model is done: False when its reply ends as no turn (the participant is asked to send
        again): its model failed (what was shown is kept, as for an interrupted reply), or its reply shows
        nothing once tags are stripped (a tell, kept for analysis only)."""
        if event.failed:
            self._end_reply(reply_id, turn.shown(pane), "error", self._screened_out(conv, reply_id, turn.blocked(pane)),
                            turn.text(pane))
            turn.fail(pane)
            log.error("generation failed in conversation %s (pane %s)", conv.id, pane)
            return False
        if turn.pacing is not None:  # stored when shown in full (`_show`), screened before it shows
            final = final_text(event.reply, turn.text(pane))
            if final:
                if turn.blocked(pane) is not None or not self.screen(final).safe:
                    final = self.replacement
                turn.finish(pane, final)
                done.replies[pane] = (event.reply, turn.text(pane))
                return True
        final = self._finish(conv, pane, reply_id, event.reply, turn.text(pane), turn.blocked(pane))
        if not final:
            turn.fail(pane)
            return False
        turn.finish(pane, final)
        return True

    def _end_reply(self, reply_id: int, shown: str, reason: str, screened: str | None = None,
                   raw: str | None = None) -> None:
        """A reply that did not finish: kept as shown, marked partial; one that showed nothing is removed
        (there is nothing to keep, and the model's next context must not hold an empty turn)."""
        if shown:
            self.store.finish_reply(reply_id, shown, finish_reason=reason, partial=True, screened=screened,
                                    raw_text=raw if screened else None)
        else:
            self.store.delete_empty_reply(reply_id)

    def _screened_out(self, conv: Conversation, reply_id: int, verdict: Verdict | None) -> str | None:
        """A reply the screen replaced: flag it for the researcher (category `unsafe_reply`, the rule that
        matched); returns the screen's category for the row, None when it passed."""
        if verdict is None or verdict.safe:
            return None
        self.store.add_flag(conv.id, conv.participant_id, UNSAFE_REPLY, f"{verdict.category}: {verdict.detail}",
                            message_id=reply_id)
        log.warning("a reply in conversation %s was screened out (%s)", conv.id, verdict.category)
        return verdict.category

    def _finish(self, conv, pane: str, reply_id: int, reply: Reply | None, streamed: str,
                blocked: Verdict | None = None) -> str:
        """Complete a reply row: the shown text (tags stripped, a reply cut by the length cap ended at its
        last sentence, a reply that fails the screen replaced), the raw text, every strategy found, the
        engine's numbers. Returns the text.

        A reply that shows nothing once its strategy tags are stripped would tell which pane holds the
        strategy arm, and says nothing to the participant: it is stored with its raw text as an error
        (hidden, never a turn), and "" is returned so the participant is asked to send again."""
        if reply is None:
            text, found = strip_tags(streamed)
            screened = self._screened_out(conv, reply_id, blocked or self.screen(text))
            text = self.replacement if screened else text
            self.store.finish_reply(reply_id, text, finish_reason="stop", raw_text=streamed, strategies=found,
                                    screened=screened)
            return text
        text, found = strip_tags(reply.text)
        cut = None
        if reply.finish_reason == "length":  # one rule for every arm: end at the last complete sentence
            trimmed = trim_to_sentence(text)
            cut, text = len(text) - len(trimmed), trimmed
        _, in_raw = strip_tags(reply.raw_text or "")
        strategies = in_raw or ([reply.strategy] if reply.strategy else []) or found
        if not text.strip():
            self.store.finish_reply(reply_id, "", finish_reason="error", partial=True, raw_text=reply.raw_text,
                                    strategy=reply.strategy, strategies=strategies, n_tokens=reply.n_tokens)
            log.warning("a reply in conversation %s (pane %s) showed nothing once tags were stripped", conv.id, pane)
            return ""
        screened = self._screened_out(conv, reply_id, blocked or self.screen(text))
        if screened:
            text = self.replacement
        self.store.finish_reply(
            reply_id, text, finish_reason=reply.finish_reason, raw_text=reply.raw_text, strategy=reply.strategy,
            cut_chars=cut, screened=screened,
            strategies=strategies, latency_s=reply.latency_s, ttft_s=reply.ttft_s, n_tokens=reply.n_tokens,
            settings=reply.settings, dtype=reply.dtype or None, engine_version=reply.engine_version or None)
        return text

    def report(self, code: str, conversation_id: str, pane: str, index: int, reason: str = REPORT_OPTION) -> int:
        """The participant reported the model reply at position `index` of `pane` as harmful. Only the
        reasons the page offers (REPORT_REASONS) are taken."""
        if reason not in REPORT_REASONS:
            raise StudyRefusal("Please report a reply with the option the page offers.")
        p, conv = self._owned(code, conversation_id)
        if pane not in conv.panes:
            raise StudyRefusal("Unknown chat pane.")
        rows = self.store.messages(conv.id, pane=pane)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(rows):
            raise StudyRefusal("Please wait until the reply is finished before reporting it.", hint=True)
        row = rows[index]
        if not row.is_reply:
            raise StudyRefusal("Only model replies can be reported.", hint=True)
        try:
            rid = self.store.add_report(conv.id, row.id, p.id, reason=reason)
        except DuplicateError:
            raise StudyRefusal("You already reported this reply. Thank you.", hint=True) from None
        log.info("participant %s reported message %s", p.id, row.id)
        return rid

    # ---------------------------------------------------------------------------------- rating

    def questions(self) -> list[Question]:
        """Every question of the rating form, in order (`extes.study.rating`)."""
        return questions(self.protocol)

    def save_draft(self, code: str, conversation_id: str, answers: Mapping[str, object], comment: str = "") -> None:
        """Keep the rating form as filled in so far, for a reload or a return (`rating.draft_answers`)."""
        p, conv = self._owned(code, conversation_id)
        if conv.status != "chatting":
            raise StudyRefusal("This conversation has already been rated; your ratings were kept.", hint=True)
        comment = clean_input(comment, "comment")[: self.protocol.max_message_chars]
        self.store.save_draft(conv.id, p.id, draft_answers(self.protocol, answers), comment)

    def draft(self, code: str, conversation_id: str) -> RatingDraft | None:
        """The conversation's saved rating form (None once rated, or when nothing was saved)."""
        _p, conv = self._owned(code, conversation_id)
        return self.store.draft(conv.id) if conv.status == "chatting" else None

    def submit_rating(self, code: str, conversation_id: str, answers: Mapping[str, str | None],
                      comment: str = "") -> SessionView:
        """Store the whole rating form (all aspects x pairs required) and its attention checks atomically,
        and move on."""
        p, conv = self._owned(code, conversation_id)
        if conv.status != "chatting":
            raise StudyRefusal("This conversation has already been rated; your ratings were kept.")
        streaming = StudyRefusal("Please wait until every reply is finished before rating.", hint=True)
        if conv.id in self._busy or self.store.is_streaming(conv.id):
            raise streaming
        short = [ps for ps in self._pane_states(conv) if ps.remaining > 0]
        if short:
            need = ", ".join(f"{ps.label} needs {ps.remaining} more" for ps in short)
            raise StudyRefusal(f"Each model needs at least {self.protocol.min_user_turns} replies before rating: {need}.")
        votes = votes_from_answers(self.protocol, conv, answers)
        comment = clean_input(comment, "comment").strip()
        if len(comment) > self.protocol.max_message_chars:
            raise StudyRefusal(f"Please keep the comment under {self.protocol.max_message_chars:,} characters.")
        try:
            self.store.submit_votes(conv.id, p.id, votes, comment=comment,
                                    checks=attention_checks(self.protocol, self.store, conv, answers, votes))
        except DuplicateError:
            raise StudyRefusal("This conversation has already been rated; your ratings were kept.") from None
        except LimitError:  # a reply started streaming meanwhile (another tab or app process)
            raise streaming from None
        log.info("participant %s rated conversation %s", p.id, conv.id)
        return self._seen(self._after_rating(code, conv))

    # ---------------------------------------------------------------------------------- recruitment platforms

    def _seen(self, view: SessionView) -> SessionView:
        """For a participant from a platform: the stage reached is recorded, and the end carries the
        completion link and code (`extes.study.arrivals`)."""
        return self.arrivals.record_stage(view) if self.arrivals is not None else view

    def platform_arrival(self, params: Mapping[str, str] | None, held_code: str | None = None) -> SessionView | None:
        """A page opened with URL parameters (`PlatformArrivals.arrive`); None: not a platform arrival."""
        return self.arrivals.arrive(params, held_code) if self.arrivals is not None else None

    def platform_consent(self, params: Mapping[str, str] | None) -> SessionView:
        """The participant from a platform agreed (`PlatformArrivals.agree`)."""
        return self.arrivals.agree(params) if self.arrivals is not None else self.consent()

    def platform_decline(self, params: Mapping[str, str] | None) -> SessionView:
        """The participant from a platform did not agree (`PlatformArrivals.decline`)."""
        if self.arrivals is None:
            raise StudyRefusal("Thank you. You can close this page.")
        return self.arrivals.decline(params)
