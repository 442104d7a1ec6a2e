"""The study web app: one FastAPI app serving the participant page at `/`, with mounting points for the
annotation page (`/annotate`) and the researcher dashboard (`/research`).

    app = build_app(protocol, store, pool)     # FastAPI; run with uvicorn (see app_cli.run_app)

Extension hook for /annotate and /research: `MOUNTS` lists (path, module, function). Each function is
called as `fn(protocol, store, pool)` and returns a `gradio.Blocks` to mount at that path, or None while
the feature is not built (the path then answers with a short "not available" page). The sub-apps are
mounted before `/`, which would otherwise catch their paths.
"""

from __future__ import annotations

import importlib
import logging
import secrets
from typing import Any

import gradio as gr
from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from extes.study.protocol import Protocol
from extes.study.session import Study
from extes.study.store import Store
from extes.study.ui_participant import CSS, build_participant_ui
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


def _not_available(path: str) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><title>Not available</title><p>{path} is not available in this "
                        "version of the study app.</p>", status_code=404)


def build_app(protocol: Protocol, store: Store, pool: Any, concurrency: int = 16,
              study: Study | None = None) -> FastAPI:
    """The whole app. `pool` follows extes.models.ArmPool (stream_many etc.)."""
    study = study or Study(protocol, store, pool)
    app = FastAPI(title="Study", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.study = study
    for path, module_name, fn_name in MOUNTS:
        blocks = None
        try:
            module = importlib.import_module(module_name)
            builder = getattr(module, fn_name, None)
            blocks = builder(protocol, store, pool) if builder is not None else None
        except ImportError as exc:  # a missing optional page must not stop the study
            log.warning("%s not mounted: %s", path, exc)
        if blocks is None:
            app.add_api_route(path, lambda p=path: _not_available(p), methods=["GET"], include_in_schema=False)
        else:
            blocks.queue(default_concurrency_limit=concurrency)
            gr.mount_gradio_app(app, blocks, path=path, theme=offline_theme(), **_MOUNT_KWARGS)
    secret = store.meta_value("browser_state_secret", lambda: secrets.token_urlsafe(24))
    demo = build_participant_ui(study, browser_secret=secret, concurrency=concurrency)
    demo.queue(default_concurrency_limit=concurrency, max_size=1000)
    gr.mount_gradio_app(app, demo, path="/", css=CSS, theme=offline_theme(), **_MOUNT_KWARGS)
    return app
