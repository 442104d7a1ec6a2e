"""Small helpers the method modules share: loading the base for training and saving PEFT outputs."""

from __future__ import annotations

from pathlib import Path

import torch

from extes.base.loading import hub_id, load_base
from extes.train.config import TrainConfig


def load_for_training(cfg: TrainConfig, device: torch.device):
    """The base model in fp32 on `device` (mixed precision on GPU comes from autocast in the loop)."""

    model, _tok = load_base(cfg.base, dtype="float32", device=str(device))
    return model


def enable_checkpointing(model, cfg: TrainConfig) -> None:
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False


def save_peft(model, out: Path, cfg: TrainConfig) -> None:
    """Save the adapter only; its config names the base by its hub id where there is one (the embedded
    model: HuggingFaceTB/SmolLM2-135M-Instruct), so PEFT and vLLM can resolve it; `checkpoint_source`
    maps that id back to the local checkpoint offline; training_config.json keeps the base as given."""

    for pc in model.peft_config.values():
        pc.base_model_name_or_path = hub_id(cfg.base)
    model.save_pretrained(str(out), safe_serialization=True)
