"""`extes train` on several processes (DDP through accelerate, gloo on the CPU), launched by torchrun and
by `accelerate launch` exactly as a lab would launch it: the same loss curve as one process with the
doubled batch, and a resumed run equal to an unbroken one. Only rank 0 writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from extes.dialogue import Dialogue, Turn, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN = 9  # with a global batch of 4: batches of 4, 4, 1, so one process's slice of the last is empty


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist-data")
    openings = ["My exams start soon and I panic.", "I had a fight with my best friend over nothing at all.",
                "I feel alone.", "Work has been crushing me for weeks and my manager does not notice."]
    ds = [Dialogue(id=f"d{i}", source="test", scene="", description="", turns=[
        Turn("user", f"{openings[i % 4]} ({i})"),
        Turn("assistant", "That sounds hard." + " Tell me more." * (i % 3)),
    ]) for i in range(N_TRAIN + 4)]
    write_jsonl(ds[:N_TRAIN], folder / "train.jsonl")
    write_jsonl(ds[N_TRAIN:], folder / "valid.jsonl")
    return folder


def _config(tmp_path: Path, name: str, base: Path, data: Path, **kw) -> Path:
    values = dict(method="lora", base=str(base), data=[str(data / "train.jsonl")], valid=[str(data / "valid.jsonl")],
                  out=str(tmp_path / name), epochs=2, batch_size=2, lr=1e-2, lora_dropout=0.0, lora_r=4,
                  eval_every=2, save_every=2, system_prompt="Be kind.", progress=False, threads=1, device="cpu",
                  target_modules="all-linear")
    values.update(kw)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _launch(launcher: str, config: Path, *extra: str, crash_at: int | None = None) -> subprocess.CompletedProcess:
    """Two processes, as a lab would start them: `extes` itself, or with `crash_at` (0: no crash)
    tests/train_crash.py, which also reports a process group left open. (`accelerate launch --cpu`
    wants MPI for several processes; `--multi_gpu` on a machine without GPUs runs torch's launcher, and the CPU with gloo.)"""
    port = str(_port())
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    else:
        cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", port]
    script = ["-m", "extes.cli"] if crash_at is None else ["tests/train_crash.py", str(crash_at)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([*cmd, *script, "train", "--config", str(config), *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "adapter_model.safetensors")


def _same_curve(a: dict, b: dict, rel: float) -> None:
    assert a["steps"] == b["steps"]
    assert [e["step"] for e in a["evals"]] == [e["step"] for e in b["evals"]]
    for x, y in zip(a["evals"], b["evals"], strict=True):
        assert x["valid_loss"] == pytest.approx(y["valid_loss"], rel=rel)
    for x, y in zip(a["epochs"], b["epochs"], strict=True):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=rel)
    for key in ("train_tokens", "supervised_tokens", "n_train_examples"):
        assert a[key] == b[key], key


def test_two_processes_learn_what_one_learns_with_the_doubled_batch(tiny_llama, data, tmp_path):
    from extes.train.config import config_from_dict, load_config_file
    from extes.train.runner import train_run

    two = _launch("torchrun", _config(tmp_path, "two", tiny_llama, data))
    assert two.returncode == 0, two.stderr[-4000:]
    one_cfg = config_from_dict({**load_config_file(_config(tmp_path, "one", tiny_llama, data)), "batch_size": 4})
    one = train_run(one_cfg)
    m2, m1 = _metrics(tmp_path / "two"), _metrics(one)
    assert m2["processes"] == 2 and m2["parallelism"] == "ddp" and m1["processes"] == 1 and m2["global_batch_size"] == m1["global_batch_size"] == 4
    assert m2["steps"] == 6 and len(m2["evals"]) >= 4  # 3 steps an epoch, validations mid-epoch and at each end
    _same_curve(m2, m1, rel=1e-4)
    assert m2["epochs"][-1]["train_loss"] < m2["epochs"][0]["train_loss"]  # it learnt something
    wa, wb = _adapter(tmp_path / "two"), _adapter(one)
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)
    # rank 0 alone wrote the run: one card, one metrics file, no leftovers, checkpoints removed at the end
    names = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert "README.md" in names and "checkpoints" not in names and not [n for n in names if n.startswith(".")]


def test_a_resumed_two_process_run_equals_an_unbroken_one(tiny_llama, data, tmp_path):
    from extes.train.config import config_from_dict, load_config_file
    from extes.train.runner import train_run

    unbroken = _launch("accelerate", _config(tmp_path, "unbroken", tiny_llama, data))
    assert unbroken.returncode == 0, unbroken.stderr[-4000:]
    cfg = _config(tmp_path, "broken", tiny_llama, data)
    crashed = _launch("torchrun", cfg, crash_at=5)  # after the checkpoint of step 4, mid-way through epoch 2
    assert crashed.returncode != 0 and "simulated crash" in crashed.stderr
    ckpts = sorted(p.name for p in (tmp_path / "broken" / "checkpoints").iterdir())
    assert ckpts[-1] == "step-0000004" and not (tmp_path / "broken" / "metrics.json").exists()
    # one process cannot pick up two processes' checkpoint: its batches would differ
    with pytest.raises(ValueError, match="written by a run of 2 process"):
        train_run(config_from_dict({**load_config_file(cfg), "resume": True}))
    resumed = _launch("accelerate", cfg, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stdout and resumed.stdout.count("resumed from") == 1  # rank 0 prints
    a, b = _metrics(tmp_path / "broken"), _metrics(tmp_path / "unbroken")
    _same_curve(a, b, rel=1e-6)
    wa, wb = _adapter(tmp_path / "broken"), _adapter(tmp_path / "unbroken")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_fsdp_full_fine_tune_crashed_and_resumed_learns_what_one_process_learns(tiny_llama, data, tmp_path):
    """A full fine-tune sharded over two processes (FSDP), killed after a checkpoint and resumed, ends
    where one process with the doubled batch ends: the checkpoint held the gathered weights and AdamW
    state, and the resume sharded them again."""
    from safetensors.torch import load_file

    from extes.train.config import config_from_dict, load_config_file
    from extes.train.runner import train_run

    cfg = _config(tmp_path, "fsdp", tiny_llama, data, method="clm", fsdp=True, lr=1e-3)
    crashed = _launch("torchrun", cfg, crash_at=5)
    assert crashed.returncode != 0 and "simulated crash" in crashed.stderr
    assert "process group open" not in crashed.stderr
    assert sorted(p.name for p in (tmp_path / "fsdp" / "checkpoints").iterdir())[-1] == "step-0000004"
    resumed = _launch("torchrun", cfg, "--resume", crash_at=0)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "process group open" not in resumed.stderr  # left open, gloo's threads could abort a rank at exit
    one = train_run(config_from_dict({**load_config_file(cfg), "fsdp": False, "batch_size": 4,
                                      "out": str(tmp_path / "one")}))
    m2, m1 = _metrics(tmp_path / "fsdp"), _metrics(one)
    assert m2["processes"] == 2 and m2["parallelism"] == "fsdp" and m2["trainable_params"] == m1["trainable_params"] == m1["total_params"]
    _same_curve(m2, m1, rel=1e-4)
    wa, wb = load_file(tmp_path / "fsdp" / "model.safetensors"), load_file(one / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)


def test_fsdp_is_for_full_fine_tunes(tiny_llama, data, tmp_path):
    from extes.train.config import config_from_dict, load_config_file

    with pytest.raises(ValueError, match="fsdp is for full fine-tunes"):
        config_from_dict(load_config_file(_config(tmp_path, "x", tiny_llama, data, fsdp=True)))
