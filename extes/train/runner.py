"""One training run end to end: validate, read and encode data, build the method's model, train, save.

Output folder (`results/runs/<name>/` by default):
  adapter_config.json + adapter_model.safetensors (PEFT methods) or config.json + model.safetensors (clm),
  the tokenizer (with the chat template used in training), training_config.json (the resolved config),
  metrics.json, README.md (model card), checkpoints/ (for --resume; removed after a successful run).
Final files are written to a temporary folder first and moved into place, so a crash never leaves a
half-written run over an older one.

Under `accelerate launch` or `torchrun` every process runs this same function (extes.train.distributed):
each reads and encodes the data, builds the model on its own device and trains its slice of each batch;
rank 0 alone writes checkpoints and the final files, the others wait for it.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import shutil
import time
from pathlib import Path

from extes.base.loading import load_base, load_tokenizer
from extes.dialogue import load_dialogues
from extes.train.card import model_card
from extes.train.config import TrainConfig, validate
from extes.train.distributed import init
from extes.train.formatting import encode_dialogues, ensure_chat_template
from extes.train.loop import LoopOptions, train

METHOD_MODULES = {m: f"extes.train.{m}" for m in ("clm", "lora", "qlora", "adapter")}


def method_module(method: str):
    return importlib.import_module(METHOD_MODULES[method])


def load_data(cfg: TrainConfig):
    """(train dialogues, valid dialogues); errors name the path when there is nothing to train on."""

    train_d = load_dialogues(cfg.data)
    if cfg.limit:
        train_d = train_d[: cfg.limit]
    if not train_d:
        raise ValueError(f"no dialogues found in {', '.join(cfg.data)}")
    valid_d = load_dialogues(cfg.valid) if cfg.valid else []
    if cfg.valid and not valid_d:
        raise ValueError(f"no dialogues found in validation data {', '.join(cfg.valid)}")
    return train_d, valid_d


def prepare_tokenizer(cfg: TrainConfig):
    tok = load_tokenizer(cfg.base)
    ensure_chat_template(tok, cfg.resolved_chat_format)
    return tok


def encode(cfg: TrainConfig, tok, dialogues):
    return encode_dialogues(tok, dialogues, strategies=cfg.strategies, with_scene=cfg.with_scene,
                            system_prompt=cfg.system_prompt, max_length=cfg.max_length)


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def train_run(cfg: TrainConfig) -> Path:
    """Run one training as configured; returns the output folder."""
    import torch  # lazy: torch loads when a run starts, not when the module is read

    t_start = time.perf_counter()
    validate(cfg)
    out = cfg.out_dir
    # Everything that can fail on the data happens before any weights load.
    train_d, valid_d = load_data(cfg)
    tok = prepare_tokenizer(cfg)
    train_set, valid_set = encode(cfg, tok, train_d), encode(cfg, tok, valid_d)
    if not train_set:
        raise ValueError(f"{', '.join(cfg.data)}: no dialogue has an assistant turn to learn from")

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    dist, device = init(cfg.device, fsdp=cfg.fsdp)
    try:
        module = method_module(cfg.method)
        model = module.build_model(cfg, device)
        ckpt_dir = out / "checkpoints"
        if dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            if cfg.overwrite and not cfg.resume and ckpt_dir.exists():
                shutil.rmtree(ckpt_dir)
        dist.barrier()
        opts = LoopOptions.from_config(cfg, checkpoint_dir=ckpt_dir)
        result = train(model, train_set, valid_set, tok.pad_token_id, opts, device=device, dist=dist)
        if not dist.is_main:
            dist.barrier()  # rank 0 writes the run
            return out
        metrics = {
            "run": cfg.run_name, "method": cfg.method, "base": cfg.base, "strategies": cfg.strategies,
            "n_train_dialogues": len(train_d), "n_valid_dialogues": len(valid_d),
            "max_length": cfg.max_length, **result.metrics,
            "wall_time_s": round(time.perf_counter() - t_start, 1),
        }
        if metrics["best"]:
            metrics["valid_ppl"] = metrics["best"]["valid_ppl"]
            metrics["valid_loss"] = metrics["best"]["valid_loss"]
        _save_run(cfg, module, model, tok, metrics, result.full_state)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        dist.barrier()
        return out
    finally:
        dist.close()  # every process, on success and on error


def _save_run(cfg: TrainConfig, module, model, tok, metrics: dict, full_state: dict | None) -> None:
    """The final files, written to a temporary folder and moved into `cfg.out_dir`."""

    out = cfg.out_dir
    tmp = out / f".saving-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        if full_state is not None:  # FSDP: the model holds shards; save the gathered weights
            module.save_model(model, tmp, cfg, state_dict=full_state)
        else:
            module.save_model(model, tmp, cfg)
        tok.save_pretrained(str(tmp))
        cfg.save(tmp / "training_config.json")
        _write_json(tmp / "metrics.json", metrics)
        (tmp / "README.md").write_text(model_card(cfg, metrics), encoding="utf-8")
        for f in tmp.iterdir():
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_trained(run_dir: str | Path, device: str | None = None):
    """(model, tokenizer) of a finished run: a PEFT adapter on its base, or a full clm model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: heavy, only to load a run


    run_dir = Path(run_dir)
    cfg_path = run_dir / "training_config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no training_config.json (not an extes training run)")
    info = json.loads(cfg_path.read_text())
    tok = AutoTokenizer.from_pretrained(str(run_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if info.get("method") == "clm":
        model = AutoModelForCausalLM.from_pretrained(str(run_dir))
        if device:
            model.to(device)
    else:
        from peft import PeftModel  # lazy: heavy, only for adapter runs

        base, _ = load_base(info["base"], device=device)
        model = PeftModel.from_pretrained(base, str(run_dir))
    model.eval()
    return model, tok
