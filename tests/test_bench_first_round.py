"""bench/first_round.py, the baseline of `bench/load.py --baseline`: the transformers path with the first
round's sampling and detokenisation put back. It must run the old code (not today's) and still give the
same replies, or the ratio the load benchmark prints would compare against something else."""

from __future__ import annotations

import importlib.util

import pytest
from models_helpers import tiny_arms, user

import extes.models.scheduler as scheduler
from extes.models import ArmPool
from extes.models.detok import IncrementalDecoder
from extes.testing.tiny import make_tokenizer

MESSAGE = "I feel so alone since the breakup"


@pytest.fixture
def first_round(repo_root, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_first_round", repo_root / "bench" / "first_round.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # install() swaps attributes of extes.models.scheduler; monkeypatch puts today's back after the test
    for name in ("sample_rows", "sample_one", "IncrementalDecoder"):
        monkeypatch.setattr(scheduler, name, getattr(scheduler, name))
    return mod


def _stream(pool, arm, settings=None):
    events = list(pool.stream(arm, user(MESSAGE), settings_override=settings))
    return "".join(ev.delta for ev in events), events[-1].reply


def test_the_baseline_runs_the_first_rounds_sampler_and_gives_the_same_replies(base, adapters, first_round,
                                                                                 monkeypatch):
    arms = tiny_arms(base, adapters)
    with ArmPool(arms, engine="transformers") as today:
        want = {a: _stream(today, a) for a in ("plain", "lora")}
    calls = []
    sample = first_round.first_round_sample
    monkeypatch.setattr(first_round, "first_round_sample", lambda *a: calls.append(1) or sample(*a))
    first_round.install()
    assert scheduler.sample_rows is first_round.first_round_sample_rows
    assert scheduler.IncrementalDecoder is first_round.FullDecoder
    with ArmPool(arms, engine="transformers", max_batch=16) as old:
        for a in ("plain", "lora"):
            shown, reply = _stream(old, a)
            # greedy: the same tokens, the same streamed text
            assert (shown, reply.token_ids, reply.text) == (want[a][0], want[a][1].token_ids, want[a][1].text)
        n_greedy = len(calls)
        assert n_greedy >= sum(len(w[1].token_ids) for w in want.values())  # one call per row and token
        _, sampled = _stream(old, "plain", {"temperature": 0.8, "top_p": 0.9})
        assert sampled.n_tokens > 0 and len(calls) > n_greedy


def test_the_first_rounds_detokeniser_gives_the_full_text(first_round):
    tok = make_tokenizer()
    text = "Ça va? naïve café 😢 日本語 ok"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    old, new = first_round.FullDecoder(tok), IncrementalDecoder(tok)
    for t in ids:
        old.add(t)
        new.add(t)
        assert old.text == tok.decode(old.ids, skip_special_tokens=True)  # the whole reply, every time
    assert old.text == new.text == text
