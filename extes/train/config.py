"""TrainConfig: every setting of a training run, from a YAML file and/or the command line.

A `TrainConfig` is a frozen pydantic dataclass (`extes.config.config_dataclass`): building one checks the
method, types and numbers in range, so a bad YAML file or flag fails naming the file and the key. What needs
the disk or the base model's config is checked by `validate`, still before any weights load: data that
exists, a base the method supports (LLaMA-Adapter needs a model type PEFT supports there; QLoRA needs
bitsandbytes), an output folder that would not be overwritten by accident. The resolved config is saved as
`training_config.json` next to the weights.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import Field, field_validator, model_validator

from extes.base.embedded import EMBEDDED_NAME
from extes.base.loading import checkpoint_source
from extes.config import config_dataclass, read_yaml, validate_config
from extes.dialogue import DEFAULT_SYSTEM_PROMPT

Method = Literal["clm", "lora", "qlora", "adapter"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
ChatFormat = Literal["auto", "template", "dialogpt"]
METHODS: tuple[str, ...] = get_args(Method)
# Learning rates that work for each method when none is given (LLaMA-Adapter trains a tiny gated prompt
# that needs a larger step; full fine-tuning a small one).
DEFAULT_LR = {"clm": 5e-5, "lora": 2e-4, "qlora": 2e-4, "adapter": 5e-3}
PRECISIONS: tuple[str, ...] = get_args(Precision)
CHAT_FORMATS: tuple[str, ...] = get_args(ChatFormat)
Positive = Annotated[int, Field(strict=True, ge=1)]  # a count; a bool or a float is not one


@config_dataclass
class TrainConfig:
    method: Method = "lora"
    base: str = EMBEDDED_NAME
    data: list[str] = field(default_factory=list)
    valid: list[str] = field(default_factory=list)
    out: str | None = None  # default results/runs/<name>
    name: str | None = None  # default: <method>-<data stem>[-strategies]
    # formatting
    strategies: bool = False
    with_scene: bool = False
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    chat_format: ChatFormat | None = None  # auto | template | dialogpt; default dialogpt for clm, auto otherwise
    max_length: Annotated[int, Field(ge=32)] = 1024
    limit: Positive | None = None  # use only the first N training dialogues (smoke runs, benchmarks)
    # optimisation
    epochs: float = 3.0
    max_steps: Positive | None = None  # optimizer steps; overrides epochs
    lr: Annotated[float, Field(gt=0)] | None = None
    batch_size: Positive = 4
    grad_accum: Positive = 1
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    group_by_length: bool = True
    gradient_checkpointing: bool = False
    precision: Precision = "auto"  # auto = bf16 autocast on a GPU that has it, fp32 otherwise
    device: str = "auto"
    threads: Positive | None = None
    # evaluation, checkpoints
    eval_every: Positive | None = None  # also validate every N optimizer steps (always at each epoch's end)
    early_stopping: Positive | None = None  # stop after N validations without improvement
    keep_best: bool = True  # with a valid set, the saved weights are those of the best validation
    save_every: Positive | None = None  # checkpoint every N optimizer steps (always at each epoch's end)
    resume: bool = False
    overwrite: bool = False
    fsdp: bool = False  # several processes: shard weights, gradients, optimizer state (FSDP2; method clm)
    progress: bool = True
    # LoRA / QLoRA
    lora_r: Positive = 8
    lora_alpha: Annotated[int, Field(gt=0)] = 16
    lora_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    target_modules: list[str] | str | None = None  # None: PEFT's default for the model type; or "all-linear"
    lora_layers: Positive | None = None  # LoRA only in the top N blocks (backward stops there: faster on CPU)
    # LLaMA-Adapter
    adapter_len: Positive = 10
    adapter_layers: Positive = 2

    # ------------------------------------------------------------------------------------------------
    # Types and `Field` constraints check single values (extes.config words their errors); the validators
    # below normalise inputs and check values together. `validate` checks what needs the disk or the base.
    @field_validator("data", "valid", mode="before")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, (str, Path)):
            return [str(value)]
        return [str(v) if isinstance(v, Path) else v for v in value] if isinstance(value, (list, tuple)) else value

    @field_validator("target_modules", mode="before")
    @classmethod
    def _modules(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "all-linear":
            return [m.strip() for m in value.split(",") if m.strip()]
        return value

    @model_validator(mode="after")
    def _ranges(self) -> TrainConfig:
        for ok, msg in self._range_checks():
            if not ok:
                raise ValueError(msg)
        return self

    def _range_checks(self) -> list[tuple[bool, str]]:
        """Checks of values together (single values are checked by their types)."""
        return [
            (self.epochs > 0 or bool(self.max_steps), "epochs must be > 0 (or give max_steps)"),
            (self.early_stopping is None or bool(self.valid), "early_stopping needs a validation set (--valid)"),
            (not self.fsdp or self.method == "clm",
             f"fsdp is for full fine-tunes (method clm); a {self.method} run trains few weights: use DDP (the default)"),
        ]

    @property
    def run_name(self) -> str:
        if self.name:
            return self.name
        stem = Path(self.data[0]).stem if self.data else "data"
        return f"{self.method}-{stem}" + ("-strategies" if self.strategies else "")

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("results") / "runs" / self.run_name

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    @property
    def resolved_chat_format(self) -> str:
        return self.chat_format or ("dialogpt" if self.method == "clm" else "auto")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lr"] = self.learning_rate
        d["chat_format"] = self.resolved_chat_format
        return d

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
FIELD_NAMES = tuple(FIELDS)


def config_from_dict(values: dict[str, Any], where: str = "config") -> TrainConfig:
    """Build a TrainConfig from plain values (YAML, JSON, CLI); errors (ValueError) name `where`, the key
    and the reason, e.g. ``bad.yaml: unknown setting(s) learning_rate; known: ...``."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping of settings, got {type(values).__name__}")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    return validate_config(values, TrainConfig, where, error=ValueError)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The settings of a training-config YAML (relative data paths stay relative to the working directory,
    like on the command line); `config_from_dict` validates them, with flags merged in."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    data = read_yaml(path, "training config", error=ValueError)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings at the top level")
    return data


def _check(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{where}: {msg}")


def validate(cfg: TrainConfig, where: str = "training config") -> None:
    """Check what needs the disk or the base model's config, without loading weights; raise
    ValueError/FileNotFoundError. (Values and ranges were checked when `cfg` was built.)"""
    _check(bool(cfg.data), where, "no training data given (--data PATH)")
    for p in [*cfg.data, *cfg.valid]:
        if not Path(p).exists():
            raise FileNotFoundError(f"{where}: data path {p} does not exist")
    if cfg.method == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(f"{where}: method qlora needs the bitsandbytes package, which is not installed "
                         "(pip install bitsandbytes)")
    if cfg.method == "adapter":
        check_adapter_base(cfg.base, where, cfg.adapter_layers)
    if cfg.method in ("lora", "qlora") and cfg.lora_layers:
        n = getattr(base_model_config(cfg.base), "num_hidden_layers", None)
        _check(n is None or cfg.lora_layers <= n, where, f"lora_layers={cfg.lora_layers} but base {cfg.base!r} has only {n} blocks")
    out = cfg.out_dir
    if out.exists() and any((out / f).exists() for f in ("training_config.json", "metrics.json")) \
            and not (cfg.resume or cfg.overwrite):
        raise ValueError(f"{where}: {out} already holds a training run; pass --resume to continue it or "
                         "--overwrite to replace it")


def base_model_config(base: str):
    """The base model's transformers config (reads config.json only, no weights)."""
    from transformers import AutoConfig


    return AutoConfig.from_pretrained(checkpoint_source(base))


def check_adapter_base(base: str, where: str, adapter_layers: int | None = None) -> None:
    from peft.tuners.adaption_prompt.config import TRANSFORMERS_MODEL_CONFIG

    config = base_model_config(base)
    supported = sorted(TRANSFORMERS_MODEL_CONFIG)
    if config.model_type not in TRANSFORMERS_MODEL_CONFIG:
        raise ValueError(
            f"{where}: method adapter (LLaMA-Adapter) does not support base {base!r} of model type "
            f"{config.model_type!r}; PEFT's AdaptionPrompt supports {', '.join(supported)}. "
            "Use method lora for this base."
        )
    layers = getattr(config, "num_hidden_layers", None)
    if adapter_layers is not None and layers is not None and adapter_layers > layers:
        raise ValueError(f"{where}: adapter_layers={adapter_layers} but base {base!r} has only {layers} layers")
