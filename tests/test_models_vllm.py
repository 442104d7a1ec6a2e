"""The vLLM path: adapters name their base by hub id (mapped back locally), and `extes serve
--vllm-command` prints a vllm command and arms YAML the study can load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from extes.base.embedded import EMBEDDED_HUB_ID, EMBEDDED_NAME
from extes.base.loading import hub_id, is_embedded
from extes.models.arms import arms_from_config, load_arms
from extes.models.vllm import vllm_plan

REPO = Path(__file__).resolve().parents[1]
PROTOCOL = REPO / "eval_protocol" / "default.yaml"


def test_hub_id_mapping_for_the_embedded_model(tmp_path, monkeypatch):
    import extes.base.loading as loading

    monkeypatch.setattr(loading, "embedded_checkpoint", lambda: tmp_path / "embedded")
    assert loading.checkpoint_source(EMBEDDED_HUB_ID) == str(tmp_path / "embedded")  # offline: the local copy
    assert loading.checkpoint_source(EMBEDDED_NAME) == str(tmp_path / "embedded")
    assert hub_id(EMBEDDED_NAME) == EMBEDDED_HUB_ID
    assert is_embedded(EMBEDDED_HUB_ID) and is_embedded(EMBEDDED_HUB_ID.lower()) and is_embedded(EMBEDDED_NAME)
    assert hub_id(str(tmp_path)) == str(tmp_path)
    assert not is_embedded("HuggingFaceTB/SmolLM2-360M-Instruct")


def test_committed_demo_adapters_record_the_hub_id_and_their_arms_still_load():
    for name in ("seeds-lora", "seeds-lora-strategies"):
        cfg = json.loads((REPO / "results" / "adapters" / name / "adapter_config.json").read_text())
        assert cfg["base_model_name_or_path"] == EMBEDDED_HUB_ID
    arms = {a.name: a for a in load_arms(PROTOCOL)}
    assert arms["seeds-lora-strategies"].strategies is True
    assert arms["seeds-lora"].adapter and Path(arms["seeds-lora"].adapter).is_dir()


def test_save_peft_records_the_hub_id(tmp_path):
    """extes train's save: the embedded base is recorded as its hub id (a tiny PEFT model stands in)."""
    from types import SimpleNamespace

    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from extes.train.common import save_peft

    model = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, vocab_size=64))
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    save_peft(peft_model, tmp_path, SimpleNamespace(base=EMBEDDED_NAME))
    assert json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"] == EMBEDDED_HUB_ID


def test_vllm_plan_for_the_default_protocol(tmp_path):
    arms = load_arms(PROTOCOL)
    plan = vllm_plan(arms, host="10.0.0.5", port=9000, tensor_parallel=2)
    (cmd,) = plan.commands
    assert cmd[:3] == ["vllm", "serve", EMBEDDED_HUB_ID]
    assert "--enable-lora" in cmd and cmd[cmd.index("--tensor-parallel-size") + 1] == "2"
    modules = cmd[cmd.index("--lora-modules") + 1:]
    assert sorted(m.split("=")[0] for m in modules) == ["seeds-lora", "seeds-lora-strategies"]
    assert all(Path(m.split("=", 1)[1]).is_absolute() and Path(m.split("=", 1)[1]).is_dir() for m in modules)
    assert cmd[cmd.index("--max-lora-rank") + 1] == "8"
    # the arms YAML loads as arms, points at the server and keeps each arm's settings
    path = tmp_path / "arms.yaml"
    path.write_text(plan.arms_yaml())
    served = {a.name: a for a in load_arms(path)}
    local = {a.name: a for a in arms}
    assert set(served) == set(local)
    for name, arm in served.items():
        assert arm.backend == "openai" and arm.base_url == "http://10.0.0.5:9000/v1"
        assert arm.system_prompt == local[name].system_prompt and arm.generation == local[name].generation
        assert arm.strategies == local[name].strategies
    assert served["embedded"].model == EMBEDDED_HUB_ID and served["seeds-lora"].model == "seeds-lora"


def test_vllm_plan_refuses_adapters_vllm_cannot_serve(tmp_path):
    from extes.errors import CLIError

    ad = tmp_path / "prompt-adapter"
    ad.mkdir()
    (ad / "adapter_config.json").write_text(json.dumps({"peft_type": "ADAPTION_PROMPT"}))
    arms = arms_from_config([{"name": "x", "adapter": str(ad)}], where="test")
    with pytest.raises(CLIError, match="LoRA adapters only"):
        vllm_plan(arms)


def test_serve_vllm_command_cli_prints_command_and_yaml():
    out = subprocess.run([sys.executable, "-m", "extes.cli", "serve", "--vllm-command", str(PROTOCOL)],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "vllm serve HuggingFaceTB/SmolLM2-135M-Instruct" in out.stdout
    assert "--lora-modules" in out.stdout
    yaml_part = out.stdout[out.stdout.index("arms:"):]
    assert len(yaml.safe_load(yaml_part)["arms"]) == 3


def test_vllm_plan_with_local_weights_serves_the_folder_under_the_hub_id(monkeypatch, tmp_path):
    import extes.models.vllm as vllm

    monkeypatch.setattr(vllm, "checkpoint_source", lambda base: str(tmp_path / "ckpt"))  # where vllm looks it up
    (cmd,) = vllm_plan(load_arms(PROTOCOL), local_weights=True).commands
    assert cmd[2] == str(tmp_path / "ckpt") and cmd[cmd.index("--served-model-name") + 1] == EMBEDDED_HUB_ID


def test_gpu_check_without_a_gpu_exits_with_a_message(tmp_path):
    import os
    import shutil

    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi")
    out = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), sys.executable], capture_output=True,
                         text=True, timeout=60, cwd=REPO, env={**os.environ, "PATH": "/usr/bin:/bin"})
    assert out.returncode == 2 and "no NVIDIA GPU" in out.stdout


def test_training_on_the_hub_id_reads_the_local_embedded_copy_offline(base, monkeypatch):
    """A training config may name the base as adapters record it (the hub id); with the hub offline its
    checks read the local embedded checkpoint instead of failing on a download."""
    import extes.base.loading as loading
    from extes.train.config import base_model_config, check_adapter_base

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(loading, "embedded_checkpoint", lambda: Path(base))
    assert base_model_config(EMBEDDED_HUB_ID).model_type == "llama"
    check_adapter_base(EMBEDDED_HUB_ID, "train.yaml", None)  # LLaMA-Adapter's check reads the same config
