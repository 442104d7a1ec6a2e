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


def save_model(model, out: Path, cfg: TrainConfig, state_dict: dict | None = None) -> None:
    """`state_dict`: the full weights, where the model itself holds only this process's shards (FSDP)."""
    model.config.use_cache = True
    if state_dict is not None:  # a tied weight once, under the name the model's own save keeps
        keep = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
        state_dict = {n: t for n, t in state_dict.items() if n in keep}
    model.save_pretrained(str(out), safe_serialization=True, state_dict=state_dict)
