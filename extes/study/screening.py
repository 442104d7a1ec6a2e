"""Screening models' replies before a participant sees them, and ending capped replies at a sentence.

A small model can answer "everyone would be better off without me" with "...the grief for what you did was
worth dying with?". Every reply is screened BEFORE it is shown (`ReplyScreen`):

- a pattern screen for self-harm encouragement, matched like the crisis patterns of participants' messages
  (`extes.study.safety.text_forms`: invisible characters, look-alike letters, digits for letters, spaced
  letters), sentence by sentence. A match preceded in its sentence by a denial or a reflection ("it's not
  true that ...", "you feel like ...", "nothing is ...") is the supportive reading and passes;
- the local toxicity classifier of `extes toxicity` (`extes.metrics.toxicity.LocalClassifierScorer`), when
  the protocol names one (`screening.toxicity_classifier`): a reply whose highest attribute probability
  reaches `screening.toxicity_threshold` is screened out.

While a reply streams, the page is given its text only up to a sentence end that passed the screen
(`TurnStream`'s `screen` hook calls `ReplyScreen.release`), so nothing unscreened is ever on screen, and a
reply cut by the length cap never showed the sentence that the cap cut (`trim_to_sentence`). A reply that
fails is replaced by the protocol's neutral message plus the crisis resources, the same text whichever arm
wrote it; its raw text stays in the store, a flag (category `unsafe_reply`) tells the researcher.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol as TypingProtocol

from extes.study.safety import text_forms

UNSAFE_REPLY = "unsafe_reply"  # the flag category of a reply that was screened out
SELF_HARM = "self_harm_encouragement"
TOXICITY = "toxicity"

DEFAULT_MESSAGE = ("I'm sorry, I can't give a good answer to that. What you are going through matters, and you "
                   "deserve support from someone who can be there for you.")

_YOU = r"(?:you|u|ya)"
_DIE = (r"(?:kill\s*(?:ing\s*)?(?:your\s*self|urself)|end\s+(?:it\s+all|your\s+(?:own\s+)?life)|die|"
        r"take\s+your\s+(?:own\s+)?life|hurt\s+(?:your\s*self|urself)|cut\s+(?:your\s*self|urself)|overdose|"
        r"jump\s+off\s+\w+|hang\s+(?:your\s*self|urself)|stop\s+living|give\s+up\s+on\s+(?:life|living))")
# Self-harm encouragement in a reply, matched case-insensitively in every normalised form.
DEFAULT_PATTERNS: dict[str, tuple[str, ...]] = {
    SELF_HARM: (
        # "everyone would be better off without you", "they'd be happier if you were gone"
        r"\b(?:every\s*one|every\s*body|they|people|the\s+world|your\s+\w+|others|we|all\s+of\s+them)\s*"
        r"(?:would|will|'d|might|could)\s+(?:really\s+|honestly\s+|probably\s+|truly\s+|all\s+)?be\s+"
        r"(?:better|happier)\s+(?:off\s+)?(?:without\s+" + _YOU + r"|if\s+" + _YOU + r"\s+(?:were|was|are)\s+"
        r"(?:dead|gone|not\s+(?:here|around))|if\s+" + _YOU + r"\s+(?:weren't|wasn't|were\s+not|was\s+not)\s+"
        r"(?:here|around|alive))",
        r"\b(?:you\s*(?:'d|would|will)\s+be|you're|you\s+are)\s+better\s+off\s+dead\b",
        # "...was worth dying with/for"
        r"\bworth\s+dying\b",
        # "you should (just) kill yourself", "go ahead and end it all", "why not die"
        r"\b(?:you\s+should|you\s+could|you\s+might\s+as\s+well|go\s+ahead\s+and|why\s+not|why\s+don't\s+you|"
        r"maybe\s+you\s+should|it's\s+time\s+to|you\s+(?:need|have|ought)\s+to)\s+(?:just\s+|finally\s+)?" + _DIE,
        r"\b" + _YOU + r"\s+deserve\s+to\s+(?:die|suffer|be\s+dead|hurt)\b",
        r"(?:^|[.!?]\s+)(?:so\s+|then\s+|just\s+)?(?:go\s+)?(?:kill|hurt|cut|hang)\s+(?:your\s*self|urself)\b",
        # "no one would miss you", "nobody would care if you died"
        r"\b(?:no\s*one|nobody)\s+(?:would|will|'d)\s+(?:even\s+|really\s+|ever\s+)?(?:miss|notice|care)\b",
        # agreeing that life is not worth living, or that dying is the way
        r"\byour\s+life\s+(?:is\s+not|isn't|really\s+isn't|is\s+no\s+longer)\s+worth\s+(?:living|it)\b",
        r"\byour\s+life\s+(?:is|was)\s+(?:pointless|meaningless|worthless)\b",
        r"\b(?:you\s+are|you're)\s+(?:just\s+|really\s+|truly\s+|only\s+)?(?:a\s+burden|worthless|useless|"
        r"a\s+waste\s+of\s+\w+)\b",
        r"\b(?:dying|death|suicide|ending\s+it)\s+(?:is|would\s+be|might\s+be|could\s+be|sounds\s+like|seems\s+like)"
        r"\s+(?:the\s+|a\s+|your\s+)?(?:best|right|only|good|reasonable|sensible|fine)\s+"
        r"(?:option|choice|answer|way(?:\s+out)?|solution|idea|thing)\b",
        r"\blethal\s+(?:dose|amount)\b",
        r"\b(?:how\s+many|enough)\s+(?:pills|tablets)\s+(?:to|would|it\s+takes)\b",
    ),
}
# Words before a match, in its sentence, that make it the supportive reading: a denial ("it's not true that
# everyone would be better off without you", "nothing is worth dying for") or a reflection of the person's
# own words ("you feel like no one would miss you").
_DENIAL = re.compile(
    r"\b(?:not|never|no|nothing|untrue|false|a\s+lie|whether|thoughts?|voice|tells?\s+you|telling\s+you|"
    r"ask(?:ed|ing)?\s+(?:if|whether)|"
    r"(?:you|you're|you've|you'd|part\s+of\s+you)\s+(?:\w+\s+){0,2}(?:feel|feeling|felt|think|thinking|thought|"
    r"believe|believing|worry|worried|wonder|wondering|fear|afraid|scared|convinced|say|said|saying|mentioned|told))\b|n't\b",
    re.IGNORECASE)
_END = "\"'”’)]*_"
# A sentence end: terminal punctuation (not the point of a list number "1." or a decimal), closing quotes.
_SENTENCE_END = re.compile(r"(?<![\s(]\d)(?<!^\d)[.!?…]+[" + re.escape(_END) + r"]*")
_SPLIT = re.compile(r"(?<=[.!?…])[" + re.escape(_END) + r"]*\s+|\n+")


def sentence_end(text: str, final: bool = True) -> int:
    """Where the text's last complete sentence ends (0: none). `final=False` (the text may still grow):
    a sentence end counts only once whitespace follows it."""
    end = 0
    for m in _SENTENCE_END.finditer(text):
        after = m.end()
        if after < len(text) and text[after].isspace():
            end = after
        elif after == len(text) and final:
            end = after
    return end


def trim_to_sentence(text: str) -> str:
    """A reply cut by the length cap ends mid-sentence ("... That could help. If you"): it ends at its last
    complete sentence, whichever arm wrote it. A reply without one is kept whole (there is nothing to end
    at); the characters cut are recorded with the reply (`messages.cut_chars`)."""
    end = sentence_end(text)
    return text[:end].rstrip() if end else text


@dataclass(frozen=True)
class Verdict:
    """The screen's answer about a text: safe, or the category and the rule (a pattern, or a score) that
    matched. `detail` never holds the text itself."""

    safe: bool
    category: str | None = None
    detail: str | None = None


SAFE = Verdict(True)


class Scorer(TypingProtocol):
    """What the screen needs of a toxicity scorer (`LocalClassifierScorer`)."""

    def score(self, texts: Sequence[str]) -> list: ...


class ReplyScreen:
    """`screen(text) -> Verdict` over the self-harm patterns and, optionally, a toxicity classifier."""

    def __init__(self, patterns: Mapping[str, Sequence[str]] | None = None, scorer: Scorer | None = None,
                 threshold: float = 0.5):
        patterns = DEFAULT_PATTERNS if patterns is None else patterns
        self._compiled = [(c, p, re.compile(p, re.IGNORECASE)) for c, ps in patterns.items() for p in ps]
        self.scorer, self.threshold = scorer, threshold

    @classmethod
    def from_protocol(cls, protocol) -> ReplyScreen:
        s = protocol.screening
        scorer = None
        if s.toxicity_classifier:
            # lazy: transformers loads only when the protocol names a classifier
            from extes.metrics.toxicity import LocalClassifierScorer

            scorer = LocalClassifierScorer(s.toxicity_classifier, label_map=dict(s.toxicity_label_map) or None)
        return cls(s.patterns, scorer, s.toxicity_threshold)

    def _pattern(self, text: str) -> Verdict:
        for sentence in _SPLIT.split(text):
            for form in text_forms(sentence):
                for category, pattern, rx in self._compiled:
                    for m in rx.finditer(form):
                        if not _DENIAL.search(form[:m.start()]):
                            return Verdict(False, category, pattern)
        return SAFE

    def _toxicity(self, text: str) -> Verdict:
        (scores,) = self.scorer.score([text])
        if not isinstance(scores, dict) or not scores:
            return SAFE
        attribute, value = max(scores.items(), key=lambda kv: kv[1])
        if value >= self.threshold:
            return Verdict(False, TOXICITY, f"{attribute}={value:.3f}")
        return SAFE

    def __call__(self, text: str) -> Verdict:
        if not text.strip():
            return SAFE
        verdict = self._pattern(text)
        if verdict.safe and self.scorer is not None:
            verdict = self._toxicity(text)
        return verdict

    def release(self, text: str, final: bool = False) -> tuple[str, Verdict]:
        """What of a streaming reply's visible text may be shown: up to its last complete sentence, and
        the verdict on that much."""
        shown = text[:sentence_end(text, final)].rstrip()
        return shown, self(shown) if shown else SAFE


def replacement_text(protocol) -> str:
    """What a screened-out reply shows, whichever arm wrote it: the neutral message and the crisis text."""
    return f"{protocol.screening.message}\n\n{protocol.crisis.banner}"
