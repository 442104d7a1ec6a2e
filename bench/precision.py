"""Is bf16 safe? Top-1 agreement of bf16 weights with fp32 on the demo arms (not a test).

    python bench/precision.py [--protocol eval_protocol/default.yaml] [--new-tokens 24]

For every local LoRA/base arm of the protocol (default: the three demo arms on the embedded model), and a
fixed set of eight support-seeking prompts: fp32 writes a greedy continuation of --new-tokens tokens;
then fp32 and bf16 weights (the fast engine's forward: residual, attention, KV cache and LoRA in fp32
either way) each score that same sequence, teacher-forced, and we count the positions where their top-1
token agrees. Where they differ, the fp32 margin between its top two tokens is printed: differences at
near-ties (small margins) are harmless; a large-margin difference is a real error.
Also prints the largest absolute logit difference. `dtype: auto` picks bf16 on CPUs with AVX512-BF16/AMX;
this script is the evidence that doing so is safe for these arms.
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
