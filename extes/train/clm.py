"""Full causal-LM fine-tuning, DialoGPT style by default: every weight trains, the dialogue is one text
with EOS between utterances (see formatting.DIALOGPT_TEMPLATE; `chat_format: template` uses the base's
own chat template instead). Works for any causal LM; the output is a complete model folder."""

from __future__ import annotations

from pathlib import Path

import torch

from extes.train.common import enable_checkpointing, load_for_training
from extes.train.config import TrainConfig


def build_model(cfg: TrainConfig, device: torch.device):
    model = load_for_training(cfg, device)
    enable_checkpointing(model, cfg)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def save_model(model, out: Path, cfg: TrainConfig) -> None:
    model.config.use_cache = True
    model.save_pretrained(str(out), safe_serialization=True)
