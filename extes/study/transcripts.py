"""Every conversation's messages as the participant saw them, one row per message, for researchers.

`transcript_rows(store)` reads the store once per conversation and returns frozen `TranscriptRow`s in the
order the messages were written; `transcripts_jsonl` and `transcripts_csv` write them as text (the
dashboard zips both into its one-time download, behind the researcher's login). `text` is the SHOWN
text (strategy tags stripped, as the pane showed it); `status` says whether a reply completed, was
interrupted (a closed page, a process that died) or failed, so a short reply is never mistaken for a
finished one. Participants are named by their pseudonymous id (`p-...`), never by their code, which is a
credential. These files hold participants' words: they are handed only to a logged-in researcher.
"""

from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass

import pandas as pd

from extes.study.store import Store

EXPORTS = ("transcripts.jsonl", "transcripts.csv")


@dataclass(frozen=True)
class TranscriptRow:
    """One message of one pane. `turn` counts the participant's messages in that pane (a reply has the
    turn of the message it answers); `order` is the message's position in the whole conversation."""

    conversation_id: str
    participant_id: str
    conversation_seq: int
    scenario: str
    conversation_status: str
    pane: str
    arm: str
    turn: int
    order: int
    role: str  # user | assistant
    text: str  # what the participant was shown
    status: str  # complete | interrupted | error | streaming
    finish_reason: str
    created_at: str
    updated_at: str


COLUMNS = tuple(f.name for f in dataclasses.fields(TranscriptRow))


def transcript_rows(store: Store) -> list[TranscriptRow]:
    """Every stored message of every conversation (oldest conversation first, messages in written order)."""
    rows: list[TranscriptRow] = []
    for conv in store.all_conversations():
        turns: dict[str, int] = {}
        for order, m in enumerate(store.messages(conv.id), start=1):
            if m.role == "user":
                turns[m.pane] = turns.get(m.pane, 0) + 1
            rows.append(TranscriptRow(
                conversation_id=conv.id, participant_id=conv.participant_id, conversation_seq=conv.seq,
                scenario=conv.scenario, conversation_status=str(conv.status), pane=m.pane, arm=m.arm,
                turn=turns.get(m.pane, 0), order=order, role=m.role, text=m.text, status=str(m.status),
                finish_reason=m.finish_reason or "", created_at=m.created_at or "", updated_at=m.updated_at or ""))
    return rows


def transcripts_frame(rows: list[TranscriptRow]) -> pd.DataFrame:
    return pd.DataFrame([dataclasses.astuple(r) for r in rows], columns=list(COLUMNS))


def transcripts_jsonl(rows: list[TranscriptRow]) -> str:
    return "".join(json.dumps(dataclasses.asdict(r), ensure_ascii=False) + "\n" for r in rows)


def transcripts_csv(rows: list[TranscriptRow]) -> str:
    buf = io.StringIO()
    transcripts_frame(rows).to_csv(buf, index=False)
    return buf.getvalue()
