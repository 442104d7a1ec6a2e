"""CONTRIBUTING.md's layer diagram is the import-linter contract in pyproject.toml, line for line."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _diagram() -> list[str]:
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    section = text.split("## Layers", 1)[1]
    block = section.split("```", 2)[1]
    rows = [line for line in block.splitlines() if line.strip()]
    # each row: the layer (modules joined by " | "), then two or more spaces and a description
    return [re.split(r"\s{2,}", row.strip(), maxsplit=1)[0] for row in rows]


def _contract() -> list[str]:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["type"] == "layers")["layers"]
    return [" | ".join(part.strip() for part in layer.split("|")) for layer in layers]


def test_diagram_matches_the_contract():
    assert _diagram() == _contract()


def test_the_study_package_holds_the_web_app_not_the_offline_verbs():
    """`extes/study` is the web app and its store and holds no verb: `app` (which serves it) and the offline
    verbs (export, analyze, agreement, plan, report, judge) live in `extes.commands`."""
    from extes.cli import VERBS

    in_study = {verb for verb, (module, _, _) in VERBS.items() if module.startswith("extes.study")}
    assert in_study == set()
    assert list((ROOT / "extes" / "study").rglob("*_cli.py")) == []
    for path in (ROOT / "extes" / "study").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "argparse" not in text, f"{path.name} parses a command line"
    for verb in ("app", "export", "analyze", "agreement", "plan", "report", "judge"):
        assert VERBS[verb][0].startswith("extes.commands."), verb
