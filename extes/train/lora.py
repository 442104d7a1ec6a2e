"""LoRA through PEFT: low-rank updates on chosen linear layers of a frozen base (r=8, alpha=16,
dropout 0.05 by default; target modules: PEFT's default for the model type, a list, or 'all-linear')."""

from __future__ import annotations

from pathlib import Path

import torch

from extes.train.common import enable_checkpointing, load_for_training, save_peft
from extes.train.config import TrainConfig


def linear_module_names(model) -> list[str]:
    """Names (last part) of the linear layers inside the transformer blocks, as 'all-linear' would pick."""
    import torch.nn as nn
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings()
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules()
             if isinstance(m, (nn.Linear, Conv1D)) and m is not head and "." in n}
    return sorted(names)


def lora_config(cfg: TrainConfig, model=None):
    from peft import LoraConfig

    targets = cfg.target_modules
    layers = None
    if cfg.lora_layers:
        n = getattr(model.config, "num_hidden_layers", None) if model is not None else None
        if not n:
            raise ValueError(f"lora_layers: cannot tell how many blocks base {cfg.base!r} has")
        if cfg.lora_layers > n:
            raise ValueError(f"lora_layers={cfg.lora_layers} but base {cfg.base!r} has only {n} blocks")
        layers = list(range(n - cfg.lora_layers, n))
        if targets is None or targets == "all-linear":  # PEFT needs explicit names with layers_to_transform
            targets = linear_module_names(model) if targets == "all-linear" else None
    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        layers_to_transform=layers,
        bias="none",
        task_type="CAUSAL_LM",
    )


def wrap(model, cfg: TrainConfig):
    from peft import get_peft_model

    try:
        return get_peft_model(model, lora_config(cfg, model))
    except ValueError as exc:  # e.g. target modules not found in this model
        raise ValueError(f"LoRA on base {cfg.base!r}: {exc}") from None


def build_model(cfg: TrainConfig, device: torch.device):
    model = load_for_training(cfg, device)
    enable_checkpointing(model, cfg)
    return wrap(model, cfg)


def save_model(model, out: Path, cfg: TrainConfig) -> None:
    save_peft(model, out, cfg)
