"""Small settings files of the build (prices, scenario quotas): a JSON or YAML mapping."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping in a JSON or YAML file (by suffix); errors name the file and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such {what} file")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML: {exc}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON: {exc}") from None
    return data
