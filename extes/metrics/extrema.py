"""Vector Extrema (Forgues et al., 2014), as in nlg-eval.

A reply becomes one vector: for every embedding dimension, the value of largest magnitude among its
words' vectors (the maximum when max >= |min|, otherwise the minimum). The score of a generated reply
is the cosine similarity of its extrema vector with the gold reply's; the corpus score is the mean over
replies, x100. Words without a vector are skipped; a reply with no known word scores 0 (counted in
`n_empty`), as in nlg-eval.

Embeddings:
- a GloVe-format text file (`word v1 v2 ...` per line; a word2vec header line `N D` is skipped), which
  is what papers use (nlg-eval: glove.840B.300d). Lookups are lower-cased words.
- by default the input embedding matrix of the arm's base model: a word's vector is the mean of the
  embeddings of the subword tokens the model's tokenizer splits " word" into (with the leading space,
  as a word appears inside a sentence). Available offline, but not comparable to GloVe numbers; the
  results record which embedding was used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np


class Embeddings:
    """word -> vector; `describe` is recorded in results."""

    dim: int
    describe: str

    def vectors(self, words: Sequence[str]) -> np.ndarray:  # (k, dim) for the known words
        raise NotImplementedError


class GloveEmbeddings(Embeddings):
    def __init__(self, path: str | Path, vocabulary: set[str] | None = None):
        """Read a GloVe text file; with `vocabulary`, keep only those words (saves memory on 5 GB files)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such GloVe file")
        table: dict[str, np.ndarray] = {}
        dim = None
        with path.open(encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                parts = line.rstrip("\n").rstrip().split(" ")
                if n == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                    continue  # word2vec text header
                if len(parts) < 2:
                    continue
                word = parts[0]
                if vocabulary is not None and word.lower() not in vocabulary:
                    continue
                try:
                    vec = np.asarray([float(x) for x in parts[1:]], dtype=np.float32)
                except ValueError:
                    raise ValueError(f"{path}: line {n}: expected 'word v1 v2 ...' with numbers") from None
                if dim is None:
                    dim = len(vec)
                elif len(vec) != dim:
                    raise ValueError(f"{path}: line {n}: {len(vec)} values, expected {dim} like the first line")
                table.setdefault(word.lower(), vec)
        if dim is None:
            raise ValueError(f"{path}: no vectors found")
        self.table, self.dim = table, dim
        self.describe = f"GloVe-format file {path.name} ({dim}d, {len(table)} words loaded)"

    def vectors(self, words: Sequence[str]) -> np.ndarray:
        rows = [self.table[w] for w in words if w in self.table]
        return np.stack(rows) if rows else np.zeros((0, self.dim), dtype=np.float32)


class ModelEmbeddings(Embeddings):
    """A causal LM's input embeddings over its tokenizer's tokens (see module doc)."""

    def __init__(self, weight, tokenizer, name: str):
        import torch

        w = weight.detach() if isinstance(weight, torch.Tensor) else torch.as_tensor(weight)
        self.weight = w.float().cpu().numpy()
        self.tokenizer = tokenizer
        self.dim = self.weight.shape[1]
        self.cache: dict[str, np.ndarray | None] = {}
        self.describe = f"input embeddings of {name} ({self.dim}d; word = mean of its subword-token vectors)"

    def _word(self, word: str) -> np.ndarray | None:
        if word not in self.cache:
            ids = self.tokenizer(" " + word, add_special_tokens=False)["input_ids"]
            ids = [i for i in ids if 0 <= i < len(self.weight)]
            self.cache[word] = self.weight[ids].mean(axis=0) if ids else None
        return self.cache[word]

    def vectors(self, words: Sequence[str]) -> np.ndarray:
        rows = [v for v in (self._word(w) for w in words) if v is not None]
        return np.stack(rows) if rows else np.zeros((0, self.dim), dtype=np.float32)


def extrema_vector(vectors: np.ndarray) -> np.ndarray | None:
    if len(vectors) == 0:
        return None
    hi = vectors.max(axis=0)
    lo = vectors.min(axis=0)
    return np.where(hi >= np.abs(lo), hi, lo)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def vector_extrema(hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[str]],
                   embeddings: Embeddings) -> tuple[float, int]:
    """(mean cosine x100, number of pairs where one side had no known word)."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    if not hyps:
        return float("nan"), 0
    total, empty = 0.0, 0
    for h, r in zip(hyps, refs):
        eh, er = extrema_vector(embeddings.vectors(h)), extrema_vector(embeddings.vectors(r))
        if eh is None or er is None:
            empty += 1
            continue
        total += cosine(eh, er)
    score = 100.0 * total / len(hyps)
    return (score if math.isfinite(score) else float("nan")), empty
