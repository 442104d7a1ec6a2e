"""Scenarios and support strategies: the single source of truth.

The 36 ExTES scenarios carry the dialogue counts the ExTES authors published with the dataset
(their Table 1 / repository README). Those per-scenario counts add up to 11,183 while the paper's
text reports 11,177 dialogues in total; we keep the published per-scenario numbers as they are and
use them only as proportions (quotas for generation, reference shares in `extes stats`).

Descriptions and definitions are written by us.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


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
