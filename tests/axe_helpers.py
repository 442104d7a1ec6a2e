"""axe-core in Chromium: run the accessibility rules on a Playwright page (imported by the browser tests).

`make setup` installs axe-core from npm into .venv/node (a setup-time download, like the Python wheels); the
test is skipped, saying how to install it, where that file is missing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

AXE_VERSION = "4.14.1"
AXE_JS = Path(__file__).resolve().parent.parent / ".venv" / "node" / "node_modules" / "axe-core" / "axe.min.js"
BLOCKING = ("serious", "critical")  # the impacts a page may not have


@dataclass(frozen=True)
class Violation:
    """One failed axe rule on a page: the rule, its impact, and the CSS targets of the offending nodes."""

    rule: str
    impact: str
    help: str
    targets: tuple[str, ...]

    def __str__(self) -> str:
        shown = ", ".join(self.targets[:5]) + (" ..." if len(self.targets) > 5 else "")
        return f"{self.impact}: {self.rule} ({self.help}) at {shown}"


def axe_script() -> Path:
    """The axe-core file; skips the calling test where it is not installed."""
    import pytest

    if not AXE_JS.exists():
        pytest.skip(f"{AXE_JS} is missing: run `make setup` (npm install axe-core@{AXE_VERSION}) for the axe tests")
    return AXE_JS


def axe_violations(page, impacts: tuple[str, ...] = BLOCKING, exclude: tuple[str, ...] = ()) -> list[Violation]:
    """Inject axe-core into `page` (once) and return its violations with one of `impacts`, WCAG 2.x A/AA and best
    practices. `exclude`: CSS selectors to leave out (say why at the call site)."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        # Through the DevTools protocol, not a <script> tag: the page's own CSP (rightly) refuses inline scripts.
        page.evaluate("(source) => { (0, eval)(source); }", axe_script().read_text(encoding="utf-8"))
    context = {"exclude": [[s] for s in exclude]} if exclude else None
    result = page.evaluate(
        """async ([context]) => {
            const options = {resultTypes: ['violations'],
                             runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']}};
            const r = context ? await axe.run(context, options) : await axe.run(document, options);
            return r.violations.map(v => ({rule: v.id, impact: v.impact || 'unknown', help: v.help,
                                           targets: v.nodes.map(n => n.target.join(' '))}));
        }""",
        [context],
    )
    return [Violation(v["rule"], v["impact"], v["help"], tuple(v["targets"])) for v in result
            if v["impact"] in impacts]
