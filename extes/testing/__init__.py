"""Scaffolding for tests and benchmarks, kept apart from production code.

- `tiny`: tiny random LLaMA/GPT-2 models built in-process (no download).
- `quick_lora`: a LoRA adapter trained in seconds on a tiny model, for engine and pool tests.
- `scripted`: a scripted OpenAI-compatible loopback server for the self-chat builder's tests.

Nothing under `extes/` outside this package imports it.
"""
