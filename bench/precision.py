"""Is bf16 safe? Top-1 agreement of bf16 weights with fp32 on the demo arms, and both precisions' Table 6
metrics on the held-out seeds (not a test).

    python bench/precision.py [--protocol eval_protocol/default.yaml] [--new-tokens 24]
                              [--heldout results/adapters/seeds-split/valid.jsonl] [--limit N]
                              [--reply-tokens 64] [--no-metrics]

For every local LoRA/base arm of the protocol (default: the three demo arms on the embedded model), and a
fixed set of eight support-seeking prompts: fp32 writes a greedy continuation of --new-tokens tokens;
then fp32 and bf16 weights (the fast engine's forward: residual, attention, KV cache and LoRA in fp32
either way) each score that same sequence, teacher-forced, and we count the positions where their top-1
token agrees. Where they differ, the fp32 margin between its top two tokens is printed: differences at
near-ties (small margins) are harmless; a large-margin difference is a real error.
Also prints the largest absolute logit difference. `dtype: auto` picks bf16 on CPUs with AVX512-BF16/AMX;
this script is the evidence that doing so is safe for these arms.

Then the Table 6 metrics (METEOR, BLEU-2/4, ROUGE-L, Vector Extrema, Distinct-1/2/3; `extes evaluate`'s
code) of every arm twice, `dtype: float32` and `dtype: bfloat16`, generating greedy replies (at most
--reply-tokens tokens) for every supporter turn of the held-out seed dialogues (default: the split the demo
adapters were trained without), in a fresh generation cache so both are measured in this run. Printed
side by side with the difference and how many replies are word for word the same. Perplexity is left out:
`extes evaluate` computes it with the transformers model in fp32 whatever the arm's dtype, so it could not
differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [
    "I just broke up with my girlfriend and I feel awful.",
    "My exams start next week and I can't sleep because I keep thinking I will fail.",
    "My boss keeps giving me more work and I feel like I'm drowning.",
    "Since my dad died I don't really want to see anyone.",
    "I moved to a new city and I don't know anyone here. The evenings are the worst.",
    "I had a panic attack on the bus today and now I'm scared to take it again.",
    "My best friend stopped answering my messages and I don't know what I did wrong.",
    "I feel like everyone else has their life together except me.",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", default=str(REPO / "eval_protocol" / "default.yaml"))
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--heldout", default=str(REPO / "results" / "adapters" / "seeds-split" / "valid.jsonl"),
                    help="held-out dialogues for the Table 6 comparison")
    ap.add_argument("--limit", type=int, default=None, help="first N held-out dialogues only")
    ap.add_argument("--reply-tokens", type=int, default=64, help="reply cap for the Table 6 comparison")
    ap.add_argument("--no-metrics", action="store_true", help="top-1 agreement only")
    args = ap.parse_args(argv)

    import torch

    from extes.base.loading import checkpoint_source, load_base
    from extes.models.arms import load_arms
    from extes.models.engine import render_prompt
    from extes.models.fastllama import FastLlama, adapter_unsupported_reason, load_lora
    from extes.models.pool import prepare_messages

    arms = [a for a in load_arms(args.protocol) if a.backend == "local"]
    bases = {checkpoint_source(a.base) for a in arms}
    total_agree = total = 0
    worst_margin = 0.0
    for base in sorted(bases):
        group = [a for a in arms if checkpoint_source(a.base) == base]
        adapters = [a.adapter for a in group if a.adapter and adapter_unsupported_reason(a.adapter) is None]
        model, tok = load_base(base)
        loras = [load_lora(p) for p in adapters]
        f32 = FastLlama(model, loras, dtype=torch.float32)
        b16 = FastLlama(model, loras, dtype=torch.bfloat16)
        del model
        for arm in group:
            if arm.adapter and arm.adapter not in adapters:
                print(f"{arm.name}: skipped (adapter not on the fast path)")
                continue
            ai = adapters.index(arm.adapter) if arm.adapter else -1
            ra = None if ai < 0 else torch.tensor([ai])
            agree = n = 0
            diffs = []
            max_abs = 0.0
            with torch.inference_mode():
                for text in PROMPTS:
                    ids = render_prompt(tok, prepare_messages(arm, [{"role": "user", "content": text}]))
                    kv = f32.new_kv(1, len(ids) + args.new_tokens)
                    logits = f32.forward(torch.tensor([ids]), torch.tensor([0]), kv, ra)
                    out = []
                    for i in range(args.new_tokens):
                        out.append(int(logits[0].argmax()))
                        logits = f32.forward(torch.tensor([[out[-1]]]), torch.tensor([len(ids) + i]), kv, ra)
                    seq = torch.tensor([ids + out])
                    # positions whose next token is one of the continuation's: len(ids)-1 .. end-1
                    la = f32.forward(seq, torch.tensor([0]), f32.new_kv(1, seq.shape[1]), ra, all_logits=True)[0]
                    lb = b16.forward(seq, torch.tensor([0]), b16.new_kv(1, seq.shape[1]), ra, all_logits=True)[0]
                    la, lb = la[len(ids) - 1:-1], lb[len(ids) - 1:-1]
                    max_abs = max(max_abs, float((la - lb).abs().max()))
                    top2 = la.topk(2, dim=-1)
                    margin = top2.values[:, 0] - top2.values[:, 1]
                    same = la.argmax(-1) == lb.argmax(-1)
                    agree += int(same.sum())
                    n += same.numel()
                    diffs += [round(float(m), 3) for m in margin[~same]]
            total_agree += agree
            total += n
            worst_margin = max([worst_margin] + diffs)
            print(f"{arm.name:<24} top-1 agreement {agree}/{n} ({100 * agree / n:.1f}%); fp32 margins where they "
                  f"differ: {sorted(diffs) or 'none'}; max |logit diff| {max_abs:.3f}")
    print(f"all arms: {total_agree}/{total} ({100 * total_agree / max(total, 1):.1f}%); largest fp32 margin at a "
          f"difference {worst_margin:.3f} ({'near-ties only' if worst_margin <= 0.5 else 'NOT only near-ties'})")
    if not args.no_metrics:
        table6(arms, Path(args.heldout), args.limit, args.reply_tokens)
    return 0


def table6(arms, heldout: Path, limit: int | None, reply_tokens: int) -> None:
    """Every local arm in fp32 and in bf16 on the held-out dialogues: the metrics side by side."""
    import dataclasses
    import tempfile
    import time

    from extes.dialogue import load_dialogues
    from extes.metrics.evaluate import COLUMNS, EvalOptions, ModelCache, evaluate_many
    from extes.models import ArmPool

    if not heldout.is_file():
        print(f"Table 6 comparison skipped: {heldout} does not exist (make demo-adapters writes the split)")
        return
    dialogues = load_dialogues(heldout)
    pairs = [(a.name, dataclasses.replace(a, name=f"{a.name}.fp32", dtype="float32"),
              dataclasses.replace(a, name=f"{a.name}.bf16", dtype="bfloat16")) for a in arms]
    both = [a for _, fp, bf in pairs for a in (fp, bf)]
    with tempfile.TemporaryDirectory(prefix="extes-precision-") as cache:
        options = EvalOptions(limit=limit, greedy=True, settings={"max_new_tokens": reply_tokens}, ppl=False,
                              cache_dir=cache, progress=False)
        t0 = time.perf_counter()
        with ArmPool(both) as pool:
            if any(pool.engine_for(bf.name).dtype_name != "bfloat16" for _, _, bf in pairs):
                print("Table 6 comparison skipped: bf16 weights are not available on this machine")
                return
            results = {r.arm: r for r in evaluate_many(pool, both, {heldout.stem: (heldout, dialogues)}, options,
                                                       ModelCache())}
        took = time.perf_counter() - t0
    n_dialogues = len(dialogues[:limit] if limit else dialogues)
    n_turns = len(next(iter(results.values())).replies)
    print(f"\nTable 6 metrics, fp32 vs bf16 weights: {n_dialogues} held-out dialogues ({heldout}), {n_turns} "
          f"supporter turns, greedy, replies <= {reply_tokens} tokens ({took:.0f} s)")
    print(f"{'arm':<24} {'metric':<8} {'fp32':>7} {'bf16':>7} {'diff':>7}")
    for name, fp, bf in pairs:
        a, b = results[fp.name], results[bf.name]
        for m in (c for c in COLUMNS if c != "PPL"):  # PPL: see the module docstring
            x, y = a.metrics.get(m), b.metrics.get(m)
            if x is None or y is None:
                continue
            print(f"{name:<24} {m:<8} {x:7.2f} {y:7.2f} {y - x:+7.2f}")
        same = sum(1 for ra, rb in zip(a.replies, b.replies) if ra.get("reply") == rb.get("reply"))
        print(f"{name:<24} identical replies: {same}/{len(a.replies)}")


if __name__ == "__main__":
    sys.exit(main())
