"""Toxicity scores for texts (ExTES paper Table 7): the Perspective API, or a local classifier.

Both scorers return, per text, a probability for each of the paper's six attributes they can give.
`score_texts` averages them over a dataset or a model's replies.

Perspective (key from $PERSPECTIVE_API_KEY): one `comments:analyze` request per text with the six
attributes and `doNotStore: true`; a client-side rate limit (1 request/s by default, Perspective's
default quota); retries with exponential backoff on 429 and 5xx (a `Retry-After` header is honoured);
an error that retrying cannot fix (400 for an unsupported language, an empty text) marks that text
failed and is counted; 401/403 stop the run with the API's message. Scores are cached in SQLite keyed
by a SHA-256 of the text and attributes (texts themselves are never stored or logged), so reruns are free.

Local: any Hugging Face sequence-classification checkpoint folder. Its labels (`config.id2label`) are
mapped to the six attributes by name (e.g. Jigsaw's toxic / severe_toxic / obscene / threat / insult /
identity_hate); `label_map` overrides or adds mappings (e.g. {"LABEL_1": "TOXICITY"}). Multi-label
checkpoints (problem_type multi_label_classification, or several mapped labels) use a sigmoid per label,
single-label ones a softmax.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ATTRIBUTES = ("TOXICITY", "SEVERE_TOXICITY", "IDENTITY_ATTACK", "INSULT", "PROFANITY", "THREAT")
PERSPECTIVE_URL = "https://commentanalyzer.googleapis.com/v1alpha1/comments:analyze"
KEY_ENV = "PERSPECTIVE_API_KEY"

_LABEL_ALIASES = {
    "toxic": "TOXICITY", "toxicity": "TOXICITY", "toxic_comment": "TOXICITY",
    "severe_toxic": "SEVERE_TOXICITY", "severe_toxicity": "SEVERE_TOXICITY", "very_toxic": "SEVERE_TOXICITY",
    "identity_hate": "IDENTITY_ATTACK", "identity_attack": "IDENTITY_ATTACK", "hate": "IDENTITY_ATTACK",
    "insult": "INSULT", "insults": "INSULT",
    "obscene": "PROFANITY", "profanity": "PROFANITY", "sexual_explicit": "PROFANITY",
    "threat": "THREAT", "threats": "THREAT",
}


class ToxicityError(RuntimeError):
    """The scorer cannot run (no key, bad key, unusable classifier)."""


class TextFailed(Exception):
    """This text could not be scored (the reason is safe to show: it never contains the text)."""


def text_key(text: str, attributes: Sequence[str]) -> str:
    return hashlib.sha256(("|".join(attributes) + "\n" + text).encode("utf-8")).hexdigest()


class ScoreCache:
    """SQLite cache: key -> scores JSON. Safe across runs and threads; holds no text."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, scorer TEXT, scores TEXT)")
        self._db.commit()

    def get(self, scorer: str, key: str) -> dict[str, float] | None:
        with self._lock:
            row = self._db.execute("SELECT scores FROM scores WHERE key = ? AND scorer = ?", (key, scorer)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, scorer: str, key: str, scores: dict[str, float]) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO scores VALUES (?, ?, ?)", (key, scorer, json.dumps(scores)))
            self._db.commit()

    def close(self) -> None:
        self._db.close()


class RateLimiter:
    """At most `qps` calls per second (spaced evenly)."""

    def __init__(self, qps: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if qps <= 0:
            raise ValueError(f"qps must be > 0, got {qps}")
        self.interval = 1.0 / qps
        self.clock, self.sleep = clock, sleep
        self._next = 0.0

    def wait(self) -> None:
        now = self.clock()
        if now < self._next:
            self.sleep(self._next - now)
            now = self._next
        self._next = now + self.interval


@dataclass
class PerspectiveScorer:
    """Perspective API client (see module doc). `url` can point at a compatible server (tests)."""

    api_key: str | None = None
    url: str = PERSPECTIVE_URL
    attributes: tuple[str, ...] = ATTRIBUTES
    qps: float = 1.0
    max_retries: int = 5
    backoff_s: float = 1.0
    timeout_s: float = 30.0
    languages: tuple[str, ...] = ("en",)
    sleep: Callable[[float], None] = time.sleep
    stats: dict[str, int] = field(default_factory=lambda: {"requests": 0, "retries": 0})

    name = "perspective"

    def __post_init__(self):
        import httpx

        self.api_key = self.api_key or os.environ.get(KEY_ENV)
        if not self.api_key:
            raise ToxicityError(f"the Perspective API needs a key in ${KEY_ENV}; or pass --classifier PATH "
                                "to use a local Hugging Face toxicity classifier")
        unknown = [a for a in self.attributes if a not in ATTRIBUTES]
        if unknown:
            raise ValueError(f"unknown Perspective attributes {unknown}; expected some of {list(ATTRIBUTES)}")
        self.limiter = RateLimiter(self.qps, sleep=self.sleep)
        self.client = httpx.Client(timeout=self.timeout_s)

    @property
    def describe(self) -> str:
        return f"Perspective API ({self.url.split('?')[0]})"

    def _body(self, text: str) -> dict:
        return {"comment": {"text": text}, "languages": list(self.languages),
                "requestedAttributes": {a: {} for a in self.attributes}, "doNotStore": True}

    @staticmethod
    def _error_message(resp) -> str:
        try:
            err = resp.json().get("error", {})
            return str(err.get("message") or err.get("status") or resp.reason_phrase)
        except ValueError:
            return resp.reason_phrase or f"HTTP {resp.status_code}"

    def score_one(self, text: str) -> dict[str, float]:
        import httpx

        if not text.strip():
            raise TextFailed("empty text")
        attempt = 0
        while True:
            self.limiter.wait()
            self.stats["requests"] += 1
            try:
                resp = self.client.post(self.url, params={"key": self.api_key}, json=self._body(text))
            except httpx.TransportError as exc:
                reason = f"connection error: {type(exc).__name__}"
                resp = None
            if resp is not None:
                if resp.status_code == 200:
                    return self._parse(resp)
                if resp.status_code in (401, 403):
                    raise ToxicityError(f"Perspective API refused the key (HTTP {resp.status_code}): "
                                        f"{self._error_message(resp)}")
                if resp.status_code != 429 and resp.status_code < 500:
                    raise TextFailed(f"HTTP {resp.status_code}: {self._error_message(resp)}")
                reason = f"HTTP {resp.status_code}"
            attempt += 1
            if attempt > self.max_retries:
                raise ToxicityError(f"Perspective API still failing after {self.max_retries} retries ({reason})")
            self.stats["retries"] += 1
            delay = self.backoff_s * (2 ** (attempt - 1))
            if resp is not None and resp.headers.get("retry-after"):
                try:
                    delay = max(delay, float(resp.headers["retry-after"]))
                except ValueError:
                    pass
            self.sleep(delay)

    def _parse(self, resp) -> dict[str, float]:
        try:
            data = resp.json()
            scores = {a: float(data["attributeScores"][a]["summaryScore"]["value"])
                      for a in self.attributes if a in data.get("attributeScores", {})}
        except (ValueError, KeyError, TypeError) as exc:
            raise TextFailed(f"unexpected Perspective response ({type(exc).__name__})") from None
        if not scores:
            raise TextFailed("Perspective response has no attribute scores")
        return scores

    def score(self, texts: Sequence[str]) -> list[dict[str, float] | TextFailed]:
        out: list[dict[str, float] | TextFailed] = []
        for t in texts:
            try:
                out.append(self.score_one(t))
            except TextFailed as exc:
                out.append(exc)
        return out

    def close(self) -> None:
        self.client.close()


class LocalClassifierScorer:
    """A local Hugging Face sequence-classification checkpoint (see module doc)."""

    name = "local"

    def __init__(self, path: str | Path, label_map: dict[str, str] | None = None, batch_size: int = 16,
                 max_length: int = 256, device: str = "cpu"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise ToxicityError(f"--classifier {path}: not a Hugging Face checkpoint folder (no config.json)")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
        self.device, self.batch_size, self.max_length = device, batch_size, max_length
        id2label = {int(k): str(v) for k, v in self.model.config.id2label.items()}
        label_map = dict(label_map or {})
        for label, attr in label_map.items():
            if attr not in ATTRIBUTES:
                raise ValueError(f"--label-map {label}={attr}: {attr} is not one of {list(ATTRIBUTES)}")
            if label not in id2label.values():
                raise ValueError(f"--label-map {label}={attr}: the classifier has no label {label!r} "
                                 f"(its labels: {list(id2label.values())})")
        self.mapping: dict[int, str] = {}
        for i, label in id2label.items():
            attr = label_map.get(label) or _LABEL_ALIASES.get(label.strip().lower().replace(" ", "_").replace("-", "_"))
            if attr and attr not in self.mapping.values():
                self.mapping[i] = attr
        if not self.mapping:
            raise ToxicityError(
                f"--classifier {path}: none of its labels {list(id2label.values())} maps to a toxicity attribute "
                f"({', '.join(ATTRIBUTES)}); give one with --label-map LABEL=ATTRIBUTE"
            )
        problem = getattr(self.model.config, "problem_type", None)
        self.multi_label = problem == "multi_label_classification" or len(self.mapping) > 1
        self.attributes = tuple(a for a in ATTRIBUTES if a in self.mapping.values())
        self.describe = (f"local classifier {path.name} ({'sigmoid' if self.multi_label else 'softmax'}; "
                         + ", ".join(f"{id2label[i]}->{a}" for i, a in sorted(self.mapping.items())) + ")")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def score(self, texts: Sequence[str]) -> list[dict[str, float] | TextFailed]:
        import torch

        out: list[dict[str, float] | TextFailed] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start:start + self.batch_size])
            enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.device)
            with torch.no_grad():
                logits = self.model(**enc).logits.float()
            probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
            for row in probs.tolist():
                out.append({a: float(row[i]) for i, a in self.mapping.items()})
        return out

    def close(self) -> None:
        pass


@dataclass
class ToxicityResult:
    scorer: str
    means: dict[str, float]
    n_texts: int
    n_scored: int
    n_failed: int
    failures: dict[str, int]  # reason -> count
    n_cached: int = 0

    def to_dict(self) -> dict:
        return {"scorer": self.scorer, "means": self.means, "n_texts": self.n_texts, "n_scored": self.n_scored,
                "n_failed": self.n_failed, "failures": self.failures, "n_cached": self.n_cached}


def score_texts(scorer, texts: Iterable[str], cache: ScoreCache | None = None,
                progress: bool = False) -> ToxicityResult:
    """Mean score per attribute over `texts` (failed texts are counted and left out of the means)."""
    texts = list(texts)
    attrs = tuple(scorer.attributes)
    cache_name = f"{scorer.name}:{getattr(scorer, 'describe', '')}"
    results: list[dict[str, float] | TextFailed | None] = [None] * len(texts)
    keys = [text_key(t, attrs) for t in texts]
    todo = []
    n_cached = 0
    for i, k in enumerate(keys):
        hit = cache.get(cache_name, k) if cache is not None else None
        if hit is not None:
            results[i] = hit
            n_cached += 1
        else:
            todo.append(i)
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="text", desc="toxicity")
    step = 1 if scorer.name == "perspective" else getattr(scorer, "batch_size", 16)
    for s in range(0, len(todo), step):
        idx = todo[s:s + step]
        for i, r in zip(idx, scorer.score([texts[i] for i in idx])):
            results[i] = r
            if cache is not None and isinstance(r, dict):
                cache.put(cache_name, keys[i], r)
        if bar:
            bar.update(len(idx))
    if bar:
        bar.close()
    sums = {a: 0.0 for a in attrs}
    counts = {a: 0 for a in attrs}
    failures: dict[str, int] = {}
    for r in results:
        if isinstance(r, TextFailed):
            failures[str(r)] = failures.get(str(r), 0) + 1
            continue
        for a, v in (r or {}).items():
            if a in sums:
                sums[a] += v
                counts[a] += 1
    means = {a: (sums[a] / counts[a] if counts[a] else math.nan) for a in attrs}
    n_failed = sum(failures.values())
    return ToxicityResult(getattr(scorer, "describe", scorer.name), means, len(texts), len(texts) - n_failed,
                          n_failed, failures, n_cached)


def make_scorer(classifier: str | None = None, label_map: dict[str, str] | None = None, perspective_url: str | None = None,
                qps: float = 1.0, max_retries: int = 5):
    """A local classifier when `classifier` is given, else Perspective (needs $PERSPECTIVE_API_KEY);
    a clear error when neither is available."""
    if classifier:
        return LocalClassifierScorer(classifier, label_map=label_map)
    if not os.environ.get(KEY_ENV):
        raise ToxicityError(f"no toxicity scorer: set ${KEY_ENV} for the Perspective API, or pass --classifier PATH "
                            "(a Hugging Face sequence-classification checkpoint folder, e.g. a toxic-comment model)")
    return PerspectiveScorer(url=perspective_url or PERSPECTIVE_URL, qps=qps, max_retries=max_retries)
