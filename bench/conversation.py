"""A 10-turn conversation on three arms, as a participant has it (not a test; no timing assertions).

    python bench/conversation.py [--turns 10] [--new-tokens 64] [--dtype auto]

Three arms on the embedded SmolLM2-135M-Instruct (the base and two LoRA arms, r=8 on all linear layers),
each pane with its own history, every turn sent to all three at once ("send to all") through ArmPool,
greedy, replies capped at --new-tokens (end-of-turn honoured, as in the study). Each pane's reply goes
back into its history, so the kept KV cache is what makes later turns cheap.

Prints per turn: prompt tokens, prompt tokens reused from the kept cache, mean time to first token over
the three panes, and the time until all three replies are complete. Targets (issue 12): TTFT at the last
turn / TTFT at turn 1 <= 1.5; a "send to all" turn of 64-token replies under 5 s.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generation import build_arms, make_adapters  # noqa: E402

from extes.models import ArmPool  # noqa: E402
from extes.models.scheduler import Engine  # noqa: E402

MESSAGES = [
    "Hi. I have been feeling really low since my partner and I split up last month.",
    "Mostly the evenings. We used to cook together and now the flat is so quiet.",
    "My friends say I should just move on but I can't stop thinking about what went wrong.",
    "Sometimes I think it was all my fault, that I pushed too hard about moving in together.",
    "I also have exams coming up and I can't focus on anything, which makes it worse.",
    "I tried going for a walk yesterday and it helped a bit, but then I saw our favourite cafe.",
    "Do you think I should delete our photos, or keep them somewhere I don't see them?",
    "My sister offered to come over this weekend. I am not sure I want company.",
    "I guess I am afraid that I will never feel this close to someone again.",
    "Thank you. What is one small thing I could do tonight to look after myself?",
    "I will try that. Can we talk again tomorrow about the exams?",
    "Okay. Thanks for listening to me today.",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="extes-bench-conv-"))
    try:
        arms = build_arms(make_adapters(tmp), args.new_tokens, args.dtype)
        names = [a.name for a in arms]
        with ArmPool(arms) as pool:
            engine = pool.engine_for("base")
            assert isinstance(engine, Engine)
            print(f"engine {engine.engine_version}, weights {engine.dtype_name}, "
                  f"{args.turns} turns, replies <= {args.new_tokens} tokens, three arms")
            histories: dict[str, list[dict]] = {n: [] for n in names}
            rows = []
            for turn in range(args.turns):
                text = MESSAGES[turn % len(MESSAGES)]
                for n in names:
                    histories[n].append({"role": "user", "content": text})
                t0 = time.perf_counter()
                replies = {}
                for key, ev in pool.stream_many({n: (n, histories[n]) for n in names}):
                    if ev.done:
                        if ev.reply is None:
                            raise SystemExit(f"turn {turn + 1}, arm {key}: {ev.error}")
                        replies[key] = ev.reply
                wall = time.perf_counter() - t0
                for n in names:
                    histories[n].append({"role": "assistant", "content": replies[n].text,
                                         **({"strategy": replies[n].strategy} if replies[n].strategy else {})})
                ttft = statistics.mean(r.ttft_s for r in replies.values())
                rows.append((turn + 1, max(r.prompt_tokens for r in replies.values()),
                             min(r.cached_prompt_tokens for r in replies.values()), ttft, wall,
                             max(r.n_tokens for r in replies.values())))
                print(f"turn {turn + 1:2d}: prompt {rows[-1][1]:4d} tokens, reused from cache >= {rows[-1][2]:4d}; "
                      f"mean TTFT {ttft:5.2f} s; all three replies ({rows[-1][5]:3d} tokens max) in {wall:5.2f} s",
                      flush=True)
        ratio = rows[-1][3] / rows[0][3]
        worst = max(r[4] for r in rows)
        print(f"TTFT turn {rows[-1][0]} / turn 1 = {ratio:.2f} (target <= 1.5: {'met' if ratio <= 1.5 else 'NOT met'})")
        print(f"slowest 'send to all' turn {worst:.2f} s, median {statistics.median(r[4] for r in rows):.2f} s "
              f"(target < 5 s: {'met' if worst < 5 else 'NOT met'})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
