"""The compiled CPU kernels (extes.models.cpu_kernels: decode attention, gathered LoRA) against torch's
paths, and their fallback."""

from __future__ import annotations

import logging

import pytest
import torch
from models_helpers import SYSTEM

from extes.models import cpu_kernels
from extes.models.fastllama import FastLlama, GroupLora, LoraWeights, _decode_attention, load_lora
from extes.models.text import render_prompt


def _attention_kernel():
    kernels = cpu_kernels.compiled_kernels()
    return None if kernels is None else kernels.attention


SHAPES = [(9, 3, 64), (4, 4, 16), (8, 2, 32)]  # query heads, kv heads, head dim (SmolLM2, MHA, GQA 4:1)


def _masked_reference(q, keys, values, lengths, scale):
    """torch's decode attention over positions 0..length-1 of each row (the rest masked)."""
    s = int(lengths.max())
    k, v = keys[:, :, :s], values[:, :, :s]
    mask = torch.zeros(q.shape[0], 1, 1, s).masked_fill_(
        torch.arange(s)[None, None, None] >= lengths[:, None, None, None], float("-inf"))
    return _decode_attention(q, k, v, mask, scale)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize(("h_q", "h_kv", "d"), SHAPES)
def test_compiled_attention_equals_torch_and_reads_only_each_rows_own_positions(h_q, h_kv, d, threads, monkeypatch):
    """Each row attends to its own positions only (garbage after them changes nothing), equal to torch's
    masked batched matmul; also with the rows split over threads."""
    monkeypatch.setattr(cpu_kernels, "_SPLIT_MIN_POSITIONS", 0)
    kernel = _attention_kernel()
    assert kernel is not None, "numba is a run-time dependency; the kernel must compile here"
    g = torch.Generator().manual_seed(h_q + d)
    cap = 40
    lengths = torch.tensor([1, 7, cap, 23, 2])
    buf = torch.randn(2, 6, h_kv, cap, d, generator=g)  # one spare slot: the batch uses the first rows only
    for b, n in enumerate(lengths.tolist()):
        buf[0, b, :, n:] = 30.0  # what a row has not written (garbage that would dominate): never read
        buf[1, b, :, n:] = 1e3
    buf[:, 5] = 1e3
    q = torch.randn(5, h_q, 1, d, generator=g)
    got = cpu_kernels.decode_attention(kernel, q, buf[0, :5], buf[1, :5], lengths, d ** -0.5, threads)
    want = _masked_reference(q, buf[0, :5], buf[1, :5], lengths, d ** -0.5)
    assert got.shape == want.shape == (5, h_q, 1, d)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert got.abs().max() < 10
    # the control: one position further reaches the garbage, and the comparison sees it
    longer = (lengths + 1).clamp(max=cap)
    leaked = cpu_kernels.decode_attention(kernel, q, buf[0, :5], buf[1, :5], longer, d ** -0.5, threads)
    assert not torch.allclose(leaked[0], want[0], atol=1e-2)


def test_rows_are_split_into_chunks_of_about_equal_work():
    assert cpu_kernels._split([100] * 10, 2) == [0, 5, 10]
    assert cpu_kernels._split([1000, 10, 10, 10], 2) == [0, 1, 4]
    assert cpu_kernels._split([10, 20], 4) == [0, 1, 2]
    assert cpu_kernels._split([7], 3) == [0, 1]


def test_compiled_lora_equals_the_masked_matmuls_and_larger_batches_keep_the_matmuls():
    """Each row gets its own adapter's delta (none for -1), also where an adapter lacks one projection of
    the fused group; beyond LORA_KERNEL_MAX_ROWS rows the masked matmuls run."""
    g = torch.Generator().manual_seed(0)
    names, outs, d_in = ("q_proj", "k_proj", "v_proj"), [12, 4, 4], 10

    def adapter(r, skip=()):
        return LoraWeights("x", r, {(0, n): (torch.randn(r, d_in, generator=g), torch.randn(o, r, generator=g))
                                    for n, o in zip(names, outs) if n not in skip})

    group = GroupLora(names, outs, d_in, 0, [adapter(2), adapter(3, skip=("k_proj",)), adapter(1)])
    x = torch.randn(7, d_in, generator=g)
    y0 = torch.randn(7, sum(outs), generator=g)
    row_adapter = torch.tensor([0, -1, 1, 2, 1, -1, 0])
    want = group.delta_into(y0.clone(), x, row_adapter, {})  # masked matmuls (no kernel set)
    calls = []
    kernel = cpu_kernels.compiled_kernels().lora_delta
    group.kernel = lambda *a: calls.append(len(a[0])) or kernel(*a)
    got = group.delta_into(y0.clone(), x, row_adapter, {})
    assert calls == [7]
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(got[1], y0[1]) and torch.equal(got[5], y0[5])  # rows without an adapter: untouched
    assert not torch.allclose(got[2], y0[2])
    many = cpu_kernels.LORA_KERNEL_MAX_ROWS + 1
    x, y0, row_adapter = x.repeat(2, 1)[:many], y0.repeat(2, 1)[:many], row_adapter.repeat(2)[:many]
    group.delta_into(y0.clone(), x, row_adapter, {})
    assert calls == [7]


def test_batched_decode_with_the_kernel_gives_the_torch_paths_tokens(base, adapters):
    """Four rows of different lengths and adapters, decoded together greedily for 16 steps: the compiled
    attention and torch's give the same tokens and the same logits (fp32, to rounding)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    hf = AutoModelForCausalLM.from_pretrained(base).eval()
    loras = [load_lora(adapters["lora"]), load_lora(adapters["lora-strat"])]
    compiled, plain = FastLlama(hf, loras), FastLlama(hf, loras, compiled=False)
    assert (compiled.attention_with, plain.attention_with) == ("numba", "torch")
    texts = ["I feel so alone since the breakup", "hello " * 9, "My boss keeps giving me more work", "exams"]
    prompts = [render_prompt(tok, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": t}])
               for t in texts]
    row_adapter = torch.tensor([0, -1, 1, 1])
    runs = []
    for fast in (compiled, plain):
        kv = fast.new_kv(len(prompts), max(map(len, prompts)) + 17)
        tokens, logits_seen = [], []
        with torch.inference_mode():
            last = []
            for i, ids in enumerate(prompts):
                own = [buf[:, i:i + 1] for buf in kv]
                ra = None if row_adapter[i] < 0 else row_adapter[i:i + 1]
                last.append(int(fast.forward(torch.tensor([ids]), torch.tensor([0]), own, ra)[0].argmax()))
            starts = torch.tensor([len(p) for p in prompts])
            for _ in range(16):
                logits = fast.forward(torch.tensor([[t] for t in last]), starts, kv, row_adapter)
                logits_seen.append(logits)
                last = logits.argmax(-1).tolist()
                tokens.append(last)
                starts = starts + 1
        runs.append((tokens, torch.stack(logits_seen)))
    assert runs[0][0] == runs[1][0]
    assert len({t for step in runs[0][0] for t in step}) > 3  # varied output, so the comparison means something
    assert torch.allclose(runs[0][1], runs[1][1], atol=1e-4, rtol=1e-4)


def test_without_numba_torch_attention_runs_and_the_reason_is_logged(monkeypatch, caplog, base):
    from transformers import AutoModelForCausalLM

    def missing():
        raise ImportError("No module named 'numba'")

    monkeypatch.setattr(cpu_kernels, "_state", {})
    monkeypatch.setattr(cpu_kernels, "_compile", missing)
    with caplog.at_level(logging.INFO, logger="extes.models.cpu_kernels"):
        assert _attention_kernel() is None
    assert "No module named 'numba'" in caplog.text and "torch" in caplog.text
    fast = FastLlama(AutoModelForCausalLM.from_pretrained(base).eval(), [])
    assert fast.attention_with == "torch"
    with torch.inference_mode():  # a batched decode step still runs
        kv = fast.new_kv(2, 8)
        out = fast.forward(torch.tensor([[1], [2]]), torch.tensor([3, 5]), kv, None)
    assert out.shape[0] == 2 and torch.isfinite(out).all()

    monkeypatch.setattr(cpu_kernels, "_state", {})
    monkeypatch.setenv("EXTES_NO_NUMBA", "1")
    assert _attention_kernel() is None


def test_kernels_compile_uncached_where_numba_cannot_cache(monkeypatch, caplog):
    real = cpu_kernels._build
    asked = []

    def build(numba, cache):
        asked.append(cache)
        if cache:
            raise RuntimeError("cannot cache function: no locator available")
        return real(numba, cache)

    monkeypatch.setattr(cpu_kernels, "_state", {})
    monkeypatch.setattr(cpu_kernels, "_build", build)
    with caplog.at_level(logging.INFO, logger="extes.models.cpu_kernels"):
        kernels = cpu_kernels.compiled_kernels()
    assert kernels is not None and asked == [True, False]
    assert "uncached" in caplog.text


def test_the_engine_records_which_attention_computed_a_reply(monkeypatch, base):
    from extes.models.engine import create_engine
    from extes.models.fast_runner import ENGINE_VERSION

    for kernel_there, version in ((True, ENGINE_VERSION), (False, f"{ENGINE_VERSION}/torch-attention")):
        if not kernel_there:
            monkeypatch.setattr(cpu_kernels, "_state", {"kernels": None})
        engine = create_engine(str(base))
        try:
            assert engine.engine_version == version
        finally:
            engine.close()
