"""One send's replies, pane by pane, as they stream: what is shown now and what must be saved now.

`TurnStream` holds the two rules that make a turn blind and durable, and nothing else (no store, no pool,
no threads), so a test drives it with scripted events:

- **Blinding.** The panes' text is released in step: a pane shows its first k pieces, k the fewest pieces
  any pane still replying has produced, so a pane whose model starts later (one that writes a strategy tag
  first, which is held back) is not the last to show its first words. A finished pane shows its final text,
  and counts a turn, only once every pane still replying has gone past its length: only the replies'
  lengths order their ends, not the models' speed.
- **Pacing** (single-pane sends, issue 24). With one pane there is no other pane to keep in step with, and
  a strategy arm's first words came ~300 ms after another arm's (its held-back tag takes time to write),
  its end later by the same. With a `Pacing`, text is released against the clock instead: nothing before
  `start_delay_s`, then `chars_per_s` characters a second (never more than has been generated), and the
  pane completes when its final text is all shown, at a time set by the text's length, not by when the
  model finished. This hides the tag's time as long as the model is ahead of the pace.
- **Screening.** With a `screen` hook (`extes.study.screening.ReplyScreen`), a streaming pane shows its
  text only up to a sentence end, and only once `screen(text)` passed it; a pane whose text failed shows
  `replacement` from then on (the caller finishes it with the same text). Paced panes show the screened text
  at the pace.
- **Durability.** What is saved is what was shown: a reply still streaming is saved as its released text
  (never text the page has not shown), at least every `persist_interval_s` or every `persist_every` pieces,
  whichever comes first. A finished reply is saved by its caller with its final text; a failed one keeps
  what was shown.

    turn = TurnStream({"A": 11, "B": 12}, clock=time.monotonic)
    turn.delta("A", "Hello")            # a piece arrived
    turn.finish("B", "Final text.")     # a pane's model finished; the final (stripped) text
    turn.fail("A")                      # a pane's model failed
    turn.release()                      # -> panes that completed a turn just now
    turn.shown("A")                     # what pane A shows now
    turn.due_saves()                    # -> {reply id: text} to write now
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from extes.study.blinding import visible_so_far
from extes.study.screening import sentence_end

PERSIST_INTERVAL_S = 0.25  # a streaming reply's shown text is written at least this often ...
PERSIST_EVERY_DELTAS = 16  # ... or after this many pieces, whichever comes first


START_DELAY_S = 1.0  # paced sends show nothing before this ...
PACE_CHARS_PER_S = 80.0  # ... then this many characters a second


@dataclass(frozen=True)
class Pacing:
    """How a paced send releases its text (module docstring)."""

    start_delay_s: float = START_DELAY_S
    chars_per_s: float = PACE_CHARS_PER_S

    def __post_init__(self) -> None:
        if not (self.start_delay_s >= 0 and self.chars_per_s > 0):
            raise ValueError(f"Pacing: start_delay_s={self.start_delay_s} must be >= 0 and "
                             f"chars_per_s={self.chars_per_s} > 0")

    def allowed(self, elapsed: float) -> int:
        """Characters that may show `elapsed` seconds after the send started."""
        return max(0, int((elapsed - self.start_delay_s) * self.chars_per_s))


class PaneStatus(StrEnum):
    STREAMING = "streaming"
    FINISHED = "finished"  # the model finished; shown in full once the others pass its length
    FAILED = "failed"


@dataclass
class PaneStream:
    """One pane's reply in this turn."""

    reply_id: int
    pieces: list[str] = field(default_factory=list)
    status: PaneStatus = PaneStatus.STREAMING
    final: str = ""  # the final shown text, once finished
    shown: str = ""  # what the page shows now
    saved: str = ""  # what the store holds for it (while streaming)
    counted: bool = False  # its turn is complete on screen
    blocked: Any = None  # the screen's verdict on text that failed it (shown: the replacement)


class TurnStream:
    """The blinding and durability rules of one send (module docstring)."""

    def __init__(self, reply_ids: dict[str, int], *, clock: Callable[[], float] = time.monotonic,
                 persist_interval_s: float = PERSIST_INTERVAL_S, persist_every: int = PERSIST_EVERY_DELTAS,
                 pacing: Pacing | None = None, screen: Callable[[str], Any] | None = None,
                 replacement: str = ""):
        self._screen, self._replacement = screen, replacement
        self.panes: dict[str, PaneStream] = {pane: PaneStream(rid) for pane, rid in reply_ids.items()}
        self._clock = clock
        self._interval = persist_interval_s
        self._every = persist_every
        self._last_save = self._start = clock()
        self.pacing = pacing
        self._unsaved = 0

    # ------------------------------------------------------------------------------ events

    def ended(self, pane: str) -> bool:
        """Whether the pane's model is done (finished or failed): later events for it are ignored."""
        return self.panes[pane].status is not PaneStatus.STREAMING

    def delta(self, pane: str, text: str) -> None:
        """A piece of the pane's reply arrived."""
        p = self.panes[pane]
        if p.status is PaneStatus.STREAMING and text:
            p.pieces.append(text)
            self._unsaved += 1

    def finish(self, pane: str, final_text: str) -> None:
        """The pane's model finished; `final_text` is what the pane will show (tags stripped, trimmed)."""
        p = self.panes[pane]
        if p.status is PaneStatus.STREAMING:
            p.status, p.final = PaneStatus.FINISHED, final_text

    def fail(self, pane: str) -> None:
        """The pane's model failed: it keeps what it showed, and stops holding the others back."""
        p = self.panes[pane]
        if p.status is PaneStatus.STREAMING:
            p.status = PaneStatus.FAILED

    # ------------------------------------------------------------------------------ what is shown

    def _step(self) -> int | None:
        """How many pieces every pane may show: the fewest any pane still streaming has (None: none is)."""
        return min((len(p.pieces) for p in self.panes.values() if p.status is PaneStatus.STREAMING), default=None)

    def release(self) -> list[str]:
        """Update what each pane shows; returns the panes whose turn completed on screen just now."""
        if self.pacing is not None:
            return self._release_paced(self.pacing.allowed(self._clock() - self._start))
        k = self._step()
        completed = []
        for pane, p in self.panes.items():
            if p.status is PaneStatus.FAILED:
                continue
            if p.status is PaneStatus.FINISHED and (k is None or k > len(p.pieces)):  # the others went past it
                p.shown = p.final
                if not p.counted:
                    p.counted = True
                    completed.append(pane)
            else:
                p.shown = self._screened(p, "".join(p.pieces[:k or 0]))
        return completed

    def _release_paced(self, n: int) -> list[str]:
        completed = []
        for pane, p in self.panes.items():
            if p.status is PaneStatus.FAILED:
                continue
            if p.status is PaneStatus.FINISHED:
                p.shown = p.final[:n]
                if n >= len(p.final) and not p.counted:
                    p.counted = True
                    completed.append(pane)
            else:
                p.shown = self._screened(p, "".join(p.pieces))[:n].rstrip()
        return completed

    @property
    def pacing_left(self) -> bool:
        """A paced turn whose models are done still has text to show (the caller keeps releasing)."""
        return self.pacing is not None and not self.unfinished() and not self.complete

    def _screened(self, p: PaneStream, raw: str) -> str:
        """What a streaming pane may show of `raw` (module docstring, Screening)."""
        visible = visible_so_far(raw)
        if self._screen is None:
            return visible
        if p.blocked is not None:
            return self._replacement
        cut = visible[:sentence_end(visible, final=raw[-1:].isspace())].rstrip()
        if len(cut) <= len(p.shown):
            return p.shown
        # the screen reads sentence by sentence: what was shown already passed (the final text is screened whole)
        verdict = self._screen(cut[len(p.shown):] if cut.startswith(p.shown) else cut)
        if not verdict.safe:
            p.blocked = verdict
            return self._replacement
        return cut

    def blocked(self, pane: str) -> Any:
        """The screen's verdict if the pane's streamed text failed it, else None."""
        return self.panes[pane].blocked

    def shown(self, pane: str) -> str:
        return self.panes[pane].shown

    def text(self, pane: str) -> str:
        """Everything the pane's model has written so far (raw, tags and all)."""
        return "".join(self.panes[pane].pieces)

    @property
    def complete(self) -> bool:
        """Every pane has either completed its turn on screen or failed."""
        return all(p.counted or p.status is PaneStatus.FAILED for p in self.panes.values())

    @property
    def all_finished(self) -> bool:
        """Every pane's model finished (none failed, none cut short)."""
        return all(p.status is PaneStatus.FINISHED for p in self.panes.values())

    def unfinished(self) -> Iterable[str]:
        """Panes whose model neither finished nor failed (the stream ended early)."""
        return [pane for pane, p in self.panes.items() if p.status is PaneStatus.STREAMING]

    # ------------------------------------------------------------------------------ what is saved

    def due_saves(self, force: bool = False) -> dict[int, str]:
        """{reply id: shown text} of the streaming replies whose shown text changed since their last save,
        when a save is due (or `force`); marks them saved. Empty when no save is due."""
        now = self._clock()
        if not force and self._unsaved < self._every and now - self._last_save < self._interval:
            return {}
        out = {}
        for p in self.panes.values():
            paced_tail = self.pacing is not None and p.status is PaneStatus.FINISHED and not p.counted
            if (p.status is PaneStatus.STREAMING or paced_tail) and p.shown != p.saved:
                out[p.reply_id] = p.saved = p.shown
        self._last_save, self._unsaved = now, 0
        return out
