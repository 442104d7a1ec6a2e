"""A study protocol: one YAML file that says everything a study run needs.

Loaded and validated once at start-up (`load_protocol`); afterwards the `Protocol` object is trusted.
The file is read into pydantic models on `extes.config` (`ConfigModel`, `validate_config`); every error
names the file, the key and the reason, so a researcher fixes the file in one pass.

    title: ...                      # shown at the top of the page
    consent: |                      # Markdown; nothing is stored before the participant agrees
    instructions: |                 # Markdown, shown with the consent text and above the chat
    arms: [ {name: ..., ...} x k ]  # k >= 2 engine arm definitions (extes.models.arms_from_config)
    panes: 3                        # 2 or 3 arms side by side (<= k); 3 arms in 3 panes is the paper's design
    assignment: balanced            # balanced | adaptive: which arms and order each conversation gets
    min_user_turns: 10              # per model, before the rating form opens
    conversations_per_participant: 2
    max_message_chars: 4000
    max_reply_tokens: 256           # THE reply length: every arm's max_new_tokens in this study
    scenario_to_models: false       # true: the picked scenario and description go into the system prompt
    reveal_identities: never        # never | after_rating
    aspects: [ {key: fluency, label: Fluency, question: ...}, ... ]
    crisis: {banner: ..., patterns: {category: [regex, ...], ...}}
    annotation: {judges_per_item: 3, pairwise: true, likert_aspects: [...], likert_scale: [0, 3], dataset: null,
                 enabled: true, judges_see_conversations: false, max_open_per_judge: 1, max_open_total: 100}
    recruitment: {platform: prolific, completion_code: C1A2B3, screened_out_code: null, keep_raw_id: false,
                  redirect: true, participant_param/study_param/session_param/completion_url: preset}
    screening: {patterns: null, toxicity_classifier: null, toxicity_threshold: 0.5, toxicity_label_map: {},
                message: ...}     # replies screened before they are shown (extes.study.screening)
    attention: {instructed_response: false, min_message_chars: 0, min_rating_seconds: 0,
                flag_repeated_messages: false, flag_straight_lining: false, exclude: [flag, ...]}
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, ValidationInfo, field_validator, model_validator

from extes.analysis.exclusions import FLAGS
from extes.config import ConfigModel, validate_config
from extes.study.design import ASSIGNMENTS, PANE_COUNTS, Design, pane_names
from extes.study.recruitment import RecruitmentSettings
from extes.study.screening import DEFAULT_MESSAGE
from extes.taxonomy import ASPECT_KEYS, Aspect  # noqa: F401 (ASPECT_KEYS re-exported: defined once there)

log = logging.getLogger(__name__)

LIKERT_ASPECTS: tuple[str, ...] = ("Informativeness", "Understanding", "Helpfulness", "Consistency", "Coherence")
REVEAL_OPTIONS: tuple[str, ...] = ("never", "after_rating")
PANES: tuple[str, ...] = ("A", "B", "C")


class ProtocolError(ValueError):
    """A protocol file that cannot be used; the message names the file, the key and the reason."""


class _ArmsError(Exception):
    """An arm error whose message already names the file (passed through pydantic untouched)."""


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty text, got {value!r}")
    return value.strip()


Text = Annotated[str, BeforeValidator(_text)]


def _whole(lo: int, hi: int):
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"expected a whole number from {lo} to {hi}, got {value!r}")
        return value
    return BeforeValidator(check)


def _probability(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError(f"expected a probability in (0, 1], got {value!r}")
    return float(value)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


Flag = Annotated[bool, BeforeValidator(_flag)]


def _allowed(data: Any, allowed: tuple[str, ...], what: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"expected a mapping with {what}, got {data!r}")
    unknown = set(data) - set(allowed)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(sorted(map(str, unknown)))}; allowed: {', '.join(allowed)}")
    return data


class _OptionalSection(ConfigModel):
    """A protocol section that may be left out (or null): then every key takes its default."""

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, data: Any) -> Any:
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ValueError("expected a mapping")
        return _allowed(data, tuple(sorted(cls.model_fields)), "")


def _pattern(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a regular expression, got {value!r}")
    try:
        re.compile(value, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {value!r}: {exc}") from None
    return value


def _pattern_list(value: Any) -> Any:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ValueError("expected a non-empty list of regular expressions")
    return value


Patterns = Annotated[tuple[Annotated[str, BeforeValidator(_pattern)], ...], BeforeValidator(_pattern_list)]


class Crisis(ConfigModel):
    banner: Text
    patterns: dict[str, Patterns]

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, data: Any) -> Any:
        return _allowed(data, ("banner", "patterns"), "banner and patterns")

    @field_validator("patterns", mode="before")
    @classmethod
    def _patterns(cls, value: Any) -> Any:
        if not isinstance(value, dict) or not value:
            raise ValueError("expected a mapping of category -> list of regular expressions")
        return {str(k): v for k, v in value.items()}


def _names(value: Any) -> Any:
    if not isinstance(value, list) or not value or not all(isinstance(x, str) and x.strip() for x in value):
        raise ValueError(f"expected a non-empty list of names, got {value!r}")
    return tuple(x.strip() for x in value)


def _scale(value: Any) -> Any:
    if (not isinstance(value, list | tuple) or len(value) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in value) or value[0] >= value[1]):
        raise ValueError(f"expected [low, high] whole numbers with low < high, got {list(value) if isinstance(value, tuple) else value!r}")
    return tuple(value)


def _dataset(value: Any) -> Any:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError(f"expected a path or null, got {value!r}")
    return value


class AnnotationSettings(_OptionalSection):
    judges_per_item: Annotated[int, _whole(1, 50)] = 3
    pairwise: Flag = True
    likert_aspects: Annotated[tuple[str, ...], BeforeValidator(_names)] = LIKERT_ASPECTS
    likert_scale: Annotated[tuple[int, int], BeforeValidator(_scale)] = (0, 3)
    dataset: Annotated[str | None, BeforeValidator(_dataset)] = None
    enabled: Flag = True  # false: /annotate is off entirely
    judges_see_conversations: Flag = False  # true: judges may read participants' conversations
    max_open_per_judge: Annotated[int, _whole(1, 100)] = 1  # items one judge may have in progress
    max_open_total: Annotated[int, _whole(1, 100_000)] = 100  # items in progress across all judges



INSTRUCTED_LABEL = "For this row, please choose Tie"  # the attention row of the rating form
INSTRUCTED_ANSWER = "tie"
# which protocol option computes each flag (extes.analysis.exclusions.FLAGS)
FLAG_OPTIONS: dict[str, str] = {
    "failed_attention": "instructed_response", "short_messages": "min_message_chars",
    "fast_rating": "min_rating_seconds", "repeated_message": "flag_repeated_messages",
    "straight_lined": "flag_straight_lining",
}


class AttentionSettings(_OptionalSection):
    """The protocol's ``attention:`` section: checks that flag a conversation at rating time (all off by
    default) and the exclusion rule applied at analysis (`extes export/analyze --exclusions protocol`)."""

    instructed_response: Flag = False  # a row "For this row, please choose Tie" in the rating form
    min_message_chars: Annotated[int, _whole(0, 100_000)] = 0  # flag short_messages below this (0: off)
    min_rating_seconds: Annotated[int, _whole(0, 86_400)] = 0  # flag fast_rating below this (0: off)
    flag_repeated_messages: Flag = False  # flag repeated_message: the same text in every turn
    flag_straight_lining: Flag = False  # flag straight_lined: every answer the same option
    exclude: tuple[str, ...] = ()  # flags whose conversations the analysis leaves out


    @field_validator("exclude", mode="before")
    @classmethod
    def _exclude(cls, value: Any) -> Any:
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise ValueError(f"expected a list of flags ({', '.join(FLAGS)}), got {value!r}")
        unknown = [x for x in value if x not in FLAGS]
        if unknown:
            raise ValueError(f"unknown flag(s) {', '.join(unknown)}; known: {', '.join(FLAGS)}")
        return tuple(dict.fromkeys(value))

    @model_validator(mode="after")
    def _rule_needs_checks(self) -> AttentionSettings:
        off = [f"{f} needs {FLAG_OPTIONS[f]}" for f in self.exclude if not getattr(self, FLAG_OPTIONS[f])]
        if off:
            raise ValueError("exclude names a check that is off: " + "; ".join(off))
        return self

    def enabled(self) -> tuple[str, ...]:
        """The flags this protocol computes."""
        return tuple(f for f in FLAGS if getattr(self, FLAG_OPTIONS[f]))


class ScreeningSettings(_OptionalSection):
    """The protocol's ``screening:`` section: how replies are screened before they are shown
    (`extes.study.screening`). Patterns null: the built-in self-harm encouragement patterns."""

    patterns: dict[str, Patterns] | None = None
    toxicity_classifier: str | None = None  # a local Hugging Face classifier folder (as `extes toxicity`)
    toxicity_threshold: Annotated[float, BeforeValidator(_probability)] = 0.5
    toxicity_label_map: dict[str, str] = {}
    message: Text = DEFAULT_MESSAGE  # shown instead of a screened-out reply, above the crisis text


_TOP_KEYS = (
    "title", "consent", "instructions", "arms", "aspects", "crisis", "min_user_turns",
    "conversations_per_participant", "max_message_chars", "max_reply_tokens", "scenario_to_models",
    "reveal_identities", "annotation", "description", "recruitment", "attention", "panes", "assignment",
    "screening",
)
_REQUIRED = ("title", "consent", "arms", "aspects", "crisis")


class Protocol(ConfigModel):
    title: Text
    consent: Text
    instructions: str = ""
    max_reply_tokens: Annotated[int, _whole(1, 8192)] = 256  # before arms: every arm's max_new_tokens
    arms: tuple[Any, ...]  # extes.models.Arm (dicts when built without arms)
    panes: int = 3  # after arms: at most as many panes as arms (extes.study.design)
    assignment: str = "balanced"  # balanced | adaptive (extes.study.design)
    aspects: tuple[Aspect, ...]
    crisis: Crisis
    min_user_turns: Annotated[int, _whole(1, 200)] = 10
    conversations_per_participant: Annotated[int, _whole(1, 50)] = 2
    max_message_chars: Annotated[int, _whole(1, 100_000)] = 4000
    scenario_to_models: Flag = False
    reveal_identities: str = "never"
    annotation: AnnotationSettings = AnnotationSettings()
    recruitment: RecruitmentSettings | None = None  # a recruitment platform (Prolific, MTurk-style links)
    attention: AttentionSettings = AttentionSettings()
    screening: ScreeningSettings = ScreeningSettings()
    description: Any = None  # accepted and ignored (a note for the researchers)
    source: str = "<memory>"

    @property
    def pane_names(self) -> tuple[str, ...]:
        """The panes on screen: ("A", "B") or ("A", "B", "C")."""
        return pane_names(self.panes)

    @property
    def design(self) -> Design:
        """The arm-to-pane design: every arm subset and order of `panes` of the k arms."""
        return Design(len(self.arms), self.panes)

    @property
    def arm_names(self) -> tuple[str, ...]:
        return tuple(a.name if not isinstance(a, dict) else str(a["name"]).strip() for a in self.arms)

    def arm(self, name: str):
        for a in self.arms:
            if (a.name if not isinstance(a, dict) else a.get("name")) == name:
                return a
        raise KeyError(name)

    @model_validator(mode="before")
    @classmethod
    def _top(cls, data: Any) -> Any:
        unknown = set(data) - set(_TOP_KEYS)
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(sorted(map(str, unknown)))}; allowed: {', '.join(sorted(_TOP_KEYS))}")
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise ValueError(f"missing required key(s) {', '.join(missing)}")
        data = dict(data)
        if data.get("instructions") is None:
            data["instructions"] = ""
        return data

    @field_validator("instructions", mode="before")
    @classmethod
    def _instructions(cls, value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected a text, got {value!r}")
        return value.strip()

    @field_validator("aspects", mode="before")
    @classmethod
    def _aspects(cls, value: Any) -> Any:
        if not isinstance(value, list) or not value:
            raise ValueError("expected a non-empty list of {key, label, question}")
        return value

    @field_validator("aspects")
    @classmethod
    def _distinct_aspects(cls, value: tuple[Aspect, ...]) -> tuple[Aspect, ...]:
        seen: set[str] = set()
        for i, a in enumerate(value):
            if a.key in seen:
                raise ValueError(f"aspect {a.key!r} is listed twice (aspects[{i}].key)")
            seen.add(a.key)
        return value

    @field_validator("crisis", mode="before")
    @classmethod
    def _crisis(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError("expected a mapping with banner and patterns")
        return value

    @field_validator("reveal_identities", mode="before")
    @classmethod
    def _reveal(cls, value: Any) -> str:
        if value not in REVEAL_OPTIONS:
            raise ValueError(f"expected one of {', '.join(REVEAL_OPTIONS)}, got {value!r}")
        return value

    @field_validator("panes", mode="before")
    @classmethod
    def _panes(cls, value: Any, info: ValidationInfo) -> int:
        if isinstance(value, bool) or value not in PANE_COUNTS:
            raise ValueError(f"expected {' or '.join(map(str, PANE_COUNTS))} (arms shown side by side), got {value!r}")
        arms = info.data.get("arms")
        if arms is not None and len(arms) < value:
            raise ValueError(f"{value} panes need at least {value} arms, got {len(arms)} (the paper's design: "
                             f"exactly 3 arms in 3 panes; with 2 arms, set panes: 2)")
        return value

    @field_validator("assignment", mode="before")
    @classmethod
    def _assignment(cls, value: Any) -> str:
        if value not in ASSIGNMENTS:
            raise ValueError(f"expected one of {', '.join(ASSIGNMENTS)}, got {value!r}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _default_panes(cls, data: Any) -> Any:
        """`panes` is checked against the arms only when given: then a default of 3 with 2 arms says so."""
        if isinstance(data, dict) and "panes" not in data and isinstance(data.get("arms"), list):
            data = {**data, "panes": 3}
        return data

    @field_validator("arms", mode="before")
    @classmethod
    def _arms(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, list) or len(value) < 2:
            n = len(value) if isinstance(value, list) else type(value).__name__
            raise ValueError(f"expected a list of at least 2 arms (3 for the paper's design), got {n}")
        for i, a in enumerate(value):
            if not isinstance(a, dict) or not str(a.get("name", "")).strip():
                raise ValueError(f"[{i}]: expected a mapping with at least a name")
        names = [str(a["name"]).strip() for a in value]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be distinct, got {names}")
        ctx = info.context or {}
        if not ctx.get("build_arms", True):
            return tuple(value)
        from extes.models.arms import arms_from_config

        where = ctx.get("where", "<protocol>")
        try:
            # Relative paths: the working directory first, then base_dir (the repository root for
            # eval_protocol/*.yaml), so `python app.py` works from anywhere.
            arms = arms_from_config(value, where, base_dir=ctx.get("base_dir"))
        except (ValueError, FileNotFoundError) as exc:
            raise _ArmsError(str(exc) if where in str(exc) else f"{where}: arms: {exc}") from None
        length = info.data.get("max_reply_tokens", 256)
        for raw in value:
            own = (raw.get("generation") or {}).get("max_new_tokens") if isinstance(raw.get("generation"), dict) else None
            if own is not None and own != length:
                log.warning("%s: arm %r: generation.max_new_tokens %s is replaced by the protocol's max_reply_tokens "
                            "%s (every arm replies at the same length in a study)", where, raw["name"], own, length)
        return tuple(_reply_length(a, length) for a in arms)


def _reply_length(arm: Any, length: int) -> Any:
    """Every arm of a study writes at most the protocol's `max_reply_tokens`, the same for all: a pane whose
    replies are cut shorter (or never cut) would be easy to recognise."""
    gen = getattr(arm, "generation", None)
    if gen is not None and getattr(gen, "max_new_tokens", None) != length:
        return replace(arm, generation=replace(gen, max_new_tokens=length))
    return arm


def protocol_from_dict(data: Any, where: str = "<protocol>", base_dir: Path | None = None,
                       build_arms: bool = True) -> Protocol:
    """Validate a parsed protocol mapping. `build_arms=False` keeps the arm dicts unvalidated (for tools
    that only need the text parts and must not touch model files)."""
    if isinstance(data, dict) and "source" in data:
        raise ProtocolError(f"{where}: unknown key(s) source; allowed: {', '.join(sorted(_TOP_KEYS))}")
    try:
        protocol = validate_config(data, Protocol, where, error=ProtocolError,
                                   context={"where": where, "base_dir": base_dir, "build_arms": build_arms})
    except _ArmsError as exc:
        raise ProtocolError(str(exc)) from None
    return protocol.model_copy(update={"source": where})


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
