"""`extes train`: one command per training run, from flags or a YAML config (flags win)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from extes.train.config import CHAT_FORMATS, METHODS, PRECISIONS, config_from_dict, load_config_file


def configure_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with any of the settings below (flags override it)")
    p.add_argument("--method", choices=METHODS, help="clm (full, DialoGPT style), lora, qlora, adapter")
    p.add_argument("--base", help="base model: smollm2-135m-instruct (embedded), a folder, or a hub id")
    p.add_argument("--data", nargs="+", help="training dialogues: files or folders (ExTES JSON, ESConv, JSONL)")
    p.add_argument("--valid", nargs="+", help="validation dialogues (loss and perplexity each epoch)")
    p.add_argument("--strategies", action=argparse.BooleanOptionalAction, default=None,
                   help="precede each reply with its strategy tag, e.g. '[Emotional Validation] '")
    p.add_argument("--with-scene", action=argparse.BooleanOptionalAction, default=None,
                   help="append scene and description to the system prompt")
    p.add_argument("--system-prompt", help="system prompt ('' for none); default: the project's support prompt")
    p.add_argument("--chat-format", choices=CHAT_FORMATS, help="default: dialogpt for clm, auto otherwise")
    p.add_argument("--out", help="output folder (default results/runs/<name>)")
    p.add_argument("--name", help="run name (default <method>-<data>[-strategies])")
    p.add_argument("--epochs", type=float)
    p.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    p.add_argument("--lr", type=float, help="peak learning rate (default per method)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--grad-accum", type=int, help="gradient accumulation steps")
    p.add_argument("--max-length", type=int, help="tokens per example; longer dialogues become windows")
    p.add_argument("--warmup-ratio", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--limit", type=int, help="use only the first N training dialogues")
    p.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--precision", choices=PRECISIONS, help="auto: bf16 on a GPU that has it, else fp32")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--eval-every", type=int, help="also validate every N optimizer steps")
    p.add_argument("--early-stopping", type=int, metavar="N", help="stop after N validations without improvement")
    p.add_argument("--keep-best", action=argparse.BooleanOptionalAction, default=None,
                   help="save the weights of the best validation (default on)")
    p.add_argument("--save-every", type=int, help="checkpoint every N optimizer steps (always each epoch)")
    p.add_argument("--fsdp", action=argparse.BooleanOptionalAction, default=None,
                   help="under accelerate launch/torchrun: shard the model over the processes (FSDP; method clm) "
                        "instead of copying it to each (DDP)")
    p.add_argument("--resume", action="store_true", default=None, help="continue from the last checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace a finished run in --out")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--lora-r", type=int)
    p.add_argument("--lora-alpha", type=int)
    p.add_argument("--lora-dropout", type=float)
    p.add_argument("--target-modules", help="comma-separated module names, or all-linear")
    p.add_argument("--lora-layers", type=int, help="LoRA only in the top N blocks (faster backward)")
    p.add_argument("--adapter-len", type=int, help="LLaMA-Adapter prompt length")
    p.add_argument("--adapter-layers", type=int, help="LLaMA-Adapter: number of top layers with prompts")


def config_from_args(args: argparse.Namespace):
    values: dict = {}
    where = "command line"
    if args.config:
        values.update(load_config_file(args.config))
        where = f"{args.config} (with command-line overrides)"
    for key, value in vars(args).items():
        if key == "config" or value is None:
            continue
        values[key] = value
    if values.get("system_prompt") == "":
        values["system_prompt"] = None
    return config_from_dict(values, where=where)


def run_train(args: argparse.Namespace) -> int:
    from extes.train.runner import train_run  # lazy: torch, only when training starts

    cfg = config_from_args(args)
    out = train_run(cfg)
    m = json.loads((Path(out) / "metrics.json").read_text())
    base = m.get("base_valid_ppl")
    best = m.get("valid_ppl")
    line = f"saved {cfg.method} run to {out}: {m['steps']} steps, {m['tokens_per_s']} tokens/s"
    if best is not None:
        line += f", valid ppl {best:.2f}" + (f" (base {base:.2f})" if base is not None else "")
    print(line)
    return 0
