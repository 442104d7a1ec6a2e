"""The batched local engine and the ArmPool, on a tiny random llama with in-test LoRA adapters."""

from __future__ import annotations

import threading

import pytest
import torch
from models_helpers import GREEDY, tiny_arms, user

from extes.models import Arm, ArmPool, GenerationSettings
from extes.models.pool import MessageError, UnknownArmError, prepare_messages
from extes.models.text import fit_messages, render_prompt, visible_text
from extes.models.types import ContextTooLongError


@pytest.fixture(scope="module")
def pool(base, adapters):
    p = ArmPool(tiny_arms(base, adapters))
    yield p
    p.close()


PROMPTS = ["I feel so alone since the breakup", "hello " * 9, "My boss keeps giving me more work and I am tired"]


def _hf_greedy(model, tok, messages, n):
    ids = torch.tensor([render_prompt(tok, messages)])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                             eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tok.pad_token_id)
    toks = out[0, ids.shape[1]:].tolist()
    end = tok.convert_tokens_to_ids("<|im_end|>")
    return toks[: toks.index(end)] if end in toks else toks


def test_arms_share_one_base_model(pool):
    engines = {id(pool.engine_for(name)) for name in pool.names}
    assert len(engines) == 1
    engine = pool.engine_for("plain")
    assert sorted(engine.runner.fast.adapters[i].path for i in range(2)) == sorted(
        str(pool.arms[n].adapter) for n in ("lora", "strat"))


def test_engine_matches_transformers_generate(pool, base, adapters):
    """Our decode loop gives the same greedy tokens as HF generate on the base and on each adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    plain = AutoModelForCausalLM.from_pretrained(base).eval()
    msgs = prepare_messages(pool.arms["plain"], user(PROMPTS[0]))
    assert pool.generate("plain", user(PROMPTS[0])).token_ids == _hf_greedy(plain, tok, msgs, 12)
    lora = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapters["lora"]).eval()
    assert pool.generate("lora", user(PROMPTS[0])).token_ids == _hf_greedy(lora, tok, msgs, 12)


def test_batched_equals_unbatched_greedy(pool):
    combos = [(arm, p) for arm in ("plain", "lora", "strat") for p in PROMPTS]
    alone = {i: pool.generate(arm, user(p)).token_ids for i, (arm, p) in enumerate(combos)}
    engine = pool.engine_for("plain")
    steps0 = engine.counters.steps
    batched = {}
    for key, ev in pool.stream_many({i: (arm, user(p)) for i, (arm, p) in enumerate(combos)}):
        if ev.done:
            batched[key] = ev.reply.token_ids
    assert batched == alone
    assert all(len(t) > 3 for t in alone.values())
    # nine replies of <= 12 tokens were decoded in (about) 12 batched steps, not 9 x 12
    assert engine.counters.steps - steps0 <= 13
    assert engine.counters.max_rows_seen >= 9


def test_adapters_change_output_and_base_is_untouched(pool):
    base_out = pool.generate("plain", user(PROMPTS[0])).token_ids
    lora_out = pool.generate("lora", user(PROMPTS[0])).token_ids
    assert base_out != lora_out
    # the LoRA arm learnt its training reply; the plain arm (adapter off) did not
    assert pool.generate("lora", user(PROMPTS[0])).text.startswith("That sounds")
    assert not pool.generate("plain", user(PROMPTS[0])).text.startswith("That sounds")


def test_strategy_tag_is_split_off_and_never_streamed(pool):
    events = list(pool.stream("strat", user(PROMPTS[0])))
    reply = events[-1].reply
    assert reply.strategy == "Emotional Validation"
    assert reply.raw_text.startswith("[Emotional Validation]")
    streamed = "".join(e.delta for e in events)
    assert streamed == reply.text
    assert "[" not in streamed and reply.text.startswith("That")
    # the non-strategy arm keeps whatever it writes as text
    assert pool.generate("lora", user(PROMPTS[0])).strategy is None


def test_strategy_of_previous_turns_goes_back_into_context(pool):
    arm = pool.arms["strat"]
    msgs = [{"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello.", "strategy": "Others"},
            {"role": "user", "content": "I am sad"}]
    prepared = prepare_messages(arm, msgs)
    assert prepared[0] == {"role": "system", "content": "Be kind."}
    assert prepared[2]["content"] == "[Others] Hello."
    assert prepare_messages(pool.arms["plain"], msgs)[2]["content"] == "Hello."


def test_visible_text_holds_back_tag_and_partial_text():
    assert visible_text("[Emotional Val", True, final=False) == ""
    assert visible_text("[Emotional Validation]", True, final=False) == ""
    assert visible_text("[Emotional Validation] That", True, final=False) == "That"
    assert visible_text("[Emotional Validation] That is ", True, final=False) == "That is"
    assert visible_text("[Emotional Validation] That is ", True, final=True) == "That is"
    assert visible_text("Hello \ufffd", False, final=False) == "Hello"
    assert visible_text("[Emotional Val", True, final=True) == ""
    assert visible_text("[a note] hi", False, final=True) == "[a note] hi"


def test_truncation_keeps_system_prompt_and_drops_oldest_turns(pool):
    tok = pool.engine_for("plain").tokenizer
    system = {"role": "system", "content": "Be kind."}
    history = []
    for i in range(30):
        history += [{"role": "user", "content": f"message number {i} " * 3},
                    {"role": "assistant", "content": f"reply number {i} " * 3}]
    msgs = [system] + history + [{"role": "user", "content": "the last one"}]
    full = len(render_prompt(tok, msgs))
    ids, dropped = fit_messages(tok, msgs, budget=full // 3)
    assert len(ids) <= full // 3 and dropped > 0 and dropped % 2 == 0  # whole user+assistant pairs
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>system\nBe kind.")
    assert "the last one" in text and "message number 0 " not in text
    kept = [system] + (history + msgs[-1:])[dropped:]
    assert ids == render_prompt(tok, kept)
    assert kept[1]["role"] == "user"
    with pytest.raises(ContextTooLongError, match="last"):
        fit_messages(tok, [system, {"role": "user", "content": "word " * 400}], budget=50)


def test_long_conversation_is_generated_within_the_window(pool):
    history = []
    for i in range(60):
        history += [{"role": "user", "content": f"message {i} " * 4}, {"role": "assistant", "content": "ok " * 6}]
    reply = pool.generate("plain", history + user("and now?"))
    assert reply.dropped_messages > 0
    assert reply.prompt_tokens + reply.n_tokens <= pool.engine_for("plain").window
    with pytest.raises(ContextTooLongError):
        pool.generate("plain", user("word " * 2000))


def test_many_threads_at_once_get_their_own_replies(pool):
    expected = {p: pool.generate("lora", user(p)).token_ids for p in PROMPTS}
    results, errors = [], []

    def worker(i):
        try:
            p = PROMPTS[i % len(PROMPTS)]
            text = ""
            reply = None
            for ev in pool.stream("lora", user(p)):
                text += ev.delta
                reply = ev.reply or reply
            results.append((p, reply.token_ids, text == reply.text))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(results) == 12
    assert all(toks == expected[p] and joined for p, toks, joined in results)


def test_request_joining_mid_flight_gets_same_tokens(base, adapters):
    long = GenerationSettings(max_new_tokens=60, temperature=0.0, repetition_penalty=1.0)
    arms = tiny_arms(base, adapters, settings=long)
    with ArmPool(arms) as p:
        solo_a = p.generate("plain", user(PROMPTS[1])).token_ids
        solo_b = p.generate("lora", user(PROMPTS[2])).token_ids
        it = p.stream("plain", user(PROMPTS[1]))
        first = [next(it), next(it)]
        late = p.generate("lora", user(PROMPTS[2]))  # joins the running batch
        rest = list(it)
        assert rest[-1].reply.token_ids == solo_a
        assert late.token_ids == solo_b
        assert first[0].delta or first[1].delta
        assert p.engine_for("plain").counters.max_rows_seen == 2


def test_cancel_stops_generation(base, adapters):
    long = GenerationSettings(max_new_tokens=200, temperature=0.0, repetition_penalty=1.0)
    with ArmPool(tiny_arms(base, adapters, settings=long)) as p:
        cancel = threading.Event()
        events = []
        for ev in p.stream("plain", user("hi"), cancel=cancel):
            events.append(ev)
            if len(events) == 2:
                cancel.set()
        assert events[-1].done and events[-1].reply.finish_reason == "cancelled"
        assert events[-1].reply.n_tokens < 50
        # closing the iterator early (a client going away) cancels too; the worker is free right after
        it = p.stream("plain", user("hi"))
        next(it)
        it.close()
        assert p.generate("plain", user("hello")).n_tokens > 0


def test_sampling_is_reproducible_with_a_seed(base, adapters):
    seeded = GenerationSettings(max_new_tokens=16, temperature=1.0, top_p=0.95, repetition_penalty=1.2, seed=7)
    with ArmPool(tiny_arms(base, adapters, settings=seeded)) as p:
        a = p.generate("plain", user("hi")).token_ids
        b = p.generate("plain", user("hi")).token_ids
        assert a == b
        other = p.generate_batch("plain", [user("hi")], settings_override={"seed": 8})[0].token_ids
        assert other != a


def test_generate_batch_and_settings_override(pool):
    replies = pool.generate_batch("lora", [user(p) for p in PROMPTS], settings_override={"max_new_tokens": 4})
    assert len(replies) == 3
    assert all(r.n_tokens <= 4 and r.settings["max_new_tokens"] == 4 for r in replies)
    assert [r.token_ids for r in replies] == [pool.generate("lora", user(p)).token_ids[:4] for p in PROMPTS]
    with pytest.raises(ValueError, match="beams: unknown key 'beams'"):
        pool.generate_batch("lora", [user("hi")], settings_override={"beams": 2})


def test_bad_requests_fail_clearly(pool):
    with pytest.raises(UnknownArmError, match="nope"):
        pool.stream("nope", user("hi"))
    with pytest.raises(MessageError, match="non-empty"):
        pool.stream("plain", [])
    with pytest.raises(MessageError, match=r"messages\[0\].role"):
        pool.stream("plain", [{"role": "robot", "content": "x"}])
    with pytest.raises(MessageError, match="last message"):
        pool.stream("plain", [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}])
    with pytest.raises(MessageError, match="content"):
        pool.stream("plain", [{"role": "user", "content": 3}])


def test_stream_many_reports_a_failed_request_and_finishes_the_others(pool):
    got = {}
    for key, ev in pool.stream_many({"ok": ("plain", user("hi")), "bad": ("lora", user("word " * 2000))}):
        if ev.done:
            got[key] = ev
    assert got["ok"].reply is not None and got["ok"].error is None and not got["ok"].failed
    assert got["bad"].reply is None and "ContextTooLong" in got["bad"].error and got["bad"].failed


def test_arm_without_system_prompt_and_gpt2(tiny_gpt2):
    arms = [Arm("g", base=str(tiny_gpt2), system_prompt=None, generation=GREEDY)]
    with ArmPool(arms) as p:
        msgs = prepare_messages(p.arms["g"], user("hi"))
        assert msgs == user("hi")
        a = p.generate("g", user("hi there")).token_ids
        out = {}
        for k, ev in p.stream_many({0: ("g", user("hi there")), 1: ("g", user("a much longer message here"))}):
            if ev.done:
                out[k] = ev.reply.token_ids
        assert out[0] == a


def test_more_requests_than_the_batch_limit_all_complete(base, adapters):
    with ArmPool(tiny_arms(base, adapters), max_batch=2) as p:
        solo = [p.generate("lora", user(f"message {i}")).token_ids for i in range(5)]
        replies = p.generate_batch("lora", [user(f"message {i}") for i in range(5)])
        assert [r.token_ids for r in replies] == solo
        assert p.engine_for("lora").counters.max_rows_seen == 2


def test_a_failing_forward_pass_reaches_the_caller_and_the_worker_goes_on(base, adapters, monkeypatch):
    with ArmPool(tiny_arms(base, adapters)) as p:
        runner = p.engine_for("plain").runner
        real = runner.decode
        calls = {"n": 0}

        def flaky(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("simulated kernel failure")
            return real(*args, **kwargs)

        monkeypatch.setattr(runner, "decode", flaky)
        with pytest.raises(RuntimeError, match="simulated kernel failure"):
            p.generate("plain", user("hi"))
        assert p.generate("plain", user("hi")).n_tokens > 0


def test_llama_adapter_arm_gets_its_own_engine_and_matches_peft(base, tmp_path):
    """Adaption-prompt adapters cannot join PEFT mixed batches: they get a base copy of their own."""
    import json

    from peft import AdaptionPromptConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                                AdaptionPromptConfig(adapter_len=4, adapter_layers=2, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "adaption" in name:
                p.normal_(0, 1.0)
    out = tmp_path / "llama-adapter"
    peft_model.save_pretrained(out)
    (out / "training_config.json").write_text(json.dumps({"base": str(base), "strategies": False}))
    arms = [Arm("plain", base=str(base), system_prompt=None, generation=GREEDY),
            Arm("ad", base=str(base), adapter=str(out), system_prompt=None, generation=GREEDY)]
    with ArmPool(arms) as p:
        assert p.engine_for("plain") is not p.engine_for("ad")
        tok = AutoTokenizer.from_pretrained(base)
        ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out).eval()
        msgs = user("hello there")
        assert p.generate("ad", msgs).token_ids == _hf_greedy(ref, tok, msgs, 12)
        both = {k: ev.reply.token_ids for k, ev in p.stream_many({"a": ("ad", msgs), "p": ("plain", msgs)})
                if ev.done}
        assert both == {"a": p.generate("ad", msgs).token_ids, "p": p.generate("plain", msgs).token_ids}
        assert both["a"] != both["p"]


def _imported_modules(path) -> set[str]:
    import ast

    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_the_scheduler_knows_runners_only_by_their_protocol(repo_root):
    """Composition, not inheritance: the scheduler imports neither runner (nor the libraries behind them),
    and nothing in the engine's modules probes an engine or backend with getattr/hasattr."""
    models = repo_root / "extes" / "models"
    imported = _imported_modules(models / "scheduler.py")
    assert "extes.models.runner" in imported
    forbidden = {"extes.models.fast_runner", "extes.models.transformers_runner", "extes.models.fastllama",
                 "transformers", "peft"}
    assert not {m for m in imported if m.split(".")[0] in forbidden or m in forbidden or
                any(m.startswith(f + ".") for f in forbidden)}
    for name in ("scheduler.py", "pool.py", "engine.py", "engine_process.py", "fast_runner.py", "types.py"):
        text = (models / name).read_text()
        assert "getattr(" not in text and "hasattr(" not in text, name


def test_no_private_names_cross_modules_in_the_models_layer(repo_root):
    for path in sorted((repo_root / "extes" / "models").glob("*.py")):
        own = f"extes.models.{path.stem}."  # engine_process's child imports its own class by module name
        private = {m for m in _imported_modules(path) if m.rsplit(".", 1)[-1].startswith("_")
                   and m.startswith("extes.") and not m.startswith(own)}
        assert not private, (path.name, private)


def test_one_max_batch_default_for_every_engine_entry_point():
    import inspect

    from extes.models import MAX_BATCH
    from extes.models.engine import create_engine
    from extes.models.scheduler import Engine

    for fn in (ArmPool.__init__, create_engine, Engine.__init__):
        assert inspect.signature(fn).parameters["max_batch"].default == MAX_BATCH, fn


def test_create_engine_refuses_an_option_it_does_not_know(base):
    from extes.models.engine import create_engine

    with pytest.raises(TypeError, match="kv_cache_byte"):
        create_engine(str(base), kv_cache_byte=10)


def test_the_tag_patterns_are_compiled_at_load_not_in_the_first_turn(base):
    """Compiling the tag grammar takes about a second; done lazily, it ran in the engine's thread during the
    first turn and held every pane's first token (bench/conversation.py: turn-1 TTFT 0.44 s vs 0.18 s)."""
    from extes import taxonomy
    from extes.models.engine import create_engine

    taxonomy._tag_grammar.cache_clear()
    engine = create_engine(str(base), max_batch=2)
    try:
        assert taxonomy._tag_grammar.cache_info().currsize == 1
    finally:
        engine.close()
