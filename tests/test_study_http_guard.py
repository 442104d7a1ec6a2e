"""The app's own HTTP guard (issue 24, item 7): a request-body size limit that answers 413 before the body
is read, and security headers on every response, with a Content-Security-Policy the participant page
works under in a real browser.

Before: four parallel 100 MB bodies took the app to about 1.5 GB; no response had X-Frame-Options,
X-Content-Type-Options or a CSP. Every test here fails on that code.
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from study_helpers import FakePool, ServerThread, chromium_browser, make_protocol

from extes.study.http_guard import DEFAULT_MAX_BODY_BYTES, MAX_BODY_ENV, content_security_policy

MiB = 1024 * 1024
JOIN = "gradio_api/queue/join"  # a POST route whose JSON body Starlette reads whole


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from extes.study.app import build_app
    from extes.study.store import Store

    tmp = tmp_path_factory.mktemp("guard")
    store = Store(tmp / "s.sqlite")
    app = build_app(make_protocol(tmp, min_turns=1, conversations=1), store, FakePool(words=4), concurrency=4)
    with ServerThread(app) as server:
        yield server
    store.close()


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _raw_post(port: int, path: str, total: int, chunked: bool, chunk: int = MiB) -> tuple[int, int]:
    """POST `total` zero bytes as a real client would (declared length or chunked), reading the answer as
    soon as it comes. Returns (status, bytes the server let us send before it answered or closed)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    head = (f"POST /{path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + ("Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {total}\r\n") + "\r\n")
    sock.sendall(head.encode())
    sent, block = 0, b"0" * chunk
    try:
        while sent < total:
            data = block if not chunked else f"{len(block):x}\r\n".encode() + block + b"\r\n"
            sock.sendall(data)
            sent += len(block)
        if chunked:
            sock.sendall(b"0\r\n\r\n")
    except OSError:
        pass  # the server answered and closed while we were still sending: what a limit should do
    sock.settimeout(60)
    reply = b""
    try:
        while b"\r\n" not in reply:
            part = sock.recv(4096)
            if not part:
                break
            reply += part
    except OSError:
        pass
    sock.close()
    status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1") else 0
    return status, sent


def test_a_declared_large_body_is_refused_before_it_is_read(served):
    status, sent = _raw_post(served.port, JOIN, 200 * MiB, chunked=False)
    assert status == 413
    assert sent < 100 * MiB  # refused long before the client could send it all


def test_a_chunked_large_body_is_cut_off_at_the_limit(served):
    status, _ = _raw_post(served.port, JOIN, 20 * MiB, chunked=True, chunk=64 * 1024)
    assert status == 413


def test_a_body_under_the_limit_still_reaches_the_app(served):
    status, _ = _raw_post(served.port, JOIN, 64 * 1024, chunked=False)
    assert status not in (0, 413)  # the app's own answer (a 4xx/5xx for a body of zeros), not the guard's
    status, _ = _raw_post(served.port, JOIN, 64 * 1024, chunked=True, chunk=16 * 1024)
    assert status not in (0, 413)


def test_parallel_large_bodies_do_not_grow_memory(served):
    """Eight clients each sending 100 MB at once (four declared, four chunked): the process grows by less
    than 64 MiB. Without the guard four declared bodies alone took it to 1.5 GB."""
    before = _rss_bytes()
    results: list[tuple[int, int]] = []
    threads = [threading.Thread(target=lambda c=c: results.append(_raw_post(served.port, JOIN, 100 * MiB, c)))
               for c in (False, True) * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    time.sleep(0.5)
    grown = _rss_bytes() - before
    assert sorted(s for s, _ in results) == [413] * 8
    assert grown < 64 * MiB, f"RSS grew by {grown / MiB:.0f} MiB"


def test_the_limit_is_configurable(monkeypatch):
    from extes.study.http_guard import max_body_bytes_from_env

    assert max_body_bytes_from_env() == DEFAULT_MAX_BODY_BYTES == MiB
    monkeypatch.setenv(MAX_BODY_ENV, "4096")
    assert max_body_bytes_from_env() == 4096
    for bad in ("lots", "10"):
        monkeypatch.setenv(MAX_BODY_ENV, bad)
        with pytest.raises(ValueError, match=MAX_BODY_ENV):
            max_body_bytes_from_env()


@pytest.mark.parametrize("path", ["", "research/", "annotate/", "no-such-page", "gradio_api/info", "config"])
def test_every_response_carries_the_security_headers(served, path):
    try:
        response = urllib.request.urlopen(served.url + path, timeout=30)
    except urllib.error.HTTPError as exc:
        response = exc
    headers = response.headers
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    csp = headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp
    script_src = next(d for d in csp.split(";") if d.strip().startswith("script-src"))
    assert "'unsafe-inline'" not in script_src  # ('unsafe-eval' is needed by Gradio's js= handlers)


def test_inline_scripts_are_allowed_by_hash_only():
    page = b"<p>x</p><script>window.a = 1</script><script src='/x.js'></script><SCRIPT type=module>b()</SCRIPT>"
    csp = content_security_policy(page)
    assert csp.count("'sha256-") == 2
    assert "'sha256-" not in content_security_policy()


@pytest.mark.slow
@pytest.mark.browser
def test_the_participant_page_works_in_chromium_with_no_csp_violation(served):
    with chromium_browser() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        console: list[str] = []
        page.on("console", lambda m: console.append(m.text))
        page.add_init_script("window.__csp = []; document.addEventListener('securitypolicyviolation',"
                             " e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));")
        page.goto(served.url)
        page.get_by_role("button", name="I agree").click()
        page.get_by_text("Your participant code:").wait_for()
        page.get_by_label("What would you like to talk about?").click()
        page.get_by_role("option", name="Academic Stress", exact=True).click()
        page.get_by_role("button", name="Start the conversation").click()
        box = page.get_by_placeholder("Message to Model A")
        box.fill("My exams are next week.")
        page.get_by_role("button", name="Send to Model A", exact=True).click()
        page.wait_for_function("() => document.body.innerText.includes('1 more message') ||"
                               " document.body.innerText.includes('minimum reached')")
        violations, before_framing = page.evaluate("() => window.__csp"), list(console)
        framed = page.evaluate("""async () => {
            const f = document.createElement('iframe'); f.src = location.href; document.body.appendChild(f);
            await new Promise(r => setTimeout(r, 1500));
            try { return f.contentDocument && f.contentDocument.body ? f.contentDocument.body.innerText : ''; }
            catch (e) { return 'cross-origin'; } }""")
    assert violations == [], violations
    assert not [m for m in before_framing if "Content Security Policy" in m or "Refused to" in m], before_framing
    assert "I agree" not in framed  # even the page itself cannot frame it
    assert any("frame-ancestors" in m or "Refused to display" in m for m in console[len(before_framing):])


def _measure(guarded: bool, clients: int = 4, size: int = 100 * MiB) -> tuple[int, list[int]]:
    """RSS growth of a fresh app serving `clients` parallel `size` bodies (declared length), with or without
    the guard: (bytes grown, statuses)."""
    import tempfile
    from pathlib import Path

    import extes.study.app as app_module
    from extes.study.store import Store

    tmp = Path(tempfile.mkdtemp(prefix="guard-rss-"))
    hook = app_module.install_http_guard
    if not guarded:
        app_module.install_http_guard = lambda app: None
    try:
        app = app_module.build_app(make_protocol(tmp, min_turns=1, conversations=1), Store(tmp / "s.sqlite"),
                                   FakePool(words=4), concurrency=4)
    finally:
        app_module.install_http_guard = hook
    with ServerThread(app) as server:
        _raw_post(server.port, JOIN, 1024, chunked=False)  # warm up
        before, peak, results = _rss_bytes(), [0], []
        threads = [threading.Thread(target=lambda: results.append(_raw_post(server.port, JOIN, size, False)[0]))
                   for _ in range(clients)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.05)
        return max(peak[0], _rss_bytes()) - before, sorted(results)


if __name__ == "__main__":  # python tests/test_study_http_guard.py: the numbers in the closing note
    for guarded in (True, False):  # guarded first: the unguarded run leaves a grown heap behind
        grown, statuses = _measure(guarded)
        print(f"guard {'on ' if guarded else 'off'}: 4 parallel 100 MiB bodies -> peak RSS growth "
              f"{grown / MiB:.0f} MiB, statuses {statuses}")
