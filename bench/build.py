"""Throughput and rate-limit accuracy of `extes build` (not a test; no timing assertions).

    .venv/bin/python bench/build.py [--dialogues 64] [--concurrency 16] [--delay 0.5] [--rpm 1200 --rpm-requests 300]

1. Concurrency: a loopback OpenAI-compatible server (extes.testing.scripted, in its own process like a
   real server) answers every request after --delay seconds; the whole pipeline (prompting, HTTP,
   parsing, validation, dedup, fsynced journal, export) builds --dialogues dialogues.
   Ideal time = dialogues / concurrency x delay.
   Target (issue 7): 64 at concurrency 16 with 0.5 s replies within 1.5x of the ideal 2 s.
2. Rate limit: the same pipeline with an instant server and --rpm set; the achieved rate is
   measured from the server's arrival times. Target: within 5% of the set RPM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai  # noqa: F401  (imported up front: its ~0.5 s import is process start-up, not throughput)

from extes.llm.budget import Price
from extes.selfchat.pipeline import BuildConfig, Builder
from extes.taxonomy import SCENARIO_NAMES
from extes.testing.scripted import write_seed_file


class ServerProcess:
    def __init__(self, delay: float, log: Path):
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "extes.testing.scripted", "--delay", str(delay),
                                      "--log", str(log)], stdout=subprocess.PIPE, text=True)
        self.base_url = self.proc.stdout.readline().strip()

    def arrivals(self) -> list[float]:
        # an entry is written when the answer is sent; its "t" is when the request arrived
        return sorted(json.loads(line)["t"] for line in self.log.read_text().splitlines())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def run(seeds: Path, out: Path, base_url: str, target: int, concurrency: int, rpm: float | None):
    cfg = BuildConfig(seeds=[seeds], out=out, model="bench", target=target, base_url=base_url, api_key="k",
                      concurrency=concurrency, rpm=rpm, price=Price(0.15, 0.6), progress=False)
    t0, c0 = time.monotonic(), time.process_time()
    res = asyncio.run(Builder(cfg).run())
    run.cpu_s = time.process_time() - c0  # CPU this process used (all threads)
    return res, t0, time.monotonic()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dialogues", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--delay", type=float, default=0.5)
    ap.add_argument("--rpm", type=float, default=1200.0)
    ap.add_argument("--rpm-requests", type=int, default=300)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        seeds = write_seed_file(tmp / "seeds.json", SCENARIO_NAMES)

        srv = ServerProcess(args.delay, tmp / "conc.log")
        try:
            res, t0, t1 = run(seeds, tmp / "conc", srv.base_url, args.dialogues, args.concurrency, None)
            times = srv.arrivals()
        finally:
            srv.stop()
        ideal = args.dialogues / args.concurrency * args.delay
        wall = t1 - t0
        startup = times[0] - t0
        span = times[-1] + args.delay - times[0]
        tail = t1 - (times[-1] + args.delay)
        print(f"concurrency: {res.accepted} dialogues accepted from {len(times)} requests at concurrency "
              f"{args.concurrency} with {args.delay:.2f} s replies; ideal {ideal:.2f} s")
        print(f"  wall {wall:.2f} s = start {startup:.2f} s (load seeds, open journal and client, first "
              f"prompt) + requests {span:.2f} s + finish {tail:.2f} s (last decision, export)")
        print(f"  ratio to ideal: whole run {wall / ideal:.2f}x, request phase {span / ideal:.2f}x (target <= 1.5x)")
        print(f"  client CPU {run.cpu_s:.2f} s ({1000 * run.cpu_s / max(1, res.accepted):.1f} ms per dialogue); "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (busy machines stretch the wall time)")

        srv = ServerProcess(0.0, tmp / "rpm.log")
        try:
            res, t0, t1 = run(seeds, tmp / "rpm", srv.base_url, args.rpm_requests, 8, args.rpm)
            times = srv.arrivals()
        finally:
            srv.stop()
        n = len(times)
        overall = (n - 1) / (times[-1] - times[0]) * 60
        # the busiest 10-second window (a limiter that bursts would show it here)
        window = 10.0
        busiest = max(sum(1 for t in times if a <= t < a + window) for a in times) * 60 / window
        gaps = sorted(b - a for a, b in zip(times, times[1:]))
        print(f"rate limit: {n} requests with --rpm {args.rpm:.0f} in {t1 - t0:.1f} s")
        print(f"  achieved {overall:.1f} rpm over the run ({100 * (overall / args.rpm - 1):+.2f}%), busiest "
              f"{window:.0f} s window {busiest:.0f} rpm ({100 * (busiest / args.rpm - 1):+.2f}%); gap between "
              f"requests median {1000 * gaps[len(gaps) // 2]:.1f} ms (ideal {60000 / args.rpm:.1f} ms) "
              f"(target within 5%)")


if __name__ == "__main__":
    main()
