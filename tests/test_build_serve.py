"""`extes build` end to end against our own `extes serve` with a tiny random model: the model writes
junk, and the pipeline must reject all of it with reasons, without crashing."""

import asyncio
import json
import shutil
from contextlib import contextmanager

from extes.selfchat.pipeline import BuildConfig, Builder
from extes.testing.scripted import write_seed_file


@contextmanager
def serving(app):
    """uvicorn on a free loopback port in a thread; yields the /v1 base URL."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "extes serve did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(10)


def test_build_against_extes_serve_with_tiny_model(tmp_path, tiny_llama):
    from extes.models.arms import Arm, GenerationSettings
    from extes.models.server import create_app

    # the session's tiny llama with a window long enough for the self-chat prompt (the tiny
    # tokenizer needs many tokens per word); rotary positions, so only the config changes
    base = tmp_path / "tiny"
    shutil.copytree(tiny_llama, base)
    config = json.loads((base / "config.json").read_text())
    config["max_position_embeddings"] = 8192
    (base / "config.json").write_text(json.dumps(config))
    arm = Arm("tiny", base=str(base), generation=GenerationSettings(max_new_tokens=8, seed=0))
    seeds = write_seed_file(tmp_path / "seeds.json", ["Academic Stress"])
    out = tmp_path / "run"
    with serving(create_app([arm])) as url:
        cfg = BuildConfig(seeds=[seeds], out=out, model="tiny", target=1, base_url=url, api_key="k",
                          concurrency=2, max_tokens=8, proportions={"Academic Stress": 1.0},
                          max_attempts_factor=2, progress=False, backoff_base=0.01, timeout=60)
        res = asyncio.run(Builder(cfg).run())
    assert res.stop_reason == "exhausted" and res.accepted == 0 and res.requests == 2
    assert dict(res.counts) == {"rejected": 2}
    recs = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]
    responses = [r for r in recs if r["type"] == "response"]
    assert len(responses) == 2 and all(r["usage"]["completion_tokens"] > 0 for r in responses)
    decisions = [r for r in recs if r["type"] == "decision"]
    assert all(d["status"] == "rejected" and d["reasons"][0].startswith("not_json") for d in decisions)
    assert json.loads((out / "generated.json").read_text()) == []
    assert json.loads((out / "rounds.json").read_text())["rounds"][0]["rejection_reasons"] == {"not_json": 2}
