"""Load test of the study app (not a test; no timing assertions): N simulated participants at once.

    .venv/bin/python bench/load.py [--participants 20] [--turns 3] [--max-new-tokens 48] [--port 0] [--keep]
    .venv/bin/python bench/load.py --protocol my_study.yaml
    .venv/bin/python bench/load.py --baseline --rounds 3      (what `make bench` runs)

Starts the real app (`python app.py`) in a subprocess on a loopback port with a copy of the protocol (default:
eval_protocol/default.yaml, arms on the embedded model SmolLM2-135M-Instruct), a fresh database, a minimum
of `--turns` turns per pane and one conversation per participant. Replies are capped at `--max-new-tokens`
(default 160, the protocol's real cap). When the
protocol's adapter arms are not trained yet (no adapter_config.json under results/adapters/...), they are
replaced by arms on their base with other sampling settings, and the run says so.

Each participant, through `gradio_client`, consents, starts a conversation, sends turn 1 to each pane on
its own (send_a, send_b, send_c), the other turns with "send to all", then submits a complete rating form.
All participants start at the same moment (one thread each). Afterwards the database is read back.

Prints: wall time; per-reply latency p50/p95 and time to first token as the engine measured them (stored
with each reply); per-request latency p50/p95 as the client saw it (send until every targeted pane
finished); tokens/s; and checks zero lost messages (every pane: `turns` user messages and `turns` replies,
and what the client was last shown is what was stored) and zero lost votes (15 per conversation).
Exit status 1 when anything was lost or a participant failed.
Targets (issue 12, 20 participants, 160-token cap, 2-core CPU): aggregate tokens/s >= 150, time to first
token p95 <= 5 s, nothing lost; printed as met / NOT met. The 150 is 5x the 30 tokens/s measured when the
issue was filed, on another day; machines here vary by up to 2x from day to day, so `--baseline` first runs
the same load on the first round's engine and prints the ratio measured in one run (>= 5x). That engine
is started by bench/first_round.py: the transformers path in the web server's process, at most 16 rows,
with the first round's row-by-row sampling and whole-reply detokenisation put back (issue 12 replaced
both, in that path too), and this round's app around it. `--baseline transformers` measures against
today's transformers path instead (for information; it has those two improvements). The baseline takes
several minutes.
`--rounds N` repeats it all N times (baseline, then this app, in each round) and judges the targets on the
medians: the rate, the first-token p95, and the ratio of each round's app run to its own baseline run.
"""

from __future__ import annotations

import argparse
import html
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PROTOCOL = REPO / "eval_protocol" / "default.yaml"
SCENARIOS = ["Academic Stress", "Work-related Stress and Burnout", "Breakups or Divorce", "Anxiety and Panic"]
MESSAGES = [
    "I have been feeling really overwhelmed lately and I do not know where to start.",
    "It is mostly about my exams, I keep thinking I will fail.",
    "Do you have any ideas for how I could calm down before sleeping?",
    "Thanks. I also feel a bit lonely since my friends moved away.",
]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _repo_path(value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() or p.exists() else REPO / p


def bench_protocol(source: Path, out_dir: Path, turns: int, max_new_tokens: int) -> tuple[Path, list[str]]:
    """A copy of the protocol with the bench's minimum and reply cap; adapter arms whose adapter is not
    trained yet (no adapter_config.json) become arms on their base with other sampling settings. Validated
    here, so a bad protocol fails with its own error before the app starts. Returns the path and notes."""
    from extes.study.protocol import protocol_from_dict

    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    notes = []
    arms = []
    temperatures = [0.7, 0.9, 0.5]
    for i, arm in enumerate(data["arms"]):
        arm = dict(arm)
        adapter = arm.get("adapter")
        if adapter and not (_repo_path(adapter) / "adapter_config.json").is_file():
            notes.append(f"arm {arm['name']}: adapter {adapter} not trained yet; using its base with "
                         f"temperature {temperatures[i % 3]} instead")
            arm = {"name": arm["name"], "base": arm.get("base", "smollm2-135m-instruct"),
                   "generation": {**arm.get("generation", {}), "temperature": temperatures[i % 3]}}
        elif adapter:
            arm["adapter"] = str(_repo_path(adapter))
        arms.append(arm)
    data.update(arms=arms, min_user_turns=turns, conversations_per_participant=1, max_reply_tokens=max_new_tokens)
    protocol_from_dict(data, where=str(source), base_dir=REPO)
    path = out_dir / "eval_protocol" / "bench.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path, notes


def start_app(protocol: Path, db: Path, port: int, log_path: Path, extra: list[str],
              script: Path = REPO / "app.py") -> subprocess.Popen:
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    log = open(log_path, "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, str(script), "--host", "127.0.0.1", "--port", str(port),
                             "--protocol", str(protocol), "--db", str(db), *extra],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with status {proc.returncode}")
        try:
            if httpx.get(url + "config", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"the app did not answer within {timeout:.0f} s")


def chat_texts(chat) -> list[tuple[str, str]]:
    """(role, text) of a Chatbot value as gradio_client returns it."""
    out = []
    for m in chat:
        content = m["content"]
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        out.append((m["role"], str(content)))
    return out


class Participant(threading.Thread):
    def __init__(self, index: int, url: str, turns: int, start_gate: threading.Barrier):
        super().__init__(daemon=True)
        self.index, self.url, self.turns, self.gate = index, url, turns, start_gate
        self.rng = random.Random(index)
        self.request_latency: list[float] = []
        self.shown: dict[str, list[tuple[str, str]]] = {}  # pane -> what the client was last shown
        self.turns_done = {pane: 0 for pane in "ABC"}
        self.code = self.conversation = ""
        self.error: str | None = None

    def send(self, client, endpoint: str, text: str, panes: str) -> list:
        """One send, returned when the targeted panes came back with the new turn. A send that arrives
        while the previous replies are still being stored is refused with a hint and changes nothing (the
        outputs are skipped); retry then, as a person would."""
        for _ in range(20):
            t0 = time.perf_counter()
            out = client.predict(self.code, self.conversation, text, api_name=endpoint)
            chats = {pane: out[1 + "ABC".index(pane)] for pane in panes}
            if all(isinstance(c, list) and len(c) == 2 * (self.turns_done[pane] + 1) for pane, c in chats.items()):
                self.request_latency.append(time.perf_counter() - t0)
                for pane in panes:
                    self.turns_done[pane] += 1
                return out
            time.sleep(0.5)
        raise RuntimeError(f"{endpoint} was refused twenty times")

    def run(self) -> None:
        from gradio_client import Client

        try:
            client = Client(self.url, verbose=False)
            self.gate.wait()
            self.code = client.predict(api_name="/consent")[0]
            out = client.predict(self.code, self.rng.choice(SCENARIOS), "", api_name="/start")
            self.conversation = out[1]
            last = None
            for turn in range(self.turns):
                text = MESSAGES[(self.index + turn) % len(MESSAGES)]
                if turn == 0:
                    for pane in "ABC":
                        last = self.send(client, f"/send_{pane.lower()}", text, pane)
                else:
                    last = self.send(client, "/send_all", text, "ABC")
            # outputs: banner, chat A, chat B, chat C, three counters, hint, rating column, the box
            for pane, chat in zip("ABC", last[1:4]):
                self.shown[pane] = chat_texts(chat)
            answers = [self.rng.choice(["left", "tie", "right"]) for _ in range(15)]
            client.predict(self.code, self.conversation, *answers, "", api_name="/rate")
        except Exception as exc:  # noqa: BLE001 - reported at the end
            self.error = f"{type(exc).__name__}: {exc}"


def shown_as(text: str) -> str:
    """What the participant page shows for a stored text: HTML escaped, images not loaded (as the page
    does), then Gradio's Chatbot normalisation (it dedents lines like `inspect.cleandoc`, so "\n\n As"
    is shown as "\n\nAs"; Markdown renders both alike). Without the latter a reply with an indented
    line was reported as "shown differs from stored" although nothing was lost."""
    import gradio as gr

    escaped = html.escape(text or "", quote=False).replace("![", "!\\[") or "…"
    value = gr.Chatbot().postprocess([{"role": "assistant", "content": escaped}])
    message = (value.root if hasattr(value, "root") else value)[0]
    content = message.content
    if isinstance(content, list):
        content = "".join(getattr(part, "text", "") or "" for part in content)
    return str(getattr(content, "text", content))


def cpu_seconds(app_pid: int) -> dict[str, float] | None:
    """CPU seconds used so far by the app's process ("server"), its child processes ("engines") and this
    process ("client"), from /proc; None where /proc is not there."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def of(pid: int) -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick  # utime, stime

    try:
        children = [int(c) for task in Path(f"/proc/{app_pid}/task").iterdir()
                    for c in (task / "children").read_text().split()]
        mine = os.times()
        return {"server": of(app_pid), "engines": sum(of(c) for c in children),
                "client": mine.user + mine.system}
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class RunResult:
    label: str
    rate: float  # tokens/s over the wall time
    ttft_p95: float
    problems: list[str]


def run_once(args, work: Path, protocol: Path, label: str, extra: list[str],
             script: Path = REPO / "app.py") -> RunResult:
    """One load run of the app (`script`) started with `extra` flags on its own fresh database; prints its
    report."""
    work.mkdir(parents=True, exist_ok=True)
    db = work / "study.sqlite"
    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}/"
    print(f"--- {label}: {script.name} on {url} {' '.join(extra)}, database {db}", flush=True)
    t0 = time.perf_counter()
    proc = start_app(protocol, db, port, work / "app.log", extra, script)
    try:
        wait_ready(url, proc, timeout=600)
        print(f"app ready after {time.perf_counter() - t0:.1f} s (model load and conversion included)", flush=True)
        gate = threading.Barrier(args.participants)
        people = [Participant(i, url, args.turns, gate) for i in range(args.participants)]
        cpu0 = cpu_seconds(proc.pid)
        start = time.perf_counter()
        for p in people:
            p.start()
        for p in people:
            p.join()
        wall = time.perf_counter() - start
        cpu1 = cpu_seconds(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()

    from extes.study.store import Store

    store = Store(db)
    problems = [f"participant {p.index}: {p.error}" for p in people if p.error]
    replies, user_msgs, votes_ok = [], 0, 0
    for p in people:
        if p.error:
            continue
        conv = store.conversation(p.conversation)
        msgs = store.messages(p.conversation)
        for pane in "ABC":
            stored = [(m.role, shown_as(m.text)) for m in msgs if m.pane == pane]
            if [r for r, _ in stored] != ["user", "assistant"] * args.turns:
                problems.append(f"participant {p.index} pane {pane}: stored roles {[r for r, _ in stored]}")
            if p.shown.get(pane) != stored:
                problems.append(f"participant {p.index} pane {pane}: what was shown differs from what was stored")
        user_msgs += sum(1 for m in msgs if m.role == "user")
        replies += [m for m in msgs if m.role == "assistant"]
        n_votes = len(store.votes(p.conversation))
        if conv.status != "rated" or n_votes != 15:
            problems.append(f"participant {p.index}: conversation {conv.status}, {n_votes} votes stored")
        else:
            votes_ok += 1
    interrupted = sum(1 for m in replies if m.finish_reason == "interrupted")
    if interrupted:
        problems.append(f"{interrupted} replies stored as interrupted")
    latency = [m.latency_s for m in replies if m.latency_s is not None]
    ttft = [m.ttft_s for m in replies if m.ttft_s is not None]
    tokens = sum(m.n_tokens or 0 for m in replies)
    request = [x for p in people for x in p.request_latency]
    ok = args.participants - sum(1 for p in people if p.error)
    print(f"wall time {wall:.1f} s for {ok}/{args.participants} participants; "
          f"{len(replies)} replies, {tokens} tokens ({tokens / wall:.1f} tokens/s overall)")
    print(f"reply latency (engine): p50 {percentile(latency, 0.5):.2f} s, p95 {percentile(latency, 0.95):.2f} s; "
          f"time to first token p50 {percentile(ttft, 0.5):.2f} s, p95 {percentile(ttft, 0.95):.2f} s")
    print(f"request latency (client, send until all targeted panes replied): "
          f"p50 {percentile(request, 0.5):.2f} s, p95 {percentile(request, 0.95):.2f} s over {len(request)} sends")
    if cpu0 and cpu1:
        used = {k: cpu1.get(k, 0.0) - cpu0.get(k, 0.0) for k in cpu1}
        print(f"CPU during the run (cores busy on average, {os.cpu_count()} CPUs): web server "
              f"{used['server'] / wall:.2f}, engine processes {used['engines'] / wall:.2f}, "
              f"this load generator ({args.participants} simulated browsers) {used['client'] / wall:.2f}")
    for line in (work / "app.log").read_text(errors="replace").splitlines():
        if " closing: " in line and "engine for" in line:  # the engine process's counters (no text)
            print(line.split(" INFO ", 1)[-1])
    if replies:
        print(f"mean reply length {statistics.mean(m['n_tokens'] or 0 for m in replies):.1f} tokens; "
              f"empty replies {sum(1 for m in replies if not m['text'].strip())}")
    expected_msgs = ok * 3 * args.turns
    print(f"messages: {user_msgs}/{expected_msgs} user, {len(replies)}/{expected_msgs} replies stored; "
          f"votes: {votes_ok * 15}/{ok * 15} stored")
    store.close()
    if problems:
        print("LOST OR FAILED:")
        for line in problems[:50]:
            print("  " + line)
        print(f"(app log: {work / 'app.log'})")
    else:
        print("zero lost messages and votes")
    return RunResult(label, tokens / wall, percentile(ttft, 0.95), problems)


# --baseline: which engine the ratio is measured against (see the module docstring)
BASELINES = {
    "first-round": ("the first round's engine", REPO / "bench" / "first_round.py",
                    ["--engine=transformers", "--engine-in-process", "--max-batch=16"]),
    "transformers": ("today's transformers path", REPO / "app.py", ["--engine=transformers", "--engine-in-process"]),
}


def report(results: list[RunResult], baselines: list[RunResult], baseline_name: str = "first-round") -> int:
    """The targets, from the median of the rounds (and each round's ratio to its own baseline run).
    Returns the exit status: 1 when any run lost something or had a failing participant."""
    if any(r.problems for r in results + baselines):
        print("targets: not judged, a run lost something or a participant failed (see above)")
        return 1
    rate = statistics.median(r.rate for r in results)
    ttft = statistics.median(r.ttft_p95 for r in results)
    of = f" (median of {len(results)} runs: {', '.join(f'{r.rate:.1f}' for r in results)})" if len(results) > 1 else ""
    print(f"targets: aggregate {rate:.1f} tokens/s{of} >= 150 (5x the 30 measured when issue 12 was filed, "
          f"another day): {'met' if rate >= 150 else 'NOT met'}; first-token p95 {ttft:.2f} s <= 5 s: "
          f"{'met' if ttft <= 5 else 'NOT met'}; nothing lost: met")
    if baselines:
        ratios = [r.rate / b.rate for r, b in zip(results, baselines)]
        ratio = statistics.median(ratios)
        base = statistics.median(b.rate for b in baselines)
        each = f" (each round: {', '.join(f'{x:.2f}x' for x in ratios)})" if len(ratios) > 1 else ""
        # only the first round's engine is the baseline; against another the ratio is no target
        judged = (f">= 5x: {'met' if ratio >= 5 else 'NOT met'}" if baseline_name == "first-round"
                  else "for information: the target is against the first round's engine")
        print(f"same run: {rate:.1f} vs {base:.1f} tokens/s on {BASELINES[baseline_name][0]}; ratio {ratio:.2f}x"
              f"{each} ({judged})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=20)
    parser.add_argument("--turns", type=int, default=3, help="turns per pane (the protocol minimum)")
    parser.add_argument("--max-new-tokens", type=int, default=160, help="reply cap (the protocol's is 160)")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--protocol", type=Path, default=DEFAULT_PROTOCOL, help="study protocol to copy")
    parser.add_argument("--concurrency", type=int, default=None, help="the app's --concurrency (default: its own)")
    parser.add_argument("--engine-threads", type=int, default=None, help="the app's --engine-threads (default: its own)")
    parser.add_argument("--max-batch", type=int, default=None, help="the app's --max-batch (default: its own)")
    parser.add_argument("--baseline", nargs="?", const="first-round", choices=sorted(BASELINES), default=None,
                        help="first run the same load on the first round's engine (default; bench/first_round.py) "
                             "or on today's transformers path, and print the ratio")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the run (with --baseline: baseline, then this app, per round) and print medians")
    parser.add_argument("--keep", action="store_true", help="keep the database and app log")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO))
    work = Path(tempfile.mkdtemp(prefix="extes-load-"))
    protocol, notes = bench_protocol(args.protocol, work, args.turns, args.max_new_tokens)
    for note in notes:
        print(f"note: {note}")
    print(f"participants {args.participants}, {args.turns} turns per pane, replies <= {args.max_new_tokens} tokens")
    # the app's options for both runs; --engine-threads only for this app (the baseline's engine is in process)
    extra = [f"--{name}={value}" for name, value in (("concurrency", args.concurrency), ("max-batch", args.max_batch))
             if value is not None]
    threads = [f"--engine-threads={args.engine_threads}"] if args.engine_threads is not None else []
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    results: list[RunResult] = []
    baselines: list[RunResult] = []
    for r in range(args.rounds):
        tag = f" round {r + 1}/{args.rounds}" if args.rounds > 1 else ""
        if args.baseline:
            what, script, flags = BASELINES[args.baseline]
            # the baseline's own batch limit unless --max-batch asks for another one
            flags = [f for f in flags if not (args.max_batch is not None and f.startswith("--max-batch"))]
            baselines.append(run_once(args, work / f"baseline{r}", protocol, f"baseline ({what}){tag}",
                                      [*extra, *flags], script))
        results.append(run_once(args, work / f"app{r}", protocol, f"this app{tag}", [*extra, *threads]))
    status = report(results, baselines, args.baseline or "first-round")
    if args.keep:
        print(f"kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
