"""Distinct-n (Li et al., 2016), in the two definitions found in the wild, both reported and labelled.

- corpus-level ("D-n"): number of distinct n-grams over all replies / number of n-grams over all
  replies. This is Li et al.'s definition and the one most ESC papers' tables use.
- per-response average ("D-n avg"): for each reply, distinct n-grams in it / n-grams in it, averaged
  over the replies that have at least one n-gram of order n (shorter replies are left out, and how many
  were left out is reported).

Both are on extes.metrics.text tokens (punctuation counts as a token) and reported x100.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from extes.metrics.text import ngrams


@dataclass(frozen=True)
class DistinctResult:
    n: int
    corpus: float  # x100
    per_response: float  # x100
    n_ngrams: int
    n_distinct: int
    skipped_short: int  # replies with no n-gram of this order (not in the per-response average)


def distinct(replies: Sequence[Sequence[str]], n: int) -> DistinctResult:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seen: set[tuple[str, ...]] = set()
    total = 0
    ratios: list[float] = []
    for tokens in replies:
        grams = ngrams(list(tokens), n)
        total += len(grams)
        seen.update(grams)
        if grams:
            ratios.append(len(set(grams)) / len(grams))
    return DistinctResult(
        n=n,
        corpus=100.0 * len(seen) / total if total else float("nan"),
        per_response=100.0 * sum(ratios) / len(ratios) if ratios else float("nan"),
        n_ngrams=total,
        n_distinct=len(seen),
        skipped_short=len(replies) - len(ratios),
    )
