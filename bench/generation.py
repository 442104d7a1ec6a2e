"""Generation benchmark on the embedded model (not a test; no timing assertions).

    .venv/bin/python bench/generation.py [--context 512] [--new-tokens 64] [--rounds 2]

Three arms on one shared SmolLM2-135M-Instruct base: `base` (no adapter) and two LoRA arms (r=8 on all
linear layers, made here with a couple of optimiser steps so their weights are real, non-zero LoRA
weights). A conversation of about `--context` tokens, `--new-tokens` new tokens, greedy, end-of-turn
ignored so every reply has exactly that many tokens.
  (a) one arm alone
  (b) all three arms at once (one batch: what a participant's click does)
  (c) all three one after another (what separate model copies, one request at a time, would cost)
Prints time-to-first-token, tokens/s and the ratios b/a and c/b (median of --rounds), then the peak RSS
of a process with one arm loaded versus three (measured in fresh subprocesses).
Targets (issue 3, 2-core CPU): b/a <= 1.5, c/b >= 2.0, RSS(three) <= 1.2 x RSS(one).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from extes.base.embedded import EMBEDDED_NAME
from extes.models import Arm, ArmPool, GenerationSettings

TURNS = [
    ("I have been feeling really low since my partner and I split up last month.",
     "I'm sorry you're going through this. Breakups can leave a big empty space. What has been hardest?"),
    ("Mostly the evenings. We used to cook together and now the flat is so quiet.",
     "Those quiet evenings sound lonely. It makes sense that the routines you shared hurt the most now."),
    ("My friends say I should just move on but I can't stop thinking about what went wrong.",
     "It's natural to look back and try to understand. Moving on takes time, and there is no set schedule."),
    ("Sometimes I think it was all my fault, that I pushed too hard about moving in together.",
     "It sounds like you are being hard on yourself. Relationships involve two people and many reasons."),
    ("I also have exams coming up and I can't focus on anything.",
     "That's a lot at once: heartbreak and exam pressure. Would a small study plan with breaks help?"),
]


def conversation(tokenizer, system: str, target: int) -> list[dict[str, str]]:
    """A conversation whose chat prompt is just under `target` tokens (turns repeat if needed)."""
    from extes.models.engine import render_prompt

    msgs: list[dict[str, str]] = []
    i = 0
    while True:
        u, a = TURNS[i % len(TURNS)]
        trial = msgs + [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
        probe = [{"role": "system", "content": system}] + trial + [{"role": "user", "content": "Thank you."}]
        if len(render_prompt(tokenizer, probe)) > target:
            break
        msgs, i = trial, i + 1
    return msgs + [{"role": "user", "content": "Thank you. What could I do tonight to feel a bit better?"}]


def make_adapters(out: Path) -> list[Path]:
    from extes.testing.quick_lora import quick_lora

    replies = [(u, a, "Emotional Validation") for u, a in TURNS[:2]]
    return [quick_lora(EMBEDDED_NAME, out / f"lora-{i}", replies, steps=1, lr=1e-3, r=8, seed=i,
                       strategies=bool(i)) for i in range(2)]


def build_arms(adapters: list[Path], new_tokens: int) -> list[Arm]:
    g = GenerationSettings(max_new_tokens=new_tokens, temperature=0.0, repetition_penalty=1.1)
    return [Arm("base", generation=g),
            Arm("lora", adapter=str(adapters[0]), generation=g),
            Arm("lora-strategies", adapter=str(adapters[1]), strategies=True, generation=g)]


def timed_many(pool: ArmPool, requests: dict) -> dict:
    t0 = time.perf_counter()
    ttft, tokens = {}, 0
    for key, ev in pool.stream_many(requests):
        if ev.done:
            ttft[key] = ev.reply.ttft_s
            tokens += ev.reply.n_tokens
    return {"time": time.perf_counter() - t0, "ttft": statistics.mean(ttft.values()), "tokens": tokens}


def run_rss_probe(n_arms: int, adapters: list[Path], new_tokens: int, context: int) -> None:
    arms = build_arms(adapters, new_tokens)[:n_arms]
    with ArmPool(arms) as pool:
        msgs = conversation(pool.engine_for("base").tokenizer, arms[0].system_prompt, context)
        list(pool.stream_many({a.name: (a.name, msgs) for a in arms}))
        status = Path("/proc/self/status").read_text() if Path("/proc/self/status").exists() else ""
        now = next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0.0)
    print(json.dumps({"n_arms": n_arms, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "rss_mb": now}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rss-probe", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--adapters", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_probe:
        run_rss_probe(args.rss_probe, [Path(a) for a in args.adapters], args.new_tokens, args.context)
        return

    tmp = Path(tempfile.mkdtemp(prefix="extes-bench-"))
    try:
        measure(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def measure(args: argparse.Namespace, tmp: Path) -> None:
    t = time.perf_counter()
    adapters = make_adapters(tmp)
    print(f"made two LoRA adapters in {time.perf_counter() - t:.1f}s")
    arms = build_arms(adapters, args.new_tokens)
    with ArmPool(arms) as pool:
        engine = pool.engine_for("base")
        engine.eos_ids = set()  # fixed-length replies, so every run does the same work
        msgs = conversation(engine.tokenizer, arms[0].system_prompt, args.context)
        from extes.models.engine import render_prompt

        n_prompt = len(render_prompt(engine.tokenizer, [{"role": "system", "content": arms[0].system_prompt}] + msgs))
        print(f"context {n_prompt} tokens, {args.new_tokens} new tokens, greedy, torch threads "
              f"{__import__('torch').get_num_threads()}")
        timed_many(pool, {"w": ("lora", msgs)})  # warm-up
        results: dict[str, list[dict]] = {"a": [], "b": [], "c": []}
        for _ in range(args.rounds):
            results["a"].append(timed_many(pool, {"lora": ("lora", msgs)}))
            results["b"].append(timed_many(pool, {a.name: (a.name, msgs) for a in arms}))
            t0 = time.perf_counter()
            seq = [timed_many(pool, {a.name: (a.name, msgs)}) for a in arms]
            results["c"].append({"time": time.perf_counter() - t0, "ttft": statistics.mean(s["ttft"] for s in seq),
                                 "tokens": sum(s["tokens"] for s in seq)})
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("time", "ttft", "tokens")} for k, v in results.items()}
    labels = {"a": "(a) one arm alone", "b": "(b) three arms batched", "c": "(c) three arms one by one"}
    for k in "abc":
        r = med[k]
        print(f"{labels[k]:<28} total {r['time']:6.2f}s  mean TTFT {r['ttft']:5.2f}s  "
              f"{r['tokens'] / r['time']:6.1f} tokens/s")
    ba, cb = med["b"]["time"] / med["a"]["time"], med["c"]["time"] / med["b"]["time"]
    print(f"b/a = {ba:.2f} (target <= 1.5)    c/b = {cb:.2f} (target >= 2.0)")

    rss = {}
    for n in (1, 3):
        out = subprocess.run([sys.executable, __file__, "--rss-probe", str(n), "--context", str(args.context),
                              "--new-tokens", "8", "--adapters", *map(str, adapters)],
                             capture_output=True, text=True, check=True)
        rss[n] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"peak RSS: one arm {rss[1]['max_rss_mb']:.0f} MB, three arms {rss[3]['max_rss_mb']:.0f} MB, "
          f"ratio {rss[3]['max_rss_mb'] / rss[1]['max_rss_mb']:.2f} (target <= 1.2); RSS after generating: "
          f"{rss[1]['rss_mb']:.0f} MB vs {rss[3]['rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
