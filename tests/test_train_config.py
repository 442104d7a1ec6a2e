"""The training config: a frozen pydantic dataclass read through extes.config; errors name file, key, reason."""

from __future__ import annotations

import dataclasses

import pytest

from extes.train.config import TrainConfig, config_from_dict, load_config_file


def test_defaults_normalisation_and_to_dict(tmp_path):
    cfg = config_from_dict({"data": str(tmp_path / "a.jsonl"), "valid": None, "target-modules": "q_proj, v_proj",
                            "epochs": 1, "lr": "1e-4"}, "c.yaml")
    assert isinstance(cfg, TrainConfig) and cfg.data == [str(tmp_path / "a.jsonl")] and cfg.valid == []
    assert cfg.target_modules == ["q_proj", "v_proj"] and cfg.epochs == 1.0 and cfg.learning_rate == 1e-4
    assert config_from_dict({"method": "clm"}).to_dict()["lr"] == 5e-5  # the method's default
    assert config_from_dict({"method": "clm"}).to_dict()["chat_format"] == "dialogpt"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 3


@pytest.mark.parametrize("values, message", [
    ({"learning_rate": 0.1}, r"^c\.yaml: unknown setting\(s\) learning_rate; known: method, base, "),
    ({"method": "dpo"}, r"^c\.yaml: method: method 'dpo' is not one of clm, lora, qlora, adapter$"),
    ({"max_length": 8}, r"^c\.yaml: max_length must be >= 32, got 8$"),
    ({"warmup_ratio": 1}, r"^c\.yaml: warmup_ratio must be in \[0, 1\), got 1"),
    ({"early_stopping": 2}, r"^c\.yaml: early_stopping needs a validation set \(--valid\)$"),
    ({"save_every": 0}, r"^c\.yaml: save_every: save_every must be a positive integer, got 0$"),
    ({"method": "lora", "lora_dropout": 1.5}, r"lora_dropout must be in \[0, 1\), got 1.5"),
    ({"method": "adapter", "adapter_len": 0}, r"adapter_len must be >= 1, got 0"),
    ({"epochs": 0}, r"epochs must be > 0 \(or give max_steps\)"),
    ({"batch_size": "four"}, r"^c\.yaml: batch_size: .*valid integer"),
])
def test_bad_values_name_file_key_and_reason(values, message):
    with pytest.raises(ValueError, match=message):
        config_from_dict(values, "c.yaml")


def test_yaml_file_is_read_by_the_shared_reader(tmp_path):
    good = tmp_path / "t.yaml"
    good.write_text("method: lora\nepochs: 2\n")
    assert load_config_file(good) == {"method": "lora", "epochs": 2}
    (tmp_path / "empty.yaml").write_text("")
    assert load_config_file(tmp_path / "empty.yaml") == {}
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: [\n")
    with pytest.raises(ValueError, match="bad.yaml: not valid YAML"):
        load_config_file(bad)
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ValueError, match="expected a mapping of settings"):
        load_config_file(tmp_path / "list.yaml")
    with pytest.raises(FileNotFoundError, match="no such config file"):
        load_config_file(tmp_path / "missing.yaml")


def test_the_repository_training_configs_are_valid(repo_root):
    for path in sorted((repo_root / "configs").glob("seeds-*.yaml")):
        cfg = config_from_dict(load_config_file(path), str(path))
        assert cfg.run_name == path.stem and cfg.method == "lora"
