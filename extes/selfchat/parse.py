"""Get a dialogue out of whatever the LLM wrote.

`extract_json` finds the JSON object in a reply (bare, in a ```json fence, or inside prose) and
tolerates the usual slips (trailing commas, smart quotes around keys). `normalise` maps key
spellings and turn layouts onto our `Dialogue`, normalising strategy names through the taxonomy.
Nothing here decides acceptance: problems are recorded as issues for `validate` to weigh.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from extes.dialogue import Dialogue, Turn
from extes.taxonomy import UnknownLabelError, normalize_strategy


class ParseError(ValueError):
    """No usable JSON dialogue in a reply; the message says why."""


_FENCE_RE = re.compile(r"```[ \t]*(?:json|JSON|javascript)?[ \t]*\n?(.*?)```", re.S)
_TRAILING_COMMA_RE = re.compile(r",(\s*[}\]])")


def _balanced_spans(text: str, opener: str, closer: str) -> list[str]:
    """Top-level balanced {...} (or [...]) spans, ignoring brackets inside JSON strings."""
    spans, depth, start, in_str, esc = [], 0, -1, False, False
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"' and depth > 0:
            in_str = True
        elif ch == opener:
            if depth == 0:
                start = i
            depth += 1
        elif ch == closer and depth > 0:
            depth -= 1
            if depth == 0:
                spans.append(text[start:i + 1])
    return spans


def _loads(candidate: str) -> Any:
    try:
        return json.loads(candidate)
    except json.JSONDecodeError:
        pass
    repaired = candidate.replace("\u201c", '"').replace("\u201d", '"')
    repaired = _TRAILING_COMMA_RE.sub(r"\1", repaired)
    return json.loads(repaired)


def extract_json(text: str) -> Any:
    """The first JSON object (or list) in `text` that parses; ParseError if there is none."""
    if not text or not text.strip():
        raise ParseError("empty reply")

    def candidates() -> Iterator[str]:  # cheapest first; the bracket scans only when needed
        yield from (m.group(1) for m in _FENCE_RE.finditer(text))
        yield text.strip()
        yield from _balanced_spans(text, "{", "}")
        yield from _balanced_spans(text, "[", "]")

    last_error = "no JSON object found"
    for cand in candidates():
        cand = cand.strip()
        if not cand or cand[0] not in "{[":
            continue
        try:
            value = _loads(cand)
        except json.JSONDecodeError as exc:
            last_error = f"malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
            continue
        if isinstance(value, (dict, list)):
            return value
    raise ParseError(last_error)


@dataclass
class Parsed:
    dialogue: Dialogue
    issues: list[str] = field(default_factory=list)  # normalisation notes and fixable problems


_SCENE_KEYS = ("scene", "scenario", "scene type", "topic", "category")
_DESC_KEYS = ("description", "situation", "desc", "context", "background")
_CONTENT_KEYS = ("content", "dialogue", "dialog", "conversation", "turns", "messages", "utterances")
_USER_KEYS = ("user", "seeker", "human", "client", "person", "help seeker")
_AI_KEYS = ("ai", "assistant", "supporter", "bot", "ai assistant", "chatbot", "system")
_STRATEGY_KEYS = ("ai strategy", "strategy", "ai_strategy", "aistrategy", "support strategy", "strategy used")
_TEXT_KEYS = ("text", "content", "ai", "response", "utterance", "message", "reply")


def _lower_keys(d: dict[str, Any]) -> dict[str, Any]:
    return {re.sub(r"[\s_]+", " ", str(k).strip().lower()): v for k, v in d.items()}


def _first(d: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for k in keys:
        if k in d and d[k] not in (None, ""):
            return d[k]
    return None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return ""
    return str(value).strip()


def _find_dialogue_object(value: Any) -> dict[str, Any]:
    if isinstance(value, list):
        dicts = [v for v in value if isinstance(v, dict)]
        if dicts and any(_first(_lower_keys(v), _CONTENT_KEYS) is not None for v in dicts):
            return next(v for v in dicts if _first(_lower_keys(v), _CONTENT_KEYS) is not None)
        # a bare list of turns
        return {"content": value}
    if isinstance(value, dict):
        low = _lower_keys(value)
        if _first(low, _CONTENT_KEYS) is None:
            for v in value.values():  # {"dialogue": {"scene": ..., "content": [...]}}
                if isinstance(v, dict) and _first(_lower_keys(v), _CONTENT_KEYS) is not None:
                    return v
        return value
    raise ParseError(f"expected a JSON object, got {type(value).__name__}")


def _turn(item: Any, j: int, issues: list[str]) -> Turn | None:
    loc = f"turn {j}"
    if isinstance(item, str):
        m = re.match(r"\s*(user|ai|assistant)\s*:\s*(.*)", item, re.I | re.S)
        if not m:
            issues.append(f"{loc}: unlabelled string turn")
            return None
        role = "user" if m.group(1).lower() == "user" else "assistant"
        return Turn(role, m.group(2).strip(), None, {"missing_strategy": True} if role == "assistant" else {})
    if not isinstance(item, dict):
        issues.append(f"{loc}: not an object")
        return None
    low = _lower_keys(item)
    role: str | None = None
    text = ""
    raw_strategy = _first(low, _STRATEGY_KEYS)
    if "role" in low or "speaker" in low:
        r = str(low.get("role") or low.get("speaker") or "").strip().lower()
        role = "user" if r in _USER_KEYS else "assistant" if r in _AI_KEYS else None
        text = _text(_first(low, ("content", "text", "utterance", "message")))
    else:
        user_val = _first(low, _USER_KEYS)
        ai_val = _first(low, _AI_KEYS)
        if user_val is not None and ai_val is None:
            role, text = "user", _text(user_val)
        elif ai_val is not None:
            role = "assistant"
            if isinstance(ai_val, dict):  # {"AI": {"text": ..., "strategy": ...}}
                inner = _lower_keys(ai_val)
                text = _text(_first(inner, _TEXT_KEYS))
                raw_strategy = raw_strategy or _first(inner, _STRATEGY_KEYS)
            else:
                text = _text(ai_val)
    if role is None:
        issues.append(f"{loc}: no User/AI key (found {sorted(item)[:4]})")
        return None
    turn = Turn(role, text)
    if role == "assistant":
        if isinstance(raw_strategy, list) and raw_strategy:
            turn.meta["extra_strategies"] = [str(s) for s in raw_strategy[1:]]
            raw_strategy = raw_strategy[0]
        if raw_strategy is None or not str(raw_strategy).strip():
            turn.meta["missing_strategy"] = True
        else:
            try:
                turn.strategy = normalize_strategy(str(raw_strategy), "extes")
            except UnknownLabelError:
                turn.meta["unknown_strategy"] = str(raw_strategy)
    return turn


def normalise(value: Any, requested_scene: str, dialogue_id: str = "") -> Parsed:
    """Map a parsed JSON value onto a Dialogue. Raises ParseError when there are no turns at all."""
    obj = _find_dialogue_object(value)
    low = _lower_keys(obj)
    issues: list[str] = []
    content = _first(low, _CONTENT_KEYS)
    if not isinstance(content, list) or not content:
        raise ParseError("no 'content' list of turns")
    turns = [t for j, item in enumerate(content) if (t := _turn(item, j, issues)) is not None]
    if not turns:
        raise ParseError("no usable turns in 'content'")
    scene = _text(_first(low, _SCENE_KEYS))
    if not scene:
        issues.append("scene missing; set to the requested scene")
        scene = requested_scene
    d = Dialogue(
        id=dialogue_id,
        source="extes-build",
        scene=scene,
        description=_text(_first(low, _DESC_KEYS)),
        turns=turns,
    )
    return Parsed(d, issues)


def parse_reply(text: str, requested_scene: str, dialogue_id: str = "") -> Parsed:
    return normalise(extract_json(text), requested_scene, dialogue_id)
