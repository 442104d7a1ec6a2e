"""A study protocol: one YAML file that says everything a study run needs.

Loaded and validated once at start-up (`load_protocol`); afterwards the `Protocol` object is trusted.
Every error names the file, the key and the reason, so a researcher fixes the file in one pass.

    title: ...                      # shown at the top of the page
    consent: |                      # Markdown; nothing is stored before the participant agrees
    instructions: |                 # Markdown, shown with the consent text and above the chat
    arms: [ {name: ..., ...} x 3 ]  # engine arm definitions (extes.models.arms_from_config)
    min_user_turns: 10              # per model, before the rating form opens
    conversations_per_participant: 2
    max_message_chars: 4000
    max_reply_tokens: 256           # cap on every arm's max_new_tokens
    scenario_to_models: false       # true: the picked scenario and description go into the system prompt
    reveal_identities: never        # never | after_rating
    aspects: [ {key: fluency, label: Fluency, question: ...}, ... ]
    crisis: {banner: ..., patterns: {category: [regex, ...], ...}}
    annotation: {judges_per_item: 3, pairwise: true, likert_aspects: [...], likert_scale: [0, 3], dataset: null,
                 enabled: true, judges_see_conversations: false, max_open_per_judge: 1, max_open_total: 100}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# The ExTES human-evaluation aspects; the analysis layer (extes.analysis.io.ASPECTS) accepts these.
ASPECT_KEYS: tuple[str, ...] = ("fluency", "identification", "comforting", "suggestion", "overall")
LIKERT_ASPECTS: tuple[str, ...] = ("Informativeness", "Understanding", "Helpfulness", "Consistency", "Coherence")
REVEAL_OPTIONS: tuple[str, ...] = ("never", "after_rating")
PANES: tuple[str, ...] = ("A", "B", "C")


class ProtocolError(ValueError):
    """A protocol file that cannot be used; the message names the file, the key and the reason."""


@dataclass(frozen=True)
class Aspect:
    key: str
    label: str
    question: str


@dataclass(frozen=True)
class Crisis:
    banner: str
    patterns: dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class AnnotationSettings:
    judges_per_item: int = 3
    pairwise: bool = True
    likert_aspects: tuple[str, ...] = LIKERT_ASPECTS
    likert_scale: tuple[int, int] = (0, 3)
    dataset: str | None = None
    enabled: bool = True  # false: /annotate is off entirely
    judges_see_conversations: bool = False  # true: judges may read participants' conversations
    max_open_per_judge: int = 1  # items one judge may have in progress
    max_open_total: int = 100  # items in progress across all judges


@dataclass(frozen=True)
class Protocol:
    title: str
    consent: str
    instructions: str
    arms: tuple[Any, ...]  # extes.models.Arm
    aspects: tuple[Aspect, ...]
    crisis: Crisis
    min_user_turns: int = 10
    conversations_per_participant: int = 2
    max_message_chars: int = 4000
    max_reply_tokens: int = 256
    scenario_to_models: bool = False
    reveal_identities: str = "never"
    annotation: AnnotationSettings = field(default_factory=AnnotationSettings)
    source: str = "<memory>"

    @property
    def arm_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.arms)

    def arm(self, name: str):
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(name)


_TOP_KEYS = {
    "title", "consent", "instructions", "arms", "aspects", "crisis", "min_user_turns",
    "conversations_per_participant", "max_message_chars", "max_reply_tokens", "scenario_to_models",
    "reveal_identities", "annotation", "description",
}
_REQUIRED = ("title", "consent", "arms", "aspects", "crisis")


def _err(where: str, key: str, reason: str) -> ProtocolError:
    return ProtocolError(f"{where}: {key}: {reason}")


def _text(data: dict, key: str, where: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise _err(where, key, f"expected a non-empty text, got {value!r}")
    return value.strip()


def _int(data: dict, key: str, where: str, default: int, lo: int, hi: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _err(where, key, f"expected a whole number from {lo} to {hi}, got {value!r}")
    return value


def _bool(data: dict, key: str, where: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise _err(where, key, f"expected true or false, got {value!r}")
    return value


def _aspects(raw: Any, where: str) -> tuple[Aspect, ...]:
    if not isinstance(raw, list) or not raw:
        raise _err(where, "aspects", "expected a non-empty list of {key, label, question}")
    out: list[Aspect] = []
    for i, item in enumerate(raw):
        at = f"aspects[{i}]"
        if not isinstance(item, dict):
            raise _err(where, at, f"expected a mapping with key, label and question, got {item!r}")
        unknown = set(item) - {"key", "label", "question"}
        if unknown:
            raise _err(where, at, f"unknown key(s) {', '.join(sorted(unknown))}; allowed: key, label, question")
        key = str(item.get("key", "")).strip().lower()
        if key not in ASPECT_KEYS:
            raise _err(where, f"{at}.key", f"{item.get('key')!r} is not one of {', '.join(ASPECT_KEYS)}")
        if any(a.key == key for a in out):
            raise _err(where, f"{at}.key", f"aspect {key!r} is listed twice")
        label = _text(item, "label", f"{where}: {at}", key.capitalize())
        question = _text(item, "question", f"{where}: {at}")
        out.append(Aspect(key, label, question))
    return tuple(out)


def _crisis(raw: Any, where: str) -> Crisis:
    if not isinstance(raw, dict):
        raise _err(where, "crisis", "expected a mapping with banner and patterns")
    unknown = set(raw) - {"banner", "patterns"}
    if unknown:
        raise _err(where, "crisis", f"unknown key(s) {', '.join(sorted(unknown))}; allowed: banner, patterns")
    banner = _text(raw, "banner", f"{where}: crisis")
    pats = raw.get("patterns")
    if not isinstance(pats, dict) or not pats:
        raise _err(where, "crisis.patterns", "expected a mapping of category -> list of regular expressions")
    patterns: dict[str, tuple[str, ...]] = {}
    for category, items in pats.items():
        at = f"crisis.patterns.{category}"
        if isinstance(items, str):
            items = [items]
        if not isinstance(items, list) or not items:
            raise _err(where, at, "expected a non-empty list of regular expressions")
        for j, pattern in enumerate(items):
            if not isinstance(pattern, str) or not pattern.strip():
                raise _err(where, f"{at}[{j}]", f"expected a regular expression, got {pattern!r}")
            try:
                re.compile(pattern, re.IGNORECASE)
            except re.error as exc:
                raise _err(where, f"{at}[{j}]", f"invalid regular expression {pattern!r}: {exc}") from None
        patterns[str(category)] = tuple(items)
    return Crisis(banner, patterns)


def _annotation(raw: Any, where: str) -> AnnotationSettings:
    if raw is None:
        return AnnotationSettings()
    if not isinstance(raw, dict):
        raise _err(where, "annotation", "expected a mapping")
    allowed = {"judges_per_item", "pairwise", "likert_aspects", "likert_scale", "dataset", "enabled",
               "judges_see_conversations", "max_open_per_judge", "max_open_total"}
    unknown = set(raw) - allowed
    if unknown:
        raise _err(where, "annotation", f"unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed))}")
    judges = _int(raw, "judges_per_item", f"{where}: annotation", 3, 1, 50)
    pairwise = _bool(raw, "pairwise", f"{where}: annotation", True)
    likert = raw.get("likert_aspects", list(LIKERT_ASPECTS))
    if not isinstance(likert, list) or not likert or not all(isinstance(x, str) and x.strip() for x in likert):
        raise _err(where, "annotation.likert_aspects", f"expected a non-empty list of names, got {likert!r}")
    scale = raw.get("likert_scale", [0, 3])
    if (not isinstance(scale, list) or len(scale) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) for x in scale)
            or scale[0] >= scale[1]):
        raise _err(where, "annotation.likert_scale", f"expected [low, high] whole numbers with low < high, got {scale!r}")
    dataset = raw.get("dataset")
    if dataset is not None and (not isinstance(dataset, str) or not dataset.strip()):
        raise _err(where, "annotation.dataset", f"expected a path or null, got {dataset!r}")
    return AnnotationSettings(
        judges, pairwise, tuple(x.strip() for x in likert), (scale[0], scale[1]), dataset,
        enabled=_bool(raw, "enabled", f"{where}: annotation", True),
        judges_see_conversations=_bool(raw, "judges_see_conversations", f"{where}: annotation", False),
        max_open_per_judge=_int(raw, "max_open_per_judge", f"{where}: annotation", 1, 1, 100),
        max_open_total=_int(raw, "max_open_total", f"{where}: annotation", 100, 1, 100_000),
    )


def protocol_from_dict(data: Any, where: str = "<protocol>", base_dir: Path | None = None,
                       build_arms: bool = True) -> Protocol:
    """Validate a parsed protocol mapping. `build_arms=False` keeps the arm dicts unvalidated (for tools
    that only need the text parts and must not touch model files)."""
    if not isinstance(data, dict):
        raise ProtocolError(f"{where}: expected a mapping at the top level, got {type(data).__name__}")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ProtocolError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_TOP_KEYS))}")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ProtocolError(f"{where}: missing required key(s) {', '.join(missing)}")
    title = _text(data, "title", where)
    consent = _text(data, "consent", where)
    instructions = data.get("instructions") or ""
    if not isinstance(instructions, str):
        raise _err(where, "instructions", f"expected a text, got {instructions!r}")
    raw_arms = data.get("arms")
    if not isinstance(raw_arms, list) or len(raw_arms) != 3:
        n = len(raw_arms) if isinstance(raw_arms, list) else type(raw_arms).__name__
        raise _err(where, "arms", f"expected a list of exactly 3 arms (one per pane), got {n}")
    for i, a in enumerate(raw_arms):
        if not isinstance(a, dict) or not str(a.get("name", "")).strip():
            raise _err(where, f"arms[{i}]", "expected a mapping with at least a name")
    names = [str(a["name"]).strip() for a in raw_arms]
    if len(set(names)) != 3:
        raise _err(where, "arms", f"arm names must be distinct, got {names}")
    max_reply_tokens = _int(data, "max_reply_tokens", where, 256, 1, 8192)
    if build_arms:
        from extes.models.arms import arms_from_config

        try:
            # Relative paths: the working directory first, then base_dir (the repository root for
            # eval_protocol/*.yaml), so `python app.py` works from anywhere.
            arms = arms_from_config(raw_arms, where, base_dir=base_dir)
        except (ValueError, FileNotFoundError) as exc:
            raise ProtocolError(str(exc) if where in str(exc) else f"{where}: arms: {exc}") from None
        arms = [_cap_reply(a, max_reply_tokens) for a in arms]
    else:
        arms = raw_arms
    reveal = data.get("reveal_identities", "never")
    if reveal not in REVEAL_OPTIONS:
        raise _err(where, "reveal_identities", f"expected one of {', '.join(REVEAL_OPTIONS)}, got {reveal!r}")
    return Protocol(
        title=title,
        consent=consent,
        instructions=instructions.strip(),
        arms=tuple(arms),
        aspects=_aspects(data.get("aspects"), where),
        crisis=_crisis(data.get("crisis"), where),
        min_user_turns=_int(data, "min_user_turns", where, 10, 1, 200),
        conversations_per_participant=_int(data, "conversations_per_participant", where, 2, 1, 50),
        max_message_chars=_int(data, "max_message_chars", where, 4000, 1, 100_000),
        max_reply_tokens=max_reply_tokens,
        scenario_to_models=_bool(data, "scenario_to_models", where, False),
        reveal_identities=reveal,
        annotation=_annotation(data.get("annotation"), where),
        source=where,
    )


def _cap_reply(arm: Any, cap: int) -> Any:
    gen = getattr(arm, "generation", None)
    if gen is not None and getattr(gen, "max_new_tokens", 0) > cap:
        return replace(arm, generation=replace(gen, max_new_tokens=cap))
    return arm


def load_protocol(path: str | Path, build_arms: bool = True) -> Protocol:
    """Read and validate a protocol YAML file; raises ProtocolError / FileNotFoundError naming the file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: protocol file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ProtocolError(f"{path}: not valid YAML: {exc}") from None
    return protocol_from_dict(data, where=str(path), base_dir=path.resolve().parent.parent, build_arms=build_arms)
