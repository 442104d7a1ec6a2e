"""Balanced, random arm-to-pane assignment.

Each conversation shows the protocol's three arms in one of the six possible orders. The order is drawn
at random among the orders used least so far (counted in the store), so over the study all six are used
equally (at any moment, the counts differ by at most one within one process) while no participant can
predict which model sits in which pane. The chosen order is persisted with the conversation.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

ORDERS: tuple[tuple[int, int, int], ...] = tuple(itertools.permutations(range(3)))  # the six orders


def least_used_order(counts: Sequence[int], rng: random.Random | None = None) -> int:
    """Index into ORDERS: a uniformly random choice among the orders with the lowest count."""
    if len(counts) != len(ORDERS):
        raise ValueError(f"expected {len(ORDERS)} order counts, got {len(counts)}")
    rng = rng or random.SystemRandom()
    low = min(counts)
    return rng.choice([i for i, c in enumerate(counts) if c == low])


def arms_for_order(arm_names: Sequence[str], order_index: int) -> list[str]:
    """Arm names in pane order A, B, C for one of the six orders."""
    if len(arm_names) != 3:
        raise ValueError(f"a three-pane study needs exactly 3 arms, got {len(arm_names)}")
    return [arm_names[i] for i in ORDERS[order_index]]


def balanced_chooser(arm_names: Sequence[str], rng: random.Random | None = None):
    """A `choose_order(counts)` callback for `Store.create_conversation`."""
    def choose(counts: list[int]) -> tuple[int, list[str]]:
        idx = least_used_order(counts, rng)
        return idx, arms_for_order(arm_names, idx)
    return choose
