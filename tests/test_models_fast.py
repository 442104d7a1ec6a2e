"""The fast engine's pieces against the references: the compact LLaMA forward = transformers (fp32,
greedy, token for token), gathered multi-LoRA = PEFT, kept KV cache = no cache, prepacked = public ops."""

from __future__ import annotations

import torch
from models_helpers import GREEDY, SYSTEM, tiny_arms, user

from extes.models import ArmPool, GenerationSettings
from extes.models.engine import create_engine
from extes.models.fast_runner import FastRunner
from extes.models.fastllama import (
    Block,
    FastLlama,
    Kernel,
    adapter_unsupported_reason,
    load_lora,
    unsupported_reason,
)
from extes.models.text import render_prompt
from extes.models.transformers_runner import TransformersRunner

PROMPTS = ["I feel so alone since the breakup", "hello " * 9, "My boss keeps giving me more work and I am tired"]


def _prompt_ids(tok, text):
    return render_prompt(tok, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}])


def _hf_greedy(model, ids, n):
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                             eos_token_id=None, pad_token_id=0, min_new_tokens=n)
    return out[0, len(ids):].tolist()


def _fast_greedy(fast, ids, n, adapter=-1):
    kv = fast.new_kv(1, len(ids) + n)
    ra = None if adapter < 0 else torch.tensor([adapter])
    with torch.inference_mode():
        logits = fast.forward(torch.tensor([ids]), torch.tensor([0]), kv, ra)
        out = []
        pos = len(ids)
        for _ in range(n):
            t = int(logits[0].argmax())
            out.append(t)
            logits = fast.forward(torch.tensor([[t]]), torch.tensor([pos]), kv, ra)
            pos += 1
    return out


def test_fast_forward_equals_transformers_fp32(base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    hf = AutoModelForCausalLM.from_pretrained(base).eval()
    fast = FastLlama(hf, [], dtype=torch.float32)
    assert isinstance(fast.layers[0], Block) and fast.layers[0].qkv.kernel.out_features > 0  # named, not a tuple
    for text in PROMPTS:
        ids = _prompt_ids(tok, text)
        ref = _hf_greedy(hf, ids, 24)
        assert _fast_greedy(fast, ids, 24) == ref
        assert len(set(ref)) > 3  # varied output, so the comparison means something
    # the logits themselves agree closely (fp32 rounding only)
    ids = torch.tensor([_prompt_ids(tok, PROMPTS[0])])
    with torch.no_grad():
        want = hf(ids).logits[0, -1]
        got = fast.forward(ids, torch.tensor([0]), fast.new_kv(1, ids.shape[1]), None)[0]
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)


def test_gathered_lora_equals_peft_with_mixed_adapters_in_one_batch(base, adapters):
    """Rows with adapter 0, adapter 1 and no adapter in one forward pass give PEFT's logits per row."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    paths = [adapters["lora"], adapters["lora-strat"]]
    fast = FastLlama(AutoModelForCausalLM.from_pretrained(base).eval(), [load_lora(p) for p in paths])
    refs = [PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), p).eval() for p in paths]
    plain = AutoModelForCausalLM.from_pretrained(base).eval()
    models = {0: refs[0], 1: refs[1], -1: plain}
    rows = [(PROMPTS[0], 0), (PROMPTS[1], -1), (PROMPTS[2], 1), (PROMPTS[0], 1)]
    prompts = [_prompt_ids(tok, t) for t, _ in rows]
    # greedy tokens, each row alone vs PEFT
    for ids, (_, a) in zip(prompts, rows):
        assert _fast_greedy(fast, ids, 12, a) == _hf_greedy(models[a], ids, 12)
    # one batched decode step over all four rows at once (different lengths, different adapters)
    b = len(rows)
    cap = max(map(len, prompts)) + 1
    kv = fast.new_kv(b, cap)
    firsts = []
    with torch.inference_mode():
        for i, ids in enumerate(prompts):
            own = [buf[:, i:i + 1] for buf in kv]
            ra = None if rows[i][1] < 0 else torch.tensor([rows[i][1]])
            firsts.append(int(fast.forward(torch.tensor([ids]), torch.tensor([0]), own, ra)[0].argmax()))
        step = fast.forward(torch.tensor([[t] for t in firsts]), torch.tensor([len(p) for p in prompts]), kv,
                            torch.tensor([a for _, a in rows]))
    for i, (ids, (_, a)) in enumerate(zip(prompts, rows)):
        with torch.no_grad():
            want = models[a](torch.tensor([ids + [firsts[i]]])).logits[0, -1]
        assert torch.allclose(step[i], want, atol=1e-4, rtol=1e-4), i
    # a batch whose rows have no adapter skips LoRA: same result as a model without adapters
    no_lora = FastLlama(plain, [])
    with torch.inference_mode():
        x = torch.tensor([prompts[1]])
        a = fast.forward(x, torch.tensor([0]), fast.new_kv(1, x.shape[1]), None)
        c = no_lora.forward(x, torch.tensor([0]), no_lora.new_kv(1, x.shape[1]), None)
    assert torch.equal(a, c)


def test_prepacked_kernels_and_their_public_fallback_agree():
    gen = torch.Generator().manual_seed(0)
    w, b = torch.randn(96, 64, generator=gen), torch.randn(96, generator=gen)
    x = torch.randn(3, 64, generator=gen)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        public = Kernel(w, b, dtype, prepack=False)
        packed = Kernel(w, b, dtype, prepack=True)
        assert public.packed_with == "F.linear"
        ref = torch.nn.functional.linear(x.to(dtype), w.to(dtype)).float() + b
        assert torch.allclose(public(x), ref, atol=tol, rtol=tol)
        assert torch.allclose(packed(x), ref, atol=tol * 10, rtol=tol * 10)


def test_prepack_falls_back_when_the_private_op_is_missing(monkeypatch):
    import extes.models.fastllama as fl

    def broken(w):
        raise RuntimeError("no such op")

    monkeypatch.setattr(fl, "_mkldnn_pack", broken)
    monkeypatch.setattr(fl, "_mkl_pack", broken)
    w = torch.randn(8, 4)
    for dtype in (torch.float32, torch.bfloat16):
        k = Kernel(w, None, dtype, prepack=True)
        assert k.packed_with == "F.linear"
        assert torch.allclose(k(torch.ones(2, 4)), torch.nn.functional.linear(torch.ones(2, 4).to(dtype),
                                                                              w.to(dtype)).float())


def test_which_models_and_adapters_take_the_fast_path(tiny_gpt2, base, adapters, tmp_path):
    from transformers import AutoConfig

    assert unsupported_reason(AutoConfig.from_pretrained(base)) is None
    assert "gpt2" in unsupported_reason(AutoConfig.from_pretrained(tiny_gpt2))
    assert adapter_unsupported_reason(adapters["lora"]) is None
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA", "use_dora": true}')
    assert "DoRA" in adapter_unsupported_reason(tmp_path)
    eng = create_engine(str(tiny_gpt2), dtype="auto")
    try:
        assert isinstance(eng.runner, TransformersRunner) and eng.engine_version == "transformers-2"
    finally:
        eng.close()


DROPPED: list[int] = []


def _conversation_turns(pool, arm, n_turns, trim):
    """Greedy replies over n_turns; the stored reply is the visible text (optionally cut short, like
    sentence trimming), so the next prompt's ids differ from the generated ones."""
    msgs = []
    texts = []
    for turn in range(n_turns):
        msgs.append({"role": "user", "content": f"turn {turn}: " + PROMPTS[turn % 3]})
        reply = pool.generate(arm, msgs)
        texts.append(reply.token_ids)
        DROPPED.append(reply.dropped_messages)
        content = reply.text[: max(1, len(reply.text) // 2)] if trim and turn % 2 else reply.text
        msgs.append({"role": "assistant", "content": content})
    return texts


def test_kept_kv_cache_gives_the_same_greedy_output_over_12_turns(base, adapters):
    settings = GenerationSettings(max_new_tokens=10, temperature=0.0, repetition_penalty=1.0)
    arms = tiny_arms(base, adapters, settings=settings)
    with ArmPool(arms, max_context=256) as cached, ArmPool(arms, max_context=256, kv_cache_bytes=0) as fresh:
        eng = cached.engine_for("lora")
        for arm in ("plain", "lora"):
            for trim in (False, True):
                a = _conversation_turns(cached, arm, 12, trim)
                b = _conversation_turns(fresh, arm, 12, trim)
                assert a == b, (arm, trim)
        assert eng.runner.kv_cache.stats.hits >= 20 and eng.runner.kv_cache.stats.reused_tokens > 500
        assert fresh.engine_for("lora").runner.kv_cache.stats.hits == 0
        # the window (256) forced truncation of the oldest turns on the way (only the system prompt's
        # keys/values could be reused for those turns), and the output still matched
        assert max(DROPPED) >= 2


def test_cached_turn_prefills_only_the_new_tokens(base, adapters):
    with ArmPool(tiny_arms(base, adapters)) as p:
        eng = p.engine_for("lora")
        msgs = user(PROMPTS[0])
        first = p.generate("lora", msgs)
        msgs = msgs + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "thanks"}]
        before = eng.counters.prefill_tokens
        second = p.generate("lora", msgs)
        new = eng.counters.prefill_tokens - before
        assert second.cached_prompt_tokens > first.prompt_tokens // 2
        assert new == second.prompt_tokens - second.cached_prompt_tokens
        assert new < second.prompt_tokens // 2
        # another adapter never reuses this adapter's keys/values
        assert p.generate("strat", msgs).cached_prompt_tokens == 0
        assert second.engine_version == "extes-fast-2" and second.dtype in ("float32", "bfloat16")


def test_requests_that_arrive_together_share_their_common_beginning(base, adapters):
    """Every first turn starts with its arm's system prompt. Requests admitted in the same round ask the
    kept cache when their own prefill starts, after the earlier ones stored their prompts, so only the first
    prefills the shared beginning; the output is the same as with no cache at all."""
    import os

    msgs = {f"m{i}": ("lora", user(text)) for i, text in enumerate(PROMPTS + ["I cannot sleep at night"])}

    def run(pool):
        got = {}
        for key, ev in pool.stream_many(msgs):
            if ev.done:
                got[key] = ev.reply
        return got

    with ArmPool(tiny_arms(base, adapters), kv_cache_bytes=0) as p:
        ref = run(p)
    with ArmPool(tiny_arms(base, adapters)) as p:
        eng = p.engine_for("lora")
        got = run(p)
        prompts = [_prompt_ids(eng.tokenizer, m[1][0]["content"]) for m in msgs.values()]
        common = len(os.path.commonprefix(prompts))
        assert common > 5
        cached = sorted(r.cached_prompt_tokens for r in got.values())
        assert cached[0] == 0 and all(c >= common for c in cached[1:]), cached
        assert eng.counters.prefill_tokens == sum(r.prompt_tokens - r.cached_prompt_tokens for r in got.values())
    assert {k: r.token_ids for k, r in got.items()} == {k: r.token_ids for k, r in ref.items()}


def test_prefix_cache_budget_evicts_least_recently_used():
    from extes.models.kvcache import PrefixCache

    def kv(n):
        return [torch.zeros(2, 1, n, 4)]

    per = 2 * 1 * 4 * 4  # bytes per token
    c = PrefixCache(budget_bytes=per * 25)
    c.store(None, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], kv(10))
    c.store("a", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], kv(10))
    assert c.lookup(None, [1, 2, 3, 9]) [0] == 3
    c.store(None, [5] * 10, kv(10))  # over budget: evicts the least recently used ("a")
    assert len(c) == 2 and c.stats.evictions == 1
    assert c.lookup("a", [1, 2, 3, 4]) == (0, None)
    n, e = c.lookup(None, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    assert n == 9 and e is not None  # never the whole prompt: the last token must run
    # a longer sequence of the same adapter replaces the one it extends
    c.store(None, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], kv(12))
    assert sum(1 for e in c._entries.values() if e.ids[0] == 1) == 1
    assert PrefixCache(0).lookup(None, [1, 2]) == (0, None)


def test_kept_cache_budget_defaults_to_a_quarter_of_available_memory(tmp_path):
    from extes.models.kvcache import GIB, default_budget_bytes

    def meminfo(kb):
        p = tmp_path / f"meminfo{kb}"
        p.write_text(f"MemTotal:       24000000 kB\nMemAvailable:   {kb} kB\n")
        return str(p)

    assert default_budget_bytes(meminfo(16 * 1024 * 1024)) == 4 * GIB
    assert default_budget_bytes(meminfo(1024 * 1024)) == GIB  # at least 1 GiB
    assert default_budget_bytes(meminfo(256 * 1024 * 1024)) == 8 * GIB  # at most 8 GiB
    assert default_budget_bytes(str(tmp_path / "missing")) == GIB
    (tmp_path / "odd").write_text("MemAvailable: lots\n")
    assert default_budget_bytes(str(tmp_path / "odd")) == GIB


def test_fast_engine_takes_rows_mid_flight_and_cancels(base, adapters):
    import threading

    long = GenerationSettings(max_new_tokens=40, temperature=0.0, repetition_penalty=1.0)
    with ArmPool(tiny_arms(base, adapters, settings=long), kv_cache_bytes=0) as p:
        solo = p.generate("strat", user(PROMPTS[2])).token_ids
        it = p.stream("plain", user(PROMPTS[1]))
        next(it)
        assert p.generate("strat", user(PROMPTS[2])).token_ids == solo
        cancel = threading.Event()
        events = []
        for ev in p.stream("lora", user("hi"), cancel=cancel):
            events.append(ev)
            if len(events) == 1:
                cancel.set()
        assert events[-1].reply.finish_reason == "cancelled"
        it.close()
        assert isinstance(p.engine_for("plain").runner, FastRunner)
        assert p.engine_for("plain").counters.max_rows_seen >= 2


def test_batch_buffer_grows_only_what_is_too_small_and_is_never_read_past_a_row(base, adapters, monkeypatch):
    """The batch KV buffer is not zeroed where the compiled attention runs: filled with NaN, three rows
    decoded together still give each row's tokens alone. Growing it for a longer row keeps the slots."""
    long = GenerationSettings(max_new_tokens=24, temperature=0.0, repetition_penalty=1.0)
    with ArmPool(tiny_arms(base, adapters, settings=long), kv_cache_bytes=0) as p:
        engine = p.engine_for("plain")
        runner = engine.runner
        assert runner.fast.attention_kernel is not None
        jobs = {a: (a, user(t)) for a, t in zip(("plain", "lora", "strat"), PROMPTS)}
        alone = {a: p.generate(*job).token_ids for a, job in jobs.items()}
        real = runner.fast.new_kv

        def dirty(rows, capacity, zeroed=True):
            bufs = real(rows, capacity, zeroed)
            if not zeroed:
                for b in bufs:
                    b.fill_(float("nan"))
            return bufs

        monkeypatch.setattr(runner.fast, "new_kv", dirty)
        runner._kv = None  # the next batch gets a fresh, garbage-filled buffer
        together = {k: ev.reply.token_ids for k, ev in p.stream_many(jobs) if ev.done}
        assert together == alone
        assert engine.counters.max_rows_seen >= 2

        runner._kv = None
        runner._ensure_kv(1, 100)
        assert (runner._kv[0].shape[1], runner._kv[0].shape[3]) == (4, 100)
        runner._kv[0][0, 0, 0, 99, 0] = 7.0
        runner._ensure_kv(2, 300)  # a longer row: positions double, slots stay
        assert (runner._kv[0].shape[1], runner._kv[0].shape[3]) == (4, 300)
        assert runner._kv[0][0, 0, 0, 99, 0] == 7.0
        runner._ensure_kv(5, 120)  # more rows: slots double, positions stay
        assert (runner._kv[0].shape[1], runner._kv[0].shape[3]) == (8, 300)
        assert runner._kv[0][0, 0, 0, 99, 0] == 7.0


def test_chunked_prefill_gives_the_same_tokens_on_both_paths(base, adapters, monkeypatch, caplog):
    """One scheduler chunks every prompt, whichever runner is below it: create_engine passes
    `prefill_chunk` to both (the transformers path used to drop it, with `kv_cache_bytes` and `device`,
    without a word; those two it cannot honour are now logged)."""
    import logging

    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPTS[2] * 3}]
    from extes.models.types import Request

    def generate(eng):
        import queue

        q: queue.Queue = queue.Queue()
        eng.submit(Request(messages=messages, settings=GREEDY, sink=q.put, adapter=str(adapters["lora"])))
        while not (ev := q.get(timeout=60)).done:
            pass
        return ev.reply

    for kind in ("auto", "transformers"):
        whole = create_engine(str(base), adapters=[str(adapters["lora"])], engine=kind, kv_cache_bytes=None)
        try:
            ref = generate(whole)
        finally:
            whole.close()
        with caplog.at_level(logging.WARNING, logger="extes.models.engine"):
            eng = create_engine(str(base), adapters=[str(adapters["lora"])], engine=kind, prefill_chunk=7,
                                kv_cache_bytes=0)
        try:
            sizes = []
            real = eng.runner.prefill
            monkeypatch.setattr(eng.runner, "prefill", lambda seq, n, sizes=sizes, real=real: sizes.append(n) or
                                real(seq, n))
            got = generate(eng)
        finally:
            eng.close()
        assert got.token_ids == ref.token_ids and len(ref.token_ids) > 3, kind
        assert max(sizes) == 7 and sum(sizes) == got.prompt_tokens > 7, kind
        assert ("kv_cache_bytes=0 not applied" in caplog.text) == (kind == "transformers")


def test_dtype_option_reaches_the_engine_and_the_reply(base, adapters):
    arms = tiny_arms(base, adapters, settings=GREEDY)
    with ArmPool(arms, dtype="bfloat16") as p:
        r = p.generate("lora", user(PROMPTS[0]))
        assert r.dtype == "bfloat16" and p.engine_for("lora").runner.precision.name == "bfloat16"
    with ArmPool(arms, dtype="float32") as p:
        assert p.generate("lora", user(PROMPTS[0])).dtype == "float32"


def test_cancel_during_chunked_prefill_and_others_go_on(base, adapters):
    import threading

    with ArmPool(tiny_arms(base, adapters), kv_cache_bytes=0) as p:
        eng = p.engine_for("plain")
        eng.prefill_chunk = 4  # a long prompt takes many loop iterations to prefill
        cancel = threading.Event()
        cancel.set()  # cancelled before its prefill can finish
        long_msgs = user("word " * 60)
        got = {}
        for key, ev in p.stream_many({"x": ("plain", long_msgs)}, cancel=cancel):
            if ev.done:
                got[key] = ev.reply
        assert got["x"].finish_reason == "cancelled" and got["x"].n_tokens == 0
        solo = p.generate("lora", user(PROMPTS[0])).token_ids
        # a long prompt prefilled in many chunks and a short request in the same batch both come out right
        order = []
        for key, ev in p.stream_many({"long": ("plain", long_msgs), "short": ("lora", user(PROMPTS[0]))}):
            if ev.done:
                order.append(key)
                got[key] = ev.reply
        assert got["short"].token_ids == solo
        assert got["long"].n_tokens > 0


def test_decode_steps_go_on_while_a_long_prompt_is_prefilled_in_chunks(base, adapters):
    with ArmPool(tiny_arms(base, adapters), kv_cache_bytes=0) as p:
        eng = p.engine_for("plain")
        eng.prefill_chunk = 2
        short = p.stream("lora", user(PROMPTS[0]))
        next(short)  # the short request is decoding
        start = eng.counters.prefill_tokens
        long_it = p.stream("plain", user("word " * 120))
        seen_during = []
        for _ev in short:
            seen_during.append(eng.counters.prefill_tokens - start)
        long_reply = [ev for ev in long_it][-1].reply
        # the short reply kept streaming while the long prompt was part-way through its prefill
        assert any(0 < n < long_reply.prompt_tokens for n in seen_during)
        assert long_reply.n_tokens > 0


def _edit_logits(engine, monkeypatch, edit) -> None:
    """Pass every logits tensor `engine`'s runner returns (prefill and decode) through `edit` first."""
    runner = engine.runner
    for method in ("prefill", "decode"):
        real = getattr(runner, method)

        def edited(*args, real=real):
            logits = real(*args)
            edit(logits)
            return logits

        monkeypatch.setattr(runner, method, edited)


def _eos_favoured(engine, monkeypatch):
    """Make end-of-turn the model's favourite token at every step of `engine`."""
    eos = sorted(engine.eos_ids)

    def favour(logits):
        logits[..., eos] += 1e4

    _edit_logits(engine, monkeypatch, favour)


def test_a_reply_never_ends_before_it_shows_something(base, adapters, monkeypatch):
    """Both engine paths: with end-of-turn the favourite token at every step, a reply still shows one
    token, then ends; with the hold switched off the same reply is empty (so this test can fail)."""
    for kind in ("auto", "transformers"):
        with ArmPool(tiny_arms(base, adapters), engine=kind) as p:
            engine = p.engine_for("plain")
            assert isinstance(engine.runner, FastRunner) == (kind == "auto")
            _eos_favoured(engine, monkeypatch)
            reply = p.generate("plain", user("hi"))
            assert reply.n_tokens == 1 and reply.text.strip() and reply.finish_reason == "stop"
            monkeypatch.setattr(engine, "_hold_eos", lambda logits, rows: None)
            empty = p.generate("plain", user("hi again"))
            assert empty.n_tokens == 0 and empty.text == ""


def _tags_then_end(engine, monkeypatch, tags: str = "[Affirmation] [Reassurance]") -> tuple[str, list[int]]:
    """Script `engine`'s model: it first writes `tags`, then prefers end-of-turn over a word. Returns (the
    word's text, the end-of-turn ids)."""
    tok = engine.tokenizer
    script_ids = tok(tags, add_special_tokens=False)["input_ids"]
    assert len(script_ids) < 60
    word = tok(" fine", add_special_tokens=False)["input_ids"][0]
    eos = sorted(engine.eos_ids)
    calls = []

    def script(logits):
        step = len(calls)  # 0: the prompt's prefill, then one decode step per token
        calls.append(step)
        if step < len(script_ids):
            logits[..., script_ids[step]] += 1e4
        else:
            logits[..., eos] += 1e4
            logits[..., word] += 5e3

    _edit_logits(engine, monkeypatch, script)
    monkeypatch.setattr(engine, "_scripted_calls", calls, raising=False)
    return tok.decode([word]).strip(), eos


def test_a_reply_made_only_of_tags_is_not_ended(base, adapters, monkeypatch):
    """Both engine paths, an arm without strategies (its tags are not stripped by the engine, but the study
    strips them from every arm): end-of-turn stays held until a word shows after the tags, so the
    participant sees text; the control (the hold counting any text as visible, as before) shows nothing."""
    from extes.study.blinding import strip_tags

    room = GenerationSettings(max_new_tokens=64, temperature=0.0, repetition_penalty=1.0)
    for kind in ("auto", "transformers"):
        with ArmPool(tiny_arms(base, adapters, settings=room), engine=kind) as p:
            engine = p.engine_for("plain")
            word, eos = _tags_then_end(engine, monkeypatch)
            reply = p.generate("plain", user("hi"))
            assert strip_tags(reply.text)[0] == word != "", (kind, reply.text)

            def hold_until_any_text(logits, rows, eos=eos):  # the hold as it was: any text counted as visible
                for i, r in enumerate(rows):
                    if not r.emitted.strip():
                        logits[i, eos] = float("-inf")

            engine._scripted_calls.clear()
            monkeypatch.setattr(engine, "_hold_eos", hold_until_any_text)
            before = p.generate("plain", user("hi again"))
            assert strip_tags(before.text)[0] == "", (kind, before.text)


def test_shows_nothing_knows_every_tag_wrapping():
    """The engine's end-of-turn hold (issue 24): tags in any wrapping the study strips show nothing."""
    from extes.models.text import shows_nothing
    from extes.taxonomy import TAG_HOLD_CHARS

    for only_tags in ("[EV]", "(Emotional Validation)", "<strategy>Affirmation</strategy>", "Strategy: EV",
                      "#Reassurance", "{Affirmation} (Reassurance)", "**Affirmation:**", "【Reassurance】"):
        assert shows_nothing(only_tags), only_tags
        assert not shows_nothing(only_tags + " I hear you."), only_tags
    assert not shows_nothing("(I know.)") and not shows_nothing("Hello")
    long_tags = "(Affirmation) " * (TAG_HOLD_CHARS // 10)  # past the length guard: no longer held
    assert len(long_tags) >= TAG_HOLD_CHARS and not shows_nothing(long_tags)


def test_a_reply_made_only_of_tags_in_other_wrappings_is_not_ended(base, adapters, monkeypatch):
    """As above, with tags in round brackets and a hashtag (issue 24): the hold knew only square brackets,
    so the control (the hold as it was) ends the reply with nothing visible."""
    from extes.study.blinding import strip_tags
    from extes.taxonomy import TAG_ANYWHERE_RE

    room = GenerationSettings(max_new_tokens=64, temperature=0.0, repetition_penalty=1.0)
    with ArmPool(tiny_arms(base, adapters, settings=room), engine="auto") as p:
        engine = p.engine_for("plain")
        word, eos = _tags_then_end(engine, monkeypatch, "(Affirmation) #Reassurance")
        reply = p.generate("plain", user("hi"))
        assert strip_tags(reply.text)[0] == word != "", reply.text

        def hold_square_brackets_only(logits, rows, eos=eos):  # the hold as it was
            for i, r in enumerate(rows):
                if not TAG_ANYWHERE_RE.sub("", r.emitted).strip():
                    logits[i, eos] = float("-inf")

        engine._scripted_calls.clear()
        monkeypatch.setattr(engine, "_hold_eos", hold_square_brackets_only)
        before = p.generate("plain", user("hi again"))
        assert strip_tags(before.text)[0] == "", before.text


def test_a_prefill_buffer_never_reads_what_it_has_not_written(base):
    """The engine's per-row prefill buffers are not zeroed: a buffer full of NaN, filled in chunks from
    position 0, gives the same logits as a zeroed one (so no unwritten position is ever read)."""
    from transformers import AutoModelForCausalLM

    fast = FastLlama(AutoModelForCausalLM.from_pretrained(base).eval(), [], dtype=torch.float32)
    ids = torch.arange(3, 40)[None]
    clean = fast.new_kv(1, ids.shape[1])
    dirty = fast.new_kv(1, ids.shape[1], zeroed=False)
    for buf in dirty:
        buf.fill_(float("nan"))
    with torch.inference_mode():
        for lo, hi in ((0, 16), (16, 30), (30, ids.shape[1])):
            want = fast.forward(ids[:, lo:hi], torch.tensor([lo]), clean, None)
            got = fast.forward(ids[:, lo:hi], torch.tensor([lo]), dirty, None)
            assert torch.equal(got, want) and not got.isnan().any()
