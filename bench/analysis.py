"""Time every `extes analyze` table on synthetic votes (not a test; no timing assertions).

    .venv/bin/python bench/analysis.py [--votes 100000] [--n-boot 1000] [--arms 8] [--votes-per-session 15]

Synthetic study: each session compares three arms drawn at random, pairwise, on every aspect
(15 votes per session); arm quality differs so the tables are not trivial. `--votes-per-session 1`
is the bootstrap's worst case (one session per vote). Prints the time per table and votes/s.
Target (issue 6): 100,000 votes with 1,000 resamples, all tables <= 5 s.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import pandas as pd

from extes.analysis import ASPECTS, bradley_terry, load_votes, win_rate_matrix, win_tie_loss


def synthetic_votes(n_votes: int, n_arms: int, seed: int = 0, votes_per_session: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    per_session = 3 * len(ASPECTS)  # three pairs among three arms, every aspect
    n_sessions = -(-n_votes // per_session)
    strength = np.linspace(-0.8, 0.8, n_arms)
    trios = np.array([rng.choice(n_arms, 3, replace=False) for _ in range(n_sessions)])
    pairs = list(itertools.combinations(range(3), 2))
    rows = [
        (s, asp, trios[s, i], trios[s, j]) for s in range(n_sessions) for asp in ASPECTS for i, j in pairs
    ]
    frame = pd.DataFrame(rows[:n_votes], columns=["session", "aspect", "a", "b"])
    gap = strength[frame["a"]] - strength[frame["b"]]
    u = rng.random(len(frame))
    p_tie = 0.2
    p_a = (1 - p_tie) / (1 + np.exp(-gap))
    outcome = np.where(u < p_a, "a", np.where(u < p_a + p_tie, "tie", "b"))
    swap = rng.random(len(frame)) < 0.5  # the reference arm shows up on both sides
    arm_a = np.where(swap, frame["b"], frame["a"])
    arm_b = np.where(swap, frame["a"], frame["b"])
    outcome = np.where(swap & (outcome != "tie"), np.where(outcome == "a", "b", "a"), outcome)
    session = (
        frame["session"] if votes_per_session <= 0 else pd.Series(np.arange(len(frame)) // votes_per_session)
    )
    return pd.DataFrame(
        {
            "session_id": "s" + session.astype(str),
            "aspect": frame["aspect"],
            "arm_a": [f"arm{i}" for i in arm_a],
            "arm_b": [f"arm{i}" for i in arm_b],
            "outcome": outcome,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--votes", type=int, default=100_000)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--arms", type=int, default=8)
    parser.add_argument("--votes-per-session", type=int, default=0, help="0: 15 (three arms x five aspects)")
    args = parser.parse_args()
    raw = synthetic_votes(args.votes, args.arms, votes_per_session=args.votes_per_session)
    timings = {}
    start = time.perf_counter()
    votes = load_votes(raw)
    timings["validate"] = time.perf_counter() - start
    t = time.perf_counter()
    wtl = win_tie_loss(votes, "arm0", n_boot=args.n_boot, seed=0)
    timings["win/tie/loss + sign tests + bootstrap CIs"] = time.perf_counter() - t
    t = time.perf_counter()
    for aspect in ASPECTS:
        win_rate_matrix(votes, aspect)
    timings["win-rate matrices (5 aspects)"] = time.perf_counter() - t
    t = time.perf_counter()
    bt = bradley_terry(votes, n_boot=args.n_boot, seed=0)
    timings["Bradley-Terry + bootstrap CIs"] = time.perf_counter() - t
    total = time.perf_counter() - start
    print(
        f"{len(votes)} votes, {votes['session_id'].nunique()} sessions, {args.arms} arms, "
        f"{args.n_boot} bootstrap resamples"
    )
    for name, seconds in timings.items():
        print(f"  {name:45s} {seconds:6.2f} s")
    print(f"  {'all tables':45s} {total:6.2f} s  ({len(votes) / total:,.0f} votes/s; target <= 5 s)")
    print(f"  ({len(wtl.rows)} win/tie/loss rows, {len(bt.ratings)} Bradley-Terry rows)")


if __name__ == "__main__":
    main()
