"""TurnStream: the blinding and durability rules of one send, driven by scripted events (no pool, no
store, no threads, no sleeps; a fake clock). Each test names the rule it pins; breaking the rule in
extes/study/turn.py (releasing a pane's own pieces instead of the common step, counting a finished pane
before the others pass its length, saving text the page has not shown, saving on every piece) fails it."""

from __future__ import annotations

import random

import pytest

from extes.study.turn import PERSIST_EVERY_DELTAS, PERSIST_INTERVAL_S, PaneStatus, TurnStream


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def stream(clock: Clock | None = None, panes: str = "ABC") -> TurnStream:
    return TurnStream({p: 10 + i for i, p in enumerate(panes)}, clock=clock or Clock())


def feed(turn: TurnStream, pane: str, *pieces: str) -> None:
    for piece in pieces:
        turn.delta(pane, piece)


def shown(turn: TurnStream) -> dict[str, str]:
    return {p: turn.shown(p) for p in turn.panes}


# ---------------------------------------------------------------------------------------------- blinding


def test_panes_show_the_same_number_of_pieces():
    turn = stream()
    feed(turn, "A", "one", " two", " three")
    feed(turn, "B", "uno", " dos")
    feed(turn, "C", "eins")
    turn.release()
    assert shown(turn) == {"A": "one", "B": "uno", "C": "eins"}
    feed(turn, "C", " zwei")
    turn.release()
    assert shown(turn) == {"A": "one two", "B": "uno dos", "C": "eins zwei"}


def test_a_pane_that_starts_late_holds_back_every_panes_first_words():
    turn = stream()
    feed(turn, "A", "Hello", " there")
    feed(turn, "B", "Hi")
    feed(turn, "C", "[Emotional Validation]")  # the strategy arm's tag: a piece that shows nothing
    turn.release()
    assert shown(turn) == {"A": "Hello", "B": "Hi", "C": ""}
    turn2 = stream()
    feed(turn2, "A", "Hello")
    feed(turn2, "B", "Hi")  # C has produced nothing yet
    turn2.release()
    assert shown(turn2) == {"A": "", "B": "", "C": ""}


def test_a_finished_pane_ends_only_when_the_others_pass_its_length():
    turn = stream()
    feed(turn, "A", "Short", " reply.")
    turn.finish("A", "FINAL")
    feed(turn, "B", "A", " longer")
    feed(turn, "C", "Also", " long")
    assert turn.release() == []  # the others are at its length, not past it
    assert turn.shown("A") == "Short reply." and not turn.panes["A"].counted
    feed(turn, "B", " one")
    assert turn.release() == []  # C has not gone past it yet
    feed(turn, "C", " too")
    assert turn.release() == ["A"]
    assert turn.shown("A") == "FINAL" and turn.panes["A"].counted


def test_the_final_text_is_held_until_the_end_is_released():
    turn = stream(panes="AB")
    feed(turn, "A", "one", " two", " three.")
    turn.finish("A", "one two three.")
    feed(turn, "B", "x")
    turn.release()
    assert turn.shown("A") == "one"  # not its final text yet: that would show it ended first
    feed(turn, "B", " y", " z", " w")
    assert turn.release() == ["A"] and turn.shown("A") == "one two three."


def test_ends_are_ordered_by_length_not_by_which_model_finished_first():
    turn = stream(panes="AB")
    feed(turn, "A", *["a"] * 5)
    turn.finish("A", "a" * 5)  # the fast model finished first, with the longer reply
    feed(turn, "B", *["b"] * 3)
    turn.finish("B", "b" * 3)
    assert turn.release() == ["A", "B"]  # both ended: released together
    assert turn.complete
    turn = stream(panes="AB")
    feed(turn, "A", *["a"] * 5)
    turn.finish("A", "a" * 5)
    feed(turn, "B", *["b"] * 3)
    assert turn.release() == []  # B (still replying) is shorter than A: A must not end first
    feed(turn, "B", *["b"] * 3)
    assert turn.release() == ["A"]


def test_a_failed_pane_stops_holding_the_others_back_and_keeps_what_it_showed():
    turn = stream()
    feed(turn, "A", "one", " two")
    feed(turn, "B", "uno", " dos")
    feed(turn, "C", "eins")
    turn.release()
    turn.fail("C")
    feed(turn, "C", " zwei")  # ignored after a failure
    turn.release()
    assert shown(turn) == {"A": "one two", "B": "uno dos", "C": "eins"}
    assert turn.panes["C"].status is PaneStatus.FAILED and turn.ended("C")
    turn.finish("A", "one two")
    turn.finish("B", "uno dos")
    assert sorted(turn.release()) == ["A", "B"] and turn.complete
    assert not turn.all_finished  # the participant is asked to send again


def test_events_after_the_end_change_nothing_and_unfinished_lists_the_rest():
    turn = stream()
    feed(turn, "A", "x")
    turn.finish("A", "x")
    turn.delta("A", "more")
    turn.fail("A")
    assert turn.panes["A"].status is PaneStatus.FINISHED and turn.text("A") == "x"
    assert list(turn.unfinished()) == ["B", "C"]


@pytest.mark.parametrize("seed", range(40))
def test_random_interleavings_keep_both_rules(seed):
    """Any order of arrival: every pane still streaming shows the same number of pieces, a pane's end is
    released only when every pane still streaming is past its length, and what is saved was shown."""
    rng = random.Random(seed)
    clock = Clock()
    turn = stream(clock)
    lengths = {p: rng.randint(1, 12) for p in "ABC"}
    failing = rng.choice(["", "A", "B", "C"])
    script = [p for p in "ABC" for _ in range(lengths[p])]
    rng.shuffle(script)
    written = {p: 0 for p in "ABC"}
    history: dict[str, set[str]] = {p: {""} for p in "ABC"}
    saved: dict[int, str] = {}
    for pane in script:
        if turn.ended(pane):
            continue
        turn.delta(pane, f"{pane}{written[pane]} ")
        written[pane] += 1
        if pane == failing and written[pane] == lengths[pane] // 2 + 1:
            turn.fail(pane)
        elif written[pane] == lengths[pane]:
            turn.finish(pane, turn.text(pane).strip() + ".")
        for done in turn.release():
            for other, q in turn.panes.items():
                if q.status is PaneStatus.STREAMING:
                    assert len(q.pieces) > len(turn.panes[done].pieces), (done, other)
        visible = [len(q.shown.split()) for q in turn.panes.values() if q.status is PaneStatus.STREAMING]
        assert len(set(visible)) <= 1, visible
        for p in "ABC":
            history[p].add(turn.shown(p))
        clock.t += rng.choice([0.0, 0.05, 0.3])
        saved.update(turn.due_saves())
    for rid, text in saved.items():
        pane = "ABC"[rid - 10]
        assert text in history[pane]
    assert turn.complete


# ---------------------------------------------------------------------------------------------- durability


def test_what_is_saved_is_what_was_shown_never_a_held_back_tag():
    clock = Clock()
    turn = stream(clock, panes="AB")
    feed(turn, "A", "I hear you.", " [Emot")  # an unfinished tag: never on screen, so never saved
    feed(turn, "B", "Okay.", " Sure")
    turn.release()
    clock.t += PERSIST_INTERVAL_S
    assert turn.due_saves() == {10: "I hear you.", 11: "Okay. Sure"}
    feed(turn, "A", "ional Validation] Go on")
    feed(turn, "B", " thing")
    turn.release()
    assert turn.due_saves(force=True) == {10: "I hear you. Go on", 11: "Okay. Sure thing"}


def test_saves_come_every_interval_or_every_n_pieces_and_only_for_changes():
    clock = Clock()
    turn = stream(clock, panes="A")
    feed(turn, "A", "x")
    turn.release()
    assert turn.due_saves() == {}  # neither the interval nor the piece count reached
    clock.t += PERSIST_INTERVAL_S
    assert turn.due_saves() == {10: "x"}
    assert turn.due_saves(force=True) == {}  # unchanged since the last save
    for _ in range(PERSIST_EVERY_DELTAS - 1):
        feed(turn, "A", "y")
    turn.release()
    assert turn.due_saves() == {}
    feed(turn, "A", "z")
    turn.release()
    assert turn.due_saves() == {10: "x" + "y" * (PERSIST_EVERY_DELTAS - 1) + "z"}


def test_a_finished_or_failed_reply_is_not_saved_by_the_stream():
    """Its caller saves a finished reply with its final text, and a failed one as shown."""
    clock = Clock()
    turn = stream(clock, panes="AB")
    feed(turn, "A", "done")
    feed(turn, "B", "fail")
    turn.release()
    turn.finish("A", "done.")
    turn.fail("B")
    turn.release()
    clock.t += 10
    assert turn.due_saves(force=True) == {}
