"""Small settings files of the build (prices, scenario quotas): a JSON or YAML mapping."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from extes.config import read_yaml


def read_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping in a JSON or YAML file (by suffix); errors name the file and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {what} file")
    if path.suffix in (".yaml", ".yml"):
        return read_yaml(path, what, error=ValueError)  # the project's one YAML reader
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
