"""`make demo-adapters` (`python -m extes.train.demo`): reproduce the two default demo adapters.

1. Split `seeds/` 85/15 into train/valid by dialogue, stratified by scene, seed 0, with the project's
   `extes split` logic, into results/adapters/seeds-split/ (ids and source hashes in its manifest).
2. Train `seeds-lora` and `seeds-lora-strategies` (configs/*.yaml) on the embedded SmolLM2-135M-Instruct
   into results/adapters/<name>/, each with metrics.json holding its valid perplexity next to the base
   model's on the same split (the untrained model is evaluated first).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from extes.data_cli import split_dialogues, write_split
from extes.dialogue import load_dialogues
from extes.train.config import config_from_dict, load_config_file

REPO = Path(__file__).resolve().parents[2]
CONFIGS = ("configs/seeds-lora.yaml", "configs/seeds-lora-strategies.yaml")
SPLIT_DIR = "results/adapters/seeds-split"
RATIOS = (0.85, 0.15, 0.0)


def make_split(seeds: Path, out: Path, seed: int = 0) -> dict:
    dialogues = load_dialogues(seeds)
    if not dialogues:
        raise ValueError(f"{seeds}: no seed dialogues to train on")
    split = split_dialogues(dialogues, ratios=RATIOS, seed=seed)
    write_split(split, out, [seeds], seed, RATIOS)
    (out / "test.jsonl").unlink(missing_ok=True)  # empty: no test share in this split
    return {"train": len(split.train), "valid": len(split.valid)}


def main(argv: list[str] | None = None) -> int:
    from extes.train.runner import train_run  # lazy: torch, only when training starts

    p = argparse.ArgumentParser(prog="python -m extes.train.demo", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="seeds", help="seed dialogues folder")
    p.add_argument("--only", choices=[Path(c).stem for c in CONFIGS], help="train only this adapter")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    counts = make_split(Path(args.seeds), Path(SPLIT_DIR))
    print(f"split {args.seeds}: {counts['train']} train, {counts['valid']} valid dialogues -> {SPLIT_DIR}")
    for path in CONFIGS:
        if args.only and Path(path).stem != args.only:
            continue
        values = load_config_file(path)
        values.update(overwrite=True, progress=not args.no_progress)
        if args.threads:
            values["threads"] = args.threads
        cfg = config_from_dict(values, where=path)
        out = train_run(cfg)
        m = json.loads((out / "metrics.json").read_text())
        print(f"{cfg.run_name}: valid ppl {m['valid_ppl']:.3f} (base model {m['base_valid_ppl']:.3f}) "
              f"after {m['steps']} steps, {m['tokens_per_s']} tokens/s, {m['wall_time_s']} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
