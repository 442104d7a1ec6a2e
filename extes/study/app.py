"""The study web app: one FastAPI app serving the participant page at `/`, with mounting points for the
annotation page (`/annotate`) and the researcher dashboard (`/research`).

    app = build_app(protocol, store, pool)     # FastAPI; run with uvicorn (see extes.commands.app_cli.run_app)

Extension hook for /annotate and /research: `MOUNTS` lists (path, module, function). Each function is
called as `fn(protocol, store, pool)` and returns a `gradio.Blocks` to mount at that path, or None while
the feature is not built (the path then answers with a short "not available" page). The sub-apps are
mounted before `/`, which would otherwise catch their paths.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

import gradio as gr
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

from extes.study.http_guard import install_http_guard
from extes.study.limits import Limiter
from extes.study.protocol import Protocol
from extes.study.session import Study
from extes.study.store import Store
from extes.study.ui_participant import CSS, build_participant_ui
from extes.taxonomy import prepare_tag_grammar
from extes.ui_theme import offline_theme

log = logging.getLogger(__name__)

MOUNTS: tuple[tuple[str, str, str], ...] = (
    ("/annotate", "extes.study.ui_annotate", "build_annotate_ui"),
    ("/research", "extes.study.ui_research", "build_research_ui"),
)

# Gradio settings that keep participant data out of places it does not belong: no analytics, no run
# history in the browser, no error details (which could name a model) in the page, no API link in the
# footer (the API still works for gradio_client).
_MOUNT_KWARGS: dict[str, Any] = dict(show_error=False, footer_links=[], run_history=False, ssr_mode=False,
                                     mcp_server=False)


class _QuietTraceback:
    """Stands in for the `traceback` module inside Gradio's request handling. Gradio prints the traceback
    of a failed call to stderr, and its messages quote the inputs ("Received inputs: [code, text]" for a
    malformed call, the value's repr for one that fails preprocessing): participant text. This logs the
    exception's type only."""

    def __getattr__(self, name: str):
        import traceback

        return getattr(traceback, name)

    @staticmethod
    def print_exc(*_args, **_kwargs) -> None:
        import sys

        exc = sys.exc_info()[1]
        log.error("a request failed in Gradio: %s (details withheld: they may quote participant text)",
                  type(exc).__name__ if exc is not None else "error")


def quiet_gradio_tracebacks() -> None:
    """Install _QuietTraceback in the Gradio modules that print tracebacks of failed calls."""
    import gradio.queueing
    import gradio.route_utils
    import gradio.routes
    import gradio.utils

    for module in (gradio.queueing, gradio.routes, gradio.utils, gradio.route_utils):
        if getattr(module, "traceback", None) is not None:
            module.traceback = _QuietTraceback()  # type: ignore[assignment]


def _download_route(downloads: Any):
    """GET /research-download/<token>: a one-time export handed to a logged-in researcher."""

    def download(token: str) -> Response:
        data = downloads.take(token)
        if data is None:
            return PlainTextResponse("This download link was used already or has expired.", status_code=404)
        return Response(data, media_type="application/zip", headers={
            "Content-Disposition": 'attachment; filename="study-export.zip"', "Cache-Control": "no-store"})

    return download


def _not_available(path: str) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><title>Not available</title><p>{path} is not available in this "
                        "version of the study app.</p>", status_code=404)


def build_app(protocol: Protocol, store: Store, pool: Any, concurrency: int = 16,
              study: Study | None = None) -> FastAPI:
    """The whole app. `pool` follows extes.models.ArmPool (stream_many etc.)."""
    study = study or Study(protocol, store, pool)
    prepare_tag_grammar()  # the panes strip tags from the first reply on: compile the patterns now
    quiet_gradio_tracebacks()
    app = FastAPI(title="Study", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.study = study

    @app.middleware("http")
    async def no_uploads(request: Request, call_next):
        # Nothing in the study takes a file: Gradio's upload route (anonymous, 50 MB and more) is off.
        if request.url.path.rstrip("/").endswith(("/gradio_api/upload", "/gradio_api/upload_progress")):
            return PlainTextResponse("Not found", status_code=404)
        return await call_next(request)

    for path, module_name, fn_name in MOUNTS:
        blocks = None
        try:
            module = importlib.import_module(module_name)
            builder = getattr(module, fn_name, None)
            blocks = builder(protocol, store, pool) if builder is not None else None
        except ImportError as exc:  # a missing optional page must not stop the study
            log.warning("%s not mounted: %s", path, exc)
        downloads = getattr(blocks, "extes_downloads", None)
        if downloads is not None:
            app.add_api_route("/research-download/{token}", _download_route(downloads), methods=["GET"],
                              include_in_schema=False)
        if blocks is None:
            app.add_api_route(path, lambda p=path: _not_available(p), methods=["GET"], include_in_schema=False)
        else:
            # `/annotate` (no slash) would fall through to the participant page's mount and 404 there.
            app.add_api_route(path, lambda p=path: RedirectResponse(p + "/", status_code=307), methods=["GET"],
                              include_in_schema=False)
            blocks.queue(default_concurrency_limit=concurrency)
            gr.mount_gradio_app(app, blocks, path=path, theme=offline_theme(), **_MOUNT_KWARGS)
    demo = build_participant_ui(study, concurrency=concurrency, limiter=Limiter(store))
    demo.queue(default_concurrency_limit=concurrency, max_size=1000)
    gr.mount_gradio_app(app, demo, path="/", css=CSS, theme=offline_theme(), **_MOUNT_KWARGS)
    install_http_guard(app)  # body-size limit and security headers on every response (outermost)
    return app
