"""Arms: named chat models as the study sees them, declared in YAML and validated once at load.

An arms YAML looks like

    arms:
      - name: base
      - name: seeds-lora
        adapter: results/adapters/seeds-lora
      - name: gpt
        backend: openai
        base_url: http://gpu-box:8000/v1
        model: seeds-lora
        generation: {temperature: 0.7, max_new_tokens: 128}

A study protocol YAML with an `arms:` key (a list like the above, or the path of an arms YAML) is
accepted as well. See docs/models.md for every key.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import asdict, field, fields
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, Field, ValidationInfo, model_validator

from extes.base.embedded import EMBEDDED_NAME, checkpoint_dir
from extes.config import Flag, Text, config_dataclass, null_is, read_yaml, validate_config
from extes.dialogue import DEFAULT_SYSTEM_PROMPT

Backend = Literal["local", "openai"]
Dtype = Literal["auto", "float32", "bfloat16"]  # local arms' weight precision; auto: bf16 where safe and supported
BACKENDS: tuple[str, ...] = get_args(Backend)
DTYPES: tuple[str, ...] = get_args(Dtype)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")


class ArmConfigError(ValueError):
    """An invalid arms declaration; the message names the file, the arm and the reason."""


Number = Annotated[float, Field(strict=True)]  # an int or a float, not a bool or a text


@config_dataclass
class GenerationSettings:
    """Types and `Field` constraints check the values; extes.config words the errors."""

    max_new_tokens: Annotated[int, Field(ge=1)] = 128
    temperature: Annotated[Number, Field(ge=0)] = 0.7  # 0 means greedy
    top_p: Annotated[Number, Field(gt=0, le=1)] = 0.9
    repetition_penalty: Annotated[Number, Field(gt=0)] = 1.1  # 1.0 means no penalty
    seed: Annotated[int, Field(strict=True)] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: str = "generation") -> GenerationSettings:
        return cls().updated(d or {}, where)

    def updated(self, override: dict[str, Any] | None, where: str = "settings") -> GenerationSettings:
        """A copy with `override` applied, each value checked; unknown keys are an error."""
        if not override:
            return self
        if not isinstance(override, dict):
            raise ArmConfigError(f"{where}: expected a mapping of generation settings, got {type(override).__name__}")
        return validate_config({**self.to_dict(), **override}, GenerationSettings, where, error=ArmConfigError)


def _name(name: str | None) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"name {name!r} must be 1-64 characters of letters, digits, '_', '-', '.', ':'")
    return name


def _http_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"base_url must be an http(s) URL, got {url!r}")
    return url


@config_dataclass
class Arm:
    """One arm. Constructed in code, only types and values are checked; read from YAML (`arms_from_config`,
    `load_arms`), a local arm's base and adapter are also resolved on disk and checked against each other."""

    name: Annotated[str, Field(strict=True), AfterValidator(_name)]
    backend: Backend = "local"
    base: Text = EMBEDDED_NAME  # the embedded model, a hub id or a checkpoint folder
    adapter: Text | None = None  # an adapter folder
    system_prompt: Annotated[str, Field(strict=True)] | None = DEFAULT_SYSTEM_PROMPT
    generation: Annotated[GenerationSettings, null_is({})] = field(default_factory=GenerationSettings)
    # not given (or null): a local arm takes it from its adapter's training config, else false
    strategies: Annotated[Flag, null_is(False)] = False
    base_url: Annotated[str, Field(strict=True), AfterValidator(_http_url)] | None = None
    model: str | None = None
    api_key_env: Text = "OPENAI_API_KEY"  # the environment variable holding the key
    # openai backend only: seconds per request and retries (with backoff) before the first token.
    timeout_s: Annotated[Number, Field(ge=0)] = 60.0
    max_retries: Annotated[int, Field(strict=True, ge=0)] = 3
    # local arms: precision of the base weights (the residual stream, attention, KV cache and LoRA stay fp32).
    dtype: Dtype = "auto"

    @model_validator(mode="wrap")
    @classmethod
    def _whole_arm(cls, data: Any, handler: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict) and "name" not in data:
            _name(None)  # the wording users already get for a missing name
        arm = handler(data)
        arm._check_backend_keys()
        if info.context is None or not isinstance(data, dict):
            return arm  # built in code: trusted paths
        if arm.backend == "openai":
            return dataclasses.replace(arm, model=arm.model.strip())
        return _resolve_local(arm, data, info.context.get("base_dir"))

    def _check_backend_keys(self) -> None:
        if self.backend == "openai":
            if self.adapter is not None:
                raise ValueError("adapter is for local arms; an openai arm names its served model with `model:`")
            if not isinstance(self.model, str) or not self.model.strip():
                raise ValueError("an openai arm needs `model:` (the model name the endpoint serves)")
            return
        for key in ("base_url", "model"):
            if getattr(self, key) is not None:
                raise ValueError(f"{key} is only for backend: openai")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ARM_KEYS = tuple(f.name for f in fields(Arm))


REPO_ROOT = Path(__file__).resolve().parents[2]


def _resolve_path(value: str, base_dir: Path | None) -> Path | None:
    """A relative path is tried against the working directory first, then the YAML file's folder, then
    the repository root (so `results/adapters/x` works from a protocol file in eval_protocol/)."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return p if p.exists() else None
    candidates = [Path.cwd() / p]
    if base_dir is not None:
        candidates.append(base_dir / p)
    if (REPO_ROOT / "pyproject.toml").is_file():
        candidates.append(REPO_ROOT / p)
    for c in candidates:
        if c.exists():
            return c.resolve()
    return None


def _same_base(a: str, b: str) -> bool:
    """Whether two base specs name the same model (embedded name, a folder, or a hub id)."""
    def norm(s: str) -> str:
        s = str(s).strip()
        if s.lower() == EMBEDDED_NAME:
            return EMBEDDED_NAME
        p = Path(s).expanduser()
        if p.exists():
            return str(p.resolve())
        return s

    na, nb = norm(a), norm(b)
    if na == nb:
        return True
    # The embedded model's converted checkpoint folder is the embedded model.
    emb = str(checkpoint_dir().resolve()) if checkpoint_dir().exists() else None
    return emb is not None and {na, nb} <= {EMBEDDED_NAME, emb}


def read_adapter_info(path: Path) -> dict[str, Any]:
    """peft_type, base and strategies of an adapter folder written by `extes train` (or any PEFT save)."""
    cfg_file = path / "adapter_config.json"
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as exc:
        raise ArmConfigError(f"{cfg_file}: cannot read adapter config ({exc})") from None
    info: dict[str, Any] = {
        "peft_type": str(cfg.get("peft_type", "LORA")).upper(),
        "base": cfg.get("base_model_name_or_path"),
        "strategies": None,
    }
    tc_file = path / "training_config.json"
    if tc_file.is_file():
        try:
            tc = json.loads(tc_file.read_text())
        except (OSError, ValueError) as exc:
            raise ArmConfigError(f"{tc_file}: cannot read training config ({exc})") from None
        if tc.get("base"):
            info["base"] = tc["base"]
        if "strategies" in tc:
            info["strategies"] = bool(tc["strategies"])
    return info


def _check_base(base: str, base_dir: Path | None) -> str:
    base = base.strip()
    if base.lower() == EMBEDDED_NAME:
        return EMBEDDED_NAME
    p = _resolve_path(base, base_dir)
    if p is not None:
        if not (p / "config.json").is_file():
            raise ValueError(f"base folder {p} has no config.json (not a saved checkpoint)")
        return str(p)
    if re.match(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$", base) and not base.startswith((".", "/", "~")):
        return base  # a hub id; only loadable when online
    raise ValueError(
        f"base {base!r} is neither the embedded model ({EMBEDDED_NAME!r}), an existing checkpoint "
        "folder, nor a hub id of the form owner/name"
    )


def _find_adapter(adapter: str, base_dir: Path | None) -> Path:
    path = _resolve_path(adapter, base_dir)
    if path is None:
        tried = ", ".join(dict.fromkeys(str(d) for d in (Path.cwd(), base_dir, REPO_ROOT) if d))
        raise ValueError(
            f"adapter folder {adapter!r} does not exist (relative to {tried}); "
            "train it first with `extes train` or fix the path"
        )
    if not (path / "adapter_config.json").is_file():
        hint = (" It holds a full checkpoint (config.json): use it as `base:` instead."
                if (path / "config.json").is_file() else "")
        raise ValueError(f"adapter folder {path} has no adapter_config.json.{hint}")
    return path


def _resolve_local(arm: Arm, given: dict[str, Any], base_dir: Path | None) -> Arm:
    """A local arm read from a file: its base and adapter found on disk, the adapter checked against the
    base it was trained on, and `strategies` taken from (or checked against) its training config."""
    base = _check_base(arm.base, base_dir)
    strategies = given.get("strategies")
    if arm.adapter is None:
        return dataclasses.replace(arm, base=base)
    path = _find_adapter(arm.adapter, base_dir)
    info = read_adapter_info(path)
    trained_on = info["base"]
    if trained_on and not _same_base(trained_on, base):
        suggestion = "" if "base" in given else f" (set `base: {trained_on}` if that model is available)"
        raise ValueError(
            f"adapter {path} was trained on base {trained_on!r} but the arm's base is {base!r}{suggestion}"
        )
    if info["strategies"] is not None:
        if strategies is None:
            strategies = info["strategies"]
        elif strategies != info["strategies"]:
            raise ValueError(
                f"strategies: {str(strategies).lower()} contradicts the adapter's training config "
                f"({path / 'training_config.json'} says strategies: {str(info['strategies']).lower()})"
            )
    return dataclasses.replace(arm, base=base, adapter=str(path), strategies=bool(strategies))


def _arm_where(entry: dict[str, Any], where: str) -> str:
    """`file: arms[1]` gains the arm's name when it has a valid one: `file: arms[1] (arm 'x')`."""
    name = entry.get("name")
    return f"{where} (arm {name!r})" if isinstance(name, str) and _NAME_RE.match(name) else where


def arm_from_dict(entry: Any, where: str, base_dir: Path | None = None) -> Arm:
    """One arm mapping, validated (and a local arm's paths resolved against `base_dir`)."""
    if not isinstance(entry, dict):
        raise ArmConfigError(f"{where}: expected a mapping with at least a name, got {type(entry).__name__}")
    return validate_config(entry, Arm, _arm_where(entry, where), error=ArmConfigError,
                           context={"base_dir": base_dir})


def arms_from_config(entries: Any, where: str, base_dir: str | Path | None = None) -> list[Arm]:
    """Validate a list of arm mappings; `where` (e.g. the file name) prefixes every error."""
    if not isinstance(entries, list) or not entries:
        raise ArmConfigError(f"{where}: `arms` must be a non-empty list of arm mappings")
    base_dir = Path(base_dir) if base_dir is not None else None
    arms: list[Arm] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        arm = arm_from_dict(entry, f"{where}: arms[{i}]", base_dir)
        if arm.name in seen:
            raise ArmConfigError(f"{where}: arms[{i}]: duplicate arm name {arm.name!r}")
        seen.add(arm.name)
        arms.append(arm)
    return arms


def load_arms(path: str | Path) -> list[Arm]:
    """Read an arms YAML (`arms: [...]`) or a study protocol YAML whose `arms:` is such a list (or the path
    of an arms YAML, relative to the protocol file)."""
    path = Path(path)
    data = read_yaml(path, "arms", error=ArmConfigError)
    if isinstance(data, list):
        entries = data
    elif isinstance(data, dict) and "arms" in data:
        entries = data["arms"]
        if isinstance(entries, str):
            return load_arms(_resolve_path(entries, path.parent) or path.parent / entries)
    else:
        raise ArmConfigError(f"{path}: expected a mapping with an `arms:` list")
    return arms_from_config(entries, str(path), base_dir=path.parent)
