"""TrainConfig: every setting of a training run, from a YAML file and/or the command line.

Validated once, before any weights load (`validate`): the method, numbers in range, data that exists and
is not empty, a base the method supports (LLaMA-Adapter needs a model type PEFT supports there; QLoRA
needs bitsandbytes). The resolved config is saved as `training_config.json` next to the weights.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extes.base.embedded import EMBEDDED_NAME
from extes.dialogue import DEFAULT_SYSTEM_PROMPT

METHODS = ("clm", "lora", "qlora", "adapter")
# Learning rates that work for each method when none is given (LLaMA-Adapter trains a tiny gated prompt
# that needs a larger step; full fine-tuning a small one).
DEFAULT_LR = {"clm": 5e-5, "lora": 2e-4, "qlora": 2e-4, "adapter": 5e-3}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CHAT_FORMATS = ("auto", "template", "dialogpt")


@dataclass
class TrainConfig:
    method: str = "lora"
    base: str = EMBEDDED_NAME
    data: list[str] = field(default_factory=list)
    valid: list[str] = field(default_factory=list)
    out: str | None = None  # default results/runs/<name>
    name: str | None = None  # default: <method>-<data stem>[-strategies]
    # formatting
    strategies: bool = False
    with_scene: bool = False
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    chat_format: str | None = None  # auto | template | dialogpt; default dialogpt for clm, auto otherwise
    max_length: int = 1024
    limit: int | None = None  # use only the first N training dialogues (smoke runs, benchmarks)
    # optimisation
    epochs: float = 3.0
    max_steps: int | None = None  # optimizer steps; overrides epochs
    lr: float | None = None
    batch_size: int = 4
    grad_accum: int = 1
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    group_by_length: bool = True
    gradient_checkpointing: bool = False
    precision: str = "auto"  # auto = bf16 autocast on a GPU that has it, fp32 otherwise
    device: str = "auto"
    threads: int | None = None
    # evaluation, checkpoints
    eval_every: int | None = None  # also validate every N optimizer steps (always at each epoch's end)
    early_stopping: int | None = None  # stop after N validations without improvement
    keep_best: bool = True  # with a valid set, the saved weights are those of the best validation
    save_every: int | None = None  # checkpoint every N optimizer steps (always at each epoch's end)
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    # LoRA / QLoRA
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: list[str] | str | None = None  # None: PEFT's default for the model type; or "all-linear"
    lora_layers: int | None = None  # LoRA only in the top N blocks (backward stops there: faster on CPU)
    # LLaMA-Adapter
    adapter_len: int = 10
    adapter_layers: int = 2

    # ------------------------------------------------------------------------------------------------
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


def config_from_dict(values: dict[str, Any], where: str = "config") -> TrainConfig:
    """Build a TrainConfig from plain values (YAML, JSON, CLI); unknown keys are an error naming `where`."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping of settings, got {type(values).__name__}")
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}")
    for key in ("data", "valid"):
        if isinstance(values.get(key), (str, Path)):
            values[key] = [str(values[key])]
        elif values.get(key) is None and key in values:
            values[key] = []
    if isinstance(values.get("target_modules"), str) and values["target_modules"] != "all-linear":
        values["target_modules"] = [m.strip() for m in values["target_modules"].split(",") if m.strip()]
    return TrainConfig(**values)


def load_config_file(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings at the top level")
    # relative data paths in a config file are relative to the working directory, like on the CLI
    return data


def _check(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{where}: {msg}")


def validate(cfg: TrainConfig, where: str = "training config") -> None:
    """Check everything that can be checked without loading weights; raise ValueError/FileNotFoundError."""
    _check(cfg.method in METHODS, where, f"method {cfg.method!r} is not one of {', '.join(METHODS)}")
    _check(bool(cfg.data), where, "no training data given (--data PATH)")
    for p in [*cfg.data, *cfg.valid]:
        if not Path(p).exists():
            raise FileNotFoundError(f"{where}: data path {p} does not exist")
    _check(cfg.max_length >= 32, where, f"max_length must be >= 32, got {cfg.max_length}")
    _check(cfg.batch_size >= 1, where, f"batch_size must be >= 1, got {cfg.batch_size}")
    _check(cfg.grad_accum >= 1, where, f"grad_accum must be >= 1, got {cfg.grad_accum}")
    _check(cfg.epochs > 0 or bool(cfg.max_steps), where, "epochs must be > 0 (or give max_steps)")
    _check(cfg.max_steps is None or cfg.max_steps >= 1, where, "max_steps must be >= 1")
    _check(cfg.learning_rate > 0, where, f"lr must be > 0, got {cfg.learning_rate}")
    _check(0 <= cfg.warmup_ratio < 1, where, f"warmup_ratio must be in [0, 1), got {cfg.warmup_ratio}")
    _check(cfg.precision in PRECISIONS, where, f"precision {cfg.precision!r} is not one of {', '.join(PRECISIONS)}")
    _check(cfg.chat_format is None or cfg.chat_format in CHAT_FORMATS, where,
           f"chat_format {cfg.chat_format!r} is not one of {', '.join(CHAT_FORMATS)}")
    for name in ("eval_every", "save_every", "early_stopping", "limit", "threads"):
        v = getattr(cfg, name)
        _check(v is None or (isinstance(v, int) and v >= 1), where, f"{name} must be a positive integer, got {v!r}")
    _check(cfg.early_stopping is None or bool(cfg.valid), where, "early_stopping needs a validation set (--valid)")
    if cfg.method in ("lora", "qlora"):
        _check(cfg.lora_r >= 1, where, f"lora_r must be >= 1, got {cfg.lora_r}")
        _check(cfg.lora_alpha > 0, where, f"lora_alpha must be > 0, got {cfg.lora_alpha}")
        _check(0 <= cfg.lora_dropout < 1, where, f"lora_dropout must be in [0, 1), got {cfg.lora_dropout}")
        _check(cfg.lora_layers is None or (isinstance(cfg.lora_layers, int) and cfg.lora_layers >= 1), where,
               f"lora_layers must be a positive integer, got {cfg.lora_layers!r}")
    if cfg.method == "adapter":
        _check(cfg.adapter_len >= 1, where, f"adapter_len must be >= 1, got {cfg.adapter_len}")
        _check(cfg.adapter_layers >= 1, where, f"adapter_layers must be >= 1, got {cfg.adapter_layers}")
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

    from extes.base.loading import resolve_base

    return AutoConfig.from_pretrained(resolve_base(base))


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
