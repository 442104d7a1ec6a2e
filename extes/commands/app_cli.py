"""`extes app` / `python app.py`: start the study app.

Defaults: http://127.0.0.1:7860, protocol eval_protocol/default.yaml, database results/study.sqlite.
GRADIO_SERVER_NAME and GRADIO_SERVER_PORT are honoured when --host/--port are not given.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from extes.models import ArmPool
from extes.models.types import ENGINE_KINDS, MAX_BATCH
from extes.study.protocol import load_protocol
from extes.study.research_flags import resolve_flag
from extes.study.store import Store, StoreError

DEFAULT_PROTOCOL = Path("eval_protocol") / "default.yaml"
DEFAULT_DB = Path("results") / "study.sqlite"
REPO_ROOT = Path(__file__).resolve().parents[2]


def _default_protocol() -> str:
    if DEFAULT_PROTOCOL.is_file():
        return str(DEFAULT_PROTOCOL)
    return str(REPO_ROOT / DEFAULT_PROTOCOL) if (REPO_ROOT / DEFAULT_PROTOCOL).is_file() else str(DEFAULT_PROTOCOL)


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be a number, got {value!r}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"port must be 1-65535, got {port}")
    return port


def configure_app(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None,
                        help="address to listen on (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=None,
                        help="port (default: $GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--protocol", default=None, help=f"study protocol YAML (default: {DEFAULT_PROTOCOL})")
    parser.add_argument("--db", default=str(DEFAULT_DB),
                        help=f"SQLite file or SQLAlchemy URL (default: {DEFAULT_DB})")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="chat requests generating at once (the model pool batches them; default 16)")
    parser.add_argument("--max-batch", type=int, default=MAX_BATCH, metavar="N",
                        help=f"most replies decoded together per base model (default {MAX_BATCH}); more wait their turn")
    parser.add_argument("--engine-threads", type=int, default=None, metavar="N",
                        help="torch threads of each model process (default: every CPU but one, which is left to "
                             "the web server)")
    parser.add_argument("--engine", choices=ENGINE_KINDS, default="auto",
                        help="auto: the fast engine where the model allows it; transformers: force the transformers "
                             "path (the first round's engine, for comparisons such as bench/load.py --baseline)")
    parser.add_argument("--engine-in-process", action="store_true",
                        help="run the models inside the web server's process, as the first round did (slower: "
                             "for comparisons only)")
    parser.add_argument("--invite-judges", type=int, default=None, metavar="N",
                        help="print N new judge codes (single-use invitations for /annotate) and exit")
    parser.add_argument("--revoke-judge", default=None, metavar="CODE",
                        help="revoke a judge code (its unfinished items are freed) and exit")
    parser.add_argument("--open-flags", action="store_true",
                        help="list the open risk flags (id, category, conversation, time) and exit")
    parser.add_argument("--resolve-flag", type=int, default=None, metavar="ID",
                        help="resolve a risk flag with --note (what was done) and exit")
    parser.add_argument("--note", default=None, help="the note stored with --resolve-flag")


def resolve_address(host: str | None, port: int | None) -> tuple[str, int]:
    host = host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    if port is None:
        env = os.environ.get("GRADIO_SERVER_PORT")
        if env:
            try:
                port = _port(env)
            except argparse.ArgumentTypeError as exc:
                raise ValueError(f"GRADIO_SERVER_PORT: {exc}") from None
        else:
            port = 7860
    return host, port


def create(protocol_path: str, db: str, concurrency: int = 16, engine_threads: int | None = None,
           engine: str = "auto", in_process: bool = False, max_batch: int = MAX_BATCH):
    """(app, pool, store) for a protocol file and database; the pool loads the arms' models, each base in
    its own process with `engine_threads` torch threads (None: every CPU but one), or in this process
    with `in_process` (comparisons only)."""
    from extes.study.app import build_app  # lazy: gradio loads only to serve, not for --invite-judges

    protocol = load_protocol(protocol_path)
    try:
        store = Store(db)
    except StoreError as exc:
        raise ValueError(str(exc)) from None
    pool = ArmPool(list(protocol.arms), isolate=not in_process, engine_threads=engine_threads, engine=engine,
                   max_batch=max_batch)
    return build_app(protocol, store, pool, concurrency=concurrency), pool, store


def manage_judges(args: argparse.Namespace) -> int:
    """--invite-judges / --revoke-judge / --resolve-flag / --open-flags: work on the database only (no
    models are loaded)."""
    try:
        store = Store(args.db)
    except StoreError as exc:
        raise ValueError(str(exc)) from None
    try:
        if args.invite_judges is not None:
            source = load_protocol(args.protocol or _default_protocol(), build_arms=False).source
            for code in store.invite_judges(args.invite_judges, protocol=source):
                print(code)
        if args.revoke_judge is not None:
            freed = store.revoke_judge(args.revoke_judge)
            print(f"revoked; {freed} unfinished item(s) freed")
        if args.resolve_flag is not None:
            print(resolve_flag(store, args.resolve_flag, args.note))
        if args.open_flags:
            open_flags = [f for f in store.flags() if f.resolved_at is None]
            for f in open_flags:
                print(f"{f.id}\t{f.category}\t{f.conversation_id}\t{f.created_at}")
            print(f"{len(open_flags)} open flag(s)", file=sys.stderr)
    finally:
        store.close()
    return 0


def startup_lines(host: str, port: int, protocol) -> list[str]:
    """What the app prints once it is ready: where participants go, and whether the researcher's and the
    judges' pages are on (and how to turn them on)."""
    from extes.study.ui_research import PASSWORD_ENV, research_password  # lazy: gradio, as build_app above

    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    base = f"http://{shown}:{port}"
    where = f" (listening on all interfaces as {host})" if shown != host else ""
    research = (f"on at {base}/research/ (password from ${PASSWORD_ENV})" if research_password() is not None
                else f"off (set ${PASSWORD_ENV} and restart to turn it on)")
    annotate = (f"on at {base}/annotate/ (judges need a code: --invite-judges N or the dashboard)"
                if protocol.annotation.enabled else f"off ({protocol.source}: annotation.enabled is false)")
    return [f"Participants: {base}/{where}", f"Researcher dashboard: {research}", f"Judges' page: {annotate}",
            "Ctrl+C to stop."]


def run_app(args: argparse.Namespace) -> int:
    import uvicorn

    if args.invite_judges is not None or args.revoke_judge is not None or args.resolve_flag is not None \
            or args.open_flags:
        return manage_judges(args)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    host, port = resolve_address(args.host, args.port)
    protocol_path = args.protocol or _default_protocol()
    if args.concurrency < 1:
        raise ValueError(f"--concurrency must be at least 1, got {args.concurrency}")
    if args.max_batch < 1:
        raise ValueError(f"--max-batch must be at least 1, got {args.max_batch}")
    if args.engine_threads is not None and args.engine_threads < 1:
        raise ValueError(f"--engine-threads must be at least 1, got {args.engine_threads}")
    if args.engine_in_process and args.engine_threads is not None:
        raise ValueError("--engine-threads applies to engines in their own process, not with --engine-in-process")
    print(f"Loading the study from {protocol_path} (database {args.db}) ...", flush=True)
    app, pool, store = create(protocol_path, args.db, args.concurrency, args.engine_threads, args.engine,
                              args.engine_in_process, args.max_batch)
    print("Study app running.\n  " + "\n  ".join(startup_lines(host, port, app.state.study.protocol)), flush=True)
    try:
        # No access log: URLs hold no participant text, but there is no reason to keep them either.
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        pool.close()
        store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="app.py", description="Run the ExTES study app.")
    configure_app(parser)
    args = parser.parse_args(argv)
    try:
        return run_app(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"app.py: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
