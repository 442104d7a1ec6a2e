"""What a participant or judge may see of a model's reply: no strategy label of the taxonomy, anywhere.

A strategy-trained arm writes "[Emotional Validation] That sounds hard." The engine strips the leading
tag, but a model can write a second one, one in mid-reply, or one in another wrapping: "(EV)", "{Offer
Hope}", "<Affirmation>", "<strategy>EV</strategy>", "Strategy: X", "**Affirmation:**" at a line start,
"#EmotionalValidation", '"Affirmation"', "[EV & OH]", a bracket left open at the end, or the "()" and "(#)"
left over when a label is dropped. Each would show which pane holds the strategy arm. `strip_tags` removes
every label of the ExTES and ESConv taxonomies (names, abbreviations and known variants, any case) in any
of these wrappings, and returns the strategies found, which the store keeps with the raw text for
analysis. The rule is a grammar built from the taxonomy (`extes.taxonomy.strip_strategy_tags`): labels x
wrappings, not a list of examples. Other brackets ("[sic]", "[1]", "(I know.)") and the words themselves
in a sentence ("Reflection helps") are left alone.

While a reply streams, `visible_so_far` also holds back the end of the text while it may still become a
tag ("... [Emot", "<strat", "**Affirm" at a line start): the same grammar, matched as a prefix, decides.
So a tag never flashes on screen.
"""

from __future__ import annotations

from extes.taxonomy import strip_strategy_tags, tag_hold_start


def strip_tags(text: str) -> tuple[str, list[str]]:
    """(text without any strategy tag, canonical strategies found in order)."""
    return strip_strategy_tags(text or "")


def visible_so_far(text: str) -> str:
    """The streamed text that may be shown now: tags stripped, an unfinished wrapper held back."""
    text = text or ""
    shown = strip_strategy_tags(text[:tag_hold_start(text)])[0]
    return shown.rstrip(_MARKUP_OPENERS)  # "**" before a tag just removed: it may be the tag's bold


_MARKUP_OPENERS = " \t\n*_~\"'“‘„`"

# The tag grammar compiles on first use (about a second); do it when the study loads, not in a
# participant's first send, where it would delay the first text of that send.
strip_strategy_tags("")
