"""Toxicity scorers: the Perspective client against a loopback server that mimics the API, and a local
classifier built here from a tiny random checkpoint."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from extes.metrics.toxicity import (
    ATTRIBUTES,
    LocalClassifierScorer,
    PerspectiveScorer,
    RateLimiter,
    ScoreCache,
    ToxicityError,
    make_scorer,
    score_texts,
)


class FakePerspective(BaseHTTPRequestHandler):
    """comments:analyze lookalike. Behaviour by text: 'busy' -> 429 twice then OK, 'flaky' -> 500 once,
    'klingon' -> 400 (unsupported language); key 'bad' -> 403. Score = len(text) / 100."""

    calls: list[dict] = []
    failures_left: dict[str, int] = {}

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, code, payload, headers=None):
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append({"path": self.path, "body": body})
        text = body["comment"]["text"]
        if "key=bad" in self.path:
            return self._send(403, {"error": {"code": 403, "message": "API key not valid.", "status": "PERMISSION_DENIED"}})
        left = type(self).failures_left
        if text in left and left[text] > 0:
            left[text] -= 1
            if text == "busy":
                return self._send(429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}, {"Retry-After": "0"})
            return self._send(500, {"error": {"code": 500, "message": "backend error"}})
        if text == "klingon":
            return self._send(400, {"error": {"code": 400, "message": "Attribute TOXICITY does not support request languages: tlh"}})
        scores = {a: {"summaryScore": {"value": len(text) / 100, "type": "PROBABILITY"}}
                  for a in body["requestedAttributes"]}
        self._send(200, {"attributeScores": scores, "languages": ["en"]})


@pytest.fixture()
def perspective_url():
    FakePerspective.calls = []
    FakePerspective.failures_left = {"busy": 2, "flaky": 1}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakePerspective)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1alpha1/comments:analyze"
    server.shutdown()
    server.server_close()


def _scorer(url, key="k", **kw):
    sleeps = []
    s = PerspectiveScorer(api_key=key, url=url, qps=1000, backoff_s=0.01, sleep=sleeps.append, **kw)
    return s, sleeps


def test_perspective_scores_six_attributes_and_averages(perspective_url):
    scorer, _ = _scorer(perspective_url)
    result = score_texts(scorer, ["abcd", "abcdefgh"])
    assert result.means == {a: pytest.approx(0.06) for a in ATTRIBUTES}
    assert (result.n_scored, result.n_failed) == (2, 0)
    body = FakePerspective.calls[0]["body"]
    assert set(body["requestedAttributes"]) == set(ATTRIBUTES)
    assert body["doNotStore"] is True and "key=k" in FakePerspective.calls[0]["path"]


def test_perspective_retries_429_and_5xx_then_succeeds(perspective_url):
    scorer, sleeps = _scorer(perspective_url)
    result = score_texts(scorer, ["busy", "flaky"])
    assert result.n_scored == 2
    assert scorer.stats["retries"] == 3
    assert len([s for s in sleeps if s > 0]) >= 3  # backoff slept between retries


def test_perspective_gives_up_after_max_retries(perspective_url):
    FakePerspective.failures_left = {"busy": 10}
    scorer, _ = _scorer(perspective_url, max_retries=2)
    with pytest.raises(ToxicityError, match="after 2 retries"):
        score_texts(scorer, ["busy"])


def test_perspective_language_error_counts_text_as_failed(perspective_url):
    scorer, _ = _scorer(perspective_url)
    result = score_texts(scorer, ["klingon", "fine", "  "])
    assert (result.n_scored, result.n_failed) == (1, 2)
    assert any("does not support request languages" in r for r in result.failures)
    assert result.means["TOXICITY"] == pytest.approx(0.04)


def test_perspective_bad_key_is_a_clear_error(perspective_url):
    scorer, _ = _scorer(perspective_url, key="bad")
    with pytest.raises(ToxicityError, match="API key not valid"):
        score_texts(scorer, ["hello"])


def test_perspective_cache_avoids_repeat_requests_and_stores_no_text(perspective_url, tmp_path):
    cache = ScoreCache(tmp_path / "tox.sqlite")
    scorer, _ = _scorer(perspective_url)
    first = score_texts(scorer, ["a private sentence", "another one"], cache=cache)
    n = len(FakePerspective.calls)
    again = score_texts(scorer, ["a private sentence", "another one"], cache=cache)
    assert len(FakePerspective.calls) == n and again.n_cached == 2 and again.means == first.means
    cache.close()
    assert b"private sentence" not in (tmp_path / "tox.sqlite").read_bytes()


def test_rate_limiter_spaces_requests():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    limiter = RateLimiter(2.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        limiter.wait()
    assert slept == [pytest.approx(0.5), pytest.approx(0.5)]


def test_no_scorer_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("PERSPECTIVE_API_KEY", raising=False)
    with pytest.raises(ToxicityError, match="PERSPECTIVE_API_KEY.*--classifier"):
        make_scorer()


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from extes.testing.tiny import make_tokenizer

    out = tmp_path_factory.mktemp("tox-clf")
    tok = make_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, pad_token_id=tok.pad_token_id,
                         id2label={0: "toxic", 1: "obscene", 2: "neutral"},
                         label2id={"toxic": 0, "obscene": 1, "neutral": 2},
                         problem_type="multi_label_classification")
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_local_classifier_maps_labels_and_scores(tiny_classifier):
    import torch

    scorer = LocalClassifierScorer(tiny_classifier, batch_size=2)
    assert scorer.attributes == ("TOXICITY", "PROFANITY") and scorer.multi_label
    texts = ["you are wonderful", "I hate this", "ok"]
    result = score_texts(scorer, texts)
    assert result.n_scored == 3
    # same as running the model by hand on each text alone (padding must not change the scores)
    single = []
    for t in texts:
        enc = scorer.tokenizer([t], return_tensors="pt")
        with torch.no_grad():
            single.append(torch.sigmoid(scorer.model(**enc).logits)[0, 0].item())
    assert result.means["TOXICITY"] == pytest.approx(sum(single) / 3, abs=1e-5)


def test_local_classifier_label_map_and_unmappable_labels(tiny_classifier):
    scorer = LocalClassifierScorer(tiny_classifier, label_map={"neutral": "THREAT"})
    assert "THREAT" in scorer.attributes
    with pytest.raises(ValueError, match="no label 'LABEL_9'"):
        LocalClassifierScorer(tiny_classifier, label_map={"LABEL_9": "TOXICITY"})
    with pytest.raises(ToxicityError, match="not a Hugging Face checkpoint"):
        LocalClassifierScorer(tiny_classifier / "nope")


def test_cli_toxicity_with_local_classifier(tiny_classifier, tmp_path, capsys):
    from extes.cli import main
    from extes.dialogue import Dialogue, Turn, write_jsonl

    data = tmp_path / "d.jsonl"
    write_jsonl([Dialogue("x", "t", "", "", [Turn("user", "I hate this"), Turn("assistant", "I hear you.")])], data)
    replies = tmp_path / "arm-a" / "replies.jsonl"
    replies.parent.mkdir()
    replies.write_text(json.dumps({"reply": "That sounds hard."}) + "\n" + json.dumps({"reply": "ok"}) + "\n")
    out = tmp_path / "tox"
    argv = ["toxicity", "--data", str(data), "--role", "assistant", "--replies", str(replies), "--classifier",
            str(tiny_classifier), "--out", str(out), "--cache", str(tmp_path / "c.sqlite"), "--no-progress"]
    assert main(argv) == 0
    rows = json.loads((out / "toxicity.json").read_text())
    assert [(r["source"], r["n_scored"]) for r in rows] == [("d.jsonl (assistant turns)", 1), ("arm-a (replies)", 2)]
    assert "| Source | TOXICITY | PROFANITY |" in capsys.readouterr().out

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": 1}\n')
    assert main(["toxicity", "--replies", str(bad), "--classifier", str(tiny_classifier)]) == 2
    assert "line 1" in capsys.readouterr().err


def test_cli_toxicity_without_any_scorer_fails_clearly(tmp_path, capsys, monkeypatch):
    from extes.cli import main

    monkeypatch.delenv("PERSPECTIVE_API_KEY", raising=False)
    replies = tmp_path / "replies.jsonl"
    replies.write_text(json.dumps({"reply": "hi"}) + "\n")
    assert main(["toxicity", "--replies", str(replies), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "PERSPECTIVE_API_KEY" in err and "--classifier" in err
