"""Resolve a base-model spec and load it: the embedded name, a local checkpoint folder, or a hub id.

A base spec is what people write in arms YAML and training configs: `smollm2-135m-instruct` (the
embedded default, see extes.base.embedded), a path to a folder saved with `save_pretrained`, or a
Hugging Face hub id (only useful when online; tests run with HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import re
from pathlib import Path

from extes.base.embedded import EMBEDDED_HUB_ID, EMBEDDED_NAME, embedded_checkpoint, load_gguf

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
           "bfloat16": "bfloat16", "bf16": "bfloat16"}


def is_embedded(base: str) -> bool:
    """The embedded name, or the embedded model's hub id (mapped to the local copy, so offline works)."""
    return str(base).strip().lower() in (EMBEDDED_NAME, EMBEDDED_HUB_ID.lower())


def hub_id(base: str) -> str:
    """What an adapter records as `base_model_name_or_path`: the hub id for the embedded model (PEFT and
    vLLM can resolve it; `checkpoint_source` maps it back to the local checkpoint), else the spec as given."""
    return EMBEDDED_HUB_ID if is_embedded(base) else str(base)


def resolve_base(base: str) -> str:
    """Map a base spec to something `from_pretrained` accepts: a checkpoint folder or a hub id.

    The embedded name is converted on first use and returns its cached folder. A local folder must hold
    a config.json. Anything else that looks like `owner/name` is returned as a hub id.
    """
    if not isinstance(base, str) or not base.strip():
        raise ValueError(f"base model must be a non-empty string, got {base!r}")
    base = base.strip()
    if base.lower() == EMBEDDED_NAME:
        return str(embedded_checkpoint())
    path = Path(base).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"base model folder {path} has no config.json (not a saved checkpoint)")
        return str(path.resolve())
    if _HUB_ID.match(base) and not base.startswith((".", "/", "~")):
        return base
    raise FileNotFoundError(
        f"base model {base!r} is neither the embedded model ({EMBEDDED_NAME!r}), an existing checkpoint "
        f"folder, nor a hub id of the form owner/name"
    )


def checkpoint_source(base: str) -> str:
    """Where the weights are read from: like `resolve_base`, except that the embedded model's hub id
    (which adapters record) maps to the local embedded checkpoint, so loading works offline."""
    if isinstance(base, str) and is_embedded(base):
        return str(embedded_checkpoint())
    return resolve_base(base)


def base_key(base: str) -> str:
    """A canonical identity for a base spec, used to decide whether two arms share one base."""
    return resolve_base(base)


def _torch_dtype(dtype):
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPES.get(str(dtype).lower().replace("torch.", ""))
    if name is None:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(set(_DTYPES))}")
    return getattr(torch, name)


def load_tokenizer(base: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint_source(base))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base(base: str, dtype=None, device: str | None = None, quantization: str | None = None):
    """Load (model, tokenizer) for a base spec, in eval mode.

    dtype: None (the checkpoint's; fp32 for the embedded model on CPU), a torch dtype, or a name.
    quantization: None, "4bit" (NF4) or "8bit" through bitsandbytes (QLoRA bases).
    """
    import torch
    from transformers import AutoModelForCausalLM

    path = checkpoint_source(base)
    tok = load_tokenizer(base)
    kwargs: dict = {}
    torch_dtype = _torch_dtype(dtype)
    if torch_dtype is None and device in (None, "cpu"):
        torch_dtype = torch.float32
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    if quantization:
        from transformers import BitsAndBytesConfig

        q = str(quantization).lower()
        if q in {"4bit", "nf4", "int4"}:
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=torch_dtype or torch.float32,
            )
        elif q in {"8bit", "int8"}:
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        else:
            raise ValueError(f"unknown quantization {quantization!r}; expected '4bit' or '8bit'")
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if device and not quantization:
        model.to(device)
    if not quantization and (device in (None, "cpu")):
        _materialize(model)
    model.eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def _materialize(model) -> None:
    """Copy weights that transformers left memory-mapped from the safetensors file into process memory.

    Mapped pages are read lazily and are the first thing the kernel evicts when other processes need
    memory; every decode step then re-reads them from disk (we measured steps going from ~0.1 s to
    1-3 s on a busy machine). Shared (tied) parameters are copied once and stay shared.
    """
    import torch

    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.clone()
        for module in model.modules():
            for name, buf in list(module._buffers.items()):
                if buf is not None:
                    module._buffers[name] = buf.clone()


def verify_conversion(max_new_tokens: int = 16) -> dict:
    """Check the cached checkpoint against the GGUF: same prompt tokens, same greedy continuation, and the
    largest logit difference. Slow (loads the GGUF); run `python -m extes.base.loading`."""
    import torch


    messages = [{"role": "system", "content": "You are a kind listener."},
                {"role": "user", "content": "I just broke up with my girlfriend and I feel awful"}]
    model, tok = load_base(EMBEDDED_NAME)
    gguf_model, gguf_tok = load_gguf()
    gguf_model.eval()
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids_g = gguf_tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                         return_dict=True)
    with torch.no_grad():
        a = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
        b = gguf_model.generate(**ids_g, max_new_tokens=max_new_tokens, do_sample=False)
        diff = (model(**ids).logits - gguf_model(**ids_g).logits).abs().max().item()
    n = ids["input_ids"].shape[1]
    return {"same_prompt_tokens": bool(torch.equal(ids["input_ids"], ids_g["input_ids"])),
            "same_greedy_tokens": bool(torch.equal(a, b)), "max_logit_diff": diff,
            "text": tok.decode(a[0, n:], skip_special_tokens=True)}


if __name__ == "__main__":  # pragma: no cover - manual check
    import json

    print(f"checkpoint: {embedded_checkpoint()}")
    print(json.dumps(verify_conversion(), indent=2))
