"""The training loop's state (`TrainState`) and its checkpoints: JSON beside tensors, loaded weights-only."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from extes.dialogue import Dialogue, Turn
from extes.train.loop import (
    STATE_FILE,
    TENSORS_FILE,
    LoopOptions,
    TrainState,
    load_checkpoint,
    train,
)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def setup(tiny_llama):
    """(model factory, train examples, valid examples, pad id) for a LoRA run on the tiny llama."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from extes.base.loading import load_tokenizer
    from extes.train.formatting import encode_dialogues

    tok = load_tokenizer(str(tiny_llama))
    ds = [Dialogue(id=f"d{i}", source="t", scene="", description="", turns=[
        Turn("user", f"I failed test number {i}."), Turn("assistant", "That hurts. What happened?"),
    ]) for i in range(6)]
    enc = encode_dialogues(tok, ds, strategies=False, with_scene=False, system_prompt="Be kind.", max_length=64)

    def model():
        torch.manual_seed(0)
        m = AutoModelForCausalLM.from_pretrained(tiny_llama)
        return get_peft_model(m, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM"))

    return model, enc[:4], enc[4:], tok.pad_token_id


def _opts(ckpt, **kw):
    values = dict(epochs=2, batch_size=1, lr=1e-2, save_every=3, checkpoint_dir=ckpt, progress=False)
    return LoopOptions(**{**values, **kw})


def test_train_state_round_trips_through_json():
    st = TrainState(step=3, epoch=1, micro=2, history=[{"epoch": 1, "train_loss": 0.1 + 0.2}],
                    best={"valid_loss": 1 / 3}, train_time=1e-7, stopped_early=True)
    back = TrainState.from_json(json.loads(json.dumps(st.to_json())))
    assert back == st
    with pytest.raises(ValueError, match="unknown fields"):
        TrainState.from_json({"step": 1, "weights": 2})


def test_checkpoint_is_json_beside_tensors_and_loads_weights_only(setup, tmp_path):
    model, train_set, valid_set, pad = setup
    train(model(), train_set, valid_set, pad, _opts(tmp_path / "ck"))
    folders = sorted((tmp_path / "ck").iterdir())
    assert [f.name for f in folders] == ["step-0000006", "step-0000008"]  # the last two (keep_checkpoints=2)
    last = folders[-1]
    meta = json.loads((last / STATE_FILE).read_text())
    assert meta["state"]["step"] == 8 and meta["state"]["epoch"] == 2 and len(meta["state"]["history"]) == 2
    tensors = torch.load(last / TENSORS_FILE, map_location="cpu", weights_only=True)
    assert set(tensors) == {"weights", "optimizer", "best_state", "torch_rng"}
    ck = load_checkpoint(last)
    assert isinstance(ck.state, TrainState) and ck.state.step == 8 and ck.weights


def test_resume_matches_an_uninterrupted_run(setup, tmp_path, monkeypatch):
    model, train_set, valid_set, pad = setup
    ref_model = model()
    ref = train(ref_model, train_set, valid_set, pad, _opts(tmp_path / "ref"))
    # a run that crashes in its fourth step, after the mid-epoch checkpoint of step 3, then resumes from it
    real_step, calls = torch.optim.AdamW.step, []

    def crashing_step(self, *a, **k):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt("simulated crash")
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        train(model(), train_set, valid_set, pad, _opts(tmp_path / "run"))
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["step-0000003"]
    resumed_model = model()
    resumed = train(resumed_model, train_set, valid_set, pad, _opts(tmp_path / "run", resume=True))
    assert resumed.metrics["steps"] == ref.metrics["steps"] == 8
    for a, b in zip(resumed.metrics["epochs"], ref.metrics["epochs"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["valid_loss"] == pytest.approx(b["valid_loss"], rel=1e-5)
    wa, wb = dict(resumed_model.named_parameters()), dict(ref_model.named_parameters())
    assert all(torch.allclose(wa[n], wb[n], atol=1e-6) for n, p in wb.items() if p.requires_grad)


class _Planted:
    """An object whose unpickling would run code (here: create a file)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_a_forged_checkpoint_cannot_run_code_on_resume(setup, tmp_path):
    model, train_set, valid_set, pad = setup
    train(model(), train_set, valid_set, pad, _opts(tmp_path / "ck", epochs=1))
    last = sorted((tmp_path / "ck").iterdir())[-1]
    saved = torch.load(last / TENSORS_FILE, weights_only=True)
    marker = tmp_path / "pwned"
    saved["best_state"] = _Planted(marker)
    torch.save(saved, last / TENSORS_FILE)
    with pytest.raises(pickle.UnpicklingError):
        train(model(), train_set, valid_set, pad, _opts(tmp_path / "ck", resume=True))
    assert not marker.exists()


def test_checkpoints_of_the_previous_layout_still_load(setup, tmp_path):
    """Before TrainState, the state dict and the scheduler were inside trainer_state.pt (plain values)."""
    model, train_set, valid_set, pad = setup
    train(model(), train_set, valid_set, pad, _opts(tmp_path / "ck", epochs=1))
    last = sorted((tmp_path / "ck").iterdir())[-1]
    new = load_checkpoint(last)
    meta = json.loads((last / STATE_FILE).read_text())
    old_state = {k: v for k, v in meta["state"].items() if k not in ("epoch_loss", "epoch_tokens")}
    saved = torch.load(last / TENSORS_FILE, weights_only=True)
    torch.save({**saved, "state": old_state, "scheduler": meta["scheduler"]}, last / TENSORS_FILE)
    (last / STATE_FILE).unlink()
    old = load_checkpoint(last)
    assert old.state.step == new.state.step == 4 and old.state.history == new.state.history
    assert old.scheduler == new.scheduler and old.weights.keys() == new.weights.keys()
