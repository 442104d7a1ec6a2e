"""Builders for the models-layer tests (imported by tests/test_models_*.py).

The tiny model from extes.testing.tiny is initialised with std 0.02, so its greedy output is one token
repeated; `spicy_tiny` re-draws its weights with a larger spread so that greedy decoding gives varied
token sequences, which is what batched-versus-unbatched comparisons need to mean something.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

from extes.models.arms import Arm, GenerationSettings

SYSTEM = "Be kind."
GREEDY = GenerationSettings(max_new_tokens=12, temperature=0.0, repetition_penalty=1.0)
TRAIN_REPLIES = [
    ("I feel so alone since the breakup", "That sounds really painful.", "Emotional Validation"),
    ("My boss keeps giving me more work", "Would it help to talk about it?", "Clarification"),
]


def spicy_tiny(tiny_dir: Path, out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    shutil.copytree(tiny_dir, out, dirs_exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(out)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    model.save_pretrained(out)
    return out


def make_adapters(base: Path, out: Path) -> dict[str, Path]:
    from extes.testing.quick_lora import quick_lora

    return {
        "lora": quick_lora(str(base), out / "lora", TRAIN_REPLIES, steps=60, lr=3e-2, strategies=False,
                           seed=1, system_prompt=SYSTEM),
        "lora-strat": quick_lora(str(base), out / "lora-strat", TRAIN_REPLIES, steps=60, lr=3e-2,
                                 strategies=True, seed=2, system_prompt=SYSTEM),
    }


_SHARED: dict[str, tuple[Path, dict[str, Path]]] = {}


def shared_base_and_adapters(tiny_llama: Path, tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """One spicy base + two trained adapters per test session, shared by the test_models_* modules."""
    key = str(tiny_llama)
    if key not in _SHARED:
        base = spicy_tiny(tiny_llama, tmp_path_factory.mktemp("spicy"))
        _SHARED[key] = (base, make_adapters(base, tmp_path_factory.mktemp("adapters")))
    return _SHARED[key]


def tiny_arms(base: Path, adapters: dict[str, Path], settings: GenerationSettings = GREEDY,
              dtype: str = "float32") -> list[Arm]:
    """Three arms on one base; fp32 by default so that outputs compare exactly with transformers/PEFT."""
    return [
        Arm("plain", base=str(base), system_prompt=SYSTEM, generation=settings, dtype=dtype),
        Arm("lora", base=str(base), adapter=str(adapters["lora"]), system_prompt=SYSTEM, generation=settings,
            dtype=dtype),
        Arm("strat", base=str(base), adapter=str(adapters["lora-strat"]), system_prompt=SYSTEM,
            generation=settings, strategies=True, dtype=dtype),
    ]


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving an app on a loopback port in a background thread."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
