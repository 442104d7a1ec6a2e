"""A base model's engine in its own process, behind the engine's interface (`submit`, `close`, `alive`).

Why: the engine's worker thread runs a few thousand torch operations per decode step, and every one of them
releases and retakes Python's GIL. In a process that also runs a web server (the study app's Gradio
threads, `extes serve`'s event loop, the store), each retake can wait for another thread's whole switch
interval (5 ms): measured on the 2-core development machine, two busy Python threads beside the engine
slowed 60 requests from 27 s to more than ten minutes, and the study app under 20 participants produced
a third of the engine's tokens per second. In its own process the engine never waits for the web server's
Python, and the operating system shares the cores.

How: `EngineProcess` starts a child (`python -c ...` calling `child_main`, a fresh interpreter: torch's
threads do not survive a fork, and multiprocessing's spawn would re-run the caller's main script) that
builds the engine with `create_engine` and answers over one socket pair wrapped as a multiprocessing
Connection:
- parent -> child: first (base, adapters, dtype, engine options, log level, torch threads), then ("submit", id, messages, settings, adapter, strategies), ("cancel", id), ("stats", id),
  ("close",);
- child -> parent: ("ready", info) or ("failed", error) once, then lists of ("event", id, Event),
  ("error", id, error) and ("stats", id, EngineStats). Events are batched: the child's writer thread sends
  whatever the engine produced since its last send in one message.
The parent's reader thread hands events to each request's sink (as the in-process engine would) and, every
few milliseconds, forwards requests whose caller cancelled them. When the child dies (killed, out of
memory), every open request receives a RuntimeError and `alive` turns False, which `ArmPool` reports; the
child exits when the parent dies (its pipe closes). What a participant wrote crosses the pipe only: it is
never logged, and errors carry the exception's type and message as the engine wrote them.
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import queue
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from extes.models.types import EngineClosed, EngineStats, Request

log = logging.getLogger(__name__)

CANCEL_POLL_S = 0.02  # how often the parent looks for requests cancelled by their caller
START_TIMEOUT_S = 900.0  # loading and converting a base model (the embedded one takes about 10 s)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_engine_threads() -> int:
    """Torch threads for an engine process that shares the machine with a web server: every usable CPU
    but one. A torch operation that runs on several threads waits at its end for the slowest of them, so
    when the web server takes a core one of the engine's threads is descheduled and every operation waits
    for it. Measured on the 2-core development machine (60 requests on three arms, `bench/load.py`'s
    request mix, beside a process that keeps one core 60% busy): 92 tokens/s with two threads, 127 with
    one; alone, one thread decoded as fast as two (121 vs 121-149 tokens/s); under bench/load.py's 20
    participants, 97.0 (one thread) vs 95.9 (two)."""
    return max(1, usable_cpus() - 1)


@dataclass(frozen=True)
class EngineInfo:
    """What the child reports once its engine is loaded."""

    runner_class: str  # FastRunner or TransformersRunner
    engine_version: str
    dtype_name: str
    window: int
    adapters: tuple[str, ...]
    pid: int


def _portable_error(exc: BaseException) -> BaseException:
    """The exception itself when it survives pickling, else a RuntimeError naming its type and message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any unpicklable exception
        return RuntimeError(f"{type(exc).__name__}: {exc}")


class _Child:
    """The child process: build the engine, then serve the pipe until "close" or the parent goes away."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.out: queue.SimpleQueue = queue.SimpleQueue()  # what the writer thread sends, batched
        self.live: dict[int, Request] = {}
        self.cancels = 0  # cancellations received from the parent (stats)

    def run(self) -> None:
        base, adapters, dtype, kwargs, log_level, threads = self.conn.recv()
        logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        import torch

        from extes.models.engine import create_engine  # deliberately lazy: the parent never loads torch

        if threads:
            torch.set_num_threads(threads)

        try:
            engine = create_engine(base, adapters=adapters, dtype=dtype, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
            self.conn.send(("failed", _portable_error(exc)))
            self.conn.close()
            return
        self.conn.send(("ready", EngineInfo(
            runner_class=type(engine.runner).__name__, engine_version=engine.engine_version,
            dtype_name=engine.dtype_name, window=engine.window, adapters=tuple(str(Path(a)) for a in adapters),
            pid=os.getpid())))
        threading.Thread(target=self._write, name="extes-engine-writer", daemon=True).start()
        try:
            self._serve(engine)
        finally:
            log.info("engine for %s closing: %s", Path(str(base)).name, engine.stats().summary())
            engine.close()
            self.out.put(None)
            time.sleep(0.05)
            try:
                self.conn.close()
            except OSError:
                pass

    def _serve(self, engine) -> None:
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):  # the parent went away
                return
            kind = msg[0]
            if kind == "submit":
                _, rid, messages, settings, adapter, strategies = msg
                req = Request(messages=messages, settings=settings, sink=self._sink_for(rid), adapter=adapter,
                                 strategies=strategies)
                self.live[rid] = req
                try:
                    engine.submit(req)
                except Exception as exc:  # noqa: BLE001 - the caller's error, delivered to its sink
                    self.live.pop(rid, None)
                    self.out.put(("error", rid, _portable_error(exc)))
            elif kind == "cancel":
                self.cancels += 1
                req = self.live.get(msg[1])
                if req is not None:
                    req.cancel.set()
            elif kind == "stats":
                stats = engine.stats()
                stats.cancels_received = self.cancels
                self.out.put(("stats", msg[1], stats))
            elif kind == "close":
                return

    def _sink_for(self, rid: int):
        def sink(ev) -> None:  # called by the engine's worker thread
            if isinstance(ev, BaseException):
                self.live.pop(rid, None)
                self.out.put(("error", rid, _portable_error(ev)))
                return
            if ev.done:
                self.live.pop(rid, None)
            self.out.put(("event", rid, ev))
        return sink

    def _write(self) -> None:
        while True:
            item = self.out.get()
            if item is None:
                return
            batch = [item]
            while True:  # everything produced meanwhile goes in the same message
                try:
                    nxt = self.out.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.out.put(None)
                    break
                batch.append(nxt)
            try:
                self.conn.send(batch)
            except (OSError, EOFError):
                return


class EngineProcess:
    """An engine (as `create_engine` builds it) running in a child process: the `LocalBackend` Protocol
    (`submit`, `close`, `alive`, `has_adapter`, `window`, `dtype_name`, `engine_version`, `stats()`), as
    the in-process engine; plus `info` and `pid`.

    threads: torch threads in the child (None: `default_engine_threads()`, every usable CPU but one).
    options: `create_engine`'s keyword options, passed to it in the child (an unknown one fails the start)."""

    def __init__(self, base: str, adapters=(), dtype: str | None = "auto", threads: int | None = None, **options):
        if threads is not None and threads < 1:
            raise ValueError(f"engine threads must be at least 1, got {threads}")
        self.base = base
        self.threads = threads or default_engine_threads()
        adapters = [str(Path(a)) for a in dict.fromkeys(adapters)]
        ours, theirs = socket.socketpair()
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
        self._proc = subprocess.Popen([sys.executable, *CHILD_ARGS, str(theirs.fileno())],
                                      pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL)
        theirs.close()
        self._conn = Connection(ours.detach())
        self._conn.send((base, adapters, dtype, options, logging.getLogger().getEffectiveLevel(), self.threads))
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._live: dict[int, Request] = {}
        self._stats_waiting: dict[int, queue.SimpleQueue] = {}
        self._cancel_sent: set[int] = set()
        self._ids = itertools.count(1)
        self._closed = threading.Event()
        self._dead = False
        self.info = self._handshake()
        self.dtype_name = self.info.dtype_name
        self.window = self.info.window
        self._adapters = {None, *self.info.adapters}
        self._reader = threading.Thread(target=self._read, name=f"extes-engine-reader:{Path(str(base)).name}",
                                        daemon=True)
        self._reader.start()

    def _handshake(self) -> EngineInfo:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._conn.poll(1.0):
            if self._proc.poll() is not None:
                raise RuntimeError(f"the engine process for {Path(str(self.base)).name} exited with status "
                                   f"{self._proc.returncode} while loading")
            if time.monotonic() > deadline:
                self._proc.kill()
                raise RuntimeError(f"the engine process for {Path(str(self.base)).name} did not load within "
                                   f"{START_TIMEOUT_S:.0f} s")
        try:
            kind, payload = self._conn.recv()
        except (EOFError, OSError):
            raise RuntimeError(f"the engine process for {Path(str(self.base)).name} exited with status "
                               f"{self._proc.wait(5)} while loading") from None
        if kind == "failed":  # the child's load error, raised here whatever its exit takes (a busy machine)
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            raise payload
        return payload

    # -- public ---------------------------------------------------------------------------------------

    def has_adapter(self, path: str | None) -> bool:
        return (str(Path(path)) if path else None) in self._adapters

    @property
    def alive(self) -> bool:
        return not self._dead and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    @property
    def engine_version(self) -> str:
        return self.info.engine_version

    def submit(self, req: Request) -> None:
        if self._closed.is_set() or self._dead:
            raise EngineClosed("the engine is closed" if self._closed.is_set() else "the engine process stopped")
        if not self.has_adapter(req.adapter):
            raise KeyError(f"adapter {req.adapter!r} is not loaded on base {self.base!r}")
        rid = next(self._ids)
        with self._lock:
            self._live[rid] = req
        try:
            self._send(("submit", rid, req.messages, req.settings, req.adapter, req.strategies))
        except (OSError, EOFError) as exc:
            with self._lock:
                self._live.pop(rid, None)
            raise EngineClosed(f"the engine process stopped ({type(exc).__name__})") from None

    def stats(self, timeout: float = 30.0) -> EngineStats:
        """The child engine's counters, with `cancels_received` (cancellations forwarded from this side)."""
        rid = next(self._ids)
        box: queue.SimpleQueue = queue.SimpleQueue()
        self._stats_waiting[rid] = box
        try:
            self._send(("stats", rid))
            return box.get(timeout=timeout)
        finally:
            self._stats_waiting.pop(rid, None)

    def close(self, timeout: float = 10.0) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            self._send(("close",))
        except (OSError, EOFError):
            pass
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        self._reader.join(timeout)
        self._fail_live(EngineClosed("the engine is closed"))

    # -- internals ------------------------------------------------------------------------------------

    def _send(self, msg) -> None:
        with self._send_lock:
            self._conn.send(msg)

    def _fail_live(self, exc: BaseException) -> None:
        with self._lock:
            live, self._live = self._live, {}
        for req in live.values():
            req.sink(exc)

    def _forward_cancellations(self) -> None:
        with self._lock:
            gone = [rid for rid, req in self._live.items() if rid not in self._cancel_sent and req.cancelled()]
            self._cancel_sent.update(gone)
            self._cancel_sent.intersection_update(self._live)
        for rid in gone:
            self._send(("cancel", rid))

    def _read(self) -> None:
        try:
            while True:
                if self._conn.poll(CANCEL_POLL_S):
                    batch = self._conn.recv()
                    for item in batch:
                        self._deliver(item)
                self._forward_cancellations()
        except (EOFError, OSError, BrokenPipeError):
            pass
        self._dead = True
        if not self._closed.is_set():
            log.error("the engine process for %s stopped (exit status %s)", Path(str(self.base)).name,
                      self._proc.poll())
            self._fail_live(RuntimeError("the generation process stopped"))

    def _deliver(self, item) -> None:
        kind, rid, payload = item
        if kind == "stats":
            box = self._stats_waiting.get(rid)
            if box is not None:
                box.put(payload)
            return
        with self._lock:
            req = self._live.get(rid)
            if req is not None and (kind == "error" or payload.done):
                del self._live[rid]
        if req is not None:
            req.sink(payload)


__all__ = ["CHILD_ARGS", "EngineInfo", "EngineProcess", "child_main"]


def child_main(fd: int) -> None:
    """The child's entry point, on its end of the socket pair."""
    _Child(Connection(int(fd))).run()


# The child imports this module by its own name (so what it pickles resolves in the parent) and calls
# child_main. Not `python -m extes.models.engine_process`: the package `extes.models` imports this module
# first, and runpy then warns "found in sys.modules ... prior to execution" at every start.
CHILD_ARGS = ("-c", "import sys; from extes.models.engine_process import child_main; child_main(int(sys.argv[1]))")

if __name__ == "__main__":  # by hand: python -m extes.models.engine_process FD (the module's own name, as above)
    from extes.models.engine_process import child_main as _by_name

    _by_name(int(sys.argv[1]))
