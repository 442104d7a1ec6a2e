"""`extes train` from the command line and YAML; invalid setups fail before any weights load; --resume."""

from __future__ import annotations

import json

import pytest
import torch

from extes.cli import main
from extes.dialogue import Dialogue, Turn, write_jsonl


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-data")
    ds = [Dialogue(id=f"d{i}", source="test", scene="Academic Stress", description="Exams.", turns=[
        Turn("user", f"My exams start in {i + 2} days and I panic."),
        Turn("assistant", "That is a lot of pressure.", "Emotional Validation"),
        Turn("user", "I do not know where to start."),
        Turn("assistant", "Shall we pick one subject together?", "Collaborative Planning"),
    ]) for i in range(6)]
    write_jsonl(ds[:4], folder / "train.jsonl")
    write_jsonl(ds[4:], folder / "valid.jsonl")
    return folder


def _args(base, data, out, *extra):
    return ["train", "--method", "lora", "--base", str(base), "--data", str(data / "train.jsonl"),
            "--valid", str(data / "valid.jsonl"), "--out", str(out), "--epochs", "1", "--batch-size", "2",
            "--system-prompt", "Be kind.", "--no-progress", *extra]


def test_cli_trains_with_flags(tiny_llama, data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_args(tiny_llama, data, out, "--strategies", "--lora-r", "2", "--target-modules", "q_proj,k_proj")) == 0
    assert "saved lora run" in capsys.readouterr().out
    cfg = json.loads((out / "training_config.json").read_text())
    assert cfg["strategies"] is True and cfg["lora_r"] == 2 and cfg["target_modules"] == ["q_proj", "k_proj"]
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 2 and set(adapter["target_modules"]) == {"q_proj", "k_proj"}
    # a second run into the same folder refuses to clobber it
    assert main(_args(tiny_llama, data, out)) == 2
    assert "already holds a training run" in capsys.readouterr().err
    assert main(_args(tiny_llama, data, out, "--overwrite", "--no-strategies")) == 0
    assert json.loads((out / "training_config.json").read_text())["strategies"] is False


def test_yaml_config_with_flag_override(tiny_llama, data, tmp_path):
    cfg_file = tmp_path / "run.yaml"
    out = tmp_path / "from-yaml"
    cfg_file.write_text(f"method: adapter\nbase: {tiny_llama}\ndata: {data / 'train.jsonl'}\nout: {out}\n"
                        "epochs: 1\nbatch_size: 2\nadapter_len: 4\nadapter_layers: 1\nprogress: false\n")
    assert main(["train", "--config", str(cfg_file), "--adapter-len", "3"]) == 0
    cfg = json.loads((out / "training_config.json").read_text())
    assert cfg["method"] == "adapter" and cfg["adapter_len"] == 3 and cfg["adapter_layers"] == 1
    assert json.loads((out / "adapter_config.json").read_text())["adapter_len"] == 3


def test_unknown_yaml_key_is_named(data, tmp_path, capsys):
    cfg_file = tmp_path / "bad.yaml"
    cfg_file.write_text(f"method: lora\ndata: {data / 'train.jsonl'}\nlearning_rate: 0.1\n")
    assert main(["train", "--config", str(cfg_file)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "learning_rate" in err


def _no_weights_loaded(monkeypatch):
    import transformers

    def boom(*a, **k):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)


def test_adapter_on_unsupported_model_type_fails_before_loading(data, tmp_path, monkeypatch, capsys):
    from transformers import Qwen2Config

    base = tmp_path / "qwen-like"
    Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=100).save_pretrained(base)  # config only: no weights at all
    _no_weights_loaded(monkeypatch)
    rc = main(["train", "--method", "adapter", "--base", str(base), "--data", str(data / "train.jsonl"),
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "qwen2" in err and "adapter" in err and "llama" in err


def test_qlora_without_bitsandbytes_fails_with_reason(tiny_llama, data, tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    _no_weights_loaded(monkeypatch)
    rc = main(_args(tiny_llama, data, tmp_path / "o", "--method", "qlora"))
    assert rc == 2 and "bitsandbytes" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["empty-folder", "no-replies", "missing"])
def test_bad_data_fails_before_loading(case, tiny_llama, tmp_path, monkeypatch, capsys):
    path = tmp_path / "d"
    if case == "empty-folder":
        path.mkdir()
    elif case == "no-replies":
        path = tmp_path / "d.jsonl"
        write_jsonl([Dialogue(id="x", source="t", scene="", description="", turns=[Turn("user", "hello")])], path)
    _no_weights_loaded(monkeypatch)
    rc = main(["train", "--base", str(tiny_llama), "--data", str(path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and str(path) in err


def test_resume_continues_an_interrupted_run_exactly(tiny_llama, data, tmp_path, monkeypatch):
    from extes.train.config import config_from_dict
    from extes.train.runner import train_run

    def cfg(out, **kw):
        return config_from_dict(dict(method="lora", base=str(tiny_llama), data=[str(data / "train.jsonl")],
                                     valid=[str(data / "valid.jsonl")], out=str(out), epochs=3, batch_size=1,
                                     save_every=2, progress=False, system_prompt="Be kind.", lr=1e-2, **kw))

    ref = train_run(cfg(tmp_path / "ref"))
    ref_metrics = json.loads((ref / "metrics.json").read_text())

    real_step = torch.optim.AdamW.step
    calls = {"n": 0}

    def flaky_step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("simulated crash")
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", flaky_step)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg(tmp_path / "run"))
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts and not (tmp_path / "run" / "metrics.json").exists()

    out = train_run(cfg(tmp_path / "run", resume=True))
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == ref_metrics["steps"] == 12
    for a, b in zip(m["epochs"], ref_metrics["epochs"]):
        assert a["valid_loss"] == pytest.approx(b["valid_loss"], rel=1e-5)
    assert m["epochs"][-1]["train_loss"] == pytest.approx(ref_metrics["epochs"][-1]["train_loss"], rel=1e-5)
    from safetensors.torch import load_file

    wa, wb = load_file(out / "adapter_model.safetensors"), load_file(ref / "adapter_model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_early_stopping_needs_valid(tiny_llama, data, tmp_path, capsys):
    rc = main(["train", "--base", str(tiny_llama), "--data", str(data / "train.jsonl"), "--out", str(tmp_path / "o"),
               "--early-stopping", "2"])
    assert rc == 2 and "early_stopping" in capsys.readouterr().err
