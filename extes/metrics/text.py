"""Tokenisation shared by every text metric.

The ExTES paper tokenises with NLTK. `nltk.word_tokenize` first splits sentences with the Punkt model,
which is a data download (`punkt_tab`) that is not available offline here. We therefore split sentences
with a small rule (a run of `.`, `!` or `?`, optionally followed by closing quotes or brackets, then
whitespace) and run NLTK's own word tokenizer (`NLTKWordTokenizer`, the Treebank-style tokenizer that
`word_tokenize` uses) on each sentence. The only difference from `word_tokenize` is where Punkt would
not have split (e.g. after "Dr."), which moves a full stop into or out of a token; it does not matter for
conversational replies. Text is lower-cased first (as nlg-eval's references are) and the strategy tag of
a strategy-trained reply, if present, is never part of the scored text (callers pass visible text).
"""

from __future__ import annotations

import re
from functools import lru_cache

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")


@lru_cache(maxsize=1)
def _word_tokenizer():
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer()


def split_sentences(text: str) -> list[str]:
    return [s for s in (p.strip() for p in _SENTENCE_END.split(text)) if s]


def tokenize(text: str, lower: bool = True) -> list[str]:
    """Words of `text` as NLTK tokenises them (see module doc)."""
    if not isinstance(text, str):
        raise TypeError(f"expected text, got {type(text).__name__}")
    if lower:
        text = text.lower()
    tok = _word_tokenizer()
    out: list[str] = []
    for sentence in split_sentences(text):
        out.extend(tok.tokenize(sentence))
    return out


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
