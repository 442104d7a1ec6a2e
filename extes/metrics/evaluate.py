"""`extes evaluate`: one arm x one test set -> the ExTES paper's automatic metrics (Table 6 row).

For every assistant turn of every test dialogue that follows at least one user turn, the arm generates
a reply from the gold history (batched through `ArmPool.generate_batch`, greedy by default); the reply
is scored against the gold reply (METEOR, BLEU-2/4, ROUGE-L, Vector Extrema, Distinct-1/2/3; see
docs/metrics.md). PPL is the gold replies' perplexity under the arm's model (local arms only).

Generated replies are cached in a JSONL file per (arm, test set, generation settings), appended after
every batch, so an interrupted or repeated run only generates what is missing. The cache key covers the
arm's definition (base, adapter weights' hash, system prompt, strategies), the test file's content hash
and the generation settings; a different `--limit` reuses the same cache (turns are keyed by dialogue id
and turn index).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extes.base.embedded import EMBEDDED_NAME
from extes.base.loading import load_base
from extes.dialogue import Dialogue, atomic_write, file_sha256, load_dialogues
from extes.llm.journal import Journal, read_journal
from extes.metrics.extrema import GloveEmbeddings, ModelEmbeddings
from extes.metrics.overlap import bleu_detail
from extes.metrics.perplexity import perplexity
from extes.metrics.registry import EXTRA_COLUMNS, TABLE_COLUMNS, Scoring, score_texts
from extes.metrics.text import tokenize
from extes.metrics.wordnet import find_wordnet
from extes.models import arms_from_config, load_arms
from extes.models.arms import read_adapter_info

RESULTS_VERSION = 1
log = logging.getLogger(__name__)


@dataclass
class EvalOptions:
    limit: int | None = None  # first N dialogues of the test file
    greedy: bool = True  # temperature 0 (the arm's other settings are kept)
    settings: dict[str, Any] = field(default_factory=dict)  # extra generation overrides (e.g. max_new_tokens)
    batch_size: int = 8  # turns per generate_batch call (and per cache append); arms run concurrently
    ppl: bool = True
    ppl_tag: str = "context"  # strategy arms: gold tag as context ("context") or scored too ("scored")
    ppl_max_length: int = 1024
    ppl_batch_size: int = 4
    glove: str | None = None
    wordnet: str | None = None  # folder, "none", or None = search (extes.metrics.wordnet)
    cache_dir: str = "results/eval/cache"
    progress: bool = True


@dataclass
class Item:
    dialogue_id: str
    turn: int
    messages: list[dict[str, str]]
    gold: str
    gold_strategy: str | None

    @property
    def key(self) -> str:
        return f"{self.dialogue_id}#{self.turn}"


# ----------------------------------------------------------------------------------------------------------
# Arms


def resolve_arm(spec: str, arms_file: str | Path | None = None):
    """An Arm from a name in `arms_file`, a `results/runs/<name>` / `results/adapters/<name>` folder (or
    any PEFT adapter folder), a checkpoint folder, or the embedded model's name."""

    if arms_file:
        arms = load_arms(arms_file)
        for arm in arms:
            if arm.name == spec:
                return arm
        if not Path(spec).exists():
            raise ValueError(f"--arm {spec!r}: no arm of that name in {arms_file} (arms: {[a.name for a in arms]})")
    path = Path(spec).expanduser()
    if path.is_dir():
        entry: dict[str, Any] = {"name": _arm_name(path)}
        trained = path / "training_config.json"
        if trained.is_file():  # a run of `extes train`: evaluate with the system prompt it was trained with
            try:
                tc = json.loads(trained.read_text())
            except ValueError as exc:
                raise ValueError(f"{trained}: not valid JSON ({exc})") from None
            if isinstance(tc, dict) and "system_prompt" in tc:
                entry["system_prompt"] = tc["system_prompt"]
        if (path / "adapter_config.json").is_file():
            info = read_adapter_info(path)
            entry["adapter"] = str(path.resolve())
            if info.get("base"):
                entry["base"] = info["base"]
            return arms_from_config([entry], where=f"--arm {spec}")[0]
        if (path / "config.json").is_file():
            if trained.is_file():
                try:
                    entry["strategies"] = bool(json.loads(trained.read_text()).get("strategies", False))
                except (ValueError, AttributeError):
                    pass
            return arms_from_config([{**entry, "base": str(path.resolve())}], where=f"--arm {spec}")[0]
        raise FileNotFoundError(f"--arm {spec}: folder has neither adapter_config.json (an adapter from `extes "
                                "train`) nor config.json (a model checkpoint)")
    if spec.strip().lower() == EMBEDDED_NAME:
        return arms_from_config([{"name": EMBEDDED_NAME}], where="--arm")[0]
    raise ValueError(f"--arm {spec!r}: not an arm name (give --arms FILE), an adapter or checkpoint folder, "
                     f"or the embedded model {EMBEDDED_NAME!r}")


def _arm_name(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_.:\-]", "-", path.resolve().name)[:64]
    return name if name and name[0].isalnum() else f"arm-{name}"[:64]



def arm_fingerprint(arm) -> dict[str, Any]:
    """What identifies an arm's replies: its definition (not its name) plus a hash of its adapter weights."""
    d = arm.to_dict()
    d.pop("generation", None)  # settings are keyed separately
    for key in ("name", "timeout_s", "max_retries", "api_key_env"):
        d.pop(key, None)
    if arm.adapter:
        folder = Path(arm.adapter)
        weights = sorted(folder.glob("adapter_model.*"))
        d["adapter_weights"] = {w.name: file_sha256(w) for w in weights}
    return d


def generation_settings(arm, options: EvalOptions) -> dict[str, Any]:
    override = dict(options.settings)
    if options.greedy:
        override["temperature"] = 0.0
    return arm.generation.updated(override, where="evaluate settings").to_dict()


# ----------------------------------------------------------------------------------------------------------
# Data


def build_items(dialogues: Sequence[Dialogue], strategies: bool) -> tuple[list[Item], int]:
    """Generation requests from the gold history, and how many assistant turns were skipped because no
    user turn precedes them (an opening greeting has nothing to respond to)."""
    items: list[Item] = []
    skipped = 0
    for d in dialogues:
        history: list[dict[str, str]] = []
        seen_user = False
        for i, t in enumerate(d.turns):
            if t.role == "assistant":
                if seen_user:
                    items.append(Item(d.id, i, [dict(m) for m in history], t.text, t.strategy))
                else:
                    skipped += 1
                msg = {"role": "assistant", "content": t.text}
                if strategies and t.strategy:
                    msg["strategy"] = t.strategy
                history.append(msg)
            else:
                seen_user = True
                history.append({"role": "user", "content": t.text})
    return items, skipped


# ----------------------------------------------------------------------------------------------------------
# Generation with a resumable cache


def cache_path(cache_dir: str | Path, arm, data_sha: str, settings: dict[str, Any]) -> Path:
    key = json.dumps({"arm": arm_fingerprint(arm), "data": data_sha, "settings": settings}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{arm.name}-{digest}.jsonl"
    if not path.exists():  # the same model and settings cached under another arm name
        others = sorted(Path(cache_dir).glob(f"*-{digest}.jsonl")) if Path(cache_dir).is_dir() else []
        if others:
            return others[0]
    return path


def read_cache(path: Path) -> dict[str, dict[str, Any]]:
    """Cached replies by item key (records of the cache's `Journal`)."""
    return {rec["key"]: rec for rec in read_journal(path, required="key")}


def generate(pool, arm, items: Sequence[Item], settings: dict[str, Any], cache: Path, batch_size: int = 8,
             progress: bool = True, position: int = 0) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Replies for `items` (cached ones reused), and timing of the new generation.

    Turns are generated in order of history length, so each batch pads its prompts to similar lengths."""
    journal = Journal(cache, torn="drop")  # a torn last line (a crash mid-write) is dropped
    done = read_cache(cache)
    todo = sorted((it for it in items if it.key not in done),
                  key=lambda it: sum(len(m["content"]) for m in it.messages))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), initial=len(items) - len(todo), unit="turn", desc=f"generate {arm.name}",
                   dynamic_ncols=True, position=position, leave=True)
    t0 = time.perf_counter()
    n_tokens = 0
    override = {k: settings[k] for k in ("max_new_tokens", "temperature", "top_p", "repetition_penalty", "seed")
                if k in settings}
    try:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            replies = pool.generate_batch(arm.name, [it.messages for it in chunk], settings_override=override)
            if len(replies) != len(chunk):
                raise RuntimeError(f"arm {arm.name}: asked for {len(chunk)} replies, got {len(replies)}")
            records = []
            for it, r in zip(chunk, replies):
                rec = {"key": it.key, "dialogue_id": it.dialogue_id, "turn": it.turn, "reply": r.text,
                       "strategy": r.strategy, "n_tokens": r.n_tokens, "finish_reason": r.finish_reason,
                       "latency_s": round(r.latency_s, 4)}
                records.append(rec)
                done[it.key] = rec
                n_tokens += r.n_tokens
            journal.append_records(records)
            if bar:
                bar.update(len(chunk))
    finally:
        journal.close()
        if bar:
            bar.close()
    elapsed = time.perf_counter() - t0
    timing = {"n_generated": len(todo), "n_cached": len(items) - len(todo), "generation_s": round(elapsed, 2),
              "turns_per_s": round(len(todo) / elapsed, 3) if todo and elapsed > 0 else None,
              "tokens_per_s": round(n_tokens / elapsed, 2) if todo and elapsed > 0 else None}
    return done, timing


# ----------------------------------------------------------------------------------------------------------
# Scoring


class ModelCache:
    """Loads each (base, adapter) once per run for PPL and the default Extrema embeddings."""

    def __init__(self):
        self._bases: dict[str, tuple[Any, Any]] = {}
        self._embeddings: dict[str, Any] = {}

    def base(self, base: str):
        if base not in self._bases:
            self._bases[base] = load_base(base)
        return self._bases[base]

    def embeddings(self, base: str):
        if base not in self._embeddings:
            model, tok = self.base(base)
            name = base if not Path(base).exists() else Path(base).name
            self._embeddings[base] = ModelEmbeddings(model.get_input_embeddings().weight, tok, name)
        return self._embeddings[base]

    def arm_ppl(self, arm, dialogues, options: EvalOptions):
        """Gold-reply perplexity of a local arm. An adapter is put on the cached base for the computation
        and taken off again (PEFT `unload`), so one base copy serves every arm."""

        model, tok = self.base(arm.base)
        wrapped = None
        if arm.adapter:
            from peft import PeftModel

            wrapped = PeftModel.from_pretrained(model, arm.adapter, is_trainable=False)
            wrapped.eval()
        try:
            return perplexity(wrapped or model, tok, dialogues, strategies=arm.strategies, tag=options.ppl_tag,
                              system_prompt=arm.system_prompt, max_length=options.ppl_max_length,
                              batch_size=options.ppl_batch_size)
        finally:
            if wrapped is not None:
                self._bases[arm.base] = (wrapped.unload(), tok)


def text_metrics(hyps: Sequence[str], refs: Sequence[str], embeddings, wordnet) -> dict[str, Any]:
    """All reference/diversity metrics on raw texts; returns {"metrics": ..., "details": ...}."""
    h = [tokenize(x) for x in hyps]
    r = [tokenize(x) for x in refs]
    warnings = empty_reply_warnings(h, r)
    for w in warnings:
        log.warning(w)
    # `--predictions` without --glove or --arm: no word vectors without loading a model (Extrema is None)
    scoring = Scoring(h, r, wordnet.reader, embeddings)
    metrics: dict[str, Any] = score_texts(scoring)
    n_empty = scoring.extrema[1]
    dist = {n: scoring.distinct(n) for n in (1, 2, 3)}
    details = {
        "tokenizer": "lower-cased; rule-based sentence split + NLTK NLTKWordTokenizer (extes.metrics.text)",
        "meteor": {"implementation": "nltk.translate.meteor_score, mean over replies", "wordnet": wordnet.source,
                   "synonyms": wordnet.available},
        "bleu": bleu_detail(h),
        "empty": {"replies": sum(1 for x in h if not x), "gold": sum(1 for x in r if not x), "of": len(h)},
        "rouge_l": "rouge-score LCS F-measure, mean over replies",
        "extrema": {"embeddings": embeddings.describe if embeddings is not None else
                    "not computed: no word vectors (give --glove FILE, or --arm for its base model's)",
                    "replies_without_known_words": n_empty},
        "distinct": {f"D-{n}": {"corpus": "distinct n-grams / n-grams over all replies",
                                "avg": "mean over replies of distinct / n-grams",
                                "n_ngrams": d.n_ngrams, "n_distinct": d.n_distinct,
                                "replies_too_short_for_avg": d.skipped_short} for n, d in dist.items()},
    }
    if warnings:
        details["warnings"] = warnings
    return {"metrics": metrics, "details": details}


def empty_reply_warnings(hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[str]]) -> list[str]:
    """Warnings, with counts, when replies (or gold replies) have no token: they are scored as they are
    (no overlap, nothing for Distinct), which an all-empty set turns into 0.00 everywhere."""
    n = len(hyps)
    empty = sum(1 for x in hyps if not x)
    gold = sum(1 for x in refs if not x)
    out = []
    if n and empty == n:
        out.append(f"all {n} replies are empty (no token): every metric below scores nothing that was said "
                   "(0.00 or undefined); check the generation, not the model's quality")
    elif empty:
        out.append(f"{empty} of {n} replies are empty (no token); they are scored as they are: no overlap with "
                   "their gold reply, nothing for Distinct")
    if gold:
        out.append(f"{gold} of {n} gold replies are empty (no token); METEOR scores their replies 0")
    return out


def load_embeddings(options: EvalOptions, base: str, models: ModelCache, vocabulary: set[str]):
    if options.glove:
        return GloveEmbeddings(options.glove, vocabulary=vocabulary)
    return models.embeddings(base)


def finite_or_none(x):
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


@dataclass
class EvalResult:
    arm: str
    data: str
    metrics: dict[str, Any]
    payload: dict[str, Any]
    replies: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return self.payload


@dataclass
class Job:
    """One (arm, test set) cell, prepared: which turns to generate and where their cache lives."""

    arm: Any
    data_path: Path
    data_label: str
    data_sha: str
    all_dialogues: list[Dialogue]
    chosen: list[Dialogue]
    items: list[Item]
    skipped: int
    settings: dict[str, Any]
    cache: Path
    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)


def prepare_job(arm, data_path: str | Path, options: EvalOptions, dialogues: list[Dialogue] | None = None,
                data_label: str | None = None) -> Job:
    data_path = Path(data_path)
    all_dialogues = dialogues if dialogues is not None else load_dialogues(data_path)
    if not all_dialogues:
        raise ValueError(f"{data_path}: no dialogues")
    if options.limit is not None and options.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {options.limit}")
    chosen = all_dialogues[: options.limit] if options.limit else all_dialogues
    data_sha = file_sha256(data_path) if data_path.is_file() else hashlib.sha256(
        json.dumps([d.to_dict() for d in all_dialogues], sort_keys=True).encode()).hexdigest()
    items, skipped = build_items(chosen, arm.strategies)
    if not items:
        raise ValueError(f"{data_path}: no assistant turn that follows a user turn in the {len(chosen)} dialogue(s)")
    settings = generation_settings(arm, options)
    cache = cache_path(options.cache_dir, arm, data_sha, settings)
    return Job(arm, data_path, data_label or data_path.stem, data_sha, all_dialogues, chosen, items, skipped,
               settings, cache)


def run_generation(pool, jobs: Sequence[Job], options: EvalOptions) -> None:
    """Generate every job's missing replies. Jobs run in parallel threads, so arms on one base share the
    engine's forward passes (PEFT mixes adapters in one batch); the first error is raised."""

    errors: list[BaseException] = []

    def work(job: Job, position: int) -> None:
        try:
            job.done, job.timing = generate(pool, job.arm, job.items, job.settings, job.cache, options.batch_size,
                                            options.progress, position=position)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    if len(jobs) == 1:
        work(jobs[0], 0)
    else:
        threads = [threading.Thread(target=work, args=(job, i), daemon=True) for i, job in enumerate(jobs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]


def score_job(job: Job, options: EvalOptions, models: ModelCache | None = None, embeddings=None) -> EvalResult:
    """Score a job whose replies are generated."""

    models = models or ModelCache()
    arm = job.arm
    replies = []
    for it in job.items:
        rec = job.done[it.key]
        replies.append({"dialogue_id": it.dialogue_id, "turn": it.turn, "reply": rec["reply"], "gold": it.gold,
                        "strategy": rec.get("strategy"), "gold_strategy": it.gold_strategy,
                        "n_tokens": rec.get("n_tokens"), "finish_reason": rec.get("finish_reason")})
    hyps = [r["reply"] for r in replies]
    refs = [r["gold"] for r in replies]
    if embeddings is None:
        vocab = {w for t in hyps + refs for w in tokenize(t)} if options.glove else set()
        embeddings = load_embeddings(options, arm.base, models, vocab)
    wordnet = find_wordnet(options.wordnet)
    scored = text_metrics(hyps, refs, embeddings, wordnet)
    metrics = scored["metrics"]
    details = scored["details"]

    if options.ppl and arm.backend == "local":
        t0 = time.perf_counter()
        res = models.arm_ppl(arm, job.chosen, options)
        metrics = {"PPL": res.ppl, **metrics}
        details["ppl"] = {"scored_tokens": res.n_tokens, "windows": res.n_windows, "nll_sum": round(res.nll_sum, 4),
                          "strategy_tag": (options.ppl_tag if arm.strategies else "n/a (arm without strategies)"),
                          "definition": "exp(mean NLL over gold assistant tokens incl. end-of-turn)",
                          "seconds": round(time.perf_counter() - t0, 2)}
    else:
        metrics = {"PPL": None, **metrics}
        details["ppl"] = "not computed: " + ("--no-ppl" if not options.ppl else "an openai arm has no local weights")

    if arm.strategies:
        pairs = [(r["strategy"], r["gold_strategy"]) for r in replies if r["gold_strategy"]]
        details["strategy_accuracy"] = (sum(1 for p, g in pairs if p == g) / len(pairs)) if pairs else None

    payload = {
        "version": RESULTS_VERSION,
        "arm": {k: v for k, v in arm.to_dict().items() if k not in ("api_key_env",)},
        "adapter_weights_sha256": arm_fingerprint(arm).get("adapter_weights"),
        "data": {"path": str(job.data_path), "label": job.data_label, "sha256": job.data_sha,
                 "n_dialogues": len(job.chosen), "n_dialogues_in_file": len(job.all_dialogues),
                 "limit": options.limit, "n_turns": len(job.items), "skipped_opening_turns": job.skipped},
        "generation": {"settings": job.settings, "greedy": options.greedy, "cache": str(job.cache), **job.timing},
        "metrics": {k: finite_or_none(v) for k, v in metrics.items()},
        "details": details,
    }
    return EvalResult(arm.name, job.data_label, payload["metrics"], payload, replies)


def evaluate_arm(pool, arm, data_path: str | Path, options: EvalOptions, models: ModelCache | None = None,
                 embeddings=None, dialogues: list[Dialogue] | None = None, data_label: str | None = None) -> EvalResult:
    """Generate (or reuse) replies for one arm on one test file and score them."""
    job = prepare_job(arm, data_path, options, dialogues, data_label)
    run_generation(pool, [job], options)
    return score_job(job, options, models, embeddings)


def evaluate_many(pool, arms: Sequence[Any], data: dict[str, tuple[Path, list[Dialogue]]], options: EvalOptions,
                  models: ModelCache | None = None, embeddings=None) -> list[EvalResult]:
    """Every arm on every test set: per test set, all arms generate at once, then each cell is scored.
    Results are ordered by test set, then arm."""
    models = models or ModelCache()
    results = []
    for label, (path, dialogues) in data.items():
        jobs = [prepare_job(arm, path, options, dialogues, label) for arm in arms]
        run_generation(pool, jobs, options)
        results += [score_job(job, options, models, embeddings) for job in jobs]
    return results


# ----------------------------------------------------------------------------------------------------------
# Output


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def markdown_table(results: Sequence[EvalResult], group_by_data: bool = False) -> str:
    """The paper's columns; D-n is corpus-level, D-n avg the per-response mean (both labelled below)."""
    head = (["Test set"] if group_by_data else []) + ["Model", *TABLE_COLUMNS, *EXTRA_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in results:
        cells = ([r.data] if group_by_data else []) + [r.arm] + [_fmt(r.metrics.get(c)) for c in TABLE_COLUMNS + EXTRA_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    first = results[0].payload if results else {}
    if first:
        d = first["details"]
        notes.append("METEOR, B-2, B-4, R-L, Extrema, D-n: x100. D-n = distinct n-grams / all n-grams over all "
                     "replies (corpus-level); D-n avg = mean over replies of the same ratio.")
        for r in results:
            dist = r.payload["details"].get("distinct", {})
            short = {k: v.get("replies_too_short_for_avg") for k, v in dist.items()}
            if any(short.values()):
                notes.append(f"D-n avg of {r.arm} ({r.data}) leaves out the replies too short for an n-gram: "
                             + ", ".join(f"{k} {v}" for k, v in short.items()) + f" of {r.payload.get('data', {}).get('n_turns', len(r.replies))}.")
            for w in r.payload["details"].get("warnings", []):
                notes.append(f"Warning ({r.arm}, {r.data}): {w}.")
        notes.append(f"METEOR WordNet: {d['meteor']['wordnet']}.")
        notes.append(f"Extrema embeddings: {d['extrema']['embeddings']}.")
        s = first["generation"]["settings"]
        if first["arm"].get("predictions"):
            notes.append(f"Replies: external predictions from {first['arm']['predictions']} (no model generated them).")
        else:
            notes.append("Generation: " + ", ".join(f"{k}={v}" for k, v in s.items()) + " (temperature 0 = greedy).")
        if isinstance(d.get("ppl"), str):
            notes.append(f"PPL {d['ppl']}.")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def write_outputs(result: EvalResult, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "replies": out / "replies.jsonl"}
    atomic_write(paths["json"], json.dumps(result.payload, indent=2, ensure_ascii=False) + "\n")
    atomic_write(paths["markdown"], markdown_table([result]))
    atomic_write(paths["replies"], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result.replies))
    return paths
