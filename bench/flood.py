"""A legitimate "send to all" under a one-client flood, capacity gate off vs on (issue 24, item 4).

    .venv/bin/python bench/flood.py [--flood 17] [--concurrency 16] [--long-words 600] [--step 0.02]

The real app (uvicorn on loopback, trusting X-Forwarded-For from 127.0.0.1 as behind a same-host proxy)
with a scripted pool: every stream advances one word per `--step` seconds, a message containing "long"
gets `--long-words` words, others 12. One address (198.51.100.1) opens `--flood` participant codes and
calls /send_all for a long reply with each through gradio_client; once the flood is generating, another
address (192.0.2.5) calls /send_all and the time to its complete reply is measured. Gate off is the old
behaviour (no per-client cap, the queue runs `--concurrency` sends); gate on is the app's default
(CapacityGate.for_concurrency). Median of 3 runs each, printed with the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
import yaml
from gradio_client import Client

from extes.models.types import Event, Reply
from extes.study.app import build_app
from extes.study.capacity import CapacityGate
from extes.study.protocol import load_protocol
from extes.study.session import Study
from extes.study.store import Store

ARMS = ("arm-a", "arm-b", "arm-c")
ROOT = Path(__file__).resolve().parents[1]


class WordPool:
    """stream_many with scripted word-by-word replies; `stop` ends every stream at its next step."""

    def __init__(self, long_words: int, step: float):
        self.long_words, self.step = long_words, step
        self.stop = threading.Event()

    def stream_many(self, requests, cancel=None):
        plans = {k: ("I hear you. " * self.long_words).split()[: self.long_words]
                 if "long" in m[-1]["content"] else ("That sounds hard, thank you for telling me. " * 2).split()
                 for k, (_arm, m) in requests.items()}
        texts = {k: "" for k in requests}
        start = time.perf_counter()
        for i in range(max(len(w) for w in plans.values())):
            if self.stop.is_set() or (cancel is not None and cancel.is_set()):
                return
            for k, words in plans.items():
                if i < len(words):
                    delta = ("" if i == 0 else " ") + words[i]
                    texts[k] += delta
                    yield k, Event(delta)
            time.sleep(self.step)
        for k in requests:
            yield k, Event("", True, Reply(texts[k], None, texts[k], len(plans[k]), time.perf_counter() - start,
                                           0.0, "stop", {}))


def _protocol(tmp: Path):
    data = yaml.safe_load((ROOT / "eval_protocol" / "default.yaml").read_text())
    data.update(arms=[{"name": n} for n in ARMS], min_user_turns=1, conversations_per_participant=1)
    path = tmp / "protocol.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_protocol(path)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(args, gate_on: bool) -> float:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        protocol = _protocol(tmp)
        store = Store(tmp / "flood.sqlite")
        pool = WordPool(args.long_words, args.step)
        # gate off: what the app did before (every client may use every slot; the queue runs `concurrency`)
        gate = (CapacityGate.for_concurrency(args.concurrency) if gate_on else
                CapacityGate(capacity=args.concurrency, per_client=args.concurrency, per_code=1, reserve=0,
                             waiting_per_client=0, max_waiting=0))
        study = Study(protocol, store, pool, gate=gate)
        flood = [study.start_conversation(study.consent().code, "Academic Stress") for _ in range(args.flood)]
        legit = study.start_conversation(study.consent().code, "Academic Stress")
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(build_app(protocol, store, pool, concurrency=args.concurrency,
                                                         study=study), host="127.0.0.1", port=port,
                                               log_level="error", access_log=False))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/"
        try:
            attacker = Client(url, verbose=False, headers={"X-Forwarded-For": "198.51.100.1"})
            jobs = [attacker.submit(v.code, v.conversation_id, "a long one", api_name="/send_all") for v in flood]
            deadline = time.monotonic() + 60
            while gate.running() < min(args.flood, gate.per_client) and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.5)  # the flood is generating
            other = Client(url, verbose=False, headers={"X-Forwarded-For": "192.0.2.5"})
            t0 = time.perf_counter()
            other.submit(legit.code, legit.conversation_id, "hello", api_name="/send_all").result(timeout=600)
            took = time.perf_counter() - t0
        finally:
            pool.stop.set()
            for j in locals().get("jobs", []):
                try:
                    j.result(timeout=60)
                except Exception:  # noqa: BLE001 - stopped flood replies end in an error
                    pass
            server.should_exit = True
            thread.join(timeout=10)
            store.close()
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flood", type=int, default=17)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--long-words", type=int, default=600)
    ap.add_argument("--step", type=float, default=0.02)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    res = {}
    for gate_on in (False, True):
        times = [one_run(args, gate_on) for _ in range(args.runs)]
        res[gate_on] = statistics.median(times)
        print(f"gate {'on ' if gate_on else 'off'}: legitimate send-to-all latency median {res[gate_on]:.2f} s "
              f"(runs: {', '.join(f'{t:.2f}' for t in times)})", flush=True)
    print(f"ratio off/on: {res[False] / res[True]:.1f}x")


if __name__ == "__main__":
    main()
