"""Generation benchmark on the embedded model (not a test; no timing assertions).

    python bench/generation.py [--context 512] [--new-tokens 64] [--rounds 3] [--dtype auto] [--device cpu]

Three arms on one shared SmolLM2-135M-Instruct base: `base` (no adapter) and two LoRA arms (r=8 on all
linear layers, made here with one optimiser step so their weights are real, non-zero LoRA weights). A
conversation of about `--context` tokens, `--new-tokens` new tokens, greedy, end-of-turn ignored so every
reply has exactly that many tokens. Everything goes through ArmPool, as the study app does.

  (1) decode step: the time per generated token after the first, one arm alone vs three arms batched;
  (2) the bandwidth floor: a timed read of the base weights' bytes (what one decode step must at least
      read), measured in this run; the one-arm step over that floor;
  (3) a whole reply with a cached history: each arm's previous turn is in the kept KV cache and the new
      user message is about 40 tokens; one arm vs three arms, first request to last token.
  (4) sampling 24 rows from the model's real logits: batched vs row by row with a full sort.
  (5) a 20-row decode step (one forward, cached lengths spread over 150-450 positions as under the load
      benchmark): decode attention by the compiled kernel (extes/models/cpu_kernels.py) vs torch's
      batched matmul, in the same run.
Then the peak RSS of a process with one arm loaded versus three (fresh subprocesses).

Prints medians of --rounds and whether each target of issue 12 is met:
decode step 3/1 <= 1.25; one-arm step <= 3x the floor; cached-history reply 3/1 <= 1.35; RSS(3) <= 1.2 RSS(1).
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
from extes.models.fast_runner import FastRunner
from extes.models.sampling import draw, sample_rows
from extes.models.scheduler import Engine
from extes.models.text import render_prompt

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
# new user messages of about 40 tokens each, one per measurement (so none is already in the cache)
NEW_MESSAGES = [
    f"{opening} I keep replaying our last conversation in my head and wondering whether I should call "
    f"and apologise, or whether that would only make things worse for both of us right now."
    for opening in ("Thank you for listening.", "That helps a little.", "I see what you mean.", "Okay, maybe.",
                    "You're right, I think.", "Thanks, honestly.", "Hmm, I guess so.", "That is kind of you.",
                    "I appreciate that.", "Fair enough.", "I hadn't thought of that.", "Yes, exactly.")
]


def conversation(tokenizer, system: str, target: int) -> list[dict[str, str]]:
    """A conversation whose chat prompt is just under `target` tokens (turns repeat if needed)."""
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


def build_arms(adapters: list[Path], new_tokens: int, dtype: str = "auto") -> list[Arm]:
    g = GenerationSettings(max_new_tokens=new_tokens, temperature=0.0, repetition_penalty=1.1)
    return [Arm("base", generation=g, dtype=dtype),
            Arm("lora", adapter=str(adapters[0]), generation=g, dtype=dtype),
            Arm("lora-strategies", adapter=str(adapters[1]), strategies=True, generation=g, dtype=dtype)]


def timed_many(pool: ArmPool, requests: dict) -> dict:
    """Send all requests at once; wall time, mean TTFT, mean decode step (from the stream's timing)."""
    t0 = time.perf_counter()
    first: dict = {}
    done: dict = {}
    replies = {}
    for key, ev in pool.stream_many(requests):
        now = time.perf_counter()
        first.setdefault(key, now)
        if ev.done:
            done[key] = now
            replies[key] = ev.reply
    steps = [(replies[k].latency_s - replies[k].ttft_s) / max(1, replies[k].n_tokens - 1) for k in replies]
    return {"time": time.perf_counter() - t0, "ttft": statistics.mean(r.ttft_s for r in replies.values()),
            "step": statistics.mean(steps), "tokens": sum(r.n_tokens for r in replies.values()),
            "replies": replies}


def local_engine(pool: ArmPool, arm: str) -> Engine:
    engine = pool.engine_for(arm)
    if not isinstance(engine, Engine):
        raise SystemExit(f"arm {arm!r} is not served by an in-process engine")
    return engine


def bandwidth_floor(engine: Engine, rounds: int = 3) -> tuple[float, int]:
    """Seconds to read as many bytes as the base weights hold, once (min of `rounds`), and how many bytes.
    (Prepacked weights are opaque tensors, so the read is of buffers of the same sizes.)"""
    import torch

    runner = engine.runner
    if isinstance(runner, FastRunner):
        sizes = [lin.kernel.nbytes for block in runner.fast.layers for lin in block.linears]
        sizes.append(runner.fast.head.nbytes)
    else:
        sizes = [p.numel() * p.element_size() for p in runner.model.parameters()]
    flat = [torch.ones(n // 4, dtype=torch.float32) for n in sizes]
    nbytes = sum(f.numel() * 4 for f in flat)
    best = float("inf")
    with torch.inference_mode():
        for _ in range(rounds):
            t0 = time.perf_counter()
            for f in flat:
                f.amax()  # reads every byte; the result does not matter
            best = min(best, time.perf_counter() - t0)
    return best, nbytes


def run_rss_probe(n_arms: int, adapters: list[Path], new_tokens: int, context: int, dtype: str) -> None:
    arms = build_arms(adapters, new_tokens, dtype)[:n_arms]
    with ArmPool(arms) as pool:
        msgs = conversation(local_engine(pool, "base").tokenizer, arms[0].system_prompt, context)
        list(pool.stream_many({a.name: (a.name, msgs) for a in arms}))
        status = Path("/proc/self/status").read_text() if Path("/proc/self/status").exists() else ""
        now = next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0.0)
    print(json.dumps({"n_arms": n_arms, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "rss_mb": now}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the fast engine's device)")
    ap.add_argument("--no-rss", action="store_true", help="skip the RSS subprocesses")
    ap.add_argument("--rss-probe", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--adapters", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_probe:
        run_rss_probe(args.rss_probe, [Path(a) for a in args.adapters], args.new_tokens, args.context, args.dtype)
        return
    tmp = Path(tempfile.mkdtemp(prefix="extes-bench-"))
    try:
        measure(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def sampling(engine: Engine, msgs, rounds: int, rows: int = 24) -> None:
    """(4) Sampling one token for each of `rows` rows from the model's real next-token logits (positions of
    the conversation), with the default settings: the engine's batched sample_rows against drawing row by
    row from a full sort of the vocabulary (what top-p costs without the top-k levels)."""
    import torch

    if not isinstance(engine.runner, FastRunner) or engine.runner.fast.device.type != "cpu":
        return
    fast = engine.runner.fast
    ids = render_prompt(engine.tokenizer, msgs)
    x = torch.tensor([ids])
    with torch.inference_mode():
        logits = fast.forward(x, torch.tensor([0]), fast.new_kv(1, len(ids)), None, all_logits=True)[0]
    logits = logits[torch.linspace(len(ids) // 2, len(ids) - 1, rows).long()]
    st = GenerationSettings()
    seen = [torch.tensor(ids).unique()] * rows

    def one_by_one():
        for r in range(rows):
            s = logits[r].clone()
            picked = s[seen[r]]
            s[seen[r]] = torch.where(picked < 0, picked * st.repetition_penalty, picked / st.repetition_penalty)
            p, order = torch.softmax(s / st.temperature, -1).sort(descending=True)
            draw(p.masked_fill((p.cumsum(0) - p) > st.top_p, 0.0), order, gens[r])

    gens = [torch.Generator().manual_seed(r) for r in range(rows)]
    times = {"batched": [], "row by row": []}
    for _ in range(rounds):
        for name, fn in (("batched", lambda: sample_rows(logits, [st] * rows, seen, gens)), ("row by row", one_by_one)):
            t = time.perf_counter()
            for _ in range(10):
                fn()
            times[name].append((time.perf_counter() - t) / 10)
    a, b = statistics.median(times["batched"]), statistics.median(times["row by row"])
    print(f"(4) sampling {rows} rows (temperature {st.temperature}, top-p {st.top_p}, penalty "
          f"{st.repetition_penalty}) from real logits: batched {a * 1e3:.1f} ms, row by row with a full sort "
          f"{b * 1e3:.1f} ms ({b / a:.1f}x)")


def attention(engine: Engine, rounds: int, rows: int = 20) -> None:
    """(5) One decode forward of `rows` rows whose cached lengths are spread over 150-450 positions, with
    decode attention by the compiled kernel and by torch's batched matmul (the same model, switched)."""
    import torch

    if not isinstance(engine.runner, FastRunner) or engine.runner.fast.device.type != "cpu":
        return
    fast = engine.runner.fast
    kernel = fast.attention_kernel
    if kernel is None:
        print("(5) compiled decode attention unavailable (see the log); torch's batched matmul runs")
        return
    g = torch.Generator().manual_seed(0)
    starts = torch.randint(150, 450, (rows,), generator=g)
    ids = torch.randint(0, fast.vocab, (rows, 1), generator=g)
    kv = fast.new_kv(rows, 512)
    for buf in kv:
        buf.normal_(generator=g)
    times = {"compiled": [], "torch": []}
    try:
        with torch.inference_mode():
            for _ in range(rounds):
                for name, k in (("compiled", kernel), ("torch", None)):
                    fast.attention_kernel = k
                    fast.forward(ids, starts, kv, None)
                    t = time.perf_counter()
                    for _ in range(5):
                        fast.forward(ids, starts, kv, None)
                    times[name].append((time.perf_counter() - t) / 5)
    finally:
        fast.attention_kernel = kernel
    a, b = statistics.median(times["compiled"]), statistics.median(times["torch"])
    print(f"(5) {rows}-row decode step, cached lengths 150-450: compiled attention {a * 1e3:.1f} ms, torch's "
          f"batched matmul {b * 1e3:.1f} ms ({b / a:.2f}x)")


def measure(args: argparse.Namespace, tmp: Path) -> None:
    import torch

    t = time.perf_counter()
    adapters = make_adapters(tmp)
    print(f"made two LoRA adapters in {time.perf_counter() - t:.1f}s")
    arms = build_arms(adapters, args.new_tokens, args.dtype)
    names = [a.name for a in arms]
    with ArmPool(arms, device=args.device) as pool:
        engine = local_engine(pool, "base")
        engine.runner.eos_ids = frozenset()  # fixed-length replies, so every run does the same work
        msgs = conversation(engine.tokenizer, arms[0].system_prompt, args.context)
        n_prompt = len(render_prompt(engine.tokenizer, [{"role": "system", "content": arms[0].system_prompt}] + msgs))
        print(f"engine {engine.engine_version}, weights {engine.dtype_name}, context {n_prompt} "
              f"tokens, {args.new_tokens} new tokens, greedy, torch threads {torch.get_num_threads()}")
        cache = engine.runner.kv_cache
        timed_many(pool, {"w": ("lora", msgs)})  # warm-up

        # (1) decode step, fresh prompts (the kept cache is cleared before each measurement)
        engine.clear_step_times()
        one, three = [], []
        for _ in range(args.rounds):
            if cache is not None:
                cache.clear()
            one.append(timed_many(pool, {"lora": ("lora", msgs)}))
            if cache is not None:
                cache.clear()
            three.append(timed_many(pool, {n: (n, msgs) for n in names}))
        step1 = statistics.median(r["step"] for r in one)
        step3 = statistics.median(r["step"] for r in three)
        timer = engine.stats().step_times
        if timer:  # the engine's own timer of decode steps (forward + sampling), by batch size
            s1 = [t for n, t in timer if n == 1]
            s3 = [t for n, t in timer if n == 3]
            if s1 and s3:
                step1, step3 = statistics.median(s1), statistics.median(s3)
        print(f"(1) decode step: one arm {step1 * 1e3:.1f} ms, three arms {step3 * 1e3:.1f} ms; "
              f"ratio {step3 / step1:.2f} (target <= 1.25: {verdict(step3 / step1 <= 1.25)})")
        print(f"    fresh {n_prompt}-token prompt: TTFT one arm {statistics.median(r['ttft'] for r in one):.2f} s, "
              f"three arms {statistics.median(r['ttft'] for r in three):.2f} s")

        # (2) the bandwidth floor, measured now
        floor, nbytes = bandwidth_floor(engine)
        print(f"(2) bandwidth floor: reading the {nbytes / 1e6:.0f} MB of base weights takes {floor * 1e3:.1f} ms "
              f"({nbytes / floor / 1e9:.1f} GB/s); one-arm step / floor = {step1 / floor:.2f} "
              f"(target <= 3: {verdict(step1 / floor <= 3)})")

        # (3) a whole reply with the history in the kept cache: prime each arm with the history, then send
        # history + its own reply + a new ~40-token message
        if cache is not None:
            cache.clear()
        prior = timed_many(pool, {n: (n, msgs) for n in names})["replies"]
        follow = {n: msgs + [{"role": "assistant", "content": prior[n].text}] for n in names}
        new_msgs = iter(NEW_MESSAGES)
        n_new = len(engine.tokenizer(NEW_MESSAGES[0], add_special_tokens=False)["input_ids"])
        one_c, three_c = [], []
        for _ in range(args.rounds):
            m = next(new_msgs)
            one_c.append(timed_many(pool, {"lora": ("lora", follow["lora"] + [{"role": "user", "content": m}])}))
            m = next(new_msgs)
            three_c.append(timed_many(pool, {n: (n, follow[n] + [{"role": "user", "content": m}]) for n in names}))
        t1 = statistics.median(r["time"] for r in one_c)
        t3 = statistics.median(r["time"] for r in three_c)
        cached = [r.cached_prompt_tokens for x in three_c for r in x["replies"].values()]
        print(f"(3) whole reply, cached history + {n_new}-token message: one arm {t1:.2f} s, three arms {t3:.2f} s "
              f"(TTFT {statistics.median(r['ttft'] for r in one_c):.2f} / "
              f"{statistics.median(r['ttft'] for r in three_c):.2f} s; prompt tokens reused from the cache: "
              f"{min(cached) if cached else 0}-{max(cached) if cached else 0}); ratio {t3 / t1:.2f} "
              f"(target <= 1.35: {verdict(t3 / t1 <= 1.35)})")
        sampling(engine, msgs, args.rounds)
        attention(engine, args.rounds)
    if args.no_rss or args.device != "cpu":
        return
    rss = {}
    for n in (1, 3):
        out = subprocess.run([sys.executable, __file__, "--rss-probe", str(n), "--context", str(args.context),
                              "--new-tokens", "8", "--dtype", args.dtype, "--adapters", *map(str, adapters)],
                             capture_output=True, text=True, check=True)
        rss[n] = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = rss[3]["max_rss_mb"] / rss[1]["max_rss_mb"]
    print(f"peak RSS: one arm {rss[1]['max_rss_mb']:.0f} MB, three arms {rss[3]['max_rss_mb']:.0f} MB, "
          f"ratio {ratio:.2f} (target <= 1.2: {verdict(ratio <= 1.2)})")


if __name__ == "__main__":
    main()
