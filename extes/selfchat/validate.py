"""Decide what happens to a generated dialogue: accepted, rejected (with reasons) or needs_review.

Every reason is "code: detail"; codes are stable so per-round statistics can count them.
Hard problems reject; problems a reviewer can fix in a minute (a missing or unknown strategy on
one or two turns, a generic description, one turn copied from elsewhere) send the dialogue to review.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from extes.dialogue import Dialogue, Turn, merge_consecutive_turns
from extes.selfchat.dedup import NearDupIndex, TurnIndex, dialogue_text, jaccard, shingles, turn_key, words
from extes.selfchat.parse import ParseError, parse_reply
from extes.taxonomy import SCENARIO_NAMES, UnknownLabelError, normalize_scenario

ACCEPTED, REJECTED, NEEDS_REVIEW = "accepted", "rejected", "needs_review"

# codes that only send a dialogue to review (when nothing harder is wrong)
FIXABLE = {"missing_strategy", "unknown_strategy", "generic_description", "duplicate_turn"}


@dataclass
class Rules:
    min_utterances: int = 8
    max_fixable_strategies: int = 2   # more missing/unknown strategies than this -> rejected
    max_merges: int = 2               # consecutive same-role turns merged; more -> rejected
    max_duplicate_turns: int = 1      # exact duplicate turns tolerated (for review); more -> rejected
    min_description_words: int = 8
    example_copy_threshold: float = 0.5   # shingle Jaccard with the in-context example
    near_dup_threshold: float = 0.5       # shingle Jaccard with anything accepted so far


@dataclass
class Verdict:
    status: str
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dialogue: Dialogue | None = None

    @property
    def codes(self) -> list[str]:
        return [r.split(":", 1)[0] for r in self.reasons]


def _norm(s: str) -> str:
    return " ".join(words(s))


def check_structure(d: Dialogue, requested_scene: str, rules: Rules) -> tuple[list[str], list[str]]:
    """Structural checks shared by generation and human review: returns (reasons, notes) and may
    merge consecutive same-role turns in place."""
    notes: list[str] = []
    reasons = [
        *_check_scene(d, requested_scene),
        *_drop_empty_turns(d),
        *_merge_same_speaker(d, rules, notes),
        *_check_roles(d, rules),
        *_check_strategies(d, rules),
        *_check_repeats(d),
        *_check_description(d, requested_scene, rules),
    ]
    return reasons, notes


def _check_scene(d: Dialogue, requested_scene: str) -> list[str]:
    try:
        scene = normalize_scenario(d.scene)
    except UnknownLabelError:
        scene = d.scene
    if scene != requested_scene:
        return [f"scene_changed: asked for {requested_scene!r}, got {d.scene!r}"]
    d.scene = scene
    return []


def _drop_empty_turns(d: Dialogue) -> list[str]:
    empty = [i for i, t in enumerate(d.turns) if not t.text.strip()]
    if not empty:
        return []
    d.turns = [t for t in d.turns if t.text.strip()]
    return [f"empty_turn: turns {empty}"]


def _merge_same_speaker(d: Dialogue, rules: Rules, notes: list[str]) -> list[str]:
    n_runs = sum(1 for a, b in zip(d.turns, d.turns[1:]) if a.role == b.role)
    if not n_runs:
        return []
    if n_runs > rules.max_merges:
        return [f"roles_not_alternating: {n_runs} places where a speaker talks twice in a row"]
    notes.append(f"merged {n_runs} consecutive same-speaker turn(s)")
    merged = merge_consecutive_turns(d.turns)
    for t in merged:  # a merged assistant turn is labelled if either part was
        if t.strategy:
            t.meta.pop("missing_strategy", None)
            t.meta.pop("unknown_strategy", None)
    d.turns = merged
    return []


def _check_roles(d: Dialogue, rules: Rules) -> list[str]:
    reasons = []
    if d.turns and d.turns[0].role != "user":
        reasons.append("roles_not_alternating: the conversation does not start with the user")
    if len(d.turns) < rules.min_utterances:
        reasons.append(f"too_short: {len(d.turns)} utterances, need at least {rules.min_utterances}")
    if not any(t.role == "assistant" for t in d.turns) or not any(t.role == "user" for t in d.turns):
        reasons.append("roles_not_alternating: needs both user and AI turns")
    return reasons


def _check_strategies(d: Dialogue, rules: Rules) -> list[str]:
    reasons = []
    missing = [i for i, t in enumerate(d.turns) if t.role == "assistant" and not t.strategy
               and not t.meta.get("unknown_strategy")]
    unknown = [(i, t.meta["unknown_strategy"]) for i, t in enumerate(d.turns)
               if t.role == "assistant" and not t.strategy and t.meta.get("unknown_strategy")]
    if missing:
        reasons.append(f"missing_strategy: AI turns {missing}")
    if unknown:
        reasons.append("unknown_strategy: " + ", ".join(f"turn {i} {lab!r}" for i, lab in unknown))
    if len(missing) + len(unknown) > rules.max_fixable_strategies:
        reasons.append(f"strategies: {len(missing) + len(unknown)} AI turns without a valid strategy")
    return reasons


def _check_repeats(d: Dialogue) -> list[str]:
    seen: dict[str, int] = {}
    repeats = []
    for i, t in enumerate(d.turns):
        k = turn_key(t.text)
        if k in seen and len(words(t.text)) >= 3:
            repeats.append((seen[k], i))
        seen.setdefault(k, i)
    if not repeats:
        return []
    return ["duplicate_turn: repeated within the dialogue " + ", ".join(f"{a}={b}" for a, b in repeats)]


def _check_description(d: Dialogue, requested_scene: str, rules: Rules) -> list[str]:
    desc = _norm(d.description)
    if (len(desc.split()) < rules.min_description_words or desc == _norm(requested_scene)
            or desc in {_norm(s) for s in SCENARIO_NAMES}):
        return [f"generic_description: {d.description[:80]!r} is not a specific situation"]
    return []


def status_of(reasons: list[str], rules: Rules) -> str:
    codes = [r.split(":", 1)[0] for r in reasons]
    if not codes:
        return ACCEPTED
    if any(c not in FIXABLE for c in codes):
        return REJECTED
    if codes.count("duplicate_turn") > rules.max_duplicate_turns:
        return REJECTED
    return NEEDS_REVIEW


def judge(
    reply: str,
    requested_scene: str,
    example: Dialogue | None,
    near: NearDupIndex | None,
    turns: TurnIndex | None,
    rules: Rules | None = None,
    dialogue_id: str = "",
    finish_reason: str | None = None,
) -> Verdict:
    """Parse, normalise and validate one LLM reply against the dataset accepted so far."""
    rules = rules or Rules()
    try:
        parsed = parse_reply(reply, requested_scene, dialogue_id)
    except ParseError as exc:
        reason = f"not_json: {exc}"
        if finish_reason == "length":
            reason += " (the reply was cut off at max_tokens)"
        return Verdict(REJECTED, [reason])
    d = parsed.dialogue
    reasons, notes = check_structure(d, requested_scene, rules)
    notes = parsed.issues + notes
    text = dialogue_text(d)
    sh = shingles(text)
    if example is not None:
        j = jaccard(sh, shingles(dialogue_text(example)))
        if j >= rules.example_copy_threshold:
            reasons.append(f"copy_of_example: Jaccard {j:.2f} with example {example.id}")
        if example.description and _norm(example.description) == _norm(d.description):
            reasons.append(f"copy_of_example: description copied from example {example.id}")
    if near is not None:
        hit = near.query(text)
        if hit is not None:
            reasons.append(f"near_duplicate: Jaccard {hit[1]:.2f} with {hit[0]}")
    if turns is not None:
        dups = turns.duplicates(d)
        if dups:
            owners = sorted({o for _, o in dups})
            reasons.append(f"duplicate_turn: turns {[i for i, _ in dups]} also in {', '.join(owners[:3])}")
            if len(dups) > rules.max_duplicate_turns:
                reasons.append(f"copied_turns: {len(dups)} turns copied from accepted dialogues")
    return Verdict(status_of(reasons, rules), reasons, notes, d)


def strip_build_meta(turns: list[Turn]) -> None:
    for t in turns:
        t.meta.pop("missing_strategy", None)
        t.meta.pop("unknown_strategy", None)
