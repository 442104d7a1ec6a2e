"""Reply length per arm of the default study: share cut mid-sentence and mean length, before and after.

BEFORE: each arm at its own `max_new_tokens` (the arms' default, 128: the protocol's `max_reply_tokens`
was only a cap), the text shown as written. AFTER: every arm at the protocol's `max_reply_tokens`, a capped
reply ended at its last complete sentence (`extes.study.screening.trim_to_sentence`), as the study shows it.
Both run the same arms (the embedded SmolLM2 and the demo adapters, `make demo-adapters`) on the first
seeker message of N ESConv dialogues (read in place from ../shared/data), with the arms' own sampling
settings and a fixed seed.

    .venv/bin/python bench/reply_length.py -n 24
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from extes.base.loading import load_tokenizer  # noqa: E402
from extes.dialogue import load_dialogues  # noqa: E402
from extes.models import ArmPool  # noqa: E402
from extes.models.arms import arms_from_config  # noqa: E402
from extes.study.blinding import strip_tags  # noqa: E402
from extes.study.protocol import load_protocol  # noqa: E402
from extes.study.screening import sentence_end, trim_to_sentence  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "esconv" / "FailedESConv.sample.json"


def openings(path: Path, n: int) -> list[str]:
    """The first seeker message of each of the first n dialogues that have one."""
    out = []
    for d in load_dialogues(path, lenient=True, merge_consecutive=True):
        first = next((t.text.strip() for t in d.turns if t.role == "user" and t.text.strip()), None)
        if first:
            out.append(first)
        if len(out) == n:
            break
    return out


def mid_sentence(text: str) -> bool:
    """The shown text stops inside a sentence (its end is not a sentence end)."""
    text = text.rstrip()
    return bool(text) and sentence_end(text) != len(text)


def run(args: argparse.Namespace) -> None:
    protocol = load_protocol(args.protocol)
    raw = load_protocol(args.protocol, build_arms=False)
    before = arms_from_config([dict(a) for a in raw.arms], str(args.protocol), base_dir=ROOT)
    after = list(protocol.arms)
    arms = ([dataclasses.replace(a, name=f"before:{a.name}") for a in before]
            + [dataclasses.replace(a, name=f"after:{a.name}") for a in after])
    texts = openings(args.data, args.n)
    tokenizer = load_tokenizer(after[0].base)
    print(f"{len(texts)} ESConv openings ({args.data.name}); protocol {args.protocol.name}: "
          f"max_reply_tokens {protocol.max_reply_tokens}; arms' own max_new_tokens "
          f"{sorted({a.generation.max_new_tokens for a in before})}")
    pool = ArmPool(arms)
    rows = []
    t0 = time.perf_counter()
    try:
        for arm in arms:
            when, name = arm.name.split(":", 1)
            replies = pool.generate_batch(arm.name, [[{"role": "user", "content": t}] for t in texts],
                                          settings_override={"seed": args.seed})
            shown = []
            for r in replies:
                text = strip_tags(r.text)[0]
                if when == "after" and r.finish_reason == "length":
                    text = trim_to_sentence(text)
                shown.append(text)
            rows.append((when, name, arm.generation.max_new_tokens,
                         sum(r.finish_reason == "length" for r in replies) / len(replies),
                         sum(mid_sentence(s) for s in shown) / len(shown),
                         statistics.mean(len(s) for s in shown),
                         statistics.mean(len(tokenizer.encode(s, add_special_tokens=False)) for s in shown)))
            print(f"  {arm.name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    finally:
        pool.close()
    print("\n| when | arm | max_new_tokens | capped | cut mid-sentence | mean chars | mean tokens |")
    print("|---|---|---|---|---|---|---|")
    for when, name, cap, capped, cut, chars, toks in rows:
        print(f"| {when} | {name} | {cap} | {capped:.0%} | {cut:.0%} | {chars:.0f} | {toks:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--protocol", type=Path, default=ROOT / "eval_protocol" / "default.yaml")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("-n", type=int, default=24, help="seeker openings (default 24)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed of every reply (default 0)")
    run(ap.parse_args())


if __name__ == "__main__":
    main()
