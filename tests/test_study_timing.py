"""Single-pane sends do not tell the strategy arm by timing (issue 24, item 5).

Before: on "send to A", a strategy arm's first visible text came ~300 ms after another arm's (its held-back
tag takes time to write) and its end later by the same. The scripted pool here makes one arm start
`LATE_STEPS` steps late, as the engine does while it holds back a leading tag. With pacing (the default for
single-pane sends), every arm's first-text and final-text medians are within 10% of each other; without it
(`study.pacing = None`, the old behaviour) the late arm's first text is far behind.

Run as a script to print per-arm medians with pacing off and on:
    .venv/bin/python tests/test_study_timing.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from study_helpers import ARM_NAMES, FakePool, make_protocol  # noqa: E402

from extes.study.protocol import PANES  # noqa: E402
from extes.study.session import Study  # noqa: E402
from extes.study.store import Store  # noqa: E402
from extes.study.turn import Pacing  # noqa: E402

LATE_ARM = ARM_NAMES[1]
STEP_S, LATE_STEPS, WORDS = 0.05, 6, 12  # the late arm's first word ~300 ms after the others'
TEST_PACING = Pacing(start_delay_s=1.0, chars_per_s=60.0)  # the scripted models stay ahead of this pace


def measure(tmp: Path, pacing: Pacing | None, rounds: int = 3) -> dict[str, tuple[float, float]]:
    """{arm: (median seconds to first visible text, median seconds to the final text)} over single-pane
    sends to every pane, `rounds` times."""
    protocol = make_protocol(tmp, min_turns=1, conversations=1)
    store = Store(tmp / "timing.sqlite")
    study = Study(protocol, store, FakePool(delay=STEP_S, words=WORDS, late_arm=LATE_ARM, late_steps=LATE_STEPS))
    study.pacing = pacing
    view = study.start_conversation(study.consent().code, "Academic Stress")
    conv = store.conversation(view.conversation_id)
    firsts: dict[str, list[float]] = {}
    finals: dict[str, list[float]] = {}
    for r in range(rounds):
        for i, pane in enumerate(PANES):
            t0 = time.monotonic()
            first = final = None
            for v in study.send(view.code, view.conversation_id, pane, f"round {r}"):
                msgs = v.panes[i].messages
                now = time.monotonic() - t0
                if first is None and msgs and msgs[-1]["role"] == "assistant" and msgs[-1]["content"]:
                    first = now
                if final is None and v.panes[i].turns == r + 1:
                    final = now
            firsts.setdefault(conv.arm(pane), []).append(first)
            finals.setdefault(conv.arm(pane), []).append(final)
    store.close()
    return {arm: (statistics.median(firsts[arm]), statistics.median(finals[arm])) for arm in firsts}


def _spread(values: list[float]) -> float:
    return max(values) / min(values) - 1


def test_single_pane_sends_show_every_arm_at_the_same_time(tmp_path):
    paced = measure(tmp_path, TEST_PACING)
    assert _spread([f for f, _ in paced.values()]) <= 0.10, paced
    assert _spread([e for _, e in paced.values()]) <= 0.10, paced


def test_without_pacing_the_late_arm_shows_late(tmp_path):
    """The control: the old release (no pacing) shows the late arm's first text far behind the others'."""
    old = measure(tmp_path, None, rounds=1)
    assert _spread([f for f, _ in old.values()]) > 0.10, old


if __name__ == "__main__":
    import tempfile

    for label, pacing in (("pacing off (before)", None), ("pacing on (after)", TEST_PACING)):
        with tempfile.TemporaryDirectory() as d:
            res = measure(Path(d), pacing, rounds=5)
        print(label)
        for arm, (first, final) in sorted(res.items()):
            tag = " (late: holds a tag)" if arm == LATE_ARM else ""
            print(f"  {arm:>10}{tag:<22} first text {first * 1000:7.0f} ms   final text {final * 1000:7.0f} ms")
        print(f"  spread: first {_spread([f for f, _ in res.values()]):.1%}, final "
              f"{_spread([e for _, e in res.values()]):.1%}")
