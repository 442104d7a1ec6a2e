"""The launched app on a loopback port, driven through gradio_client, with a real ArmPool over tiny models
(one arm with a tiny LoRA adapter): the flow, refusals over the API, blinding, and kill -9 of the app."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from study_helpers import ARM_NAMES, ServerThread, call, free_port, protocol_dict, tiny_arm_dicts

from extes.commands.app_cli import resolve_address
from extes.study.store import STREAM_STALE_S, Store

REPO = Path(__file__).resolve().parents[1]
PANES = ("Model A", "Model B", "Model C")  # the chats' labels: how the tests name them in API results


@pytest.fixture(scope="module")
def study_files(tiny_llama, tmp_path_factory):
    from extes.testing.quick_lora import quick_lora

    root = tmp_path_factory.mktemp("study-app")
    adapter = quick_lora(str(tiny_llama), root / "adapter-secret-xyz",
                         [("I feel sad", "I am here for you.", None)], steps=2)
    protocol = root / "protocol.yaml"
    protocol.write_text(yaml.safe_dump(protocol_dict(
        arms=tiny_arm_dicts(tiny_llama, adapter), min_turns=2, conversations=2), sort_keys=False))
    return {"root": root, "protocol": protocol, "adapter": adapter, "base": tiny_llama}


@pytest.fixture(scope="module")
def served(study_files):
    from extes.models import ArmPool
    from extes.study.app import build_app
    from extes.study.protocol import load_protocol

    protocol = load_protocol(study_files["protocol"])
    store = Store(study_files["root"] / "study.sqlite")
    pool = ArmPool(list(protocol.arms))
    app = build_app(protocol, store, pool, concurrency=4)
    with ServerThread(app) as server:
        yield server, store
    pool.close()
    store.close()


def client_for(url):
    from gradio_client import Client

    return Client(url, verbose=False)


def texts(chat_value) -> list[tuple[str, str]]:
    out = []
    for m in chat_value:
        content = m["content"]
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content)
        out.append((m["role"], content))
    return out


def secrets_of(files) -> list[str]:
    return [*ARM_NAMES, str(files["adapter"]), files["adapter"].name, str(files["base"])]


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read().decode("utf-8", "replace")


def test_participant_flow_through_gradio_client(served, study_files):
    server, store = served
    c = client_for(server.url)
    seen: list[str] = []
    r = call(c, api_name="/consent")
    seen.append(json.dumps(r, default=str))
    code = r["code"]
    assert code and r["conversation"] == ""
    r = call(c, code, "Academic Stress", "exams", api_name="/start")
    seen.append(json.dumps(r, default=str))
    conv = r["conversation"]
    assert conv.startswith("c-")
    for endpoint in ("/send_a", "/send_b", "/send_c", "/send_all"):
        out = call(c, code, conv, "<script>alert(1)</script> hello", api_name=endpoint)
        seen.append(json.dumps(out, default=str))
    chats = [texts(out[pane]) for pane in PANES]
    assert all(len(ch) == 4 for ch in chats)  # two turns in every pane
    assert chats[0][0] == ("user", "&lt;script&gt;alert(1)&lt;/script&gt; hello")  # shown as text
    assert "Every model has enough replies" in out["rate-hint"]
    assert len(store.messages(conv)) == 12

    # Resume by code (a refresh or another device) shows exactly the same panes.
    r = call(c, code, api_name="/resume")
    seen.append(json.dumps(r, default=str))
    assert r["conversation"] == conv and [texts(r[pane]) for pane in PANES] == chats

    radios = ["left", "tie", "right"] * 5
    r = call(c, code, conv, *radios, "fine", api_name="/rate")
    seen.append(json.dumps(r, default=str))
    votes = store.votes_frame()
    assert len(votes[votes["conversation_id"] == conv]) == 15
    assert sorted(set(votes["outcome"])) == ["a", "b", "tie"]
    r = call(c, code, api_name="/next")
    seen.append(json.dumps(r, default=str))
    assert r["code"] == code and r["conversation"] == ""  # the setup page for conversation 2

    blob = "\n".join(seen)
    for secret in secrets_of(study_files):
        assert secret not in blob


def test_refusals_over_the_api_change_nothing(served):
    from gradio_client.exceptions import AppError

    server, store = served
    c = client_for(server.url)
    me = call(c, api_name="/consent")["code"]
    conv = call(c, me, "Career Transitions", "", api_name="/start")["conversation"]
    other = call(c, api_name="/consent")["code"]
    before = store.counts()
    with pytest.raises(AppError, match="does not belong"):
        c.predict(other, conv, "hi", api_name="/send_a")
    with pytest.raises(AppError, match="limit is 4,000"):
        c.predict(me, conv, "x" * 4001, api_name="/send_b")
    c.predict(me, conv, "   ", api_name="/send_c")  # ignored with a hint (a toast), no error
    with pytest.raises(AppError, match="needs 2 more"):
        c.predict(me, conv, *(["tie"] * 15), "", api_name="/rate")
    with pytest.raises(AppError, match="No participant"):
        c.predict("AAAA-BBBB-CCCC", api_name="/resume")
    assert store.counts() == before


def test_blinding_page_config_and_api_info(served, study_files):
    from gradio_client.exceptions import AppError

    server, _store = served
    pages = [fetch(server.url + p) for p in ("", "config", "gradio_api/info", "gradio_api/info?all_endpoints=true")]
    assert "Model A" in pages[1] and "Model C" in pages[1]
    c = client_for(server.url)
    code = call(c, api_name="/consent")["code"]
    conv = call(c, code, "Academic Stress", "", api_name="/start")["conversation"]
    with pytest.raises(AppError) as err:
        c.predict(code, "c-000000000000", "hi", api_name="/send_a")
    blob = "\n".join(pages + [str(err.value)])
    for secret in secrets_of(study_files):
        assert secret not in blob, secret
    assert conv


def test_address_from_flags_and_gradio_environment(monkeypatch):
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    assert resolve_address(None, None) == ("127.0.0.1", 7860)
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "8123")
    assert resolve_address(None, None) == ("0.0.0.0", 8123)
    assert resolve_address("127.0.0.2", 9000) == ("127.0.0.2", 9000)
    monkeypatch.setenv("GRADIO_SERVER_PORT", "eighty")
    with pytest.raises(ValueError, match="GRADIO_SERVER_PORT"):
        resolve_address(None, None)


def test_bad_protocol_stops_start_up_with_a_clear_error(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text(yaml.safe_dump({**protocol_dict(), "min_user_turns": -1}))
    proc = subprocess.run([sys.executable, str(REPO / "app.py"), "--protocol", str(bad), "--db",
                           str(tmp_path / "db.sqlite")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"{bad}: min_user_turns" in proc.stderr


def _start_app(protocol: Path, db: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRADIO_SERVER_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--protocol", str(protocol), "--db", str(db)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited early:\n{log.read_text()}")
        try:
            fetch(f"http://127.0.0.1:{port}/config")
            return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"app did not start:\n{log.read_text()}")


@pytest.mark.slow  # over 10 s: in `make test`, not in `make test-fast`
def test_kill_9_during_a_conversation_then_restart_loses_nothing(study_files, tmp_path):
    db = tmp_path / "study.sqlite"
    port = free_port()
    proc = _start_app(study_files["protocol"], db, port, tmp_path / "log1.txt")
    try:
        c = client_for(f"http://127.0.0.1:{port}/")
        code = call(c, api_name="/consent")["code"]
        conv = call(c, code, "Anxiety and Panic", "", api_name="/start")["conversation"]
        out = call(c, code, conv, "first message", api_name="/send_all")
        out = call(c, code, conv, "second message", api_name="/send_b")
        shown = [texts(out[pane]) for pane in PANES]
        job = c.submit(code, conv, "third, maybe cut off", api_name="/send_all")  # in flight when killed
        time.sleep(0.2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    del job
    store = Store(db)
    for pane, chat in zip("ABC", shown):
        stored = [(m.role, m.text) for m in store.messages(conv, pane)]
        assert stored[: len(chat)] == [(role, text) for role, text in chat]  # (no HTML in these messages)
    store.close()

    port = free_port()
    proc = _start_app(study_files["protocol"], db, port, tmp_path / "log2.txt")
    try:
        c = client_for(f"http://127.0.0.1:{port}/")
        r = call(c, code, api_name="/resume")
        assert r["conversation"] == conv
        for chat, pane in zip(shown, PANES):
            assert texts(r[pane])[: len(chat)] == chat
        # The conversation goes on. A reply the dead process was still writing blocks its pane until
        # its heartbeat is stale (STREAM_STALE_S): until then a send is refused as a hint (outputs skipped).
        deadline = time.time() + STREAM_STALE_S + 20
        while True:
            out = call(c, code, conv, "after the restart", api_name="/send_c")
            if isinstance(out["Model C"], list) or time.time() > deadline:
                break
            time.sleep(1)
        assert texts(out["Model C"])[-2][1] == "after the restart"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    logs = (tmp_path / "log1.txt").read_text() + (tmp_path / "log2.txt").read_text()
    assert "first message" not in logs and "after the restart" not in logs  # messages never logged


def test_concurrent_participants_through_the_api_never_mix(served):
    """Several participants at once share the pool's batches; each sees only their own messages."""
    import threading

    server, store = served
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def participant(i: int):
        try:
            c = client_for(server.url)
            code = call(c, api_name="/consent")["code"]
            conv = call(c, code, "Academic Stress", "", api_name="/start")["conversation"]
            for t in range(2):
                out = call(c, code, conv, f"participant {i} says {t}", api_name="/send_all")
            results[i] = [texts(out[pane]) for pane in PANES] + [conv]
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=participant, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a participant never finished"
    assert not errors, errors
    assert sorted(results) == [0, 1, 2, 3]  # every participant got through
    for i, (*chats, conv) in results.items():
        for chat in chats:
            users = [text for role, text in chat if role == "user"]
            assert users == [f"participant {i} says 0", f"participant {i} says 1"]
        stored = [m.text for m in store.messages(conv) if m.role == "user"]
        assert all(s.startswith(f"participant {i} ") for s in stored) and len(stored) == 6


def test_pages_open_with_or_without_the_trailing_slash(served):
    """`/annotate` and `/research` as typed in an address bar: not the participant page's 404."""
    server, _ = served
    base = server.url.rstrip("/")
    for path in ("/annotate", "/research"):
        with urllib.request.urlopen(base + path, timeout=30) as r:  # follows the redirect
            assert r.status == 200 and r.url.rstrip("/").endswith(path)


def test_app_refuses_bad_engine_options_before_loading(capsys):
    from extes.commands.app_cli import main

    assert main(["--engine-in-process", "--engine-threads", "2", "--db", ":memory:"]) == 2
    assert "--engine-threads applies to engines in their own process" in capsys.readouterr().err
    assert main(["--engine-threads", "0", "--db", ":memory:"]) == 2
    assert "--engine-threads must be at least 1" in capsys.readouterr().err
    assert main(["--max-batch", "0", "--db", ":memory:"]) == 2
    assert "--max-batch must be at least 1" in capsys.readouterr().err


@pytest.mark.slow  # starts the real app with its engine process
def test_start_up_prints_where_each_page_is_and_no_runpy_warning(study_files, tmp_path, monkeypatch):
    """At start the app says where participants go and whether /research and /annotate are on; the engine
    child (started as the app loads) no longer triggers runpy's "found in sys.modules" RuntimeWarning."""
    monkeypatch.delenv("EXTES_RESEARCH_PASSWORD", raising=False)
    port = free_port()
    log = tmp_path / "log.txt"
    proc = _start_app(study_files["protocol"], tmp_path / "study.sqlite", port, log)
    try:
        time.sleep(1.0)  # let the engine child write anything it would write at start
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text()
    assert f"Participants: http://127.0.0.1:{port}/" in text
    assert "Researcher dashboard: off (set $EXTES_RESEARCH_PASSWORD and restart to turn it on)" in text
    assert f"Judges' page: on at http://127.0.0.1:{port}/annotate/" in text
    assert "RuntimeWarning" not in text and "found in sys.modules" not in text
