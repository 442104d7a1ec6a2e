"""Scenario quotas: how many dialogues of each scenario a round should produce.

Default proportions are the paper's Table 1 (extes.taxonomy.scenario_proportions); a file
(JSON or YAML mapping scenario -> weight or count) can replace them. Counts are allocated with the
a house-monotone sequential method (see allocation_order), ties broken by Table 1 order, so the
split is deterministic and consecutive rounds together follow the proportions.
"""

from __future__ import annotations

from pathlib import Path

from extes.config import read_mapping
from extes.taxonomy import SCENARIO_NAMES, UnknownLabelError, normalize_scenario, scenario_proportions


def load_proportions(path: str | Path | None = None) -> dict[str, float]:
    if path is None:
        return scenario_proportions()
    path = Path(path)
    data = read_mapping(path, "quota")
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a non-empty mapping of scenario name -> weight")
    weights: dict[str, float] = {}
    for name, w in data.items():
        try:
            canon = normalize_scenario(str(name), where=str(path))
        except UnknownLabelError as exc:
            raise ValueError(str(exc)) from None
        try:
            w = float(w)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: scenario {name!r}: weight must be a number, got {w!r}") from None
        if w < 0:
            raise ValueError(f"{path}: scenario {name!r}: weight must be >= 0")
        weights[canon] = weights.get(canon, 0.0) + w
    total = sum(weights.values())
    if total <= 0:
        raise ValueError(f"{path}: all weights are zero")
    return {s: weights[s] / total for s in SCENARIO_NAMES if s in weights}


def allocation_order(n: int, proportions: dict[str, float]) -> list[str]:
    """The first n dialogues' scenarios, one at a time: dialogue j goes to the scenario furthest
    behind its share (max p * j - count; ties by Table 1 order). Every prefix is within one dialogue
    of exact proportions, and a longer run extends a shorter one (house-monotone), so rounds can
    take consecutive slices and together still follow the proportions."""
    if n < 0:
        raise ValueError(f"cannot allocate a negative number of dialogues ({n})")
    order = {s: i for i, s in enumerate(SCENARIO_NAMES)}
    names = sorted((s for s in proportions if proportions[s] > 0), key=lambda s: order.get(s, len(order)))
    if not names:
        raise ValueError("no scenario has a positive proportion")
    total = sum(proportions[s] for s in names)
    share = {s: proportions[s] / total for s in names}
    counts = dict.fromkeys(names, 0)
    out = []
    for j in range(1, n + 1):
        best = max(names, key=lambda s: (share[s] * j - counts[s], -order.get(s, len(order))))
        counts[best] += 1
        out.append(best)
    return out


def allocate(n: int, proportions: dict[str, float], start: int = 0) -> dict[str, int]:
    """Counts per scenario for dialogues start .. start+n-1 of the allocation order."""
    counts: dict[str, int] = {}
    for s in allocation_order(start + n, proportions)[start:]:
        counts[s] = counts.get(s, 0) + 1
    return counts


def split_rounds(target: int, rounds: int) -> list[int]:
    """Per-round targets adding up to `target` (earlier rounds get the remainder)."""
    if rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {rounds}")
    base, extra = divmod(target, rounds)
    return [base + (1 if k < extra else 0) for k in range(rounds)]
