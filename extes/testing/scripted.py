"""A scripted OpenAI-compatible server on loopback, for tests and the build benchmark.

It answers POST /v1/chat/completions from a script: a list of steps consumed in arrival order
(then `default` forever). A step is a kind name or a dict {"kind": ..., "delay": s, "retry_after": s}.
Kinds: good, fenced, prose, malformed, missing_strategy, short, copy (the prompt's own example
back), dup (the turns of the first good dialogue again), junk, 429, 500. Good dialogues are made
up from a seeded word list, different every time, for the scenario the prompt asks for.
Every request is logged (request id header, status, kind) so tests can count exactly.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
import zlib
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from extes.selfchat.prompt import EXAMPLE_BEGIN, EXAMPLE_END
from extes.taxonomy import STRATEGY_NAMES

_WORDS = (
    "morning evening sister brother manager landlord exam rent garden kitchen phone message train "
    "letter doctor nurse coffee winter summer weekend office school bridge river window dinner "
    "promise argument silence laughter photo birthday holiday money savings debt invoice shift "
    "deadline project meeting colleague neighbour cousin grandmother puppy kitten apartment city "
    "village lake forest bicycle car bus airport suitcase recipe song guitar piano notebook diary "
    "blanket pillow candle lamp jacket scarf shoes umbrella storm rain sunshine cloud moon stars "
    "hospital pharmacy therapy group class lecture library essay thesis interview contract salary "
    "budget loan mortgage wedding funeral anniversary diagnosis surgery recovery habit routine "
    "breakfast lunch walk run swim yoga painting drawing poem story film series podcast radio"
).split()
_NAMES = "Ana Ben Chen Dara Eli Farah Goran Hana Ivo Jun Kemi Lars Mira Nils Omar Pia Raj Sana Tomas Uma".split()

_SCENE_RE = re.compile(r'scenario type "([^"]+)"')


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n)).capitalize() + "."


def make_dialogue(scene: str, index: int, utterances: int = 12) -> dict[str, Any]:
    """A valid, unique ExTES-format dialogue (content is word salad, structure is perfect)."""
    rng = random.Random(1000 + index)
    name = rng.choice(_NAMES)
    desc = (f"{name}, {20 + index % 50}, case {index}: " + _sentence(rng, 10) + " " + _sentence(rng, 8))
    content: list[dict[str, str]] = []
    for i in range(utterances):
        text = f"{_sentence(rng, 9)} {_sentence(rng, 7)}"
        if i % 2 == 0:
            content.append({"User": text})
        else:
            content.append({"AI": text, "AI Strategy": STRATEGY_NAMES[(index + i) % len(STRATEGY_NAMES)]})
    return {"scene": scene, "description": desc, "content": content}


class QuietServer(ThreadingHTTPServer):
    request_queue_size = 128  # the default backlog of 5 drops bursts of connections (1 s SYN retry)

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)  # a client that hung up (timeout tests) is fine


class ScriptedServer:
    def __init__(self, script: Iterable[Any] = (), default: Any = "good", delay: float = 0.0,
                 usage: tuple[int, int] = (1000, 500), host: str = "127.0.0.1", port: int = 0,
                 log_path: str | None = None):
        self.script = [s if isinstance(s, dict) else {"kind": s} for s in script]
        self.default = default if isinstance(default, dict) else {"kind": default}
        self.delay = delay
        self.usage = usage
        self.log: list[dict[str, Any]] = []
        self._log_fh = open(log_path, "a", encoding="utf-8") if log_path else None  # noqa: SIM115
        self._lock = threading.Lock()
        self._counter = 0
        self._first_good: dict[str, Any] | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                rid = self.headers.get("X-Extes-Request-Id", "")
                status, payload, headers = server._answer(body, rid)
                if status == 0:
                    self.close_connection = True
                    return
                self._send(status, payload, headers)

        self.httpd = QuietServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> ScriptedServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def count(self, status: int | None = None, kind: str | None = None) -> int:
        with self._lock:
            return sum(1 for e in self.log if (status is None or e["status"] == status)
                       and (kind is None or e["kind"] == kind))

    # -- answering ---------------------------------------------------------------------------------
    def _answer(self, body: dict[str, Any], rid: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            step = self.script.pop(0) if self.script else dict(self.default)
            self._counter += 1
            # unique per request id, so a second server (a resumed run) does not repeat dialogues
            index = 10**6 + zlib.crc32(rid.encode()) % 10**6 if rid else self._counter
        prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
        m = _SCENE_RE.search(prompt)
        scene = m.group(1) if m else "Breakups or Divorce"
        kind = step["kind"]
        entry = {"id": rid, "kind": kind, "scene": scene, "t": time.monotonic()}  # arrival time
        delay = step.get("delay", self.delay)
        if delay:
            time.sleep(delay)
        if kind == "new_api":  # like newer OpenAI models: max_tokens refused, max_completion_tokens wanted
            if "max_tokens" in body:
                step = {"kind": "400", "message": "Unsupported parameter: 'max_tokens' is not supported with "
                        "this model. Use 'max_completion_tokens' instead."}
                kind = "400"
            else:
                kind = "good"
                entry["kind"] = kind
        if kind.isdigit():
            status = int(kind)
            headers = {"Retry-After": str(step["retry_after"])} if "retry_after" in step else {}
            entry["status"] = status
            with self._lock:
                self.log.append(entry)
            message = step.get("message", f"scripted {status}")
            return status, {"error": {"message": message, "type": "scripted"}}, headers
        if kind == "drop":  # close the connection without an answer
            entry["status"] = 0
            with self._lock:
                self.log.append(entry)
            return 0, {}, {}
        text = self._text(kind, scene, index, prompt)
        entry["status"] = 200
        with self._lock:
            self.log.append(entry)
            if self._log_fh is not None:
                self._log_fh.write(json.dumps(entry) + "\n")
                self._log_fh.flush()
        pt, ct = step.get("usage", self.usage)
        return 200, {
            "id": f"chatcmpl-{index}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "scripted"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "length" if kind == "malformed" else "stop"}],
            "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
        }, {}

    def _text(self, kind: str, scene: str, index: int, prompt: str) -> str:
        if kind == "junk":
            return "the the the im_end assistant assistant"
        if kind == "copy":
            start, end = prompt.find(EXAMPLE_BEGIN), prompt.find(EXAMPLE_END)
            return prompt[start + len(EXAMPLE_BEGIN):end].strip()
        d = make_dialogue(scene, index)
        if kind == "dup":
            with self._lock:
                first = self._first_good
            if first is not None:
                d = {**first, "scene": scene}
        elif kind in ("good", "fenced", "prose", "slow"):
            with self._lock:
                if self._first_good is None:
                    self._first_good = d
        if kind == "missing_strategy":
            del d["content"][3]["AI Strategy"]
        if kind == "short":
            d["content"] = d["content"][:4]
        text = json.dumps(d, indent=1)
        if kind == "fenced":
            return f"Here is the new conversation:\n\n```json\n{text}\n```\n"
        if kind == "prose":
            return f"Sure! I wrote a dialogue for you.\n{text}\nI hope this is useful."
        if kind == "malformed":
            return text[: len(text) // 2]
        return text


def write_seed_file(path: Any, scenes: Iterable[str], per_scene: int = 1) -> Any:
    """An ExTES JSON seed file with `per_scene` made-up dialogues for each scene (for tests)."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [make_dialogue(scene, 100000 + 100 * i + j, utterances=10)
               for i, scene in enumerate(scenes) for j in range(per_scene)]
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path


def main() -> None:  # pragma: no cover - used by bench/build.py to serve from its own process
    import argparse

    ap = argparse.ArgumentParser(description="scripted OpenAI-compatible server on loopback")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--default", default="good")
    ap.add_argument("--log", default=None, help="append one JSON line per answered request")
    args = ap.parse_args()
    srv = ScriptedServer(default=args.default, delay=args.delay, log_path=args.log).start()
    print(srv.base_url, flush=True)
    try:
        srv._thread.join()
    except KeyboardInterrupt:
        srv.stop()


if __name__ == "__main__":  # pragma: no cover
    main()
