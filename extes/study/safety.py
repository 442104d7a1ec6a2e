"""Risk detection for participant messages.

Each participant message is matched against the protocol's risk patterns (regular expressions grouped
by category: suicide, self-harm, abuse, danger to others, ...). A match shows the crisis-resources banner
at once, flags the conversation for researchers and is recorded (category and pattern; the text itself
is already in the messages table and is never logged).

People write around filters, on purpose or by habit: invisible characters inside a word ("k\u200bill"),
letters from other scripts that look Latin (Cyrillic "а", Greek "ο"), full-width or accented letters,
letters spaced apart ("k i l l  m y s e l f", "d.i.e"), digits for letters ("su1c1de", "k1ll", "2 die").
So every pattern is matched against the raw text AND against normalised forms of it (`text_forms`):

1. NFKC (full-width and other compatibility forms become plain letters), format characters removed
   (zero-width spaces and joiners, soft hyphens, word joiners, the BOM, tag characters, Hangul fillers),
   accents removed (NFKD, combining marks dropped), look-alike letters of other scripts folded to Latin
   (`CONFUSABLES`), curly quotes made straight;
2. then digits and symbols inside words read as letters ("0"->o, "1"->i or l, "3"->e, "4"->a, "5"->s,
   "7"->t, "@"->a, "$"->s), a lone digit as a word ("2"->to, "4"->a, "1"->i); a number stays a number;
3. each of these with spaced-apart single letters joined into words ("k i l l  m y s e l f" -> "kill
   myself": one separator inside a word, two or another separator between words).

A researcher's own patterns keep working: they see the raw text as before, and the normalised forms too.
The default patterns (eval_protocol/default.yaml) cover current euphemisms ("unalive", "kms", "end it
all", "not wake up") and plans stated without trigger words (a means plus a sign of preparation or intent:
"I've saved up my pills and tonight's the night"). tests/test_study_crisis.py measures recall and false
positives on labelled messages (tests/data/crisis_*.jsonl); docs/study.md, "Crisis detection", has the
numbers.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Letters of other scripts that look like Latin ones (lower and upper case), as people use them to write
# around filters. Accented Latin letters need no entry: NFKD and dropping combining marks handle them.
CONFUSABLES: dict[str, str] = {
    # Cyrillic
    "а": "a", "в": "b", "г": "r", "е": "e", "ё": "e", "з": "3", "и": "u", "к": "k", "м": "m", "н": "h",
    "о": "o", "п": "n", "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ь": "b", "ѕ": "s", "і": "i",
    "ї": "i", "ј": "j", "һ": "h", "ԁ": "d", "ԛ": "q", "ԝ": "w", "ӏ": "l", "ɡ": "g", "ү": "y",
    "А": "A", "В": "B", "Е": "E", "Ё": "E", "З": "3", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P",
    "С": "C", "Т": "T", "У": "Y", "Х": "X", "Ѕ": "S", "І": "I", "Ї": "I", "Ј": "J", "Ԁ": "D", "Ү": "Y",
    # Greek
    "α": "a", "β": "b", "γ": "y", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p",
    "τ": "t", "υ": "u", "χ": "x", "ω": "w", "μ": "u", "ς": "c",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
    "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
    # Armenian, Latin look-alikes, quotes
    "օ": "o", "ս": "u", "ց": "g", "ı": "i", "ɩ": "i", "ʟ": "l", "ɪ": "i", "ᴋ": "k",
    "\u2018": "'", "\u2019": "'", "\u201b": "'", "\u2032": "'", "\u201c": '"', "\u201d": '"',
}
# Invisible characters that are not category Cf but show as nothing (Hangul fillers, braille blank).
INVISIBLE = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800"}
_LEET = str.maketrans({"0": "o", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g", "@": "a",
                       "$": "s", "!": "i", "|": "l", "€": "e"})
_WORD = re.compile(r"[\w@$!|€]+")
_ONE = r"[^\W_](?:'[^\W_])?"  # one letter or digit standing alone ("n't" counts as one: "d o n't")
_SPACED = re.compile(rf"(?<![\w']){_ONE}(?:[-._*·]{_ONE})+(?![\w'])")
_SPACED_BLANK = re.compile(rf"(?<![\w']){_ONE}(?: {_ONE})+(?![\w'])")
_LONE_DIGIT = {"0": "o", "1": "i", "3": "e", "4": "a", "2": "to"}


def fold(text: str) -> str:
    """Step 1: NFKC, no format or invisible characters, no accents, look-alikes folded to Latin."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(c for c in text if unicodedata.category(c) != "Cf" and c not in INVISIBLE)
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return "".join(CONFUSABLES.get(c, c) for c in unicodedata.normalize("NFC", text))


def unleet(text: str, one: str = "i") -> str:
    """Step 2: digits and symbols inside a word that has a letter read as letters; a lone digit as a word."""
    table = {**_LEET, ord("1"): one}

    def word(m: re.Match) -> str:
        w = m.group(0)
        if w in _LONE_DIGIT:
            return _LONE_DIGIT[w] if w != "1" else one
        return w.translate(table) if any(c.isalpha() for c in w) else w

    return _WORD.sub(word, text)


def join_spaced(text: str, blank_first: bool = False) -> str:
    """Step 3: "k i l l  m y s e l f" -> "kill  myself", "d.i.e" / "w-a-n-t" -> "die" / "want". Runs joined
    by a space go first or last ("s e l f-h a r m" needs them first, "i w-a-n-t" last): both are forms."""
    def blank(t: str) -> str:
        return _SPACED_BLANK.sub(lambda m: m.group(0).replace(" ", ""), t)

    text = blank(text) if blank_first else text
    text = _SPACED.sub(lambda m: re.sub(r"[-._*·]", "", m.group(0)), text)
    return text if blank_first else blank(text)


def text_forms(text: str) -> list[str]:
    """The raw text and its normalised forms (module docstring), without repeats."""
    folded = fold(text)
    forms = [text, folded, unleet(folded, "i"), unleet(folded, "l")]
    forms += [join_spaced(f, first) for f in forms[1:] for first in (False, True)]
    return list(dict.fromkeys(forms))


@dataclass(frozen=True)
class RiskMatch:
    category: str
    pattern: str


class RiskChecker:
    def __init__(self, patterns: dict[str, tuple[str, ...] | list[str]]):
        self._compiled = [
            (category, p, re.compile(p, re.IGNORECASE)) for category, ps in patterns.items() for p in ps
        ]

    @classmethod
    def from_protocol(cls, protocol) -> RiskChecker:
        return cls(protocol.crisis.patterns)

    def check(self, text: str) -> list[RiskMatch]:
        """All categories that match (first matching pattern of each), in the raw text or a normalised form."""
        forms = text_forms(text or "")
        found: dict[str, RiskMatch] = {}
        for category, pattern, rx in self._compiled:
            if category not in found and any(rx.search(f) for f in forms):
                found[category] = RiskMatch(category, pattern)
        return list(found.values())


def record_risks(store, checker: RiskChecker, conversation_id: str, participant_id: str, text: str,
                 message_id: int | None = None) -> list[RiskMatch]:
    """Check `text` and write one flag per matching category; returns the matches."""
    matches = checker.check(text)
    for m in matches:
        store.add_flag(conversation_id, participant_id, m.category, m.pattern, message_id=message_id)
    return matches


def crisis_banner(protocol) -> str:
    """The crisis-resources Markdown shown when a risk pattern matched in the conversation."""
    return protocol.crisis.banner
