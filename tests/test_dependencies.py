"""pyproject's dependencies match the code: each run-time one is used, test-only ones stay in the extra."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Distribution name -> import name, where they differ.
IMPORT_NAME = {"pyyaml": "yaml", "rouge-score": "rouge_score", "import-linter": "importlinter",
               "gradio_client": "gradio_client"}
# Needed at run time although our code never imports them: transformers imports them itself.
USED_BY_TRANSFORMERS = {
    "accelerate": "device maps (device_map=...) when loading a base model",
    "gguf": "reading the embedded model's GGUF weights (from_pretrained(..., gguf_file=...))",
    "sentencepiece": "tokenizers of GGUF and Llama-family checkpoints",
    "safetensors": "the weights format every checkpoint and adapter is saved in",
}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].strip().lower()


def _imported(folders: list[Path]) -> set[str]:
    names: set[str] = set()
    for folder in folders:
        files = [folder] if folder.is_file() else folder.rglob("*.py")
        for f in files:
            names.update(re.findall(r"^\s*(?:import|from)\s+([A-Za-z_]\w*)", f.read_text(encoding="utf-8"), re.M))
    return names


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_every_run_time_dependency_is_used():
    used = _imported([ROOT / "extes", ROOT / "app.py", ROOT / "bench"])
    unused = []
    for req in _project()["dependencies"]:
        name = _name(req)
        if name in USED_BY_TRANSFORMERS:
            continue
        if IMPORT_NAME.get(name, name.replace("-", "_")) not in used:
            unused.append(name)
    assert not unused, f"dependencies no code imports (remove them, or move test-only ones to [test]): {unused}"


def test_test_only_packages_stay_out_of_the_package():
    production = _imported([ROOT / "extes", ROOT / "app.py"])
    test_only = {IMPORT_NAME.get(n, n.replace("-", "_")) for n in map(_name, _project()["optional-dependencies"]["test"])}
    assert not (production & test_only), sorted(production & test_only)
