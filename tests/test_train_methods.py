"""Every method trains, saves, reloads and generates on tiny random llama and gpt2 models, offline."""

from __future__ import annotations

import json

import pytest
import torch

from extes.dialogue import Dialogue, Turn, write_jsonl
from extes.train.config import config_from_dict
from extes.train.runner import load_trained, train_run


def _dialogues(n: int) -> list[Dialogue]:
    out = []
    for i in range(n):
        out.append(Dialogue(id=f"d{i}", source="test", scene="Breakups or Divorce", description="A breakup.", turns=[
            Turn("user", f"I feel so alone since the breakup {i}."),
            Turn("assistant", "That sounds really painful.", "Emotional Validation"),
            Turn("user", "I cannot sleep at night."),
            Turn("assistant", "Would it help to talk about what happened?", "Clarification"),
        ]))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train-data")
    ds = _dialogues(8)
    write_jsonl(ds[:6], folder / "train.jsonl")
    write_jsonl(ds[6:], folder / "valid.jsonl")
    return folder


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(method, base, data, out, **kw):
    values = dict(method=method, base=str(base), data=[str(data / "train.jsonl")], valid=[str(data / "valid.jsonl")],
                  out=str(out), epochs=2, batch_size=2, strategies=True, progress=False, system_prompt="Be kind.",
                  lr=2e-2 if method != "clm" else 2e-3)
    values.update(kw)
    return config_from_dict(values)


def _generate(model, tok) -> tuple[str, list[int], torch.Tensor]:
    """Greedy reply to a fixed prompt: (text, new token ids, the logits the first new token came from)."""
    enc = tok.apply_chat_template([{"role": "system", "content": "Be kind."}, {"role": "user", "content": "I feel alone."}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
        first_logits = model(**enc).logits[0, -1].float()
    new = out[0, enc["input_ids"].shape[1]:].tolist()
    assert new, "generate produced no token"
    return tok.decode(new), new, first_logits


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("method", ["lora", "qlora", "adapter", "clm"])
def test_method_trains_saves_reloads_generates(method, arch, tiny_llama, tiny_gpt2, data, tmp_path):
    base = tiny_llama if arch == "llama" else tiny_gpt2
    out = train_run(_cfg(method, base, data, tmp_path / "run"))
    files = {p.name for p in out.iterdir()}
    assert {"training_config.json", "metrics.json", "README.md", "tokenizer_config.json"} <= files
    assert "checkpoints" not in files and not any(f.startswith(".saving") for f in files)
    m = json.loads((out / "metrics.json").read_text())
    assert len(m["epochs"]) == 2 and m["steps"] == 6
    assert all(e["train_loss"] > 0 and e["valid_ppl"] > 1 for e in m["epochs"])
    assert m["base_valid_ppl"] is not None and m["tokens_per_s"] > 0 and 0 <= m["padding_waste"] < 1
    assert 0 < m["trainable_params"] <= m["total_params"]
    # training lowered the validation loss below the untrained model's on these repetitive dialogues
    assert m["valid_loss"] < m["base_valid_loss"]
    info = json.loads((out / "training_config.json").read_text())
    assert info["method"] == method and info["base"] == str(base) and info["strategies"] is True

    if method == "clm":
        assert "model.safetensors" in files and m["trainable_params"] == m["total_params"]
        from transformers import AutoTokenizer

        from extes.train.formatting import DIALOGPT_TEMPLATE

        assert info["chat_format"] == "dialogpt"
        assert AutoTokenizer.from_pretrained(out).chat_template == DIALOGPT_TEMPLATE
    else:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= files
        adapter_cfg = json.loads((out / "adapter_config.json").read_text())
        assert adapter_cfg["base_model_name_or_path"] == str(base)
        assert m["trainable_params"] < m["total_params"] / 2
        # the standard loader works on the folder
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(out)).eval()

    model, tok = load_trained(out)
    # the reloaded weights are the trained ones: the reloaded model reproduces the saved valid loss
    from extes.train.loop import evaluate
    from extes.train.runner import encode, load_data

    cfg = _cfg(method, base, data, tmp_path / "unused")
    _, valid_d = load_data(cfg)
    valid = encode(cfg, tok, valid_d)
    rel = 2e-3 if method == "qlora" else 1e-4
    r = evaluate(model, valid, 2, tok.pad_token_id, torch.device("cpu"))
    assert r["loss"] == pytest.approx(m["valid_loss"], rel=rel)
    if method != "clm":  # ... and so does PEFT's own loader on the folder (qlora's base is then not 4-bit)
        r_peft = evaluate(peft_model, valid, 2, tok.pad_token_id, torch.device("cpu"))
        assert r_peft["loss"] == pytest.approx(m["valid_loss"], rel=2e-2 if method == "qlora" else 1e-4)
    # generation runs through the trained weights: greedy decoding starts with the trained model's argmax,
    # and the trained model's next-token logits differ from the untrained base's
    from transformers import AutoModelForCausalLM

    text, new, logits = _generate(model, tok)
    assert new[0] == int(logits.argmax()) and text == tok.decode(new)
    _, _, base_logits = _generate(AutoModelForCausalLM.from_pretrained(base).eval(), tok)
    assert not torch.allclose(logits, base_logits, atol=1e-4)


def test_qlora_base_really_is_4bit(tiny_llama, data, tmp_path):
    import bitsandbytes as bnb

    from extes.train import qlora

    model = qlora.build_model(_cfg("qlora", tiny_llama, data, tmp_path / "q"), torch.device("cpu"))
    kinds = {type(m).__name__ for m in model.modules()}
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()), kinds
    lin = next(m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    assert lin.weight.quant_state.quant_type == "nf4"
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_fast_loss_equals_full_logits_loss(arch, tiny_llama, tiny_gpt2, data, tmp_path):
    """The loop computes the output layer only at supervised positions; the loss is unchanged."""
    from transformers import AutoModelForCausalLM

    from extes.train.formatting import collate
    from extes.train.loop import token_loss
    from extes.train.runner import encode, load_data, prepare_tokenizer

    base = tiny_llama if arch == "llama" else tiny_gpt2
    cfg = _cfg("lora", base, data, tmp_path / "x")
    tok = prepare_tokenizer(cfg)
    train_d, _ = load_data(cfg)
    encs = encode(cfg, tok, train_d[:3])
    batch = collate(encs, tok.pad_token_id)
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    with torch.no_grad():
        fast, n_fast = token_loss(model, batch)
        full, n_full = token_loss(model, batch, full_logits=True)
        ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert n_fast == n_full == sum(e.n_supervised for e in encs)
    assert float(fast) == pytest.approx(float(full), rel=1e-5)
    assert float(fast) / n_fast == pytest.approx(float(ref), rel=1e-5)


def test_lora_layers_limits_lora_to_the_top_blocks(tiny_llama, data, tmp_path):
    from extes.train import lora

    cfg = _cfg("lora", tiny_llama, data, tmp_path / "l", target_modules="all-linear", lora_layers=1)
    model = lora.build_model(cfg, torch.device("cpu"))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".layers.1." in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                     "down_proj"}
    with pytest.raises(ValueError, match="only 2 blocks"):
        lora.build_model(_cfg("lora", tiny_llama, data, tmp_path / "l", lora_layers=3), torch.device("cpu"))
