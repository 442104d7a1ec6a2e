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

import json
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from extes.base.embedded import EMBEDDED_NAME
from extes.dialogue import DEFAULT_SYSTEM_PROMPT

BACKENDS = ("local", "openai")
DTYPES = ("auto", "float32", "bfloat16")  # local arms' weight precision; auto: bf16 where safe and supported
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}$")


class ArmConfigError(ValueError):
    """An invalid arms declaration; the message names the file, the arm and the reason."""


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    seed: int | None = None

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
        known = {f.name for f in fields(self)}
        unknown = sorted(set(override) - known)
        if unknown:
            raise ArmConfigError(f"{where}: unknown generation setting(s) {unknown}; expected some of {sorted(known)}")
        values = {k: _check_setting(k, v, where) for k, v in override.items()}
        return replace(self, **values)


def _check_setting(key: str, value: Any, where: str) -> Any:
    given = value

    def bad(reason: str) -> ArmConfigError:
        return ArmConfigError(f"{where}: {key}={given!r} {reason}")

    if key == "seed":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("must be an integer or null")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad("must be a number")
    if key == "max_new_tokens":
        if int(value) != value or value < 1:
            raise bad("must be a positive integer")
        return int(value)
    value = float(value)
    if key == "temperature" and value < 0:
        raise bad("must be >= 0 (0 means greedy)")
    if key == "top_p" and not 0 < value <= 1:
        raise bad("must be in (0, 1]")
    if key == "repetition_penalty" and value <= 0:
        raise bad("must be > 0 (1.0 means no penalty)")
    return value


@dataclass(frozen=True)
class Arm:
    name: str
    backend: str = "local"
    base: str = EMBEDDED_NAME
    adapter: str | None = None
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    strategies: bool = False
    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    # openai backend only: seconds per request and retries (with backoff) before the first token.
    timeout_s: float = 60.0
    max_retries: int = 3
    # local arms: precision of the base weights (the residual stream, attention, KV cache and LoRA stay fp32).
    dtype: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["generation"] = self.generation.to_dict()
        return d


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
    from extes.base.embedded import checkpoint_dir

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


def _check_base(base: Any, where: str, base_dir: Path | None) -> str:
    if not isinstance(base, str) or not base.strip():
        raise ArmConfigError(f"{where}: base must be a non-empty string, got {base!r}")
    base = base.strip()
    if base.lower() == EMBEDDED_NAME:
        return EMBEDDED_NAME
    p = _resolve_path(base, base_dir)
    if p is not None:
        if not (p / "config.json").is_file():
            raise ArmConfigError(f"{where}: base folder {p} has no config.json (not a saved checkpoint)")
        return str(p)
    if re.match(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$", base) and not base.startswith((".", "/", "~")):
        return base  # a hub id; only loadable when online
    raise ArmConfigError(
        f"{where}: base {base!r} is neither the embedded model ({EMBEDDED_NAME!r}), an existing checkpoint "
        "folder, nor a hub id of the form owner/name"
    )


def arm_from_dict(entry: Any, where: str, base_dir: Path | None = None) -> Arm:
    if not isinstance(entry, dict):
        raise ArmConfigError(f"{where}: expected a mapping with at least a name, got {type(entry).__name__}")
    unknown = sorted(set(entry) - set(ARM_KEYS))
    if unknown:
        raise ArmConfigError(f"{where}: unknown key(s) {unknown}; expected some of {list(ARM_KEYS)}")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ArmConfigError(
            f"{where}: name {name!r} must be 1-64 characters of letters, digits, '_', '-', '.', ':'"
        )
    where = f"{where} (arm {name!r})"
    backend = entry.get("backend", "local")
    if backend not in BACKENDS:
        raise ArmConfigError(f"{where}: backend {backend!r} must be one of {list(BACKENDS)}")
    generation = GenerationSettings.from_dict(entry.get("generation"), f"{where}: generation")
    system_prompt = entry.get("system_prompt", DEFAULT_SYSTEM_PROMPT)
    if system_prompt is not None and not isinstance(system_prompt, str):
        raise ArmConfigError(f"{where}: system_prompt must be a string or null")
    strategies = entry.get("strategies")
    if strategies is not None and not isinstance(strategies, bool):
        raise ArmConfigError(f"{where}: strategies must be true or false, got {strategies!r}")
    kwargs: dict[str, Any] = dict(name=name, backend=backend, generation=generation, system_prompt=system_prompt)
    dtype = entry.get("dtype", "auto")
    if dtype not in DTYPES:
        raise ArmConfigError(f"{where}: dtype {dtype!r} must be one of {list(DTYPES)}")
    kwargs["dtype"] = dtype
    for key in ("timeout_s", "max_retries"):
        if key in entry:
            v = entry[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ArmConfigError(f"{where}: {key} must be a non-negative number, got {v!r}")
            kwargs[key] = int(v) if key == "max_retries" else float(v)

    if backend == "openai":
        for key in ("adapter",):
            if entry.get(key) is not None:
                raise ArmConfigError(
                    f"{where}: {key} is for local arms; an openai arm names its served model with `model:`"
                )
        model = entry.get("model")
        if not isinstance(model, str) or not model.strip():
            raise ArmConfigError(f"{where}: an openai arm needs `model:` (the model name the endpoint serves)")
        base_url = entry.get("base_url")
        if base_url is not None and (not isinstance(base_url, str) or not base_url.startswith(("http://", "https://"))):
            raise ArmConfigError(f"{where}: base_url must be an http(s) URL, got {base_url!r}")
        api_key_env = entry.get("api_key_env", "OPENAI_API_KEY")
        if not isinstance(api_key_env, str) or not api_key_env:
            raise ArmConfigError(f"{where}: api_key_env must name an environment variable")
        return Arm(model=model.strip(), base_url=base_url, api_key_env=api_key_env,
                   base=str(entry.get("base", EMBEDDED_NAME)), strategies=bool(strategies), **kwargs)

    for key in ("base_url", "model"):
        if entry.get(key) is not None:
            raise ArmConfigError(f"{where}: {key} is only for backend: openai")
    base_given = "base" in entry
    base = _check_base(entry.get("base", EMBEDDED_NAME), where, base_dir)
    adapter = entry.get("adapter")
    if adapter is not None:
        if not isinstance(adapter, str) or not adapter.strip():
            raise ArmConfigError(f"{where}: adapter must be a path, got {adapter!r}")
        path = _resolve_path(adapter, base_dir)
        if path is None:
            tried = ", ".join(dict.fromkeys(str(d) for d in (Path.cwd(), base_dir, REPO_ROOT) if d))
            raise ArmConfigError(
                f"{where}: adapter folder {adapter!r} does not exist (relative to {tried}); "
                "train it first with `extes train` or fix the path"
            )
        if not (path / "adapter_config.json").is_file():
            hint = (" It holds a full checkpoint (config.json): use it as `base:` instead."
                    if (path / "config.json").is_file() else "")
            raise ArmConfigError(f"{where}: adapter folder {path} has no adapter_config.json.{hint}")
        info = read_adapter_info(path)
        trained_on = info["base"]
        if trained_on and not _same_base(trained_on, base):
            suggestion = "" if base_given else f" (set `base: {trained_on}` if that model is available)"
            raise ArmConfigError(
                f"{where}: adapter {path} was trained on base {trained_on!r} but the arm's base is "
                f"{base!r}{suggestion}"
            )
        if info["strategies"] is not None:
            if strategies is None:
                strategies = info["strategies"]
            elif strategies != info["strategies"]:
                raise ArmConfigError(
                    f"{where}: strategies: {str(strategies).lower()} contradicts the adapter's training config "
                    f"({path / 'training_config.json'} says strategies: {str(info['strategies']).lower()})"
                )
        adapter = str(path)
    return Arm(base=base, adapter=adapter, strategies=bool(strategies), **kwargs)


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
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"arms file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ArmConfigError(f"{path}: not valid YAML ({exc})") from None
    if isinstance(data, list):
        entries = data
    elif isinstance(data, dict) and "arms" in data:
        entries = data["arms"]
        if isinstance(entries, str):
            return load_arms(_resolve_path(entries, path.parent) or path.parent / entries)
    else:
        raise ArmConfigError(f"{path}: expected a mapping with an `arms:` list")
    return arms_from_config(entries, str(path), base_dir=path.parent)
