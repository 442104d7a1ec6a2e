"""LLaMA-Adapter through PEFT's AdaptionPrompt: learnt prompts with zero-initialised gates in the top
`adapter_layers` attention layers. PEFT supports it for the model types in its
TRANSFORMERS_MODEL_CONFIG (llama, mistral, gpt2 in peft 0.21); `config.validate` rejects others before
any weights load."""

from __future__ import annotations

from pathlib import Path

import torch

from extes.train.common import enable_checkpointing, load_for_training, save_peft
from extes.train.config import TrainConfig, check_adapter_base


def adapter_config(cfg: TrainConfig):
    from peft import AdaptionPromptConfig

    return AdaptionPromptConfig(adapter_len=cfg.adapter_len, adapter_layers=cfg.adapter_layers,
                                task_type="CAUSAL_LM")


def build_model(cfg: TrainConfig, device: torch.device):
    from peft import get_peft_model

    check_adapter_base(cfg.base, "adapter", cfg.adapter_layers)
    model = load_for_training(cfg, device)
    enable_checkpointing(model, cfg)
    return get_peft_model(model, adapter_config(cfg))


def save_model(model, out: Path, cfg: TrainConfig) -> None:
    save_peft(model, out, cfg)
