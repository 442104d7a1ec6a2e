"""QLoRA: the base quantised to 4-bit NF4 by bitsandbytes (double quantisation), LoRA on top.

bitsandbytes 0.50 runs NF4 on CPU too (fp32 compute there); on a GPU the compute dtype is bf16 when the
card supports it. Only the LoRA weights train and are saved; the adapter loads on a full-precision base
as well as on a 4-bit one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from extes.base.loading import checkpoint_source
from extes.train import lora
from extes.train.config import TrainConfig


def compute_dtype(device: torch.device, precision: str) -> torch.dtype:
    if device.type == "cuda" and precision in ("auto", "bf16") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "cuda" and precision == "fp16":
        return torch.float16
    return torch.float32


def build_model(cfg: TrainConfig, device: torch.device):
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig


    dtype = compute_dtype(device, cfg.precision)
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )
    model = AutoModelForCausalLM.from_pretrained(
        checkpoint_source(cfg.base), quantization_config=quant, dtype=dtype,
        device_map={"": str(device) if device.type != "cuda" else device.index or 0},
    )
    if device.type == "cpu":
        keep_training_layout(model)
    model = prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    return lora.wrap(model, cfg)


def keep_training_layout(model) -> None:
    """bitsandbytes repacks 4-bit weights into a bf16 CPU-inference layout the first time a Linear4bit
    runs in eval mode without grad (our validation passes) on AVX512-BF16 CPUs. That repacking is
    permanent, needs in_features >= 64, and changes the compute path mid-training; keep the training
    layout throughout instead."""
    import bitsandbytes as bnb

    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit) and hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False


def save_model(model, out: Path, cfg: TrainConfig) -> None:
    lora.save_model(model, out, cfg)
