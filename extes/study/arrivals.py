"""Participants who arrive from a recruitment platform (Prolific, MTurk-style links).

A link with the platform's URL parameters skips the code screen. The platform id only identifies: it is
stored as a keyed hash (`extes.study.recruitment`), never used as a credential, and a return visit
resumes only with the participant code the browser kept or the participant typed in. At the end the
participant gets the completion code and link; one who declines gets the screened-out ones.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Protocol as TypingProtocol

from extes.study.protocol import Protocol
from extes.study.records import Participant
from extes.study.recruitment import (
    SALT_FINGERPRINT_META,
    PlatformArrival,
    RecruitmentError,
    arrival_from_params,
    completion_link,
    platform_id_hashes,
    platform_salt,
    salt_fingerprint,
)
from extes.study.store import DuplicateError, Store
from extes.study.views import SessionView, StudyRefusal

log = logging.getLogger(__name__)


class Flow(TypingProtocol):
    """What arrivals need from the participant flow (`extes.study.session.Study`)."""

    def participant(self, code: str) -> Participant: ...

    def consent(self) -> SessionView: ...

    def view(self, code: str) -> SessionView: ...

    def resume(self, code: str) -> SessionView: ...


class PlatformArrivals:
    """The platform side of the flow. Built by `Study` when the protocol has a `recruitment:` section."""

    def __init__(self, protocol: Protocol, store: Store, flow: Flow):
        self._protocol, self._store, self._flow = protocol, store, flow
        rec = protocol.recruitment
        self._salt = platform_salt() if rec is not None else b""
        if rec is not None:  # for the payments export (`extes export --payments`) from the database alone
            self._check_salt()
            store.set_meta("completion_codes", json.dumps({"completion": rec.completion_code,
                                                           "screened_out": rec.screened_out_code}))

    def _check_salt(self) -> None:
        """The salt keys every stored platform id: with another one, no finished id would be recognised and
        each could start again. The first start records the salt's fingerprint; a later start with another
        salt is refused before anyone arrives."""
        mine = salt_fingerprint(self._salt)
        stored = self._store.meta_value(SALT_FINGERPRINT_META, lambda: mine)
        if stored != mine:
            raise RecruitmentError(
                f"{self._store.where()}: EXTES_PLATFORM_SALT differs from the one this study database was "
                "started with; with another salt every platform id that already took part could start again. "
                "Start the app with the original salt (or use a new database for a new study).")

    def _arrival(self, params: Mapping[str, str] | None) -> tuple[PlatformArrival, tuple[str, ...]] | None:
        """The arrival's platform ids and the hashes its id may be stored under (the current one first)."""
        rec = self._protocol.recruitment
        if rec is None or not params:
            return None
        try:
            arrival = arrival_from_params({str(k): str(v) for k, v in params.items()}, rec)
        except RecruitmentError as exc:
            raise StudyRefusal(f"{exc}. Please open the study from the link on the recruitment platform.") from None
        if arrival is None:
            return None
        return arrival, platform_id_hashes(rec.platform, arrival.participant, self._salt)

    def record_stage(self, view: SessionView) -> SessionView:
        """For a participant from a platform: record the stage reached, and at the end add the completion
        link and code."""
        rec = self._protocol.recruitment
        if rec is None or not view.participant_id:
            return view
        if self._store.platform_session_of(view.participant_id) is None:
            return view
        self._store.platform_seen(view.participant_id, view.stage)
        if view.stage == "done":
            view.completion_url, view.completion_code = completion_link(rec), rec.completion_code
        return view

    def _screened_out_view(self) -> SessionView:
        rec = self._protocol.recruitment
        assert rec is not None
        link = completion_link(rec, screened_out=True) if rec.screened_out_code else ""
        return SessionView(stage="screened_out", code="", participant_id="", completion_url=link,
                           completion_code=rec.screened_out_code or "")

    def arrive(self, params: Mapping[str, str] | None, held_code: str | None = None) -> SessionView | None:
        """A page opened with URL parameters. None: no platform arrival (the ordinary consent and code
        screens). A new platform id gets stage "consent" (no code screen; nothing is stored before consent);
        a screened-out one sees the screened-out link again.

        A platform id only identifies: it is seen by every researcher the participant ever worked for, so
        it is never a credential. A known id resumes only with `held_code`, the participant code this
        browser kept, when that code is this id's participant; otherwise the view is stage "return", which
        asks for the participant code (and shows nothing of the conversation or the completion code)."""
        found = self._arrival(params)
        if found is None:
            return None
        _arrival, hashes = found
        session = self._store.platform_session(*hashes)
        if session is None:
            return SessionView(stage="consent", code="", participant_id="")
        if session.participant_id is None:
            return self._screened_out_view()
        held = self._held(held_code)
        if held is None or held.id != session.participant_id:
            return SessionView(stage="return", code="", participant_id="")
        log.info("platform participant %s returned", session.participant_id)
        return self._flow.resume(held.code)

    def _held(self, code: str | None) -> Participant | None:
        """The participant of a code this browser kept, or None (no code, or one that names nobody)."""
        if not code:
            return None
        try:
            return self._flow.participant(code)
        except StudyRefusal:
            return None

    def agree(self, params: Mapping[str, str] | None) -> SessionView:
        """The participant from a platform agreed: a participant linked to the platform id's hash. The same
        platform id can never start twice (refused, nothing stored)."""
        found = self._arrival(params)
        if found is None:
            return self._flow.consent()
        arrival, hashes = found
        rec = self._protocol.recruitment
        try:
            p = self._store.create_platform_participant(
                self._protocol.source, rec.platform, hashes[0], arrival.participant if rec.keep_raw_id else None,
                arrival.study, arrival.session, also_known_as=hashes[1:])
        except DuplicateError:
            raise StudyRefusal("This study was already started with your platform id; it cannot be started "
                               "twice. To continue, enter the participant code you were given.", hint=True) from None
        log.info("participant %s consented (from %s)", p.id, rec.platform)
        return self.record_stage(self._flow.view(p.code))

    def decline(self, params: Mapping[str, str] | None) -> SessionView:
        """The participant from a platform did not consent: recorded as screened out (no participant, no
        text); the view carries the screened-out link when the protocol has a screened-out code. A decline
        with an id that already agreed changes nothing (it cannot screen out someone who took part), and
        one recorded for an id does not stop that id from agreeing later."""
        found = self._arrival(params)
        if found is None:
            raise StudyRefusal("Thank you. You can close this page.")
        arrival, hashes = found
        rec = self._protocol.recruitment
        session = self._store.platform_session(*hashes)
        if session is not None and session.participant_id is not None:
            raise StudyRefusal("Thank you. You can close this page.")
        self._store.record_screened_out(rec.platform, hashes[0], arrival.participant if rec.keep_raw_id else None,
                                       arrival.study, arrival.session, also_known_as=hashes[1:])
        return self._screened_out_view()
