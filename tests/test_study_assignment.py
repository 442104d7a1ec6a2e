"""Arm-to-pane assignment: balanced over the study, random per conversation, persisted."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from study_helpers import ARM_NAMES

from extes.study.assignment import ORDERS, arms_for_order, balanced_chooser, least_used_order
from extes.study.store import Store


def test_six_orders_are_all_permutations():
    assert len(set(ORDERS)) == 6
    assert {tuple(arms_for_order(ARM_NAMES, i)) for i in range(6)} == {
        tuple(ARM_NAMES[j] for j in o) for o in ORDERS}


def test_least_used_order_picks_among_minimum():
    rng = random.Random(0)
    picks = Counter(least_used_order([1, 0, 1, 0, 1, 1], rng) for _ in range(200))
    assert set(picks) == {1, 3} and min(picks.values()) > 50
    with pytest.raises(ValueError):
        least_used_order([0, 0], rng)


def test_orders_balanced_random_and_persisted(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    choose = balanced_chooser(ARM_NAMES, random.Random(1))
    seen = []
    for _ in range(60):  # one conversation each: a participant has one in progress at a time
        conv = store.create_conversation(store.create_participant().id, "Academic Stress", "", choose)
        seen.append(conv.order_index)
        counts = store.order_counts()
        assert max(counts) - min(counts) <= 1  # balanced at every moment
        assert list(store.conversation(conv.id).arm_order) == arms_for_order(ARM_NAMES, conv.order_index)
    assert store.order_counts() == [10] * 6
    blocks = [tuple(seen[i:i + 6]) for i in range(0, 60, 6)]
    assert len(set(blocks)) > 1  # not one fixed sequence
    reopened = Store(tmp_path / "s.sqlite")
    assert reopened.order_counts() == [10] * 6
