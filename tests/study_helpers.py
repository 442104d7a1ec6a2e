"""Test doubles and builders for the study app tests (imported by tests/test_study_*.py)."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from extes.models.engine import (  # the real result types: the fake differs only in how it generates
    Event,
    Reply,
)

ARM_NAMES = ("arm-secret-alpha", "arm-secret-beta", "arm-secret-gamma")


class FakePool:
    """Follows the ArmPool interface (stream, stream_many, generate, generate_batch, close) with canned,
    word-by-word replies. Records every request so tests can check what a model was shown."""

    def __init__(self, arm_names=ARM_NAMES, delay: float = 0.0, fail_arm: str | None = None,
                 words: int = 6, error_arm: str | None = None, finish: str = "stop", late_arm: str | None = None,
                 late_steps: int = 0, tags: dict[int, str] | None = None, reply_attrs: dict | None = None,
                 texts: dict[str, str] | None = None):
        self.arm_names = tuple(arm_names)
        self.delay = delay
        self.fail_arm = fail_arm  # the whole stream_many call raises
        self.error_arm = error_arm  # only this arm's request ends with an error event, as in ArmPool
        self.finish = finish
        self.words = words
        # late_arm starts its reply late_steps steps after the others, as a strategy arm does while the
        # engine holds back its leading "[Strategy]" tag
        self.late_arm, self.late_steps = late_arm, late_steps
        self.tags = tags or {}  # word index -> a tag the model writes there (for late_arm, or every arm if no late_arm)
        self.reply_attrs = reply_attrs or {}  # extra attributes on each Reply (dtype, engine_version)
        self.texts = texts or {}  # arm -> the reply it writes every time (word by word)
        self.calls: list[tuple[str, list[dict]]] = []
        self.lock = threading.Lock()

    def _reply_words(self, messages) -> list[str]:
        n_user = sum(1 for m in messages if m["role"] == "user")
        base = f"That sounds hard. Thank you for telling me (turn {n_user})."
        words = (base + " Tell me more.").split()
        while len(words) < self.words:  # long replies: the sentence again
            words += base.split()
        return words[: max(1, self.words)]

    def stream(self, arm_name, messages, cancel=None):
        for _key, ev in self.stream_many({"_": (arm_name, messages)}, cancel=cancel):
            yield ev

    def stream_many(self, requests, cancel=None):
        with self.lock:
            for arm, messages in requests.values():
                if arm not in self.arm_names:
                    raise KeyError(f"unknown arm {arm!r}")
                self.calls.append((arm, [dict(m) for m in messages]))
        if self.fail_arm and any(arm == self.fail_arm for arm, _ in requests.values()):
            raise RuntimeError(f"backend for {self.fail_arm} is down")
        start = time.perf_counter()
        plans = {}
        for k, (arm, m) in requests.items():
            words = self.texts[arm].split(" ") if arm in self.texts else self._reply_words(m)
            if self.tags and (self.late_arm is None or arm == self.late_arm):
                words = list(words)
                for at, tag in sorted(self.tags.items(), reverse=True):
                    words.insert(min(at, len(words)), tag)
            plans[k] = words
        offset = {k: (self.late_steps if requests[k][0] == self.late_arm else 0) for k in requests}
        texts = {k: "" for k in requests}
        step = 0
        while any(step - offset[k] < len(w) for k, w in plans.items()):
            for key, words in plans.items():
                i = step - offset[key]
                if 0 <= i < len(words):
                    if cancel is not None and cancel.is_set():
                        return
                    delta = ("" if i == 0 else " ") + words[i]
                    texts[key] += delta
                    yield key, Event(delta)
            step += 1
            if self.delay:
                time.sleep(self.delay)
        for key in requests:
            arm = requests[key][0]
            if arm == self.error_arm:
                yield key, Event("", True, None, error="the backend went away")
                continue
            reply = Reply(texts[key], None, texts[key], len(plans[key]), time.perf_counter() - start, 0.0,
                          self.finish, {"temperature": 0.7, "arm_checked": arm is not None})
            for name, value in self.reply_attrs.items():
                setattr(reply, name, value)
            yield key, Event("", True, reply)

    def generate(self, arm_name, messages):
        reply = None
        for ev in self.stream(arm_name, messages):
            if ev.done:
                reply = ev.reply
        return reply

    def generate_batch(self, arm_name, list_of_messages, settings_override=None):
        return [self.generate(arm_name, m) for m in list_of_messages]

    def close(self):
        pass


def protocol_dict(arms: list[dict] | None = None, min_turns: int = 2, conversations: int = 2, **extra) -> dict:
    """A small protocol mapping; arms default to three plain tiny-model-free local arms on the embedded name
    (only validated, never loaded, when used with FakePool)."""
    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "eval_protocol" / "default.yaml").read_text())
    data["arms"] = arms or [{"name": n} for n in ARM_NAMES]
    data["min_user_turns"] = min_turns
    data["conversations_per_participant"] = conversations
    lengths = {(a.get("generation") or {}).get("max_new_tokens") for a in data["arms"]}
    if len(lengths) == 1 and None not in lengths:  # arms built at one length: the study's reply length
        data["max_reply_tokens"] = lengths.pop()
    data.update(extra)
    return data


def make_protocol(tmp_path: Path, **kw):
    from extes.study.protocol import load_protocol

    path = tmp_path / "protocol.yaml"
    path.write_text(yaml.safe_dump(protocol_dict(**kw), sort_keys=False))
    return load_protocol(path)


def full_answers(study, choice: str = "left") -> dict[str, str]:
    return {key: choice for key, *_ in study.questions()}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """Serve a FastAPI app with uvicorn on a loopback port in a background thread."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


def tiny_arm_dicts(tiny_base: Path, adapter: Path | None = None, names=ARM_NAMES, max_new_tokens: int = 8):
    arms = [{"name": n, "base": str(tiny_base), "generation": {"max_new_tokens": max_new_tokens, "seed": 0}}
            for n in names]
    if adapter is not None:
        arms[1]["adapter"] = str(adapter)
    return arms


CHROMIUM = Path("/usr/bin/chromium")
# Headless Debian Chromium on a machine without outside network: no background connections, no sandbox (root).
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextmanager
def chromium_browser():
    """A Playwright Browser on Debian's Chromium; the test is skipped where Chromium or Playwright is missing."""
    import pytest

    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium) - the browser test needs it")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class Named(dict):
    """An API result by output name; a name that is not there (or that two outputs share) says which are."""

    def __init__(self, values: dict, api_name: str, ambiguous: set[str]):
        super().__init__(values)
        self.api_name, self.ambiguous = api_name, ambiguous

    def __missing__(self, name):
        why = "is shared by several outputs" if name in self.ambiguous else "is not an output"
        raise KeyError(f"{name!r} {why} of {self.api_name}; named outputs: {sorted(self)}")


def named(client, api_name: str, result) -> Named:
    """A gradio_client result (the endpoint's outputs as an ordered tuple) as {name: value}, named by each
    output component's elem_id, else its label, as the app's config gives them, so tests name components,
    never positions. Follows the client in leaving out layouts and states (they are not in the result)."""
    from gradio_client.utils import SKIP_COMPONENTS

    endpoint = next((e for e in client.endpoints.values() if e.api_name == api_name), None)
    if endpoint is None:
        raise KeyError(f"no endpoint {api_name} in the app's API")
    props = {c["id"]: c for c in client.config["components"]}
    kept = [props[i] for i in endpoint.dependency["outputs"]
            if not props[i].get("skip_api", props[i]["type"] in SKIP_COMPONENTS)]
    values = list(result) if len(kept) > 1 else [result]
    if len(values) != len(kept):
        raise ValueError(f"{api_name} returned {len(values)} values for {len(kept)} outputs")
    names = [c["props"].get("elem_id") or c["props"].get("label") or f"{c['type']}#{c['id']}" for c in kept]
    ambiguous = {n for n in names if names.count(n) > 1}
    return Named({n: v for n, v in zip(names, values) if n not in ambiguous}, api_name, ambiguous)


def call(client, *args, api_name: str) -> Named:
    """client.predict(*args, api_name=...) with its outputs named (see `named`)."""
    return named(client, api_name, client.predict(*args, api_name=api_name))
