"""The local generation engine, composed: `create_engine` puts one scheduler (`extes.models.scheduler.Engine`:
admission, chunked prefill, batching, sampling, cancellation, events) over the runner that can serve the
base (`extes.models.runner.ModelRunner`):
- `FastRunner` (extes.models.fast_runner) for LLaMA-family bases (LLaMA, Qwen2, Mistral without sliding
  window) whose adapters are plain LoRA: the compact forward with gathered LoRA and a kept KV cache;
- `TransformersRunner` (extes.models.transformers_runner) for everything else, and on request: the
  reference the fast runner is tested against, and what `bench/load.py --baseline` measures.

This module also re-exports the names callers imported from it before the engine was split up
(the types, the prompt helpers, `sample_rows`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import AutoConfig

from extes.base.loading import checkpoint_source
from extes.models.fast_runner import FastRunner, fast_path_reason
from extes.models.sampling import sample_rows
from extes.models.scheduler import Engine
from extes.models.text import fit_messages, render_prompt, split_reply, visible_text
from extes.models.transformers_runner import TransformersRunner
from extes.models.types import (
    ENGINE_KINDS,
    MAX_BATCH,
    PREFILL_CHUNK,
    ContextTooLongError,
    EngineClosed,
    Event,
    GenRequest,
    Reply,
    Request,
)
from extes.taxonomy import prepare_tag_grammar

log = logging.getLogger(__name__)


def create_engine(base: str, adapters=(), dtype: str | None = "auto", engine: str = "auto", *,
                  max_batch: int = MAX_BATCH, max_context: int | None = None, gather_s: float = 0.01,
                  prefill_chunk: int = PREFILL_CHUNK, kv_cache_bytes: int | None = None, device: str = "cpu",
                  prepack: bool = True, model=None, tokenizer=None) -> Engine:
    """An engine for `base` and its `adapters`: the fast runner when the base is LLaMA-family and every
    adapter is plain LoRA, else the transformers runner.

    dtype: the arm's `auto | float32 | bfloat16` (None = auto). The transformers path runs fp32 unless
    bfloat16 is asked for explicitly.
    engine: "auto" (the above), or "transformers" to force the transformers path.
    kv_cache_bytes, device and prepack apply to the fast runner only: the transformers path keeps no KV
    cache across requests and runs on the CPU; a value it cannot honour is logged, not dropped silently.
    model/tokenizer: an already loaded base (tests)."""
    if engine not in ENGINE_KINDS:
        raise ValueError(f"engine {engine!r} must be one of {list(ENGINE_KINDS)}")
    adapters = [str(Path(a)) for a in dict.fromkeys(adapters)]
    if engine == "auto":
        why = fast_path_reason(model.config if model is not None else AutoConfig.from_pretrained(checkpoint_source(base)),
                               adapters)
    else:
        why = "asked for (engine='transformers')"
    name = Path(str(base)).name
    if why is None:
        runner = FastRunner(base, adapters, dtype=dtype or "auto", max_context=max_context,
                            kv_cache_bytes=kv_cache_bytes, prepack=prepack, device=device, model=model,
                            tokenizer=tokenizer)
    else:
        log.info("base %s uses the transformers path: %s", name, why)
        unused = [f"kv_cache_bytes={kv_cache_bytes}"] if kv_cache_bytes is not None else []
        unused += [f"device={device!r}"] if device != "cpu" else []
        if unused:
            log.warning("base %s: %s not applied on the transformers path (no kept KV cache, CPU only)",
                        name, ", ".join(unused))
        runner = TransformersRunner(base, adapters, dtype=None if dtype in (None, "auto") else dtype,
                                    max_context=max_context, model=model, tokenizer=tokenizer)
    prepare_tag_grammar()  # at load, not in the first turn (replies are read for tags as they stream)
    return Engine(runner, max_batch=max_batch, gather_s=gather_s, prefill_chunk=prefill_chunk, name=str(base))


__all__ = [
    "ENGINE_KINDS", "ContextTooLongError", "Engine", "EngineClosed", "Event", "GenRequest", "Reply", "Request",
    "create_engine", "fit_messages", "render_prompt", "sample_rows", "split_reply", "visible_text",
]
