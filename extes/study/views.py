"""What the participant page is shown, and the refusals it may be told: the types every flow module
(session, rating, arrivals) returns, kept apart so that those modules need not import each other."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Any, NotRequired, TypedDict

REPORT_OPTION = "This response is harmful"  # the flag icon's option under every model reply
REPORT_REASONS: tuple[str, ...] = (REPORT_OPTION,)  # the only reasons a report may carry


class StudyRefusal(ValueError):
    """A request the study refuses; nothing was stored. `hint=True` for gentle nudges (an empty message)."""

    def __init__(self, message: str, hint: bool = False):
        super().__init__(message)
        self.hint = hint


class UnknownCode(StudyRefusal):
    """A code (or conversation id) that names nothing of this participant: counted as a guess."""


def clean_input(value: Any, what: str, multiline: bool = True) -> str:
    """A text a person typed, or StudyRefusal naming the field: only strings, and no control characters
    (NUL and the like) other than newlines and tabs where a field has several lines."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise StudyRefusal(f"The {what} must be text.")
    allowed = "\n\t\r" if multiline else ""
    for ch in value:
        if ch not in allowed and unicodedata.category(ch) in ("Cc", "Cs"):
            raise StudyRefusal(f"The {what} contains a control character (U+{ord(ch):04X}) that cannot be stored; "
                               "please remove it.")
    return value


def pane_label(pane: str) -> str:
    return f"Model {pane}"


class ChatMessage(TypedDict):
    """One message of a model's context, as the pool takes it (OpenAI's chat format, plus the strategy of a
    strategy arm's earlier reply)."""

    role: str  # system | user | assistant
    content: str
    strategy: NotRequired[str]


@dataclass
class PaneState:
    pane: str
    label: str
    messages: list[dict[str, Any]]  # {"role", "content", "id", "interrupted"}
    turns: int
    remaining: int


@dataclass
class SessionView:
    """Everything the participant page shows. Holds no arm names (unless `revealed`, after rating, when the
    protocol allows it)."""

    stage: str  # consent | return | setup | chat | thanks (only right after rating) | done | screened_out
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
    waiting: bool = False  # the send waits for a free generation slot (extes.study.capacity)
    # a participant from a recruitment platform: at the end (stage "done", or "screened_out" for one who
    # declined) the completion link and code to take back to the platform
    completion_url: str = ""
    completion_code: str = ""
