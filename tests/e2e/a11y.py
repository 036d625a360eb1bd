"""Run axe-core (installed from npm into ``node_modules/``) on a Playwright page.

``violations(page)`` injects ``node_modules/axe-core/axe.min.js`` into the page and returns
axe's violations of WCAG 2.x A and AA rules (and axe's best practices); ``serious(...)``
keeps those of impact ``serious`` or ``critical``, and ``describe(...)`` turns them into
lines a person can act on: rule, page, element, what is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from playwright.sync_api import Page

AXE = Path(__file__).resolve().parents[2] / "node_modules" / "axe-core" / "axe.min.js"
TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]
BLOCKING = frozenset({"serious", "critical"})


@dataclass(frozen=True)
class Violation:
    rule: str
    impact: str
    help: str
    page: str
    targets: list[str]
    summary: str


def axe_script() -> str:
    if not AXE.is_file():
        raise FileNotFoundError(
            f"axe-core is not installed ({AXE.relative_to(AXE.parents[2])} is missing): "
            "run `make install` (or `npm ci`), which installs it from package.json."
        )
    return AXE.read_text()


def violations(page: Page, label: str | None = None) -> list[Violation]:
    """axe's violations on ``page`` as it stands (``label``: how to name the page)."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.add_script_tag(content=axe_script())
    raw: dict[str, Any] = page.evaluate(
        "async (tags) => await window.axe.run(document, "
        "{runOnly: {type: 'tag', values: tags}, resultTypes: ['violations']})",
        TAGS,
    )
    where = label or page.url
    found = []
    for v in raw["violations"]:
        for node in v["nodes"]:
            found.append(
                Violation(
                    rule=v["id"],
                    impact=node.get("impact") or v.get("impact") or "",
                    help=v["help"],
                    page=where,
                    targets=[str(t) for t in node.get("target", [])],
                    summary=" ".join(str(node.get("failureSummary", "")).split()),
                )
            )
    return found


def serious(found: list[Violation]) -> list[Violation]:
    return [v for v in found if v.impact in BLOCKING]


def describe(found: list[Violation]) -> str:
    """One line per violation: rule (impact) on page at element: what to fix."""
    return "\n".join(
        f"- {v.rule} ({v.impact}) on {v.page} at {', '.join(v.targets) or 'the page'}: "
        f"{v.help}. {v.summary}"
        for v in found
    )
