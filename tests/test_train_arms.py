"""Training outputs plug into the engine: an arm points at a run folder; the demo adapters are valid arms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from extes.dialogue import Dialogue, Turn, write_jsonl

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "results" / "adapters"


def test_trained_adapter_loads_as_an_arm_and_generates(tiny_llama, tmp_path):
    from extes.models import ArmPool, arms_from_config
    from extes.train.config import config_from_dict
    from extes.train.runner import train_run

    torch.set_num_threads(1)
    ds = [Dialogue(id=f"d{i}", source="t", scene="", description="", turns=[
        Turn("user", "I feel alone."), Turn("assistant", "That sounds hard.", "Emotional Validation")]) for i in range(4)]
    write_jsonl(ds, tmp_path / "train.jsonl")
    out = train_run(config_from_dict(dict(method="lora", base=str(tiny_llama), data=[str(tmp_path / "train.jsonl")],
                                          out=str(tmp_path / "run"), epochs=1, batch_size=2, strategies=True,
                                          progress=False)))
    [arm] = arms_from_config([{"name": "tuned", "base": str(tiny_llama), "adapter": str(out)}], "test")
    assert arm.strategies is True  # taken from training_config.json
    pool = ArmPool([arm])
    try:
        reply = pool.generate("tuned", [{"role": "user", "content": "I feel alone."}])
    finally:
        pool.close()
    assert isinstance(reply.text, str) and reply.n_tokens > 0


@pytest.mark.slow
@pytest.mark.parametrize("name,strategies", [("seeds-lora", False), ("seeds-lora-strategies", True)])
def test_demo_adapters_are_committed_small_and_beat_the_base(name, strategies):
    from extes.models import arms_from_config

    folder = DEMO / name
    if not (folder / "metrics.json").is_file():
        pytest.skip(f"{folder} not built yet (make demo-adapters)")
    m = json.loads((folder / "metrics.json").read_text())
    assert m["strategies"] is strategies and m["base"] == "smollm2-135m-instruct"
    assert m["valid_ppl"] < m["base_valid_ppl"], "the adapter must beat the base model on the valid split"
    size = (folder / "adapter_model.safetensors").stat().st_size
    assert size < 10 * 2**20
    [arm] = arms_from_config([{"name": name, "adapter": str(folder)}], "test")
    assert arm.strategies is strategies and arm.adapter


@pytest.mark.slow
def test_masking_on_the_embedded_tokenizer():
    from extes.base.loading import load_tokenizer
    from extes.train.formatting import IGNORE, encode_messages

    tok = load_tokenizer("smollm2-135m-instruct")
    msgs = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "I feel alone."},
            {"role": "assistant", "content": "[Emotional Validation] That sounds hard."}]
    [enc] = encode_messages(tok, msgs)
    assert tok.decode(enc.input_ids) == tok.apply_chat_template(msgs, tokenize=False)
    sup = [i for i, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE]
    assert tok.decode(sup) == "[Emotional Validation] That sounds hard.<|im_end|>"
    assert tok.decode(enc.input_ids[-1:]) == "\n"
    assert enc.labels[-1] == IGNORE
