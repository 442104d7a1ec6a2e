"""Recruitment platforms (Prolific first, MTurk-style external links second).

A participant who arrives with the platform's URL parameters skips the code screen. The platform id is
stored only as a keyed hash (HMAC-SHA256 with the deployment's salt, `EXTES_PLATFORM_SALT`), so the
same person is recognised on return and can never start twice, while the database alone does not name
them; the raw id is kept only where the protocol says payment needs it (`keep_raw_id: true`).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

from pydantic import model_validator

from extes.config import ConfigModel
from extes.study.records import PlatformSession

SALT_ENV = "EXTES_PLATFORM_SALT"
_ID_RE = re.compile(r"^[A-Za-z0-9_\-]{1,128}$")

PRESETS: dict[str, dict[str, str | None]] = {
    "prolific": {"participant_param": "PROLIFIC_PID", "study_param": "STUDY_ID", "session_param": "SESSION_ID",
                 "completion_url": "https://app.prolific.com/submissions/complete?cc={code}"},
    "mturk": {"participant_param": "workerId", "study_param": "hitId", "session_param": "assignmentId",
              "completion_url": None},
    "generic": {"participant_param": "pid", "study_param": None, "session_param": None, "completion_url": None},
}


class RecruitmentSettings(ConfigModel):
    """The protocol's ``recruitment:`` section."""

    platform: Literal["prolific", "mturk", "generic"] = "prolific"
    participant_param: str | None = None
    study_param: str | None = None
    session_param: str | None = None
    completion_url: str | None = None   # a template with {code}
    completion_code: str
    screened_out_code: str | None = None
    keep_raw_id: bool = False
    redirect: bool = True

    @model_validator(mode="before")
    @classmethod
    def _fill_presets(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("platform", "prolific") in PRESETS:
            preset = PRESETS[data.get("platform", "prolific")]
            data = {**{k: v for k, v in preset.items() if v is not None}, **{k: v for k, v in data.items() if v is not None}}
        return data

    @model_validator(mode="after")
    def _check(self) -> RecruitmentSettings:
        if not self.completion_url:
            raise ValueError(f"completion_url is required for platform {self.platform!r} "
                             "(a URL template with {code})")
        if "{code}" not in self.completion_url:
            raise ValueError("completion_url must contain {code}")
        if not self.completion_url.startswith(("https://", "http://")):
            raise ValueError("completion_url must be an http(s) URL")
        for code in (self.completion_code, self.screened_out_code):
            if code is not None and not _ID_RE.match(code):
                raise ValueError(f"completion code {code!r} must be 1-128 letters, digits, '_' or '-'")
        return self


@dataclass(frozen=True)
class PlatformArrival:
    participant: str
    study: str | None
    session: str | None


class RecruitmentError(ValueError):
    """Bad platform parameters; the message never repeats the values."""


def arrival_from_params(params: Mapping[str, str], settings: RecruitmentSettings) -> PlatformArrival | None:
    """The platform ids in the page's URL parameters, or None when the participant parameter is absent."""
    raw = params.get(settings.participant_param or "")
    if raw is None or raw == "":
        return None
    values = {}
    for what, key in (("participant", settings.participant_param), ("study", settings.study_param),
                      ("session", settings.session_param)):
        value = params.get(key) if key else None
        if value is not None and not _ID_RE.match(value):
            raise RecruitmentError(f"the link's {key} parameter is not a valid id")
        values[what] = value or None
    return PlatformArrival(values["participant"], values["study"], values["session"])


def platform_salt(env: Mapping[str, str] | None = None) -> bytes:
    salt = (env if env is not None else os.environ).get(SALT_ENV, "")
    if len(salt) < 16:
        raise RecruitmentError(f"set {SALT_ENV} to a secret of at least 16 characters before recruiting "
                               "through a platform (it keys the hash of platform ids)")
    return salt.encode("utf-8")


def normalize_platform_id(participant: str) -> str:
    """The form of a platform id that is hashed: trimmed and case-folded. Prolific ids are lower-case hex and
    MTurk worker ids upper-case, but a link can be typed or rewritten in another case; without this, a
    case variant of a finished id would hash to a new participant and could start again."""
    return participant.strip().casefold()


def hash_platform_id(platform: str, participant: str, salt: bytes) -> str:
    """The keyed hash under which a platform id is stored (of its normalised form)."""
    return hmac.new(salt, f"{platform}:{normalize_platform_id(participant)}".encode(), hashlib.sha256).hexdigest()


def platform_id_hashes(platform: str, participant: str, salt: bytes) -> tuple[str, ...]:
    """Every hash an arrival may have been stored under: the normalised one first, then the hashes of the id
    as given, upper- and lower-cased, which databases written before ids were normalised hold (those hashed
    the id as it arrived). Looking all up keeps such a database's finished ids finished."""
    legacy = (participant, participant.upper(), participant.lower())
    hashes = [hash_platform_id(platform, participant, salt)]
    hashes += [hmac.new(salt, f"{platform}:{v}".encode(), hashlib.sha256).hexdigest() for v in legacy]
    return tuple(dict.fromkeys(hashes))


SALT_FINGERPRINT_META = "platform_salt_fingerprint"


def salt_fingerprint(salt: bytes) -> str:
    """A short keyed digest that tells two salts apart without revealing either (stored in the database, so
    a restart with another salt is refused instead of letting every finished platform id start again)."""
    return hmac.new(salt, b"extes: platform salt fingerprint v1", hashlib.sha256).hexdigest()[:24]


def completion_link(settings: RecruitmentSettings, screened_out: bool = False) -> str:
    code = settings.screened_out_code if screened_out and settings.screened_out_code else settings.completion_code
    return settings.completion_url.format(code=quote(code, safe=""))  # type: ignore[union-attr]


PAYMENT_COLUMNS = ("platform", "platform_id", "id_kind", "study_id", "session_id", "status", "completion_code",
                   "started_at", "completed_at", "screened_out_at", "last_stage", "minutes")


def payment_status(session: PlatformSession) -> str:
    if session.completed_at:
        return "completed"
    if session.screened_out_at:
        return "screened_out"
    return "incomplete"  # started and not finished (yet): dropped out at last_stage


def session_minutes(session: PlatformSession) -> float | None:
    """Minutes from the start to completion (or to the last page seen)."""
    from datetime import datetime

    end = session.completed_at or session.screened_out_at or session.last_seen_at
    try:
        delta = datetime.fromisoformat(str(end)) - datetime.fromisoformat(str(session.started_at))
    except (TypeError, ValueError):
        return None
    return round(delta.total_seconds() / 60, 2)


def payments_frame(sessions: list[PlatformSession], codes: Mapping[str, str | None]):
    """What a platform needs to approve payments, one row per platform session, and nothing of the chat:
    the platform id (raw only where the protocol kept it, else its keyed hash: `id_kind` says which), the
    platform's study and session ids, the status, the completion code that status was given, the times."""
    import pandas as pd

    rows = []
    for s in sessions:
        status = payment_status(s)
        code = {"completed": codes.get("completion"), "screened_out": codes.get("screened_out")}.get(status)
        rows.append({
            "platform": s.platform, "platform_id": s.raw_id or s.platform_hash,
            "id_kind": "raw" if s.raw_id else "hash", "study_id": s.study_id or "",
            "session_id": s.session_id or "", "status": status, "completion_code": code or "",
            "started_at": s.started_at, "completed_at": s.completed_at or "",
            "screened_out_at": s.screened_out_at or "", "last_stage": s.last_stage or "",
            "minutes": session_minutes(s),
        })
    return pd.DataFrame(rows, columns=list(PAYMENT_COLUMNS))
