"""What a participant or judge may see of a model's reply: no strategy tag of the taxonomy, anywhere.

A strategy-trained arm writes "[Emotional Validation] That sounds hard." The engine strips the leading
tag, but a model can write a second one, or one in mid-reply, in any case, as a name or an abbreviation
("[ev]", "[Offer Hope]"): each would show which pane holds the strategy arm. `strip_tags` removes every
bracketed label that names a strategy of the ExTES or ESConv taxonomy (names, abbreviations and known
variants, any case) and returns the strategies found, which the store keeps with the raw text for
analysis. Other bracketed text ("[sic]", "[1]") is left alone.

While a reply streams, `visible_so_far` also holds back an unfinished "[..." at the end (it may become a
tag), so a tag never flashes on screen.
"""

from __future__ import annotations

import re

from extes.taxonomy import TAG_ANYWHERE_RE as TAG_RE
from extes.taxonomy import is_strategy, normalize_strategy

MAX_TAG_CHARS = 62  # "[" + 60 + "]" + slack: a longer bracket cannot be a tag


def _strategy(label: str) -> str | None:
    for taxonomy in ("extes", "esconv"):
        if is_strategy(label, taxonomy):
            return normalize_strategy(label, taxonomy)
    return None


def strip_tags(text: str) -> tuple[str, list[str]]:
    """(text without any strategy tag, canonical strategies found in order)."""
    found: list[str] = []

    def repl(m: re.Match) -> str:
        name = _strategy(m.group(1))
        if name is None:
            return m.group(0)
        found.append(name)
        return " "  # words the tag separated stay apart

    clean = TAG_RE.sub(repl, text or "")
    if found:
        clean = re.sub(r"[ \t]+\n", "\n", re.sub(r"[ \t]{2,}", " ", clean))
    return clean.strip(), found


def visible_so_far(text: str) -> str:
    """The streamed text that may be shown now: tags stripped, an unfinished bracket held back."""
    text = text or ""
    start = text.rfind("[")
    if start >= 0 and "]" not in text[start:] and "\n" not in text[start:] and len(text) - start <= MAX_TAG_CHARS:
        text = text[:start]
    return strip_tags(text)[0]
