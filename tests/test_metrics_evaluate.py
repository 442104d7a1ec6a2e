"""Perplexity and `extes evaluate` end to end on a tiny random llama (and a random LoRA adapter on it)."""

import json
import math

import pytest

from extes.dialogue import Dialogue, Turn, write_jsonl

DIALOGUES = [
    Dialogue("d1", "test", "Breakups or Divorce", "", [
        Turn("assistant", "Hi, I am here to listen.", "Others"),
        Turn("user", "I feel so alone since the breakup."),
        Turn("assistant", "That sounds really painful.", "Emotional Validation"),
        Turn("user", "I cannot sleep at night."),
        Turn("assistant", "Would it help to talk about what happened?", "Clarification"),
    ]),
    Dialogue("d2", "test", "Work-related Stress and Burnout", "", [
        Turn("user", "My boss keeps giving me more work."),
        Turn("assistant", "You have been carrying a lot.", "Reflective Statements"),
        Turn("user", "Thank you, that helps."),
        Turn("assistant", "What would a small break look like for you?", "Suggest Options"),
    ]),
    Dialogue("d3", "test", "Breakups or Divorce", "", [
        Turn("user", "I think I will call my sister tonight."),
        Turn("assistant", "That sounds like a kind thing to do for yourself.", "Affirmation"),
    ]),
]


@pytest.fixture(scope="module")
def test_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "test.jsonl"
    write_jsonl(DIALOGUES, path)
    return path


@pytest.fixture(scope="module")
def strategy_adapter(tiny_llama, tmp_path_factory):
    """A random (non-zero) LoRA adapter on the tiny llama, saved like `extes train` saves one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("runs") / "tiny-lora-strategies"
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    peft.save_pretrained(out)
    (out / "training_config.json").write_text(json.dumps({"base": str(tiny_llama), "strategies": True}))
    return out


def _direct_ppl(model, examples):
    """exp(mean NLL) over labelled tokens, one example at a time, no padding, log-softmax by hand."""
    import torch

    nll, n = 0.0, 0
    with torch.no_grad():
        for ids, labels in examples:
            logits = model(input_ids=torch.tensor([ids])).logits[0]
            logp = torch.log_softmax(logits.double(), dim=-1)
            for t in range(1, len(ids)):
                if labels[t] != -100:
                    nll -= float(logp[t - 1, labels[t]])
                    n += 1
    return math.exp(nll / n), n


def test_perplexity_equals_exp_mean_token_nll(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from extes.metrics.perplexity import encode_for_ppl, perplexity

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    res = perplexity(model, tok, DIALOGUES, batch_size=2)  # batches of unequal lengths: padding must not matter
    expected, n = _direct_ppl(model, encode_for_ppl(tok, DIALOGUES, strategies=False))
    assert res.n_tokens == n
    assert res.ppl == pytest.approx(expected, rel=1e-4)
    # scored = every gold reply (all 6 assistant turns) plus its end-of-turn token, nothing else
    replies = [t.text for d in DIALOGUES for t in d.turns if t.role == "assistant"]
    assert n == sum(len(tok(r + "<|im_end|>", add_special_tokens=False)["input_ids"]) for r in replies)


def test_strategy_tag_is_context_not_scored_by_default(tiny_llama):
    from transformers import AutoTokenizer

    from extes.metrics.perplexity import encode_for_ppl

    tok = AutoTokenizer.from_pretrained(tiny_llama)
    ctx = encode_for_ppl(tok, DIALOGUES[1:2], strategies=True, tag="context")
    scored = encode_for_ppl(tok, DIALOGUES[1:2], strategies=True, tag="scored")
    ids, labels = ctx[0]
    text = tok.decode([i for i, lab in zip(ids, labels) if lab != -100])
    assert "[" not in text and "You have been carrying a lot." in text
    all_text = tok.decode([i for i, lab in zip(*scored[0]) if lab != -100])
    assert all_text.startswith("[Reflective Statements]")
    with pytest.raises(ValueError):
        encode_for_ppl(tok, DIALOGUES, strategies=True, tag="maybe")


def test_build_items_uses_gold_history_and_skips_openers():
    from extes.metrics.evaluate import build_items

    items, skipped = build_items(DIALOGUES, strategies=True)
    assert skipped == 1 and len(items) == 5
    first = items[0]
    assert (first.dialogue_id, first.turn, first.gold) == ("d1", 2, "That sounds really painful.")
    assert first.messages[0] == {"role": "assistant", "content": "Hi, I am here to listen.", "strategy": "Others"}
    assert first.messages[-1]["role"] == "user"


def _options(tmp_path, **kw):
    """Seeded sampling: greedy decoding of a random tiny model emits only special tokens (empty replies)."""
    from extes.metrics.evaluate import EvalOptions

    return EvalOptions(settings={"max_new_tokens": 12, "temperature": 1.0, "seed": 3}, greedy=False, batch_size=2,
                       cache_dir=str(tmp_path / "cache"), progress=False, **kw)


def test_greedy_by_default_keeps_other_arm_settings(tiny_llama):
    from extes.metrics.evaluate import EvalOptions, generation_settings, resolve_arm

    arm = resolve_arm(str(tiny_llama))
    s = generation_settings(arm, EvalOptions(settings={"max_new_tokens": 7}))
    assert s == {**arm.generation.to_dict(), "temperature": 0.0, "max_new_tokens": 7}
    assert generation_settings(arm, EvalOptions(greedy=False)) == arm.generation.to_dict()


def test_evaluate_end_to_end_with_cache_and_resume(tiny_llama, strategy_adapter, test_file, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from extes.metrics.evaluate import ModelCache, evaluate_arm, resolve_arm, write_outputs
    from extes.metrics.perplexity import perplexity
    from extes.models import ArmPool

    base = resolve_arm(str(tiny_llama))
    lora = resolve_arm(str(strategy_adapter))
    assert lora.strategies and lora.adapter
    models = ModelCache()
    with ArmPool([base, lora]) as pool:
        r1 = evaluate_arm(pool, lora, test_file, _options(tmp_path), models=models)
        assert r1.payload["generation"]["n_generated"] == 5
        assert r1.payload["generation"]["settings"]["seed"] == 3
        for col in ("PPL", "METEOR", "B-2", "B-4", "R-L", "Extrema", "D-1", "D-2", "D-3", "D-1 avg"):
            assert r1.metrics[col] is not None, col
        assert "input embeddings" in r1.payload["details"]["extrema"]["embeddings"]
        # PPL through the adapter equals a direct computation with the adapter applied
        from peft import PeftModel

        m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), str(strategy_adapter)).eval()
        tok = AutoTokenizer.from_pretrained(tiny_llama)
        direct = perplexity(m, tok, DIALOGUES, strategies=True).ppl
        assert r1.metrics["PPL"] == pytest.approx(direct, rel=1e-4)
        # the adapter came off again: the base arm's PPL is the plain model's
        r_base = evaluate_arm(pool, base, test_file, _options(tmp_path), models=models)
        plain = perplexity(AutoModelForCausalLM.from_pretrained(tiny_llama).eval(), tok, DIALOGUES).ppl
        assert r_base.metrics["PPL"] == pytest.approx(plain, rel=1e-4)
        assert r_base.metrics["PPL"] != pytest.approx(r1.metrics["PPL"], rel=1e-3)

        # a rerun generates nothing and gives the same numbers, also under another arm name
        r2 = evaluate_arm(pool, lora, test_file, _options(tmp_path), models=models)
        assert r2.payload["generation"]["n_generated"] == 0 and r2.metrics == r1.metrics
        import dataclasses

        renamed = evaluate_arm(pool, dataclasses.replace(lora, name="renamed"), test_file, _options(tmp_path),
                               models=models)
        assert renamed.payload["generation"]["n_generated"] == 0 and renamed.metrics == r1.metrics

        # an interrupted run (two replies written, then a torn line) resumes with the missing three
        cache = tmp_path / "cache"
        (f,) = [p for p in cache.iterdir() if p.name.startswith(lora.name)]
        lines = f.read_text().splitlines(keepends=True)
        f.write_text("".join(lines[:2]) + lines[2][:10])
        r3 = evaluate_arm(pool, lora, test_file, _options(tmp_path), models=models)
        assert r3.payload["generation"]["n_generated"] == 3
        assert [r["reply"] for r in r3.replies[:2]] == [r["reply"] for r in r1.replies[:2]]
        assert len(f.read_text().splitlines()) == 5

        # other settings -> another cache entry
        r4 = evaluate_arm(pool, lora, test_file, _options(tmp_path, limit=1), models=models)
        assert r4.payload["generation"]["n_generated"] == 0 and r4.payload["data"]["n_turns"] == 2

    paths = write_outputs(r1, tmp_path / "out")
    replies = [json.loads(x) for x in paths["replies"].read_text().splitlines()]
    assert len(replies) == 5 and all("[" not in r["reply"][:1] for r in replies)
    md = paths["markdown"].read_text()
    assert "| Model | PPL | METEOR | B-2 | B-4 | R-L | Extrema | D-1 | D-2 | D-3 |" in md
    assert json.loads(paths["json"].read_text())["data"]["skipped_opening_turns"] == 1


def test_cli_evaluate_and_matrix(tiny_llama, strategy_adapter, test_file, tmp_path, capsys):
    from extes.cli import main

    out = tmp_path / "eval"
    argv = ["evaluate", "--arm", str(tiny_llama), "--data", str(test_file), "--out", str(out), "--max-new-tokens",
            "4", "--no-progress", "--cache-dir", str(tmp_path / "cache"), "--wordnet", "none"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| Model | PPL |" in printed and "exact and stem" not in printed
    result = json.loads((out / "results.json").read_text())
    assert result["details"]["meteor"]["synonyms"] is False

    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"arms: [{tiny_llama}, {strategy_adapter}]\n"
        f"test_sets:\n  A: {test_file}\n  B: {test_file}\n"
        f"limit: 2\nsettings: {{max_new_tokens: 4}}\nout: {tmp_path / 'matrix'}\ncache_dir: {tmp_path / 'cache'}\n"
    )
    assert main(["evaluate", "--matrix", str(spec), "--no-progress", "--json"]) == 0
    rows = json.loads((tmp_path / "matrix" / "table.json").read_text())
    assert [(r["test_set"], r["arm"]) for r in rows] == [
        ("A", tiny_llama.name), ("A", strategy_adapter.name), ("B", tiny_llama.name), ("B", strategy_adapter.name)]
    table = (tmp_path / "matrix" / "table.md").read_text()
    assert table.startswith("| Test set | Model | PPL |")


def test_cli_errors_are_clear(tmp_path, capsys, test_file):
    from extes.cli import main

    assert main(["evaluate", "--arm", str(tmp_path / "nope"), "--data", str(test_file)]) == 2
    assert "--arm" in capsys.readouterr().err
    assert main(["evaluate", "--data", str(test_file)]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("arms: [x]\ntest_sets: {A: missing.jsonl}\n")
    assert main(["evaluate", "--matrix", str(bad)]) == 2
    assert "missing.jsonl does not exist" in capsys.readouterr().err


def test_resolve_arm_reads_training_runs(tiny_llama, strategy_adapter, tmp_path):
    import shutil

    from extes.metrics.evaluate import resolve_arm

    run = tmp_path / "runs" / "clm-run"
    shutil.copytree(tiny_llama, run)
    (run / "training_config.json").write_text(json.dumps({"base": "x", "strategies": True, "system_prompt": "Be kind."}))
    arm = resolve_arm(str(run))
    assert (arm.name, arm.base, arm.adapter, arm.strategies, arm.system_prompt) == (
        "clm-run", str(run.resolve()), None, True, "Be kind.")
    lora = resolve_arm(str(strategy_adapter))
    assert lora.base == str(tiny_llama) and lora.strategies
    arms_file = tmp_path / "arms.yaml"
    arms_file.write_text(f"arms:\n  - name: mine\n    base: {tiny_llama}\n")
    assert resolve_arm("mine", arms_file).name == "mine"
    with pytest.raises(ValueError, match="no arm of that name"):
        resolve_arm("other", arms_file)
    with pytest.raises(FileNotFoundError, match="neither adapter_config.json"):
        resolve_arm(str(tmp_path))


def _write_predictions(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOLD_KEYS = [("d1", 2), ("d1", 4), ("d2", 1), ("d2", 3), ("d3", 1)]  # assistant turns after a user turn


def test_predictions_are_scored_like_generated_replies_without_a_model(test_file, tmp_path, capsys, monkeypatch):
    from extes.cli import main
    from extes.metrics.distinct import distinct
    from extes.metrics.overlap import bleu, meteor, rouge_l
    from extes.metrics.text import tokenize

    def no_model(*_a, **_k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("extes.base.loading.load_base", no_model)
    monkeypatch.setattr("extes.metrics.evaluate.load_base", no_model)  # imported at module level there
    gold = {(d.id, i): t.text for d in DIALOGUES for i, t in enumerate(d.turns)}
    replies = {k: f"I hear you. {gold[k].split()[0]} friend" for k in GOLD_KEYS}
    preds = _write_predictions(tmp_path / "vllm.jsonl", [
        {"dialogue_id": d, "turn": t, "reply": replies[(d, t)]} for d, t in reversed(GOLD_KEYS)])
    out = tmp_path / "out"
    assert main(["evaluate", "--predictions", str(preds), "--data", str(test_file), "--out", str(out),
                 "--json", "--wordnet", "none"]) == 0
    payload = json.loads(capsys.readouterr().out)
    h = [tokenize(replies[k]) for k in GOLD_KEYS]
    r = [tokenize(gold[k]) for k in GOLD_KEYS]
    m = payload["metrics"]
    assert m["B-2"] == pytest.approx(bleu(h, r, 2)) and m["B-4"] == pytest.approx(bleu(h, r, 4))
    assert m["R-L"] == pytest.approx(rouge_l(h, r)) and m["METEOR"] == pytest.approx(meteor(h, r))
    assert m["D-2"] == pytest.approx(distinct(h, 2).corpus)
    assert m["PPL"] is None and "unavailable" in payload["details"]["ppl"]
    assert m["Extrema"] is None and "--glove" in payload["details"]["extrema"]["embeddings"]
    assert payload["data"]["n_turns"] == 5 and payload["arm"]["name"] == "vllm"
    assert (out / "results.md").read_text().count("PPL unavailable") == 1
    written = [json.loads(x) for x in (out / "replies.jsonl").read_text().splitlines()]
    assert [(x["dialogue_id"], x["turn"]) for x in written] == GOLD_KEYS


def test_predictions_errors_name_missing_extra_and_duplicate_keys(test_file, tmp_path, capsys):
    from extes.cli import main

    rows = [{"dialogue_id": d, "turn": t, "reply": "ok"} for d, t in GOLD_KEYS]
    cases = [
        (rows[1:], "missing predictions for 1 gold assistant turn(s): d1#2"),
        (rows + [{"dialogue_id": "d1", "turn": 0, "reply": "hi"}], "1 extra prediction(s)"),
        (rows + [{"dialogue_id": "zz", "turn": 3, "reply": "hi"}], "zz#3 (line 6)"),
        (rows + [rows[0]], "line 6: duplicate prediction for d1#2 (first on line 1)"),
        (rows[:2] + [{"dialogue_id": "d2", "reply": "x"}], "line 3: missing field(s) turn"),
        (rows[:2] + [{"dialogue_id": "d2", "turn": "1", "reply": "x"}], "'turn' must be a non-negative integer"),
    ]
    for i, (content, message) in enumerate(cases):
        preds = _write_predictions(tmp_path / f"p{i}.jsonl", content)
        assert main(["evaluate", "--predictions", str(preds), "--data", str(test_file),
                     "--out", str(tmp_path / f"o{i}")]) == 2
        err = capsys.readouterr().err
        assert message in err, (message, err)
        assert not (tmp_path / f"o{i}").exists()
    # --limit 1 scores d1 only, and ignores (does not reject) the predictions for d2 and d3
    preds = _write_predictions(tmp_path / "all.jsonl", rows)
    assert main(["evaluate", "--predictions", str(preds), "--data", str(test_file), "--limit", "1",
                 "--out", str(tmp_path / "lim"), "--json", "--wordnet", "none"]) == 0
    assert json.loads(capsys.readouterr().out)["data"]["n_turns"] == 2


def test_predictions_with_an_arm_report_its_gold_ppl(tiny_llama, test_file, tmp_path, capsys):
    from extes.cli import main

    preds = _write_predictions(tmp_path / "p.jsonl",
                               [{"dialogue_id": d, "turn": t, "reply": "that is hard"} for d, t in GOLD_KEYS])
    assert main(["evaluate", "--predictions", str(preds), "--data", str(test_file), "--arm", str(tiny_llama),
                 "--out", str(tmp_path / "o"), "--json", "--wordnet", "none", "--no-progress"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["metrics"]["PPL"] > 1 and payload["metrics"]["Extrema"] is not None
    assert "under --arm" in payload["details"]["ppl"]["definition"]
