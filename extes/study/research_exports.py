"""What the researcher downloads: the analysis CSVs, the platform's payment list and every transcript.

`export_zip(store)` zips, in memory, votes.csv, judge_votes.csv and ratings.csv (the formats the analysis
commands read), payments.csv and attention_flags.csv, and transcripts.jsonl / transcripts.csv
(`extes.study.transcripts`: every message as shown, with its arm, pane, turn and reply status).
`OneTimeDownloads` hands such a zip to a logged-in researcher once, under a random token.
"""

from __future__ import annotations

import io
import json
import secrets
import threading
import time
import zipfile
from pathlib import Path

import pandas as pd

from extes.analysis.report import write_csv_atomic
from extes.study import transcripts
from extes.study.recruitment import payments_frame
from extes.study.store import Store

EXPORTS = ("votes.csv", "judge_votes.csv", "ratings.csv")
PLATFORM_EXPORTS = ("payments.csv", "attention_flags.csv")
TRANSCRIPT_EXPORTS = transcripts.EXPORTS


def export_csvs(store: Store, out_dir: str | Path) -> list[Path]:
    """votes.csv (participants' votes), judge_votes.csv (judges'), ratings.csv, in the formats the analysis
    commands read (`extes analyze --votes`, `extes agreement --ratings`); returns the paths."""
    out_dir = Path(out_dir)
    frames = (store.votes_frame("participant"), store.votes_frame("judge"), store.ratings_frame())
    return [write_csv_atomic(frame, out_dir / name) for name, frame in zip(EXPORTS, frames)]


class OneTimeDownloads:
    """Exports handed to a logged-in researcher: the CSVs zipped in memory under a random token, served
    once by build_app's `/research-download/<token>` route within `ttl_s`. Nothing is written to disk, so
    no temporary export folder is left behind, and Gradio's file route (which serves files to anyone who
    knows their path) never sees them. Process-local: sticky sessions send the link to the same process."""

    def __init__(self, ttl_s: float = 300.0):
        self.ttl_s = ttl_s
        self._items: dict[str, tuple[float, bytes]] = {}
        self._lock = threading.Lock()

    def put(self, data: bytes) -> str:
        token = secrets.token_urlsafe(24)
        with self._lock:
            now = time.monotonic()
            self._items = {k: v for k, v in self._items.items() if v[0] > now}
            self._items[token] = (now + self.ttl_s, data)
        return token

    def take(self, token: str) -> bytes | None:
        with self._lock:
            item = self._items.pop(str(token), None)
        if item is None or item[0] < time.monotonic():
            return None
        return item[1]


def export_zip(store: Store) -> bytes:
    """The analysis CSVs (as `export_csvs` writes them), the platform CSVs and the transcripts, in one
    zip, in memory."""
    frames = (store.votes_frame("participant"), store.votes_frame("judge"), store.ratings_frame())
    rows = transcripts.transcript_rows(store)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, frame in zip(EXPORTS, frames):
            zf.writestr(name, frame.to_csv(index=False))
        for name, frame in zip(PLATFORM_EXPORTS, _platform_frames(store)):
            zf.writestr(name, frame.to_csv(index=False))
        zf.writestr("transcripts.jsonl", transcripts.transcripts_jsonl(rows))
        zf.writestr("transcripts.csv", transcripts.transcripts_csv(rows))
    return buf.getvalue()


def _platform_frames(store: Store) -> tuple[pd.DataFrame, pd.DataFrame]:
    """payments.csv (as `extes export --payments`: what the platform needs to approve payments, no chat
    text) and attention_flags.csv."""
    codes = json.loads(store.get_meta("completion_codes") or "{}")
    return payments_frame(store.platform_sessions(), codes), store.flags_frame()
