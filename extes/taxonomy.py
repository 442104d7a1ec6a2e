"""Scenarios and support strategies: the single source of truth.

The 36 ExTES scenarios carry the dialogue counts the ExTES authors published with the dataset
(their Table 1 / repository README). Those per-scenario counts add up to 11,183 while the paper's
text reports 11,177 dialogues in total; we keep the published per-scenario numbers as they are and
use them only as proportions (quotas for generation, reference shares in `extes stats`).

Descriptions and definitions are written by us.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import ConfigDict, StringConstraints, field_validator, model_validator
from pydantic.dataclasses import dataclass as _pydantic_dataclass


@dataclass(frozen=True)
class Scenario:
    name: str
    paper_count: int
    description: str


@dataclass(frozen=True)
class Strategy:
    name: str
    abbr: str
    definition: str


# The ExTES human-evaluation aspects: the study asks participants about these, the LLM judge asks the
# same questions, and the analysis accepts these keys. `Aspect` is the one type for all three.
ASPECT_KEYS: tuple[str, ...] = ("fluency", "identification", "comforting", "suggestion", "overall")


_Text = Annotated[str, StringConstraints(strict=True, strip_whitespace=True, min_length=1)]  # as extes.config.Text


@_pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class Aspect:
    """One aspect a pair of chatbots is compared on: its key (one of `ASPECT_KEYS`), label and question.

    A frozen pydantic dataclass: a protocol file's ``aspects`` entries validate into it (unknown keys are
    errors, the label defaults to the capitalised key), and code builds it positionally.
    """

    key: str
    label: _Text
    question: _Text

    @model_validator(mode="before")
    @classmethod
    def _default_label(cls, data: Any) -> Any:
        if isinstance(data, dict) and "label" not in data:
            return {**data, "label": str(data.get("key") or "").strip().lower().capitalize()}
        return data

    @field_validator("key", mode="before")
    @classmethod
    def _key(cls, value: Any) -> str:
        key = str(value or "").strip().lower()
        if key not in ASPECT_KEYS:
            raise ValueError(f"{value!r} is not one of {', '.join(ASPECT_KEYS)}")
        return key


# The aspects worded for a judge reading two transcripts (a study protocol words its own questions).
ASPECTS: tuple[Aspect, ...] = (
    Aspect("fluency", "Fluency", "Which chatbot's replies are more fluent and easier to understand?"),
    Aspect("identification", "Identification", "Which chatbot better understood the person's situation and feelings?"),
    Aspect("comforting", "Comforting", "Which chatbot was more comforting?"),
    Aspect("suggestion", "Suggestion", "Which chatbot gave more helpful suggestions?"),
    Aspect("overall", "Overall", "Overall, which chatbot would the person rather talk to?"),
)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("Breakups or Divorce", 710, "The end of a romantic relationship or marriage and what it leaves behind."),
    Scenario("Conflicts or Communication Problems", 1109, "Recurring arguments or talking past each other with a partner, friend or colleague."),
    Scenario("Communication Challenges", 1008, "Finding it hard to say what one means, be heard, or speak up."),
    Scenario("Coping with the Death of a Loved One", 593, "Grief after losing a family member, partner or close friend."),
    Scenario("Dealing with the Loss of a Pet", 601, "Mourning an animal companion that died or had to be given up."),
    Scenario("Work-related Stress and Burnout", 403, "Exhaustion and pressure from workload, deadlines or a demanding workplace."),
    Scenario("Financial Worries and Uncertainty", 403, "Anxiety about money, bills, debt or an unstable income."),
    Scenario("Unemployment-related Stress", 403, "The strain of being out of work and searching for a job."),
    Scenario("Academic Stress", 403, "Pressure from exams, grades, coursework or study load."),
    Scenario("Spirituality and Faith", 202, "Doubts, changes or conflicts around religious or spiritual belief."),
    Scenario("Managing Bipolar Disorder", 202, "Living with mood episodes, treatment and their effect on daily life."),
    Scenario("Anxiety and Panic", 202, "Persistent worry, panic attacks and the fear of the next one."),
    Scenario("Depression and Low Mood", 403, "Long stretches of sadness, emptiness or lost interest in things."),
    Scenario("Adjusting to a New Job or Role", 302, "Settling into unfamiliar duties, colleagues or responsibilities."),
    Scenario("Chronic Illness or Pain Management", 302, "Coping day to day with a long-term illness or persistent pain."),
    Scenario("Coping with a Diagnosis or Medical Treatment", 202, "Taking in a new diagnosis or going through demanding treatment."),
    Scenario("Caregiver Support", 202, "The load of caring for an ill, disabled or ageing person."),
    Scenario("Finding Meaning and Purpose in Life", 202, "Feeling directionless or questioning what one's life is for."),
    Scenario("Navigating Gender Identity and Transitioning", 202, "Exploring gender identity or going through a transition."),
    Scenario("Moving to a New City or Country", 202, "Loneliness and upheaval after relocating somewhere unfamiliar."),
    Scenario("Career Transitions", 202, "Changing fields, roles or direction in one's working life."),
    Scenario("Parenthood and Parenting Challenges", 202, "The everyday difficulty and doubt of raising children."),
    Scenario("Low Self-Esteem or Lack of Confidence", 302, "A harsh inner critic and doubting one's own worth or ability."),
    Scenario("Body Image Concerns and Eating Disorders", 101, "Distress about one's body, weight or eating."),
    Scenario("LGBTQ+ Identity", 101, "Questions of sexual orientation, coming out and acceptance."),
    Scenario("Cultural Identity and Belonging", 101, "Feeling caught between cultures or not belonging anywhere."),
    Scenario("Academic Stress or Pressure", 202, "Expectations from family or school about academic achievement."),
    Scenario("Job Loss or Career Setbacks", 202, "Being laid off, passed over or seeing a career plan fall through."),
    Scenario("Parenting Challenges and Parental Guilt", 202, "Feeling one is failing one's children or not doing enough."),
    Scenario("Sibling Rivalry or Family Conflict", 403, "Tension, competition or estrangement within the family."),
    Scenario("Surviving and Recovering from Physical or Emotional Abuse", 101, "Rebuilding safety and trust after abuse."),
    Scenario("Healing from Sexual Assault or Domestic Violence", 101, "Recovery after sexual assault or violence at home."),
    Scenario("Post-Traumatic Stress Disorder (PTSD)", 101, "Flashbacks, hypervigilance and avoidance after a traumatic event."),
    Scenario("Healing from Abuse", 202, "Working through the long shadow of past mistreatment."),
    Scenario("Addiction and Recovery", 202, "Struggling with substance use or staying on the path of recovery."),
    Scenario("Support for Loved Ones or Friends", 202, "Worrying about and trying to help someone close who is struggling."),
)

OTHER_SCENARIO = "Something else"

STRATEGIES: tuple[Strategy, ...] = (
    Strategy("Reflective Statements", "RS", "Mirror back what the person said or feels, so they know they were heard."),
    Strategy("Clarification", "Cla", "Ask a question that helps the person say more or makes the situation clearer."),
    Strategy("Emotional Validation", "EV", "Tell the person their feelings make sense and are legitimate."),
    Strategy("Empathetic Statements", "ES", "Express care and understanding of how hard the situation is for them."),
    Strategy("Affirmation", "Aff", "Recognise the person's strengths, efforts and worth."),
    Strategy("Offer Hope", "OH", "Point towards a realistic possibility that things can get better."),
    Strategy("Avoid Judgment and Criticism", "AJC", "Respond without blame, making it safe to share difficult things."),
    Strategy("Suggest Options", "SO", "Offer concrete possibilities the person could try, leaving the choice to them."),
    Strategy("Collaborative Planning", "CP", "Work out next steps together with the person."),
    Strategy("Provide Different Perspectives", "PDP", "Offer another way of looking at the situation."),
    Strategy("Reframe Negative Thoughts", "RNT", "Help turn an unhelpful or self-critical thought into a more balanced one."),
    Strategy("Share Information", "SI", "Give factual information or resources that are relevant to the problem."),
    Strategy("Normalize Experiences", "NE", "Let the person know that many people go through similar things."),
    Strategy("Promote Self-Care Practices", "PSP", "Encourage rest, health and kindness towards oneself."),
    Strategy("Stress Management", "SM", "Offer techniques to lower stress in the moment, such as breathing or grounding."),
    Strategy("Others", "Oth", "Greetings, thanks and other turns that do not fit a support strategy."),
)

ESCONV_STRATEGIES: tuple[Strategy, ...] = (
    Strategy("Question", "Qu", "Ask for information about the problem or the person's feelings."),
    Strategy("Restatement or Paraphrasing", "RP", "Say back what the seeker said in other words."),
    Strategy("Reflection of Feelings", "RF", "Name and reflect the feelings the seeker expresses."),
    Strategy("Self-disclosure", "SD", "Share a similar experience of one's own."),
    Strategy("Affirmation and Reassurance", "AR", "Affirm the seeker's strengths and reassure them."),
    Strategy("Providing Suggestions", "PS", "Suggest ways the seeker could change or cope."),
    Strategy("Information", "Inf", "Give useful facts, data or resources."),
    Strategy("Others", "Oth", "Greetings and other turns outside the strategies above."),
)

SCENARIO_NAMES: tuple[str, ...] = tuple(s.name for s in SCENARIOS)
STRATEGY_NAMES: tuple[str, ...] = tuple(s.name for s in STRATEGIES)
STRATEGY_ABBRS: tuple[str, ...] = tuple(s.abbr for s in STRATEGIES)
ESCONV_STRATEGY_NAMES: tuple[str, ...] = tuple(s.name for s in ESCONV_STRATEGIES)

TAXONOMIES = {"extes": STRATEGIES, "esconv": ESCONV_STRATEGIES}


class UnknownLabelError(ValueError):
    """A scenario or strategy label that does not map to the taxonomy."""


def _key(label: str) -> str:
    """Case, spacing, punctuation and '&'/'and' insensitive key."""
    s = label.strip().lower().replace("&", " and ")
    s = re.sub(r"[\s_\-/.,:;()\[\]]+", " ", s)
    return s.strip()


# Spelling variants seen in real ExTES / ESConv files and in LLM output.
_EXTES_VARIANTS = {
    "reflective statement": "Reflective Statements",
    "reflection": "Reflective Statements",
    "clarifications": "Clarification",
    "clarifying question": "Clarification",
    "emotional validations": "Emotional Validation",
    "validation": "Emotional Validation",
    "empathetic statement": "Empathetic Statements",
    "empathy": "Empathetic Statements",
    "empathic statements": "Empathetic Statements",
    "affirmations": "Affirmation",
    "offer hopes": "Offer Hope",
    "offering hope": "Offer Hope",
    "avoid judgement and criticism": "Avoid Judgment and Criticism",
    "avoid judgment": "Avoid Judgment and Criticism",
    "avoid judgement": "Avoid Judgment and Criticism",
    "suggest option": "Suggest Options",
    "suggesting options": "Suggest Options",
    "collaborative plan": "Collaborative Planning",
    "provide different perspective": "Provide Different Perspectives",
    "providing different perspectives": "Provide Different Perspectives",
    "reframe negative thought": "Reframe Negative Thoughts",
    "reframing negative thoughts": "Reframe Negative Thoughts",
    "share informations": "Share Information",
    "sharing information": "Share Information",
    "normalize experience": "Normalize Experiences",
    "normalise experiences": "Normalize Experiences",
    "normalizing experiences": "Normalize Experiences",
    "promote self care practices": "Promote Self-Care Practices",
    "promote self care": "Promote Self-Care Practices",
    "promoting self care practices": "Promote Self-Care Practices",
    "stress managements": "Stress Management",
    "other": "Others",
    "none": "Others",
}

_ESCONV_VARIANTS = {
    "questions": "Question",
    "restatement": "Restatement or Paraphrasing",
    "paraphrasing": "Restatement or Paraphrasing",
    "restatement or paraphrase": "Restatement or Paraphrasing",
    "reflection of feeling": "Reflection of Feelings",
    "self disclosure": "Self-disclosure",
    "approval and reassurance": "Affirmation and Reassurance",
    "affirmation": "Affirmation and Reassurance",
    "reassurance": "Affirmation and Reassurance",
    "providing suggestion": "Providing Suggestions",
    "provide suggestions": "Providing Suggestions",
    "suggestions": "Providing Suggestions",
    "direct guidance": "Providing Suggestions",
    "informations": "Information",
    "other": "Others",
}


def _table(strategies: tuple[Strategy, ...], variants: dict[str, str]) -> dict[str, str]:
    table = {_key(v): canon for v, canon in variants.items()}
    for s in strategies:
        table[_key(s.name)] = s.name
        table[_key(s.abbr)] = s.name
    return table


_LOOKUP = {
    "extes": _table(STRATEGIES, _EXTES_VARIANTS),
    "esconv": _table(ESCONV_STRATEGIES, _ESCONV_VARIANTS),
}
_SCENARIO_LOOKUP = {_key(s.name): s.name for s in SCENARIOS}


def normalize_strategy(label: str | None, taxonomy: str = "extes", where: str = "") -> str | None:
    """Map a strategy label (any case, spacing, abbreviation or known variant) to its canonical name.

    Returns None for an empty label. Raises UnknownLabelError naming `where` for anything else unknown.
    """
    if label is None or not str(label).strip():
        return None
    try:
        table = _LOOKUP[taxonomy]
    except KeyError:
        raise ValueError(f"unknown taxonomy {taxonomy!r}; expected one of {sorted(_LOOKUP)}") from None
    canon = table.get(_key(str(label)))
    if canon is None:
        loc = f" at {where}" if where else ""
        raise UnknownLabelError(f"unknown {taxonomy} strategy label {label!r}{loc}")
    return canon


def is_strategy(label: str, taxonomy: str = "extes") -> bool:
    try:
        return normalize_strategy(label, taxonomy) is not None
    except UnknownLabelError:
        return False


def normalize_scenario(label: str, where: str = "") -> str:
    """Map a scenario name to its canonical spelling; raises UnknownLabelError when unknown."""
    canon = _SCENARIO_LOOKUP.get(_key(label or ""))
    if canon is None:
        loc = f" at {where}" if where else ""
        raise UnknownLabelError(f"unknown ExTES scenario {label!r}{loc}")
    return canon


def strategy_abbr(name: str, taxonomy: str = "extes") -> str:
    canon = normalize_strategy(name, taxonomy)
    for s in TAXONOMIES[taxonomy]:
        if s.name == canon:
            return s.abbr
    raise UnknownLabelError(name)  # pragma: no cover - normalize_strategy raised already


def detect_taxonomy(labels: list[str]) -> str:
    """'esconv' when every label belongs to ESConv's 8 strategies and some do not belong to ExTES'."""
    labels = [lab for lab in labels if lab]
    if labels and all(is_strategy(lab, "esconv") for lab in labels) and not all(
        is_strategy(lab, "extes") for lab in labels
    ):
        return "esconv"
    return "extes"


def scenario_proportions() -> dict[str, float]:
    total = sum(s.paper_count for s in SCENARIOS)
    return {s.name: s.paper_count / total for s in SCENARIOS}


# The tag a strategy-trained model writes before its reply, e.g. "[Emotional Validation] That sounds hard."
# Training (extes.train) writes it, the engine (extes.models) strips it and keeps the strategy as metadata.
STRATEGY_TAG_RE = re.compile(r"^\s*\[([^\[\]\n]{1,60})\]\s*")
# A tag-like bracket anywhere in a reply (with the spaces around it). The study strips every one that names
# a strategy (extes.study.blinding); the engine will not end a reply made only of such brackets.
TAG_ANYWHERE_RE = re.compile(r"[ \t]*\[([^\[\]\n]{1,60})\][ \t]*")


def format_strategy_tag(strategy: str) -> str:
    return f"[{strategy}] "


def split_strategy_tag(text: str, taxonomy: str | None = None) -> tuple[str | None, str]:
    """Split a leading '[Strategy]' tag off a reply: returns (canonical strategy or raw tag, text).

    With `taxonomy` given, the tag is normalised; an unknown tag is still removed from the text
    (people must never see it) and returned as written.
    """
    m = STRATEGY_TAG_RE.match(text)
    if not m:
        return None, text
    tag = m.group(1).strip()
    rest = text[m.end():]
    if taxonomy:
        try:
            return normalize_strategy(tag, taxonomy), rest
        except UnknownLabelError:
            return tag, rest
    return tag, rest


# ---------------------------------------------------------------------------------------------- tag formats
# A strategy label can reach a reply in many wrappings besides "[Name]": other brackets ("(EV)", "{Offer
# Hope}", "<Affirmation>", "【Question】"), XML-like tags ("<strategy>EV</strategy>"), "Strategy: X", "X:" or
# "**X:**" at the start of a line, hashtags ("#EmotionalValidation"), quoted labels, several labels at once
# ("[EV & OH]", "(Affirmation, Offer Hope)"), a line break inside the brackets, a bracket left open at the
# end. The grammar below is built from the taxonomy (every name, abbreviation and known variant of both
# taxonomies, in any case; abbreviations outside brackets only as written or in capitals, so a line starting
# "So:" stays) and from a handful of wrappings, so a new strategy or variant is covered in every wrapping.
# Each piece is written once and yields two regular expressions: the one that matches it, and one that
# matches every prefix of it, which says while a reply streams whether its end may still become a tag.


@dataclass(frozen=True)
class _G:
    full: str  # the regular expression
    part: str  # matches every prefix of what `full` matches (zero-width assertions are left out: a superset)


def _lit(s: str, ci: bool = True) -> _G:
    chars = [re.escape(c) for c in s]
    part = ""
    for c in reversed(chars):
        part = f"(?:{c}{part})?"
    full = "".join(chars)
    return _G(f"(?i:{full})", f"(?i:{part})") if ci else _G(f"(?:{full})", part)


def _cls(c: str) -> _G:
    return _G(c, c + "?")


def _raw(assertion: str) -> _G:
    return _G(assertion, "")


def _seq(*gs: _G) -> _G:
    parts = ["".join(x.full for x in gs[:i]) + g.part for i, g in enumerate(gs)]
    return _G("(?:" + "".join(g.full for g in gs) + ")", "(?:" + "|".join(parts) + ")")


def _alt(*gs: _G) -> _G:
    return _G("(?:" + "|".join(g.full for g in gs) + ")", "(?:" + "|".join(g.part for g in gs) + ")")


def _star(g: _G) -> _G:
    return _G(f"(?:{g.full})*", f"(?:{g.full})*{g.part}")


def _opt(g: _G) -> _G:
    return _G(f"(?:{g.full})?", g.part)


def _plus(g: _G) -> _G:
    return _seq(g, _star(g))


def _group(name: str, g: _G) -> _G:
    return _G(f"(?P<{name}>{g.full})", g.part)


_WS = _cls(r"\s")
_QUOTES_OPEN, _QUOTES_CLOSE = "\"'“‘„`", "\"'”’`"
OPEN_BRACKETS = "[({<［（｛＜【〔〖「『〈《⟨⟪«‹"
CLOSE_BRACKETS = "])}>］）｝＞】〕〗」』〉》⟩⟫»›"
_OPEN = _cls("[" + re.escape(OPEN_BRACKETS) + "]")
_CLOSE = _cls("[" + re.escape(CLOSE_BRACKETS) + "]")
_NO_ALNUM_BEFORE = r"(?<![A-Za-z0-9])"
_LINE_START = r"(?:(?<=\n)|(?<![\s\S])|(?<=\x00))"  # \x00: where an earlier pass removed a tag


def _label_grammar(key: str, strict_abbr: str | None) -> _G:
    """One label: a name's words with any separators or none ("Self-Care", "EmotionalValidation"), '&' for
    'and', an optional plural 's'; or an abbreviation (any case, or as written/in capitals when strict)."""
    if strict_abbr is not None:
        return _alt(*(_lit(a, ci=False) for a in dict.fromkeys((strict_abbr, strict_abbr.upper()))))
    words = [_alt(_lit("and"), _lit("&"), _lit("+")) if w == "and" else _lit(w) for w in key.split()]
    pieces: list[_G] = []
    for i, w in enumerate(words):
        if i:
            pieces.append(_star(_cls(r"[\s\-_./]")))
        pieces.append(w)
    pieces.append(_opt(_lit("s")))
    return _seq(*pieces)


def _labels() -> tuple[_G, _G]:
    """(any label, any case), (any label, abbreviations strict), longest first."""
    abbrs = {_key(s.abbr): s.abbr for strategies in TAXONOMIES.values() for s in strategies}
    keys = sorted({k for table in _LOOKUP.values() for k in table}, key=lambda k: (-len(k), k))
    loose = [_label_grammar(k, None) if k not in abbrs else _lit(abbrs[k]) for k in keys]
    strict = [_label_grammar(k, abbrs.get(k)) for k in keys]
    return _alt(*loose), _alt(*strict)


def _several(label: _G) -> _G:
    """Labels joined: "X and Y", "X & Y", "X / Y", "X, Y", "X | Y", "X Y"."""
    joiner = _alt(_seq(_star(_WS), _alt(_cls(r"[,/&+|;]"), _lit("and"), _lit("or")), _star(_WS)), _plus(_WS))
    return _seq(label, _star(_seq(joiner, label)))


_LABEL, _LABEL_STRICT = _labels()
_LABELS, _LABELS_STRICT = _several(_LABEL), _several(_LABEL_STRICT)
_STRATEGY_WORD = _seq(_opt(_seq(_lit("support"), _plus(_WS))), _lit("strateg"), _alt(_lit("y"), _lit("ies")),
                      _opt(_seq(_plus(_WS), _lit("used"))))
_STRATEGY_PREFIX = _seq(_STRATEGY_WORD, _star(_WS), _cls(r"[:=\-–—]"))
_DECOR = r"[\s" + re.escape(_QUOTES_OPEN + _QUOTES_CLOSE) + r"*_#~/]"
_DECOR_IN = _seq(_star(_cls(_DECOR)), _opt(_seq(_STRATEGY_PREFIX, _star(_cls(_DECOR)))))
_DECOR_OUT = _star(_cls(r"[\s" + re.escape(_QUOTES_CLOSE) + r"*_~/.!:;,]"))

_FORMS = {
    # "Strategy: X", "**Strategy:** [X]", "support strategy used = X."
    "strategy": _seq(_raw(_NO_ALNUM_BEFORE), _star(_cls(r"[*_]")), _STRATEGY_PREFIX,
                     _star(_cls(r"[\s" + re.escape(_QUOTES_OPEN + OPEN_BRACKETS) + r"*_#~]")),
                     _group("L0", _LABELS), _raw(r"(?![A-Za-z0-9])"),
                     _star(_cls("[" + re.escape(_QUOTES_CLOSE + CLOSE_BRACKETS) + r"*_~]")),
                     _opt(_seq(_star(_cls(r"[ \t]")), _cls(r"[.|:;\-–—]")))),
    # "<strategy>X</strategy>", "<b>X</b>", "<label>X" left open at the end
    "xml": _seq(_lit("<"), _star(_WS), _cls("[A-Za-z]"), _star(_cls(r"[\w\-]")), _star(_WS), _lit(">"),
                _DECOR_IN, _group("L1", _LABELS), _DECOR_OUT,
                _alt(_seq(_lit("<"), _star(_WS), _lit("/"), _star(_cls(r"[\w\-\s]")), _lit(">")), _raw(r"\Z"))),
    # any bracket, with a line break, decorations or "Strategy:" inside, or left open at the end
    "bracket": _seq(_raw(r"(?:(?=\[)|" + _NO_ALNUM_BEFORE + ")"), _OPEN, _DECOR_IN, _group("L2", _LABELS),
                    _DECOR_OUT, _alt(_CLOSE, _raw(r"\Z"))),
    # "X:", "**X:**", "**X** -", "> X |", or X alone on its line, at the start of a line
    "line": _seq(_raw(_LINE_START), _star(_cls(r"[ \t>\x00]")), _star(_cls("[" + re.escape(_QUOTES_OPEN) + "*_#~]")),
                 _group("L3", _LABELS_STRICT), _raw(r"(?![A-Za-z0-9])"),
                 _star(_cls("[" + re.escape(_QUOTES_CLOSE) + "*_~]")), _star(_cls(r"[ \t]")),
                 _alt(_seq(_cls(r"[:|–—]"), _star(_cls(r"[*_]"))), _seq(_lit("-"), _raw(r"(?=\s)")),
                      _raw(r"(?=[ \t]*(?:\n|\Z))"))),
    "hashtag": _seq(_raw(r"(?<![\w#&])"), _lit("#"), _group("L4", _LABEL), _raw(r"(?![A-Za-z0-9])")),
    # a quoted label standing on its own after a sentence or at a line start: '"Affirmation" You did well.'
    "quoted": _seq(_raw(r"(?:(?<=[.!?:]\s)|" + _LINE_START + ")"), _cls("[" + re.escape(_QUOTES_OPEN) + "]"),
                   _group("L5", _LABELS), _DECOR_OUT, _cls("[" + re.escape(_QUOTES_CLOSE) + "]"),
                   _raw(r"(?![ \t]*[a-z])")),
}
# What only a stripped reply leaves behind: "[ ]", "()", "(#)", "<strategy>", an empty "****", a bare
# "Strategy:" at the end of a line.
_LEFTOVERS = {
    "empty": _seq(_raw(r"(?:(?=\[)|" + _NO_ALNUM_BEFORE + ")"), _OPEN,
                  _star(_cls(r"[\s\x00#*:\-_.,;|/=~" + re.escape(_QUOTES_OPEN + _QUOTES_CLOSE) + "]")), _CLOSE),
    "bare_xml": _seq(_lit("<"), _star(_WS), _opt(_lit("/")), _star(_WS),
                     _alt(_STRATEGY_WORD, _lit("label"), _lit("tag")), _star(_WS), _opt(_lit("/")), _star(_WS),
                     _lit(">")),
    "empty_bold": _raw(r"(?<!\S)(?P<b>\*{2,3}|_{2,3})[ \t\x00]*(?P=b)(?!\S)"),
    "strategy_alone": _seq(_raw(_NO_ALNUM_BEFORE), _star(_cls(r"[*_]")), _STRATEGY_PREFIX,
                           _star(_cls(r"[ \t*_\x00]")), _raw(r"(?=\n|\Z)")),
}


@dataclass(frozen=True)
class _TagGrammar:
    tags: re.Pattern  # every wrapped label; the first group that is set holds the label(s)
    leftovers: re.Pattern
    label: re.Pattern
    hold_anywhere: re.Pattern  # prefixes of every form but "line", and of the leftovers
    hold_line: re.Pattern  # prefixes of the "line" form (tried at line starts only)


def _ungrouped(pattern: str) -> str:
    return re.sub(r"\(\?P<\w+>", "(?:", pattern)


def prepare_tag_grammar() -> None:
    """Compile the tag patterns now. They take about a second, so importing the taxonomy does not do it;
    an engine or a study app calls this at start-up, so that the first reply does not wait for it (in the
    engine's thread, that second held every pane's first turn)."""
    _tag_grammar()


@functools.cache
def _tag_grammar() -> _TagGrammar:
    """Compiled once, on first use or by `prepare_tag_grammar`."""
    forms = {**_FORMS, **_LEFTOVERS}
    return _TagGrammar(
        tags=re.compile("|".join(g.full for g in _FORMS.values())),
        leftovers=re.compile("|".join(g.full for g in _LEFTOVERS.values())),
        label=re.compile(_LABEL.full),
        hold_anywhere=re.compile(_ungrouped("|".join(g.part for name, g in forms.items() if name != "line"))),
        hold_line=re.compile(_ungrouped(_FORMS["line"].part)))


TAG_HOLD_CHARS = 160  # the longest wrapped combination of labels we hold back while it streams
_MARK = "\x00"


def _squash(label: str) -> str:
    return re.sub(r"[^a-z0-9]", "", label.lower().replace("&", "and").replace("+", "and"))


_SQUASHED = {tax: {_squash(k): canon for k, canon in table.items()} for tax, table in _LOOKUP.items()}


def _canonical_label(label: str) -> str:
    s = _squash(label)
    for candidate in (s, s[:-1] if s.endswith("s") else s):
        for tax in ("extes", "esconv"):
            if candidate in _SQUASHED[tax]:
                return _SQUASHED[tax][candidate]
    raise UnknownLabelError(f"tag grammar matched {label!r}, which no taxonomy knows")  # pragma: no cover


def _tidy(text: str) -> str:
    """Remove the marks where tags were: a line left with only marks goes with its line break; a mark
    between words becomes one space; none is left before punctuation or at a line's ends."""
    lines = [ln for ln in text.split("\n") if not (_MARK in ln and not ln.replace(_MARK, "").strip())]
    text = "\n".join(lines)

    def space(m: re.Match) -> str:
        before = text[m.start() - 1] if m.start() else "\n"
        after = text[m.end()] if m.end() < len(text) else "\n"
        return "" if before == "\n" or after in "\n.,!?;:)]}" else " "

    return re.sub(r"[ \t]*\x00[\x00 \t]*", space, text)


def strip_strategy_tags(text: str) -> tuple[str, list[str]]:
    """(text without any strategy label in any wrapping, canonical strategies found in order).

    ExTES names come first: "Affirmation" is ExTES' Affirmation, "Question" ESConv's Question."""
    text = text or ""
    found: list[str] = []
    grammar = _tag_grammar()

    def remove(m: re.Match) -> str:
        span = next(s for s in m.groups() if s is not None)  # the one group set holds the form's labels
        found.extend(_canonical_label(x.group(0)) for x in grammar.label.finditer(span))
        return _MARK

    out = text
    for _ in range(4):  # a tag can uncover another ("[EV] Affirmation:"), or leave "**[EV]**" -> "****"
        new = grammar.leftovers.sub(_MARK, grammar.tags.sub(remove, out))
        if new == out:
            break
        out = new
    return (_tidy(out) if _MARK in out else out).strip(), found


def visible_text_after_tags(text: str) -> str:
    """What a participant may see of `text`: every strategy tag, in any wrapping, removed."""
    return strip_strategy_tags(text)[0]


def tag_hold_start(text: str) -> int:
    """While a reply streams: the index from which its end may still become a tag (hold it back), or
    len(text) when nothing needs holding. Only a tail of at most TAG_HOLD_CHARS characters is held; a
    point inside a tag that is already complete is not a start (the whole tag goes, or none of it)."""
    text = text or ""
    g = _tag_grammar()
    start = max(0, len(text) - TAG_HOLD_CHARS)
    inside = {i for m in g.tags.finditer(text, max(0, start - TAG_HOLD_CHARS)) for i in range(m.start() + 1, m.end())}
    for p in range(start, len(text)):
        if p in inside or (p and text[p - 1].isalnum() and text[p].isalnum()):
            continue  # inside a complete tag, or inside a word: no wrapping starts there
        at_line_start = p == 0 or text[p - 1] == "\n"
        if g.hold_anywhere.fullmatch(text, p) or (at_line_start and g.hold_line.fullmatch(text, p)):
            while p and text[p - 1] in "*_~" + _QUOTES_OPEN:  # "**[": the bold marks go with the tag
                p -= 1
            return p
    return len(text)
