"""`extes evaluate --predictions FILE`: score replies generated elsewhere (vLLM, an API, another paper's
released outputs) against the gold turns of `--data`, without loading a model.

The file is JSONL, one reply per line: ``{"dialogue_id": "...", "turn": 4, "reply": "..."}``. ``turn`` is
the 0-based index of the gold assistant turn in its dialogue, as in the ``replies.jsonl`` that
`extes evaluate` writes (so those files are valid input). Every assistant turn that follows a user turn
must have exactly one prediction; a missing key, an extra key (no such assistant turn) and a duplicate are
errors that name the keys and lines. With ``--limit N`` only the first N dialogues are scored and
predictions for later dialogues of the file are ignored.

PPL is the gold replies' perplexity under a model, so it is reported unavailable unless ``--arm`` names a
local arm (its base and adapter are then loaded for PPL only; nothing is generated). Vector Extrema needs
word vectors: ``--glove FILE``, or the ``--arm``'s base model's input embeddings; otherwise it is
reported unavailable too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extes.dialogue import Dialogue, file_sha256
from extes.metrics.evaluate import (
    RESULTS_VERSION,
    EvalOptions,
    EvalResult,
    ModelCache,
    build_items,
    finite_or_none,
    text_metrics,
)
from extes.metrics.extrema import GloveEmbeddings
from extes.metrics.text import tokenize
from extes.metrics.wordnet import find_wordnet

_SHOW = 5  # keys listed in an error message


class PredictionsError(ValueError):
    """A predictions file that does not match the gold turns; the message names keys and lines."""


@dataclass(frozen=True)
class Prediction:
    dialogue_id: str
    turn: int
    reply: str
    line: int

    @property
    def key(self) -> str:
        return f"{self.dialogue_id}#{self.turn}"


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f" and {len(keys) - _SHOW} more" if len(keys) > _SHOW else "")


def load_predictions(path: str | Path) -> dict[str, Prediction]:
    """Predictions by key ``"<dialogue_id>#<turn>"``; malformed lines and duplicates are errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--predictions {path}: no such file")
    out: dict[str, Prediction] = {}
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as exc:
                raise PredictionsError(f"{path}: line {n}: not valid JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise PredictionsError(f"{path}: line {n}: expected an object with dialogue_id, turn, reply")
            missing = [k for k in ("dialogue_id", "turn", "reply") if k not in rec]
            if missing:
                raise PredictionsError(f"{path}: line {n}: missing field(s) {', '.join(missing)} "
                                       "(each line: {\"dialogue_id\", \"turn\", \"reply\"})")
            turn = rec["turn"]
            if isinstance(turn, bool) or not isinstance(turn, int) or turn < 0:
                raise PredictionsError(f"{path}: line {n}: 'turn' must be a non-negative integer (the gold "
                                       f"assistant turn's index in its dialogue), got {turn!r}")
            if not isinstance(rec["reply"], str):
                raise PredictionsError(f"{path}: line {n}: 'reply' must be a string")
            pred = Prediction(str(rec["dialogue_id"]), turn, rec["reply"], n)
            if pred.key in out:
                raise PredictionsError(f"{path}: line {n}: duplicate prediction for {pred.key} "
                                       f"(first on line {out[pred.key].line})")
            out[pred.key] = pred
    if not out:
        raise PredictionsError(f"{path}: no predictions")
    return out


def match_predictions(predictions: dict[str, Prediction], dialogues: list[Dialogue], chosen: list[Dialogue],
                      where: str) -> list[tuple[Any, Prediction]]:
    """Pair every gold turn of ``chosen`` with its prediction; missing and extra keys are errors.

    "Extra" is checked against every dialogue of the file (``dialogues``), so ``--limit`` ignores the
    predictions for dialogues it leaves out instead of calling them extra.
    """
    items, _ = build_items(chosen, strategies=False)
    all_items, _ = build_items(dialogues, strategies=False)
    known = {it.key for it in all_items}
    extra = [k for k in predictions if k not in known]
    missing = [it.key for it in items if it.key not in predictions]
    problems = []
    if missing:
        problems.append(f"missing predictions for {len(missing)} gold assistant turn(s): {_listing(missing)}")
    if extra:
        lines = [f"{k} (line {predictions[k].line})" for k in extra]
        problems.append(f"{len(extra)} extra prediction(s) with no gold assistant turn after a user turn in "
                        f"the data: {_listing(lines)}")
    if problems:
        raise PredictionsError(f"{where}: " + "; ".join(problems) + " (keys are dialogue_id#turn, turn = "
                               "0-based index of the assistant turn in its dialogue)")
    return [(it, predictions[it.key]) for it in items]


def score_predictions(predictions_path: str | Path, data_path: str | Path, dialogues: list[Dialogue],
                      options: EvalOptions, arm=None, models: ModelCache | None = None,
                      name: str | None = None) -> EvalResult:
    """Score the replies in ``predictions_path`` against the gold turns of ``dialogues``."""

    predictions_path, data_path = Path(predictions_path), Path(data_path)
    if not dialogues:
        raise PredictionsError(f"{data_path}: no dialogues")
    chosen = dialogues[: options.limit] if options.limit else dialogues
    pairs = match_predictions(load_predictions(predictions_path), dialogues, chosen,
                              f"--predictions {predictions_path} vs --data {data_path}")
    if not pairs:
        raise PredictionsError(f"{data_path}: no assistant turn that follows a user turn")
    hyps = [p.reply for _, p in pairs]
    refs = [it.gold for it, _ in pairs]
    models = models or ModelCache()
    if options.glove:
        embeddings = GloveEmbeddings(options.glove, vocabulary={w for t in hyps + refs for w in tokenize(t)})
    elif arm is not None and arm.backend == "local":
        embeddings = models.embeddings(arm.base)
    else:
        embeddings = None
    scored = text_metrics(hyps, refs, embeddings, find_wordnet(options.wordnet))
    metrics, details = scored["metrics"], scored["details"]
    if arm is not None and arm.backend == "local" and options.ppl:
        res = models.arm_ppl(arm, chosen, options)
        metrics = {"PPL": res.ppl, **metrics}
        details["ppl"] = {"scored_tokens": res.n_tokens, "arm": arm.name,
                          "definition": "exp(mean NLL over gold assistant tokens incl. end-of-turn) under --arm; "
                                        "the predictions themselves were generated elsewhere"}
    else:
        metrics = {"PPL": None, **metrics}
        details["ppl"] = ("unavailable: scoring --predictions needs no model; give --arm ARM (a local arm) "
                          "for the gold replies' perplexity under it" if arm is None or arm.backend == "local"
                          else "unavailable: an openai arm has no local weights")
    label = name or (arm.name if arm is not None else predictions_path.stem)
    replies = [{"dialogue_id": it.dialogue_id, "turn": it.turn, "reply": p.reply, "gold": it.gold,
                "gold_strategy": it.gold_strategy} for it, p in pairs]
    payload = {
        "version": RESULTS_VERSION,
        "arm": {"name": label, "predictions": str(predictions_path),
                "predictions_sha256": file_sha256(predictions_path)},
        "data": {"path": str(data_path), "label": data_path.stem, "sha256": file_sha256(data_path)
                 if data_path.is_file() else None, "n_dialogues": len(chosen),
                 "n_dialogues_in_file": len(dialogues), "limit": options.limit, "n_turns": len(pairs)},
        "generation": {"settings": {"source": "external predictions"}, "greedy": None},
        "metrics": {k: finite_or_none(v) for k, v in metrics.items()},
        "details": details,
    }
    return EvalResult(label, data_path.stem, payload["metrics"], payload, replies)
