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
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from extes.analysis.exclusions import FLAGS
from extes.config import ConfigModel, Flag, Text, null_is, validate_config, whole
from extes.models.arms import Arm, arms_from_config
from extes.study.design import Design, pane_names
from extes.study.recruitment import RecruitmentSettings
from extes.study.screening import DEFAULT_MESSAGE
from extes.taxonomy import ASPECT_KEYS, Aspect  # noqa: F401 (ASPECT_KEYS re-exported: defined once there)

log = logging.getLogger(__name__)

LIKERT_ASPECTS: tuple[str, ...] = ("Informativeness", "Understanding", "Helpfulness", "Consistency", "Coherence")
PANES: tuple[str, ...] = ("A", "B", "C")


class ProtocolError(ValueError):
    """A protocol file that cannot be used; the message names the file, the key and the reason."""


class _ArmsError(Exception):
    """An arm error whose message already names the file (passed through pydantic untouched)."""


def _compiles(pattern: str) -> str:
    try:
        re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
    return pattern


Pattern = Annotated[Text, AfterValidator(_compiles)]
# one regular expression or a non-empty list of them
Patterns = Annotated[tuple[Pattern, ...], Field(min_length=1),
                     BeforeValidator(lambda value: [value] if isinstance(value, str) else value)]


class Crisis(ConfigModel):
    banner: Text
    patterns: Annotated[dict[str, Patterns], Field(min_length=1)]  # category -> regular expressions


def _ordered(scale: tuple[int, int]) -> tuple[int, int]:
    if scale[0] >= scale[1]:
        raise ValueError(f"expected [low, high] with low < high, got {list(scale)}")
    return scale


class AnnotationSettings(ConfigModel):
    judges_per_item: whole(1, 50) = 3
    pairwise: Flag = True
    likert_aspects: Annotated[tuple[Text, ...], Field(min_length=1)] = LIKERT_ASPECTS
    likert_scale: Annotated[tuple[whole(-1000, 1000), whole(-1000, 1000)], AfterValidator(_ordered)] = (0, 3)
    dataset: Text | None = None  # a dataset file of items to judge
    enabled: Flag = True  # false: /annotate is off entirely
    judges_see_conversations: Flag = False  # true: judges may read participants' conversations
    max_open_per_judge: whole(1, 100) = 1  # items one judge may have in progress
    max_open_total: whole(1, 100_000) = 100  # items in progress across all judges


INSTRUCTED_LABEL = "For this row, please choose Tie"  # the attention row of the rating form
INSTRUCTED_ANSWER = "tie"
# which protocol option computes each flag (extes.analysis.exclusions.FLAGS)
FLAG_OPTIONS: dict[str, str] = {
    "failed_attention": "instructed_response", "short_messages": "min_message_chars",
    "fast_rating": "min_rating_seconds", "repeated_message": "flag_repeated_messages",
    "straight_lined": "flag_straight_lining",
}
Flagname = Literal[FLAGS]  # type: ignore[valid-type] - the tuple's names, one Literal


class AttentionSettings(ConfigModel):
    """The protocol's ``attention:`` section: checks that flag a conversation at rating time (all off by
    default) and the exclusion rule applied at analysis (`extes export/analyze --exclusions protocol`)."""

    instructed_response: Flag = False  # a row "For this row, please choose Tie" in the rating form
    min_message_chars: whole(0, 100_000) = 0  # flag short_messages below this (0: off)
    min_rating_seconds: whole(0, 86_400) = 0  # flag fast_rating below this (0: off)
    flag_repeated_messages: Flag = False  # flag repeated_message: the same text in every turn
    flag_straight_lining: Flag = False  # flag straight_lined: every answer the same option
    # flags whose conversations the analysis leaves out (each once)
    exclude: Annotated[tuple[Flagname, ...], null_is(()), AfterValidator(lambda v: tuple(dict.fromkeys(v)))] = ()

    @model_validator(mode="after")
    def _rule_needs_checks(self) -> AttentionSettings:
        off = [f"{f} needs {FLAG_OPTIONS[f]}" for f in self.exclude if not getattr(self, FLAG_OPTIONS[f])]
        if off:
            raise ValueError("exclude names a check that is off: " + "; ".join(off))
        return self

    def enabled(self) -> tuple[str, ...]:
        """The flags this protocol computes."""
        return tuple(f for f in FLAGS if getattr(self, FLAG_OPTIONS[f]))


class ScreeningSettings(ConfigModel):
    """The protocol's ``screening:`` section: how replies are screened before they are shown
    (`extes.study.screening`). Patterns null: the built-in self-harm encouragement patterns."""

    patterns: Annotated[dict[str, Patterns], Field(min_length=1)] | None = None
    toxicity_classifier: Text | None = None  # a local Hugging Face classifier folder (as `extes toxicity`)
    toxicity_threshold: Annotated[float, Field(strict=True, gt=0, le=1)] = 0.5  # a probability
    toxicity_label_map: dict[str, str] = {}
    message: Text = DEFAULT_MESSAGE  # shown instead of a screened-out reply, above the crisis text


class Protocol(ConfigModel):
    title: Text
    consent: Text
    instructions: Annotated[str, StringConstraints(strict=True, strip_whitespace=True), null_is("")] = ""
    max_reply_tokens: whole(1, 8192) = 256  # before arms: every arm's max_new_tokens
    # k >= 2 arms: extes.models.Arm once built (the mappings as given when built without arms)
    arms: Annotated[tuple[dict[str, Any], ...], Field(min_length=2)]
    panes: Literal[2, 3] = 3  # arms side by side; at most as many as arms (extes.study.design)
    assignment: Literal["balanced", "adaptive"] = "balanced"  # extes.study.design
    aspects: Annotated[tuple[Aspect, ...], Field(min_length=1)]
    crisis: Crisis
    min_user_turns: whole(1, 200) = 10
    conversations_per_participant: whole(1, 50) = 2
    max_message_chars: whole(1, 100_000) = 4000
    scenario_to_models: Flag = False
    reveal_identities: Literal["never", "after_rating"] = "never"
    annotation: Annotated[AnnotationSettings, null_is({})] = AnnotationSettings()
    recruitment: RecruitmentSettings | None = None  # a recruitment platform (Prolific, MTurk-style links)
    attention: Annotated[AttentionSettings, null_is({})] = AttentionSettings()
    screening: Annotated[ScreeningSettings, null_is({})] = ScreeningSettings()
    description: Any = None  # accepted and ignored (a note for the researchers)
    _source: str = PrivateAttr("<memory>")

    @property
    def source(self) -> str:
        """Where the protocol was read from (the file, or "<memory>")."""
        return self._source

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

    def arm(self, name: str) -> Arm:
        """The built arm called `name` (the study loads its protocol with the arms built)."""
        for a in self.arms:
            if isinstance(a, Arm) and a.name == name:
                return a
        raise KeyError(name)

    @field_validator("aspects")
    @classmethod
    def _distinct_aspects(cls, value: tuple[Aspect, ...]) -> tuple[Aspect, ...]:
        seen: set[str] = set()
        for i, a in enumerate(value):
            if a.key in seen:
                raise ValueError(f"aspect {a.key!r} is listed twice (aspects[{i}].key)")
            seen.add(a.key)
        return value

    @field_validator("arms")
    @classmethod
    def _arms(cls, value: tuple[dict[str, Any], ...], info: ValidationInfo) -> tuple[Any, ...]:
        for i, a in enumerate(value):
            if not str(a.get("name", "")).strip():
                raise ValueError(f"[{i}]: expected a mapping with at least a name")
        names = [str(a["name"]).strip() for a in value]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be distinct, got {names}")
        ctx = info.context or {}
        if not ctx.get("build_arms", True):
            return value
        where = ctx.get("where", "<protocol>")
        try:
            # Relative paths: the working directory first, then base_dir (the repository root for
            # eval_protocol/*.yaml), so `python app.py` works from anywhere.
            arms = arms_from_config(list(value), where, base_dir=ctx.get("base_dir"))
        except (ValueError, FileNotFoundError) as exc:
            raise _ArmsError(str(exc) if where in str(exc) else f"{where}: arms: {exc}") from None
        length = info.data.get("max_reply_tokens", 256)
        for raw in value:
            own = (raw.get("generation") or {}).get("max_new_tokens") if isinstance(raw.get("generation"), dict) else None
            if own is not None and own != length:
                log.warning("%s: arm %r: generation.max_new_tokens %s is replaced by the protocol's max_reply_tokens "
                            "%s (every arm replies at the same length in a study)", where, raw["name"], own, length)
        return tuple(_reply_length(a, length) for a in arms)

    @model_validator(mode="after")
    def _panes_fit_the_arms(self) -> Protocol:
        if len(self.arms) < self.panes:
            raise ValueError(f"panes: {self.panes} panes need at least {self.panes} arms, got {len(self.arms)} "
                             f"(the paper's design: exactly 3 arms in 3 panes; with 2 arms, set panes: 2)")
        return self


def _reply_length(arm: Arm, length: int) -> Arm:
    """Every arm of a study writes at most the protocol's `max_reply_tokens`, the same for all: a pane whose
    replies are cut shorter (or never cut) would be easy to recognise."""
    if arm.generation.max_new_tokens != length:
        return replace(arm, generation=replace(arm.generation, max_new_tokens=length))
    return arm


def protocol_from_dict(data: Any, where: str = "<protocol>", base_dir: Path | None = None,
                       build_arms: bool = True) -> Protocol:
    """Validate a parsed protocol mapping. `build_arms=False` keeps the arm dicts unvalidated (for tools
    that only need the text parts and must not touch model files)."""
    try:
        protocol = validate_config(data, Protocol, where, error=ProtocolError,
                                   context={"where": where, "base_dir": base_dir, "build_arms": build_arms})
    except _ArmsError as exc:
        raise ProtocolError(str(exc)) from None
    protocol._source = where
    return protocol


def load_protocol(path: str | Path, build_arms: bool = True) -> Protocol:
    """Read and validate a protocol YAML file; raises ProtocolError / FileNotFoundError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: protocol file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ProtocolError(f"{path}: not valid YAML: {exc}") from None
    return protocol_from_dict(data, where=str(path), base_dir=path.resolve().parent.parent, build_arms=build_arms)
