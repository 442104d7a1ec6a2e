"""The automatic metrics, each defined once: name, how it is computed, how it aggregates, which way is better.

`extes evaluate` computes `METRICS` in this order (`text_metrics`), its markdown table and the report's
Tables 6 and 8 take their columns from `TABLE_COLUMNS` (+ `EXTRA_COLUMNS` in ``results.md``). PPL has no
text function: it needs the arm's model (`extes.metrics.evaluate.ModelCache.arm_ppl`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from extes.metrics.distinct import DistinctResult, distinct
from extes.metrics.extrema import vector_extrema
from extes.metrics.overlap import bleu, meteor, rouge_l


@dataclass
class Scoring:
    """What the text metrics read: tokenised replies and gold replies, WordNet, word vectors (or None)."""

    hyps: Sequence[Sequence[str]]
    refs: Sequence[Sequence[str]]
    wordnet: Any = None  # a WordNet reader for METEOR's synonym stage (None: exact and stem stages only)
    embeddings: Any = None  # extes.metrics.extrema.Embeddings, or None: Extrema is not computed
    _distinct: dict[int, DistinctResult] = field(default_factory=dict, repr=False)

    def distinct(self, n: int) -> DistinctResult:
        if n not in self._distinct:
            self._distinct[n] = distinct(self.hyps, n)
        return self._distinct[n]

    @cached_property
    def extrema(self) -> tuple[float | None, int | None]:
        """(Vector Extrema x100, replies without a known word); (None, None) without word vectors."""
        if self.embeddings is None:
            return None, None
        return vector_extrema(self.hyps, self.refs, self.embeddings)


@dataclass(frozen=True)
class Metric:
    name: str
    score: Callable[[Scoring], float | None] | None  # None: computed from the model (PPL)
    aggregation: str
    higher_is_better: bool
    table: bool = True  # a column of the paper's tables; False: an extra column of results.md


def _distinct(n: int, corpus: bool) -> Callable[[Scoring], float]:
    def score(s: Scoring) -> float:
        return s.distinct(n).corpus if corpus else s.distinct(n).per_response
    return score


METRICS: tuple[Metric, ...] = (
    Metric("PPL", None, "exp(mean NLL over gold assistant tokens)", higher_is_better=False),
    Metric("METEOR", lambda s: meteor(s.hyps, s.refs, s.wordnet), "mean over replies, x100", True),
    Metric("B-2", lambda s: bleu(s.hyps, s.refs, 2), "corpus BLEU-2, x100", True),
    Metric("B-4", lambda s: bleu(s.hyps, s.refs, 4), "corpus BLEU-4, x100", True),
    Metric("R-L", lambda s: rouge_l(s.hyps, s.refs), "mean LCS F-measure over replies, x100", True),
    Metric("Extrema", lambda s: s.extrema[0], "mean cosine over replies, x100", True),
    *(Metric(f"D-{n}", _distinct(n, True), "distinct n-grams / all n-grams over all replies, x100", True)
      for n in (1, 2, 3)),
    *(Metric(f"D-{n} avg", _distinct(n, False), "mean over replies of distinct / n-grams, x100", True,
             table=False) for n in (1, 2, 3)),
)
BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}
TABLE_COLUMNS: tuple[str, ...] = tuple(m.name for m in METRICS if m.table)
EXTRA_COLUMNS: tuple[str, ...] = tuple(m.name for m in METRICS if not m.table)


def score_texts(scoring: Scoring) -> dict[str, float | None]:
    """Every text metric (all but PPL), in registry order."""
    return {m.name: m.score(scoring) for m in METRICS if m.score is not None}
