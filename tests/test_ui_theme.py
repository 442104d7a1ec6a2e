"""Our pages use system fonts only: no font files fetched by the participant's browser.

Checked on what a browser receives from the running app (the page and its theme stylesheet), not on
Gradio's private attributes."""

import re

import httpx
from study_helpers import FakePool, ServerThread, make_protocol

from extes.study.app import build_app
from extes.study.store import Store
from extes.ui_theme import SANS


def test_served_pages_load_no_font_files(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    with ServerThread(build_app(make_protocol(tmp_path), store, FakePool())) as srv:
        for prefix in ("", "annotate/"):
            page = httpx.get(srv.url + prefix, timeout=30, follow_redirects=True).text
            css = httpx.get(srv.url + prefix + "theme.css", timeout=30).text
            assert "--font:" in css and SANS[0] in css  # the system font stack is what the page uses
            for text in (page, css):
                assert "@font-face" not in text and "fonts.googleapis" not in text and "fonts.gstatic" not in text
                assert not re.search(r"url\([^)]*\.(woff2?|ttf|otf)", text)
    store.close()
