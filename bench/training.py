"""Training throughput: our trainer against a naive baseline, same data, model, LoRA and step count.

Ours: length-grouped batches padded to the longest example in the batch, loss (and the output layer)
only on assistant tokens. Naive: every batch padded to --max-length, loss on every real token with
full logits. Both run the same shared loop (extes.train.loop.train) with the same seed, on the embedded
SmolLM2-135M-Instruct with the demo LoRA settings, for --steps optimizer steps each.

Prints real (non-padding) tokens per second of each, their ratio (target >= 1.5x) and the padding
waste of each (target for ours <= 10%). Numbers from one run on a shared CPU; not a timed test.

Reproducibility (issue 12): the README once said 409 vs 132 tokens/s (3.1x), from a single run of this
script (6 steps each) at the commit that introduced it; later runs on a quiet machine gave ~230 vs ~130
(1.75x). The training code path is unchanged since (only import paths moved; the config's epochs/lr do
not change the cost of a step), so the 3.1x was not a property of the code. What made single runs
unreliable, and is fixed here: (1) the two runs trained on different examples (ours took the first
batches of the length-grouped order, naive the first batches of a plain shuffle), so each measured a
different random ~15k tokens; (2) the first training run in a process (ours) also paid one-time costs
inside its timed steps; (3) one run each, on a shared machine. Now both train on the same examples (the
first steps x batch of one shuffle), an untimed one-step warm-up run comes first, the order alternates
over --rounds, and medians are printed.

    python bench/training.py [--steps 6] [--batch-size 4] [--max-length 1024] [--rounds 3] [--json out.json]

--against trl (issue 27; needs `pip install 'extes[trl]'`): the same examples, base, LoRA settings (the
config's, on the same layers) and token budget through TRL's `SFTTrainer` with PEFT, in its padding-free
mode (each batch flattened into one row with position ids; transformers masks attention per example),
assistant-only loss (our labels passed as TRL's `assistant_masks`), AdamW, the same lr and cosine decay
(no warmup in either run, since Trainer's linear warmup starts at lr 0 and ours at lr/warmup), fp32.
Both train one epoch over the same steps x batch examples, so each sees the same tokens; then both are
scored by the same function (extes.train.loop.evaluate) on the same held-out examples. Prints tokens/s
(real tokens over the wall time of the training call, after an untimed one-step warm-up of each; medians
of --rounds, alternating order) and the validation loss of each, and the ratio ours/TRL.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def run(kind: str, cfg, examples, pad_id: int, steps: int, max_length: int) -> dict:
    import torch

    from extes.train import lora
    from extes.train.loop import LoopOptions, train

    torch.manual_seed(cfg.seed)
    model = lora.build_model(cfg, torch.device("cpu"))
    naive = kind == "naive"
    opts = LoopOptions(max_steps=steps, lr=cfg.learning_rate, batch_size=cfg.batch_size, seed=cfg.seed,
                       group_by_length=not naive, pad_to=max_length if naive else None, full_logits=naive,
                       eval_at_start=False, keep_best=False, progress=False, checkpoint_dir=None)
    t0 = time.perf_counter()
    m = train(model, examples, [], pad_id, opts).metrics
    return {"kind": kind, "steps": m["steps"], "tokens": m["train_tokens"], "supervised_tokens": m["supervised_tokens"],
            "train_time_s": m["train_time_s"], "tokens_per_s": m["tokens_per_s"], "padding_waste": m["padding_waste"],
            "wall_s": round(time.perf_counter() - t0, 1)}


def run_ours(cfg, examples, valid, pad_id: int, steps: int) -> dict:
    """Our loop over `examples` (one epoch of `steps` steps), then the validation loss."""
    import torch

    from extes.train import lora
    from extes.train.loop import LoopOptions, evaluate, train

    torch.manual_seed(cfg.seed)
    model = lora.build_model(cfg, torch.device("cpu"))
    opts = LoopOptions(max_steps=steps, lr=cfg.learning_rate, batch_size=cfg.batch_size, seed=cfg.seed,
                       warmup_ratio=0.0, eval_at_start=False, keep_best=False, progress=False, checkpoint_dir=None)
    t0 = time.perf_counter()
    m = train(model, examples, [], pad_id, opts).metrics
    wall = time.perf_counter() - t0
    v = evaluate(model, valid, cfg.batch_size, pad_id, torch.device("cpu")) if valid else None
    return {"kind": "ours", "steps": m["steps"], "tokens": m["train_tokens"], "wall_s": round(wall, 2),
            "tokens_per_s": round(m["train_tokens"] / wall, 1), "padding_waste": m["padding_waste"],
            "valid_loss": v["loss"] if v else None, "trainable_params": m["trainable_params"]}


def padding_free_is_exact(cfg) -> bool:
    """Whether this machine's attention keeps flattened examples apart (TRL's padding-free batches are one
    row with position ids; flash attention separates the examples by them, sdpa on a CPU may not): the
    logits of a second example flattened after a first = its logits alone."""
    import torch

    from extes.base.loading import load_base

    model, _ = load_base(cfg.base, dtype="float32")
    a, b = torch.arange(100, 112)[None], torch.arange(200, 209)[None]
    with torch.no_grad():
        alone = model(input_ids=b).logits
        flat = model(input_ids=torch.cat([a, b], 1),
                     position_ids=torch.cat([torch.arange(12), torch.arange(9)])[None]).logits[:, 12:]
    return bool(torch.allclose(alone, flat, atol=1e-4))


def run_trl(cfg, tok, examples, valid, pad_id: int, steps: int, workdir: Path, padding_free: bool = True) -> dict:
    """TRL's SFTTrainer (assistant-only loss; padding-free, or padded to each batch's longest example with
    Trainer's length grouping) on the same model, examples and schedule."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from extes.train import lora
    from extes.train.formatting import IGNORE
    from extes.train.loop import evaluate

    torch.manual_seed(cfg.seed)
    model = lora.build_model(cfg, torch.device("cpu"))
    data = Dataset.from_dict({"input_ids": [list(e.input_ids) for e in examples],
                              "assistant_masks": [[int(x != IGNORE) for x in e.labels] for e in examples]})
    args = SFTConfig(output_dir=str(workdir), max_steps=steps, per_device_train_batch_size=cfg.batch_size,
                     learning_rate=cfg.learning_rate, lr_scheduler_type="cosine", warmup_steps=0,
                     weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, optim="adamw_torch",
                     seed=cfg.seed, data_seed=cfg.seed, padding_free=padding_free,
                     train_sampling_strategy="random" if padding_free else "group_by_length",
                     max_length=None, bf16=False, fp16=False,
                     use_cpu=True, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
                     dataloader_num_workers=0, gradient_checkpointing=cfg.gradient_checkpointing)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    tokens = sum(len(e) for e in examples)
    v = evaluate(model, valid, cfg.batch_size, pad_id, torch.device("cpu")) if valid else None
    return {"kind": "trl", "mode": "padding-free" if padding_free else "padded", "steps": trainer.state.global_step,
            "tokens": tokens, "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall, 1),
            "valid_loss": v["loss"] if v else None}


def against_trl(args, cfg, tok, ours_set, valid_set) -> dict:
    import statistics
    import tempfile

    import trl

    pad = tok.pad_token_id
    free = args.trl_mode == "padding-free"
    exact = padding_free_is_exact(cfg)
    print(f"TRL {trl.__version__}, {args.trl_mode}; padding-free attention keeps examples apart here: {exact}"
          + ("" if exact or not free else " (so TRL's padding-free batches attend across examples on this "
             "machine: a different objective; --trl-mode padded is the exact one)"), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_warmup:  # untimed: one-time costs of each
            run_ours(cfg, ours_set[:cfg.batch_size], [], pad, 1)
            run_trl(cfg, tok, ours_set[:cfg.batch_size], [], pad, 1, Path(tmp) / "warm", free)
        runs: dict[str, list[dict]] = {"ours": [], "trl": []}
        for rnd in range(args.rounds):
            for kind in (("ours", "trl") if rnd % 2 == 0 else ("trl", "ours")):
                r = (run_ours(cfg, ours_set, valid_set, pad, args.steps) if kind == "ours"
                     else run_trl(cfg, tok, ours_set, valid_set, pad, args.steps, Path(tmp) / f"r{rnd}", free))
                runs[kind].append(r)
                print(f"  round {rnd + 1} {kind:>4}: {r['tokens_per_s']:8.1f} tokens/s ({r['tokens']} tokens, "
                      f"{r['steps']} steps in {r['wall_s']} s), valid loss {r['valid_loss']:.4f}", flush=True)
    results: dict = {"trl_version": trl.__version__, "trl_mode": args.trl_mode, "padding_free_exact_here": exact}
    for kind, rs in runs.items():
        results[kind] = dict(rs[0], tokens_per_s=statistics.median(x["tokens_per_s"] for x in rs),
                             all_tokens_per_s=[x["tokens_per_s"] for x in rs],
                             valid_loss=statistics.median(x["valid_loss"] for x in rs),
                             all_valid_loss=[round(x["valid_loss"], 4) for x in rs])
        print(f"{kind:>5}: median {results[kind]['tokens_per_s']:8.1f} tokens/s, valid loss "
              f"{results[kind]['valid_loss']:.4f} after {results[kind]['tokens']} tokens")
    results["ratio"] = round(results["ours"]["tokens_per_s"] / results["trl"]["tokens_per_s"], 3)
    results["valid_loss_difference"] = round(results["ours"]["valid_loss"] - results["trl"]["valid_loss"], 4)
    print(f"ratio ours/TRL {results['ratio']:.2f}x tokens/s; valid loss ours - TRL "
          f"{results['valid_loss_difference']:+.4f} (base lr {cfg.learning_rate}, TRL {trl.__version__})")
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO / "seeds"))
    p.add_argument("--config", default=str(REPO / "configs" / "seeds-lora.yaml"), help="LoRA settings to use")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rounds", type=int, default=3, help="alternate ours/naive this many times; medians")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up run (to see its effect)")
    p.add_argument("--json", help="also write the numbers to this file")
    p.add_argument("--against", choices=["naive", "trl"], default="naive",
                   help="the baseline: a naive loop (default) or TRL's SFTTrainer (pip install 'extes[trl]')")
    p.add_argument("--trl-mode", choices=["padding-free", "padded"], default="padding-free",
                   help="--against trl: TRL's padding-free batches, or padded with length grouping")
    p.add_argument("--valid-examples", type=int, default=16, help="--against trl: held-out examples scored")
    args = p.parse_args(argv)

    import torch

    from extes.dialogue import load_dialogues
    from extes.train.config import config_from_dict, load_config_file
    from extes.train.formatting import Encoded, encode_dialogues
    from extes.train.runner import prepare_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    values = load_config_file(args.config)
    values.update(data=[args.data], valid=[], batch_size=args.batch_size, max_length=args.max_length, out=None)
    cfg = config_from_dict(values, where=args.config)
    tok = prepare_tokenizer(cfg)
    dialogues = load_dialogues(args.data)
    ours_set = encode_dialogues(tok, dialogues, strategies=False, system_prompt=cfg.system_prompt,
                                max_length=args.max_length)
    # the same examples for both runs: the first steps x batch of one seeded shuffle
    import random

    order = list(range(len(ours_set)))
    random.Random(cfg.seed).shuffle(order)
    all_examples = ours_set
    ours_set = [ours_set[i] for i in order[:args.steps * args.batch_size]] or ours_set
    valid_set = [all_examples[i] for i in order[args.steps * args.batch_size:][:args.valid_examples]]
    # naive: the same token sequences, every real token supervised
    naive_set = [Encoded(e.input_ids, list(e.input_ids)) for e in ours_set]
    need = args.steps * args.batch_size
    if len(ours_set) < need:
        print(f"note: {len(ours_set)} examples for {need} per run; batches repeat across epochs", file=sys.stderr)
    print(f"data: {len(dialogues)} dialogues -> {len(ours_set)} examples, "
          f"mean {sum(map(len, ours_set)) / len(ours_set):.0f} tokens, "
          f"{100 * sum(e.n_supervised for e in ours_set) / sum(map(len, ours_set)):.0f}% assistant tokens; "
          f"{args.steps} steps x batch {args.batch_size}, {torch.get_num_threads()} threads")

    import statistics

    if args.against == "trl":
        results = against_trl(args, cfg, tok, ours_set, valid_set)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        return 0
    if not args.no_warmup:
        run("ours", cfg, ours_set, tok.pad_token_id, 1, args.max_length)  # untimed: one-time costs
    runs: dict[str, list[dict]] = {"ours": [], "naive": []}
    sets = {"ours": ours_set, "naive": naive_set}
    for rnd in range(args.rounds):
        kinds = ("ours", "naive") if rnd % 2 == 0 else ("naive", "ours")
        for kind in kinds:
            r = run(kind, cfg, sets[kind], tok.pad_token_id, args.steps, args.max_length)
            runs[kind].append(r)
            print(f"  round {rnd + 1} {kind:>5}: {r['tokens_per_s']:8.1f} tokens/s ({r['tokens']} tokens in "
                  f"{r['train_time_s']} s)", flush=True)
    results = {}
    for kind, rs in runs.items():
        med = dict(rs[0], tokens_per_s=statistics.median(x["tokens_per_s"] for x in rs),
                   all_tokens_per_s=[x["tokens_per_s"] for x in rs])
        results[kind] = med
        print(f"{kind:>5}: median {med['tokens_per_s']:8.1f} tokens/s  padding waste "
              f"{100 * med['padding_waste']:5.1f}%  ({med['tokens']} real tokens per run)")
    ratio = results["ours"]["tokens_per_s"] / results["naive"]["tokens_per_s"]
    results["ratio"] = round(ratio, 3)
    ok_ratio, ok_waste = ratio >= 1.5, results["ours"]["padding_waste"] <= 0.10
    print(f"ratio ours/naive: {ratio:.2f}x (target >= 1.5x: {'met' if ok_ratio else 'NOT met'}); "
          f"our padding waste {100 * results['ours']['padding_waste']:.1f}% (target <= 10%: "
          f"{'met' if ok_waste else 'NOT met'})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
