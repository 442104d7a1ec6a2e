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
    ({"learning_rate": 0.1}, r"^c\.yaml: learning_rate: unknown key 'learning_rate'; allowed: method, base, "),
    ({"method": "dpo"}, r"^c\.yaml: method: 'dpo' is not one of clm, lora, qlora, adapter$"),
    ({"max_length": 8}, r"^c\.yaml: max_length: must be >= 32, got 8$"),
    ({"warmup_ratio": 1}, r"^c\.yaml: warmup_ratio: must be < 1, got 1$"),
    ({"early_stopping": 2}, r"^c\.yaml: early_stopping needs a validation set \(--valid\)$"),
    ({"save_every": 0}, r"^c\.yaml: save_every: must be >= 1, got 0$"),
    ({"method": "lora", "lora_dropout": 1.5}, r"lora_dropout: must be < 1, got 1.5$"),
    ({"method": "adapter", "adapter_len": 0}, r"adapter_len: must be >= 1, got 0$"),
    ({"epochs": 0}, r"epochs must be > 0 \(or give max_steps\)"),
    ({"batch_size": "four"}, r"^c\.yaml: batch_size: expected a whole number, got 'four'$"),
    ({"batch_size": True}, r"^c\.yaml: batch_size: expected a whole number, got True$"),
    ({"precision": "fp8"}, r"^c\.yaml: precision: 'fp8' is not one of auto, fp32, bf16, fp16$"),
    ({"lr": 0}, r"^c\.yaml: lr: must be > 0, got 0$"),
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


def test_the_loop_takes_its_defaults_and_a_runs_settings_from_the_config():
    """One source of defaults: every setting the YAML config shares with the loop defaults alike."""
    from dataclasses import fields

    from extes.train.config import FIELDS, TrainConfig
    from extes.train.loop import LoopOptions

    config, loop = TrainConfig(), LoopOptions()
    shared = [f.name for f in fields(LoopOptions) if f.name in FIELDS]
    assert len(shared) >= 10
    for name in shared:
        expected = config.learning_rate if name == "lr" else getattr(config, name)
        assert getattr(loop, name) == expected, name
    cfg = TrainConfig(method="adapter", epochs=2, batch_size=3, seed=7, precision="fp32", save_every=5)
    opts = LoopOptions.from_config(cfg, checkpoint_dir="ck")
    assert (opts.epochs, opts.batch_size, opts.seed, opts.precision, opts.save_every) == (2, 3, 7, "fp32", 5)
    assert opts.lr == cfg.learning_rate and opts.checkpoint_dir == "ck"


def test_one_max_batch_default_for_the_pool_the_engine_and_the_scheduler():
    import inspect

    from extes.commands import app_cli
    from extes.models import ArmPool
    from extes.models.engine import create_engine
    from extes.models.scheduler import Engine
    from extes.models.types import MAX_BATCH

    for fn in (ArmPool.__init__, create_engine, Engine.__init__, app_cli.create):
        assert inspect.signature(fn).parameters["max_batch"].default == MAX_BATCH, fn
    parser = __import__("argparse").ArgumentParser()
    app_cli.configure_app(parser)
    assert parser.parse_args([]).max_batch == MAX_BATCH
