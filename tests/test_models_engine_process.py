"""The engine in its own process (extes.models.engine_process): same replies as in-process, cancellation
crosses the pipe, a killed child fails its open requests instead of hanging them, a dead parent takes the
child with it, and load errors surface in the parent. (What the process buys, throughput beside a busy web
server, is measured by bench/load.py, not timed here.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from models_helpers import tiny_arms, user

from extes.models import ArmPool, GenerationSettings
from extes.models.engine_process import EngineProcess, default_engine_threads, usable_cpus

PROMPTS = ["I feel so alone since the breakup", "My boss keeps giving me more work and I am tired"]


def _pid_gone(pid: int, within: float) -> bool:
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie of ours counts as gone
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return True
        except ChildProcessError:
            pass
        time.sleep(0.1)
    return False


def test_isolated_pool_gives_the_same_greedy_replies_as_in_process(base, adapters):
    arms = tiny_arms(base, adapters)
    with ArmPool(arms) as local, ArmPool(arms, isolate=True) as remote:
        engine = remote.engine_for("plain")
        assert isinstance(engine, EngineProcess) and engine.pid != os.getpid() and engine.alive
        assert remote.engine_for("lora") is engine  # one process per base: one batch for all its arms
        for arm in ("plain", "lora", "strat"):
            for text in PROMPTS:
                a, b = local.generate(arm, user(text)), remote.generate(arm, user(text))
                assert (a.token_ids, a.text, a.strategy) == (b.token_ids, b.text, b.strategy)
                assert b.engine_version == a.engine_version and b.dtype == a.dtype == "float32"
        # several streams at once are batched by the child, and each gets its own reply
        many = dict(remote.stream_many({arm: (arm, user(PROMPTS[0])) for arm in ("plain", "lora", "strat")}))
        assert set(many) == {"plain", "lora", "strat"}
        stats = engine.stats()
        assert stats.max_rows_seen >= 2 and stats.steps > 0 and stats.prefill_tokens > 0
        # the default leaves a CPU to the web server
        assert stats.torch_threads == engine.threads == default_engine_threads() == max(1, usable_cpus() - 1)


def test_engine_threads_reach_the_child_and_bad_values_are_refused(base, adapters):
    arms = tiny_arms(base, adapters)
    with ArmPool(arms, isolate=True, engine_threads=1) as pool:
        assert pool.engine_for("plain").stats().torch_threads == 1
        assert pool.generate("plain", user(PROMPTS[0])).text
    with pytest.raises(ValueError, match="isolate"):
        ArmPool(arms, engine_threads=1)
    with pytest.raises(ValueError, match="at least 1"):
        ArmPool(arms, isolate=True, engine_threads=0)


def test_streamed_deltas_add_up_to_the_reply(base, adapters):
    with ArmPool(tiny_arms(base, adapters), isolate=True) as pool:
        events = list(pool.stream("lora", user(PROMPTS[1])))
        assert events[-1].done and "".join(e.delta for e in events) == events[-1].reply.text
        assert sum(1 for e in events if e.delta) >= 2


def test_cancellation_reaches_the_child(base, adapters):
    long = GenerationSettings(max_new_tokens=400, temperature=0.0, repetition_penalty=1.0)
    with ArmPool(tiny_arms(base, adapters, settings=long), isolate=True, max_context=1024) as pool:
        engine = pool.engine_for("plain")
        assert engine.stats().cancels_received == 0
        cancel = threading.Event()
        events = []
        for ev in pool.stream("plain", user(PROMPTS[0]), cancel=cancel):
            events.append(ev)
            if len(events) == 2:
                cancel.set()  # the caller's event: only the parent sees it, so it must be forwarded
        assert events[-1].done and events[-1].reply.finish_reason in ("cancelled", "stop")
        received = engine.stats().cancels_received
        assert received == 1 or events[-1].reply.finish_reason == "stop"  # (it may have ended first)
        # closing a stream early (the page went away) cancels it too
        stream = pool.stream("plain", user(PROMPTS[1]))
        next(stream)
        stream.close()
        deadline = time.time() + 20
        while engine.stats().cancels_received < received + 1:
            assert time.time() < deadline, "the cancellations never reached the child"
            time.sleep(0.05)
        assert pool.generate("plain", user("still here?")).n_tokens > 0


def test_killed_child_fails_open_requests_and_the_pool_says_so(base, adapters):
    slow = GenerationSettings(max_new_tokens=400, temperature=0.0, repetition_penalty=1.0)
    with ArmPool(tiny_arms(base, adapters, settings=slow), isolate=True, max_context=1024) as pool:
        engine = pool.engine_for("plain")
        stream = pool.stream("plain", user(PROMPTS[0]))
        next(stream)
        os.kill(engine.pid, signal.SIGKILL)
        t0 = time.time()
        with pytest.raises(RuntimeError, match="generation"):
            for _ in stream:
                pass
        assert time.time() - t0 < 10
        assert not engine.alive
        with pytest.raises(Exception, match="stopped|closed"):
            pool.generate("plain", user("hello"))


def test_load_error_is_raised_in_the_parent(base, tmp_path):
    missing = tmp_path / "no-such-adapter"
    missing.mkdir()
    with pytest.raises(Exception) as info:
        EngineProcess(str(base), adapters=[str(missing)], dtype="float32")
    assert "adapter" in str(info.value).lower() or "no-such-adapter" in str(info.value)


def test_child_exits_when_its_parent_is_killed(base, tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from extes.models.engine_process import EngineProcess, default_engine_threads, usable_cpus
        e = EngineProcess({str(base)!r}, dtype="float32")
        print(e.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=os.getcwd()))
    try:
        child = int(parent.stdout.readline())
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert _pid_gone(child, 30), "the engine process outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()


def test_close_summary_counts_batches_without_text(base, adapters):
    """The line the engine process logs at close: batch fill, step time, attention padding; never text."""
    with ArmPool(tiny_arms(base, adapters)) as pool:
        replies = dict(pool.stream_many({arm: (arm, user(PROMPTS[1])) for arm in ("plain", "lora", "strat")}))
        line = pool.engine_for("plain").stats().summary()
    assert replies and "decode steps" in line and "rows per step" in line and "% padding" in line
    assert PROMPTS[1] not in line and "boss" not in line


def test_the_transformers_path_can_be_forced_for_comparisons(base, adapters):
    """`engine="transformers"` (app.py --engine transformers, bench/load.py --baseline) runs the reference
    path even where the fast engine could; unknown kinds are refused before anything loads."""
    from extes.models.fast_runner import FastRunner
    from extes.models.transformers_runner import TransformersRunner

    arms = tiny_arms(base, adapters)
    with ArmPool(arms, engine="transformers") as ref, ArmPool(arms) as fast:
        assert isinstance(ref.engine_for("lora").runner, TransformersRunner)
        assert isinstance(fast.engine_for("lora").runner, FastRunner)
        a, b = ref.generate("lora", user(PROMPTS[0])), fast.generate("lora", user(PROMPTS[0]))
        assert a.token_ids == b.token_ids and a.engine_version != b.engine_version
    with pytest.raises(ValueError, match="engine 'vllm' must be one of"):
        ArmPool(arms, engine="vllm")
