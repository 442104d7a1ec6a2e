"""Tokenisation shared by every text metric.

The ExTES paper tokenises with NLTK's `word_tokenize`: Punkt splits the text into sentences, then
`NLTKWordTokenizer` (Treebank style) splits each sentence into words. Punkt's English model is a data
download (`punkt_tab`) that is not available offline here, so the sentence split is a small rule that
makes Punkt's decisions on lower-cased text (text is lower-cased first, as nlg-eval's references are),
and NLTK's own `NLTKWordTokenizer` does the rest. The strategy tag of a strategy-trained reply is never
part of the scored text (callers pass visible text).

The sentence rule (Punkt's, on lower-cased text). A run of `.`, `!` or `?`, followed by any closing
quotes or brackets (`"`, `'`, `)`, `]`, `}`) and then whitespace, ends a sentence; the closers stay with
the sentence they close (Punkt's boundary realignment), so ``(I know.) Fine.`` is
``( i know . ) fine .``. Exceptions, where Punkt does not split:
- the word before a single `.` is a known abbreviation (`ABBREVIATIONS`, also after a hyphen: "ex-dr.");
- an ellipsis (`..`, `...`);
- an initial ("j.") or a number ("5.", "3.50.") followed directly by a lower-case letter: Punkt's
  orthographic heuristic reads "j. k. rowling" and "i was 5. then" as one sentence.
Only the `.` rules change tokens: `NLTKWordTokenizer` splits `!`, `?` and `...` off wherever they are,
but a `.` only at the end of a sentence ("dr." inside a sentence stays one token).

Measured against `nltk.word_tokenize` (NLTK's Punkt code, given `ABBREVIATIONS`, and NLTK's
`NLTKWordTokenizer`) on the 700 texts of tests/test_metrics_text.py (276 hand-written sentences in 1,877
variants: quotes, brackets, abbreviations, ellipses, emoji, contractions, numbers, initials): identical
on every text (the rule before this one, which also dropped closers, differed on 395). Punkt also
reads a whole whitespace-delimited word and, when no closer follows the candidate, the next word: a
sentence end inside it ("reason.\"...", "tomorrow.)") makes the candidate a break, which this rule
copies. Differences that remain possible, all rare in conversational replies:
- abbreviations: Punkt's English model learned its own list from newspaper text, which this module
  cannot read offline; a word on that list and not on ours (or the reverse) keeps or loses its `.` as a
  separate token ("no." in "No. 5" if the model lists it);
- a sentence end followed by something other than closers and whitespace ("fine.(laughs)", or
  'me."...' at the very end of a text): Punkt may split there, this rule does not;
- the model's collocations (a number or initial that it learned often precedes a given word) and its
  orthographic statistics for words it saw only in lower case at sentence starts: Punkt then keeps a
  break after an initial or number that this rule joins.
"""

from __future__ import annotations

import re
from functools import lru_cache

# Common English abbreviations that end in "." mid-sentence (lower case, without the final period).
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr vs etc e.g i.e a.m p.m u.s u.k approx dept mt ft jan feb mar apr aug sept "
    "oct nov dec inc corp ltd co".split()
)
# A candidate sentence end: a run of . ! ? and closing quotes/brackets, then whitespace.
_CANDIDATE = re.compile(r"(?P<end>[.!?]+)(?P<close>[\"')\]}]*)(?=\s)")
_NON_WORD = re.compile(r"[)\";}\]*:@'({\[!?]")  # Punkt's non-word characters: a word stops there
_WORD_START_JUNK = "(\"`{[:;&#*@)}]-,"  # characters Punkt never starts a word with
_INITIAL = re.compile(r"[^\W\d]", re.UNICODE)
_NUMBER = re.compile(r"^-?[.,]?\d[\d,.-]*$")  # Punkt's number type, without the final period
# A sentence end followed by more inside one whitespace-delimited word ('reason."...', 'tomorrow.)').
# Punkt reads a candidate with its whole word and, when no quote or bracket follows the candidate, the
# next word too; such an end there makes the candidate a break: "at 9 a.m. tomorrow.)" splits after "a.m.".
_INNER_END = re.compile(r"[!?]\S|[^.\s]\.[)\";}\]*:@'({\[!?]")


@lru_cache(maxsize=1)
def _word_tokenizer():
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer()


def _chunk_start(text: str, end: int) -> int:
    """Start of the whitespace-delimited chunk that holds position ``end``."""
    return max(text.rfind(" ", 0, end), text.rfind("\n", 0, end), text.rfind("\t", 0, end)) + 1


def _word_before(text: str, end: int) -> str:
    """The word (as Punkt's word tokenizer cuts it) that ends at ``end``, without the final period."""
    chunk = text[_chunk_start(text, end):end]
    cuts = [m.start() for m in _NON_WORD.finditer(chunk)]
    if cuts:  # a word stops before a non-word character; ' ! ? may start the next word ("wasn't" -> "'t")
        i = cuts[-1]
        chunk = chunk[i:] if chunk[i] in "'!?" else chunk[i + 1:]
    return chunk.lstrip(_WORD_START_JUNK)


def _is_boundary(text: str, m: re.Match) -> bool:
    end = m.group("end")
    if "!" in end or "?" in end:
        return True
    start = _chunk_start(text, m.start("end"))
    if _INNER_END.search(text[start:m.start("end") + 1]):
        return True  # Punkt reads the whole word: 'reason."...' holds the end 'reason."'
    following = text[m.end():].split(None, 1)
    if not m.group("close") and following and _INNER_END.search(following[0]):
        return True  # Punkt's look-ahead: the next word ends a sentence before a quote or bracket
    if len(end) > 1:  # an ellipsis
        return False
    word = _word_before(text, m.start("end")).lower()
    if word in ABBREVIATIONS or word.rsplit("-", 1)[-1] in ABBREVIATIONS:
        return False
    if (len(word) == 1 and _INITIAL.match(word)) or _NUMBER.match(word):
        nxt = text[m.end():].lstrip()[:1]  # Punkt: no sentence starts with ; : , . ! ? or a lower-case word
        return m.group("close") != "" or not (nxt.islower() or nxt in ";:,.!?")
    return True


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` by the rule in the module doc (closing quotes and brackets kept)."""
    out, start = [], 0
    for m in _CANDIDATE.finditer(text):
        if _is_boundary(text, m):
            out.append(text[start:m.end()])
            start = m.end()
    out.append(text[start:])
    return [s for s in (p.strip() for p in out) if s]


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
