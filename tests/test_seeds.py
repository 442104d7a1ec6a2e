"""The hand-written seed dialogues: coverage, labels, alternation and lengths."""

import json
from collections import Counter

import pytest

from extes.dialogue import load_dialogues
from extes.taxonomy import SCENARIO_NAMES, STRATEGY_NAMES


@pytest.fixture(scope="module")
def seeds(repo_root):
    return load_dialogues(repo_root / "seeds")


def test_every_scenario_has_at_least_two_seeds(seeds):
    counts = Counter(d.scene for d in seeds)
    assert set(counts) == set(SCENARIO_NAMES)
    assert min(counts.values()) >= 2
    assert len(seeds) >= 72


def test_seed_structure(seeds, repo_root):
    for d in seeds:
        where = f"{d.meta['file']} #{d.meta['index']}"
        assert 12 <= len(d.turns) <= 24, where
        assert d.turns[0].role == "user", where
        assert all(a.role != b.role for a, b in zip(d.turns, d.turns[1:])), where
        assert all(t.strategy in STRATEGY_NAMES for t in d.turns if t.role == "assistant"), where
        assert len(d.description.split()) >= 8 and d.description != d.scene, where
    # raw files use exactly the canonical strategy names (no reliance on normalisation)
    for path in (repo_root / "seeds").glob("*.json"):
        for rec in json.loads(path.read_text()):
            for item in rec["content"]:
                if "AI" in item:
                    assert item["AI Strategy"] in STRATEGY_NAMES, path.name


def test_all_16_strategies_used_and_suggestions_come_later(seeds):
    used = Counter(s for d in seeds for s in d.strategies)
    assert set(used) == set(STRATEGY_NAMES)
    explore = {"Reflective Statements", "Clarification", "Emotional Validation", "Empathetic Statements"}
    act = {"Suggest Options", "Collaborative Planning", "Promote Self-Care Practices", "Stress Management"}

    def mean_pos(kinds):
        pos = [i / len(d.turns) for d in seeds for i, t in enumerate(d.turns) if t.strategy in kinds]
        return sum(pos) / len(pos)

    assert mean_pos(explore) < mean_pos(act)


def test_no_duplicate_seed_turns(seeds):
    texts = Counter(t.text for d in seeds for t in d.turns if len(t.text) > 40)
    assert [t for t, c in texts.items() if c > 1] == []
