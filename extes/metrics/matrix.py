"""`extes evaluate --matrix SPEC.yaml`: several arms x several test sets -> one table (paper Tables 6 and 8).

    # SPEC.yaml
    arms_file: configs/arms.yaml        # optional: lets `arms` name arms declared there
    arms:                               # names, adapter/run/checkpoint folders, the embedded name,
      - smollm2-135m-instruct           # or inline arm mappings (as in an arms YAML)
      - results/adapters/seeds-lora
    test_sets:                          # label: path (a file or folder of dialogues)
      ExTES: data/split/test.jsonl
      ESConv: ../shared/data/esconv/FailedESConv.sample.json
    limit: 5                            # optional, first N dialogues of every test set
    settings: {max_new_tokens: 64}      # optional generation overrides (greedy unless greedy: false)
    greedy: true
    glove: null                         # optional GloVe file for Vector Extrema
    out: results/eval/matrix            # optional

Relative paths are tried against the working directory, then the spec's folder. One ArmPool serves every
arm (a shared base is loaded once), and every row uses the same Extrema embeddings so rows compare.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from extes.config import ConfigModel, read_yaml, validate_config
from extes.dialogue import atomic_write, load_dialogues
from extes.metrics.evaluate import (
    EvalOptions,
    EvalResult,
    ModelCache,
    evaluate_many,
    load_embeddings,
    markdown_table,
    resolve_arm,
    write_outputs,
)
from extes.metrics.text import tokenize
from extes.models import ArmPool, arms_from_config


class MatrixSpecError(ValueError):
    pass


class MatrixFile(ConfigModel):
    """The YAML of a matrix spec, as written (paths not yet resolved). Types and constraints check the
    values; extes.config words the errors (unknown keys, bounds)."""

    arms: Annotated[list[Any], Field(min_length=1)]
    test_sets: Annotated[dict[str, str], Field(min_length=1)]  # label: path
    arms_file: str | None = None
    limit: Annotated[int, Field(strict=True, ge=1)] | None = None
    settings: dict[str, Any] | None = None  # generation overrides, checked against the arms' settings
    greedy: bool = True
    glove: str | None = None
    wordnet: str | None = None
    out: str | None = None
    batch_size: Annotated[int, Field(ge=1)] = 8
    ppl: bool = True
    ppl_tag: Literal["context", "scored"] = "context"
    cache_dir: str | None = None


@dataclass
class MatrixSpec:
    arms: list[Any]
    test_sets: dict[str, Path]
    options: EvalOptions
    out: Path
    arms_file: Path | None = None
    where: str = "matrix spec"
    extra: dict[str, Any] = field(default_factory=dict)


def _resolve(value: str, base_dir: Path) -> Path:
    p = Path(value).expanduser()
    if p.is_absolute() or p.exists():
        return p
    alt = base_dir / p
    return alt if alt.exists() else p


def load_spec(path: str | Path) -> MatrixSpec:
    """Read and check a matrix spec (`MatrixFile`); test sets must exist (FileNotFoundError naming them)."""
    path = Path(path)
    data = read_yaml(path, "matrix spec", error=MatrixSpecError)
    if not isinstance(data, dict):
        raise MatrixSpecError(f"{path}: expected a mapping with `arms` and `test_sets`")
    f = validate_config(data, MatrixFile, str(path), error=MatrixSpecError)
    test_sets = {}
    for label, p in f.test_sets.items():
        resolved = _resolve(p, path.parent)
        if not resolved.exists():
            raise FileNotFoundError(f"{path}: test_sets.{label}: {p} does not exist")
        test_sets[label] = resolved
    options = EvalOptions(limit=f.limit, settings=f.settings or {}, greedy=f.greedy,
                          glove=str(_resolve(f.glove, path.parent)) if f.glove else None,
                          wordnet=f.wordnet, ppl=f.ppl, ppl_tag=f.ppl_tag, batch_size=f.batch_size)
    if f.cache_dir:
        options.cache_dir = str(_resolve(f.cache_dir, path.parent))
    arms_file = _resolve(f.arms_file, path.parent) if f.arms_file else None
    out = Path(f.out or f"results/eval/{path.stem}")
    return MatrixSpec(arms=f.arms, test_sets=test_sets, options=options, out=out, arms_file=arms_file,
                      where=str(path))


def resolve_arms(entries: list[Any], arms_file: Path | None, where: str) -> list:
    arms = []
    for i, entry in enumerate(entries):
        if isinstance(entry, dict):
            arms.append(arms_from_config([entry], where=f"{where}: arms[{i}]")[0])
        elif isinstance(entry, str):
            arms.append(resolve_arm(entry, arms_file))
        else:
            raise MatrixSpecError(f"{where}: arms[{i}]: expected a name, a folder or a mapping, got {entry!r}")
    names = [a.name for a in arms]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise MatrixSpecError(f"{where}: arms resolve to duplicate names {dupes}; give inline mappings with distinct names")
    return arms


def run_matrix(spec: MatrixSpec, pool=None, progress: bool = True) -> list[EvalResult]:
    """Evaluate every arm on every test set; writes per-cell outputs and the combined table."""

    arms = resolve_arms(spec.arms, spec.arms_file, spec.where)
    spec.options.progress = progress
    own_pool = pool is None
    if own_pool:
        pool = ArmPool(arms)
    models = ModelCache()
    results: list[EvalResult] = []
    try:
        data = {label: load_dialogues(p) for label, p in spec.test_sets.items()}
        vocab: set[str] = set()
        if spec.options.glove:  # only the words that can occur: gold texts now; replies are added lazily
            for ds in data.values():
                for d in ds[: spec.options.limit] if spec.options.limit else ds:
                    for t in d.turns:
                        vocab.update(tokenize(t.text))
        local = [a for a in arms if a.backend == "local"]
        emb_base = local[0].base if local else None
        embeddings = None
        if spec.options.glove or emb_base:
            embeddings = load_embeddings(spec.options, emb_base, models, vocab)
        results = evaluate_many(pool, arms, {label: (spec.test_sets[label], ds) for label, ds in data.items()},
                                spec.options, models=models, embeddings=embeddings)
        for r in results:
            write_outputs(r, spec.out / _safe(r.data) / r.arm)
    finally:
        if own_pool:
            pool.close()
    write_table(results, spec.out, group_by_data=True)
    return results


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "-", label) or "test"


def write_table(results: list[EvalResult], out: Path, group_by_data: bool) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    md = out / "table.md"
    js = out / "table.json"
    atomic_write(md, markdown_table(results, group_by_data=group_by_data))
    rows = [{"test_set": r.data, "arm": r.arm, **r.metrics, "n_turns": r.payload["data"]["n_turns"],
             "n_dialogues": r.payload["data"]["n_dialogues"]} for r in results]
    atomic_write(js, json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
    return {"markdown": md, "json": js}
