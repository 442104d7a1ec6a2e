"""The axe-core helper finds what it should: a page with an unlabelled input and low contrast fails, a clean one
passes. (Guards the accessibility tests against a helper that silently checks nothing.)"""

from __future__ import annotations

import pytest
from axe_helpers import axe_violations
from study_helpers import chromium_browser

pytestmark = pytest.mark.slow

BAD = """<!doctype html><html lang="en"><head><title>bad</title></head><body><main>
<input type="text"><p style="color:#bbb;background:#fff">faint text</p></main></body></html>"""
GOOD = """<!doctype html><html lang="en"><head><title>good</title></head><body><main>
<label for="m">Message</label><input id="m" type="text"><p>clear text</p></main></body></html>"""


def test_axe_reports_serious_violations_and_passes_a_clean_page():
    with chromium_browser() as browser:
        page = browser.new_page()
        page.set_content(BAD)
        rules = {v.rule for v in axe_violations(page, impacts=("serious", "critical"))}
        assert {"label", "color-contrast"} <= rules
        page.set_content(GOOD)
        assert axe_violations(page) == []
        page.close()
