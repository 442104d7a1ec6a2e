"""Several `python app.py` processes on one PostgreSQL: simulated participants and judges, then a count of
what the database holds (not a test; tests/test_study_processes.py runs a small version).

    .venv/bin/python bench/study_processes.py [--participants 20] [--judges 10] [--processes 2] [--db URL]

Without --db it starts a throwaway PostgreSQL (extes.testing.postgres; Debian's `postgresql`). The arms are
OpenAI-compatible endpoints served by an instant fake streaming server in this script, so only the study
app is measured. Every participant and judge sends each call to the next process in turn (no sticky
sessions: the hardest case for the database rules). Each participant: consent, then for each conversation
5 simultaneous Start calls, `min_user_turns` sends to all panes, and 3 simultaneous rating submissions.
Judges (invited with `app.py --invite-judges`) judge until nothing is left.

Checks (printed; exit status 1 if any fails):
- lost: every acknowledged message and rating is in the database, every reply complete;
- duplicated: one vote set (15 votes) per rated conversation, one user message per pane and send;
- over-assigned: no annotation item with more assignments than its quota;
- limits: no participant over `conversations_per_participant`, none with two conversations in progress.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ARMS = ("arm-a", "arm-b", "arm-c")
WORDS = "That sounds really hard , thank you for telling me about it . What happened next ?".split()


class FakeOpenAI(BaseHTTPRequestHandler):
    """POST /v1/chat/completions, streamed (SSE) or not: a short canned reply, word by word."""

    protocol_version = "HTTP/1.0"

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        model = body.get("model", "m")
        if not body.get("stream"):
            out = {"id": "x", "object": "chat.completion", "created": 0, "model": model,
                   "choices": [{"index": 0, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": " ".join(WORDS)}}]}
            data = json.dumps(out).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        for i, word in enumerate(WORDS):
            chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": model,
                     "choices": [{"index": 0, "delta": {"content": ("" if i == 0 else " ") + word},
                                  "finish_reason": None}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
            time.sleep(0.002)
        last = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": model,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        self.wfile.write(f"data: {json.dumps(last)}\n\ndata: [DONE]\n\n".encode())
        self.wfile.flush()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_protocol(root: Path, base_url: str, min_turns: int, conversations: int, judges_per_item: int) -> Path:
    data = yaml.safe_load((REPO / "eval_protocol" / "default.yaml").read_text())
    data["arms"] = [{"name": n, "backend": "openai", "base_url": base_url, "model": n, "api_key_env": "EXTES_FAKE_KEY",
                     "generation": {"max_new_tokens": 64}} for n in ARMS]
    data["max_reply_tokens"] = 64  # every arm's reply length in a study
    data["min_user_turns"] = min_turns
    data["conversations_per_participant"] = conversations
    data["annotation"] = {**data.get("annotation", {}), "judges_per_item": judges_per_item,
                          "judges_see_conversations": True, "dataset": None}
    path = root / "protocol.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def start_app(protocol: Path, db: str, port: int, log: Path) -> subprocess.Popen:
    import urllib.request

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "EXTES_FAKE_KEY": "x", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--protocol", str(protocol), "--db", db,
                             "--port", str(port)], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=REPO)
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited early:\n{log.read_text()}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2)
            return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"app did not start:\n{log.read_text()}")


def together(fns) -> list:
    out: list = [None] * len(fns)
    barrier = threading.Barrier(len(fns))

    def run(i):
        barrier.wait()
        try:
            out[i] = fns[i]()
        except Exception as exc:  # noqa: BLE001 - refusals are expected in the races
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def participant(i: int, urls: list[str], n_conv: int, turns: int, answers: int, log: dict) -> None:
    from gradio_client import Client

    clients = [Client(u, verbose=False, httpx_kwargs={"timeout": 300}) for u in urls]
    k = i  # the next process to use

    def nxt():
        nonlocal k
        k += 1
        return clients[k % len(clients)]

    code = nxt().predict(api_name="/consent")[0]
    log["codes"].append(code)
    for c in range(n_conv):
        starts = together([lambda cl=nxt(): cl.predict(code, "Academic Stress", "", api_name="/start")
                           for _ in range(5)])
        conv = next(r[1] for r in starts if not isinstance(r, Exception) and r[1])
        for t in range(turns):
            nxt().predict(code, conv, f"participant {i} conversation {c} turn {t}", api_name="/send_all")
            log["sends"].append((conv, t))
        form = ["left"] * answers + ["done"]
        results = together([lambda cl=nxt(), cv=conv, f=form: cl.predict(code, cv, *f, api_name="/rate")
                            for _ in range(3)])
        if sum(not isinstance(r, Exception) for r in results) < 1:
            raise RuntimeError(f"participant {i}: no rating accepted: {results}")
        log["rated"].append(conv)


def judge(code: str, urls: list[str], n_pairs: int, n_likert: int, log: dict) -> None:
    from gradio_client import Client

    clients = [Client(u + "annotate/", verbose=False, httpx_kwargs={"timeout": 300}) for u in urls]
    out = clients[0].predict(code, api_name="/annotate_login")
    k = 0
    while out[1]:
        k += 1
        out = clients[k % len(clients)].predict(code, out[1], *(["tie"] * n_pairs + [None] * n_likert),
                                                api_name="/annotate_submit")
        log["judged"] += 1


def check(db: str, protocol_path: Path, log: dict, quota: int) -> dict:
    from extes.study.protocol import load_protocol
    from extes.study.store import Store

    protocol = load_protocol(protocol_path, build_arms=False)
    store = Store(db)
    n_votes = 3 * len(protocol.aspects)
    problems: Counter = Counter()
    for code in log["codes"]:
        p = store.participant_by_code(code)
        convs = store.conversations_of(p.id)
        if len(convs) > protocol.conversations_per_participant:
            problems["limit: too many conversations"] += 1
        if sum(c.status == "chatting" for c in convs) > 1:
            problems["limit: two in progress"] += 1
    acked = Counter(conv for conv, _t in log["sends"])
    for conv, n_sends in acked.items():
        msgs = store.messages(conv)
        for pane in "ABC":
            users = [m for m in msgs if m.pane == pane and m.role == "user"]
            replies = [m for m in msgs if m.pane == pane and m.role == "assistant"]
            if len(users) < n_sends or len(replies) < n_sends:
                problems["lost: message or reply"] += 1
            if len(users) > n_sends:
                problems["duplicated: message"] += 1
            if any(m.partial or m.finish_reason != "stop" for m in replies):
                problems["lost: incomplete reply"] += 1
    votes = Counter(v.conversation_id for v in store.votes())
    for conv in log["rated"]:
        if votes.get(conv, 0) < n_votes:
            problems["lost: rating"] += 1
        if votes.get(conv, 0) > n_votes:
            problems["duplicated: votes"] += 1
    per_item: Counter = Counter(a.item_id for a in store.assignments() if a.status in ("open", "done"))
    over = [item for item, n in per_item.items() if n > quota]
    problems["over-assigned items"] += len(over)
    done_items = Counter(a.item_id for a in store.assignments() if a.status == "done")
    counts = store.counts()
    store.close()
    return {"participants": len(log["codes"]), "conversations": counts["conversations"],
            "rated": counts["rated_conversations"], "messages": counts["messages"], "votes": counts["votes"],
            "judge_submissions": sum(done_items.values()), "items_complete": sum(n >= quota for n in done_items.values()),
            "problems": dict(problems)}


def run(participants: int = 20, judges: int = 10, processes: int = 2, db: str | None = None,
        conversations: int = 2, turns: int = 2, quota: int = 2, root: Path | None = None) -> dict:
    from extes.testing.postgres import TempPostgres

    root = Path(root or tempfile.mkdtemp(prefix="extes-bench-"))
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), FakeOpenAI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    pg = None
    if db is None:
        pg = TempPostgres().start()
        db = pg.url("study")
    procs = []
    try:
        protocol = write_protocol(root, f"http://127.0.0.1:{server.server_address[1]}/v1", turns, conversations, quota)
        ports = [free_port() for _ in range(processes)]
        started = time.perf_counter()
        for n, port in enumerate(ports):
            procs.append(start_app(protocol, db, port, root / f"app{n}.log"))
        urls = [f"http://127.0.0.1:{p}/" for p in ports]
        print(f"{processes} app processes up in {time.perf_counter() - started:.1f} s", flush=True)
        from extes.study.protocol import load_protocol

        n_aspects = len(load_protocol(protocol, build_arms=False).aspects)
        log: dict = {"codes": [], "sends": [], "rated": [], "judged": 0}
        errors: list[str] = []

        def safe(fn, *args):
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(f"{fn.__name__}: {type(exc).__name__}: {exc}")

        t0 = time.perf_counter()
        threads = [threading.Thread(target=safe, args=(participant, i, urls, conversations, turns, 3 * n_aspects, log))
                   for i in range(participants)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        t_participants = time.perf_counter() - t0
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        codes = subprocess.run([sys.executable, str(REPO / "app.py"), "--protocol", str(protocol), "--db", db,
                                "--invite-judges", str(judges)], capture_output=True, text=True, check=True,
                               env=env, cwd=REPO).stdout.split()
        t1 = time.perf_counter()
        threads = [threading.Thread(target=safe, args=(judge, c, urls, 3 * n_aspects, 5, log)) for c in codes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        t_judges = time.perf_counter() - t1
        result = check(db, protocol, log, quota)
        result.update(errors=errors, seconds_participants=round(t_participants, 1), seconds_judges=round(t_judges, 1),
                      judged=log["judged"], logs=str(root))
        for n in range(len(procs)):
            text = (root / f"app{n}.log").read_text()
            if any(f"turn {t}" in text for t in range(turns)):
                result["problems"]["participant text in a log"] = 1
        return result
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        server.shutdown()
        if pg is not None:
            pg.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=20)
    parser.add_argument("--judges", type=int, default=10)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--db", default=None, help="SQLAlchemy URL (default: a throwaway PostgreSQL)")
    args = parser.parse_args()
    result = run(args.participants, args.judges, args.processes, args.db)
    print(json.dumps(result, indent=2))
    return 1 if result["errors"] or any(result["problems"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
