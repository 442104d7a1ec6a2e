"""Train a small LoRA adapter in seconds, saved the way `extes train` saves one.

For tests and the generation benchmark, which need real adapters on a base without waiting for the
training pipeline: a few optimiser steps on a handful of chats (loss on the assistant replies only).
The folder gets adapter_config.json + weights (PEFT) and a training_config.json with `base` and
`strategies`, like a `results/runs/<name>/` folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from extes.base.loading import hub_id, load_base
from extes.taxonomy import format_strategy_tag


def quick_lora(base: str, out_dir: str | Path, replies: list[tuple[str, str, str | None]], *,
               steps: int = 30, lr: float = 1e-2, r: int = 8, seed: int = 0, strategies: bool = False,
               system_prompt: str | None = None, target_modules: str | list[str] = "all-linear") -> Path:
    """Fit a LoRA adapter on (user message, assistant reply, strategy) triples and save it to `out_dir`."""
    import torch  # lazy, as the two below: torch and peft load only when an adapter is fitted
    from peft import LoraConfig, get_peft_model

    from extes.models.engine import render_prompt

    torch.manual_seed(seed)
    model, tok = load_base(base)
    model.train()
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=target_modules,
                                                  lora_dropout=0.0, task_type="CAUSAL_LM"))
    examples = []
    end = tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab() else tok.eos_token_id
    for user, reply, strategy in replies:
        msgs = ([{"role": "system", "content": system_prompt}] if system_prompt else [])
        msgs.append({"role": "user", "content": user})
        prompt = render_prompt(tok, msgs)
        target = (format_strategy_tag(strategy) if strategies and strategy else "") + reply
        answer = list(tok(target, add_special_tokens=False)["input_ids"]) + [end]
        ids = torch.tensor([prompt + answer])
        labels = torch.tensor([[-100] * len(prompt) + answer])
        examples.append((ids, labels))
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=lr)
    for step in range(steps):
        ids, labels = examples[step % len(examples)]
        loss = peft_model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    peft_model.peft_config["default"].base_model_name_or_path = hub_id(base)
    peft_model.save_pretrained(out, save_embedding_layers=False)
    (out / "training_config.json").write_text(json.dumps({
        "method": "lora", "base": base, "strategies": strategies, "steps": steps, "lr": lr, "r": r,
        "seed": seed, "note": "quick_lora (tests / benchmark)",
    }, indent=2))
    return out
