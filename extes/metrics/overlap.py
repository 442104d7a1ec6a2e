"""Reference-overlap metrics: BLEU-2/4, METEOR, ROUGE-L. Inputs are token lists (extes.metrics.text).

- BLEU-n: corpus BLEU (clipped n-gram counts summed over all replies, brevity penalty on the total
  lengths), uniform weights over orders 1..n, computed by sacrebleu on our tokens joined by spaces
  (tokenize="none"). Smoothing: "floor" with 0.1, i.e. an order with no matching n-gram counts 0.1
  matches, the same as NLTK's SmoothingFunction().method1 (epsilon 0.1). Reported x100.
- METEOR: NLTK `meteor_score` (alpha 0.9, beta 3, gamma 0.5; exact, Porter-stem, WordNet-synonym
  stages) per reply against its gold reply, averaged over replies. x100.
- ROUGE-L: rouge-score's LCS F-measure (beta 1) per reply on our tokens, averaged. x100.
"""

from __future__ import annotations

from collections.abc import Sequence

Tokens = Sequence[str]


def _check(hyps: Sequence[Tokens], refs: Sequence[Tokens]) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")


def bleu_detail(hyps: Sequence[Tokens], max_order: int = 4) -> str:
    """How BLEU was computed, for results.json: what it shares with NLTK's method1 and where it differs."""
    short = sum(1 for h in hyps if len(h) < max_order)
    return (
        "corpus BLEU, sacrebleu tokenize=none, smooth floor 0.1 (NLTK's SmoothingFunction().method1 epsilon); equal "
        f"to NLTK corpus_bleu with method1 only when every reply has at least n tokens: {short} of {len(hyps)} "
        f"replies have fewer than {max_order} (NLTK counts a phantom n-gram for them, sacrebleu does not, so "
        "NLTK's BLEU-4 is lower there)"
    )


def bleu(hyps: Sequence[Tokens], refs: Sequence[Tokens], max_order: int = 4) -> float:
    """Corpus BLEU-`max_order` x100 (see module doc for the smoothing)."""
    from sacrebleu.metrics import BLEU

    _check(hyps, refs)
    if not hyps:
        return float("nan")
    metric = BLEU(tokenize="none", smooth_method="floor", smooth_value=0.1, max_ngram_order=max_order,
                  effective_order=False)
    result = metric.corpus_score([" ".join(h) for h in hyps], [[" ".join(r) for r in refs]])
    return float(result.score)


class _NoSynonyms:
    """Stands in for WordNet when it is not available: every word has no synsets."""

    @staticmethod
    def synsets(*_args, **_kwargs):
        return []


def meteor(hyps: Sequence[Tokens], refs: Sequence[Tokens], wordnet=None) -> float:
    """Mean sentence METEOR x100; `wordnet` is a WordNet reader or None (no synonym stage)."""
    from nltk.translate.meteor_score import meteor_score

    _check(hyps, refs)
    if not hyps:
        return float("nan")
    wn = wordnet if wordnet is not None else _NoSynonyms()
    total = 0.0
    for h, r in zip(hyps, refs):
        if not h or not r:
            continue  # scores 0
        total += meteor_score([list(r)], list(h), wordnet=wn)
    return 100.0 * total / len(hyps)


class _GivenTokens:
    """rouge-score tokenizer that trusts our tokens (joined with a separator no token contains)."""

    SEP = "\u0001"

    def tokenize(self, text: str) -> list[str]:
        return [t for t in text.split(self.SEP) if t]


def rouge_l(hyps: Sequence[Tokens], refs: Sequence[Tokens]) -> float:
    """Mean ROUGE-L F-measure x100."""
    from rouge_score.rouge_scorer import RougeScorer

    _check(hyps, refs)
    if not hyps:
        return float("nan")
    tok = _GivenTokens()
    scorer = RougeScorer(["rougeL"], tokenizer=tok)
    total = 0.0
    for h, r in zip(hyps, refs):
        total += scorer.score(tok.SEP.join(r), tok.SEP.join(h))["rougeL"].fmeasure
    return 100.0 * total / len(hyps)
