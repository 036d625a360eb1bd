"""axe-core on every portal page each demo role can reach, in a real Chromium.

The pages are enumerated from the app's URL map (GET routes that render HTML), with ids
filled from the demo's data, so a new page is checked without touching this test. A page a
role may not reach (403) is that role's error page, which is checked too. The test fails on
any ``serious`` or ``critical`` violation and lists them (rule, page, element); each page
visited is screenshotted into the test's tmp directory for review.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page
from sqlalchemy import select

from tests.e2e.a11y import Violation, describe, serious, violations
from tests.e2e.conftest import LiveServer, sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.slow]

ROLES = ("steward", "northbridge-admin", "northbridge-data", "researcher", "auditor")
# Not pages: the API, files, scripts and style sheets, plots (SVG), the health check.
SKIP_PREFIXES = ("/api/", "/static/", "/healthz")
SKIP_SUFFIXES = (".csv", ".xlsx", ".js", ".css", ".json", ".jsonl", ".ndjson", "/plots/<name>")


@dataclass(frozen=True)
class Route:
    rule: str
    endpoint: str
    arguments: frozenset[str]


@dataclass
class DemoIds:
    """Values for route arguments, per kind, from the demo's database."""

    values: dict[str, list[str]]

    def fill(self, route: Route) -> list[str]:
        """The paths of ``route`` with each argument filled (several candidates for ids
        owned by one institution: the role reaches some of them)."""
        paths = [route.rule]
        for arg in sorted(route.arguments):
            options = self.values.get(arg, [])
            if not options:
                return []
            pattern = re.compile(r"<(?:[^:<>]+:)?" + re.escape(arg) + r">")
            paths = [pattern.sub(value, p) for p in paths for value in options]
        return paths


@pytest.fixture(scope="module")
def app_routes(live_server: LiveServer) -> tuple[list[Route], DemoIds]:
    """The app's GET page routes and the demo's ids (read through the app on the live
    server's data directory)."""
    from hub import create_app
    from hub.agreements.models import AgreementRecord
    from hub.audit.models import AuditEntry
    from hub.db import get_database
    from hub.ingest.models import DatasetVersion
    from hub.releases.models import ReleaseRequest
    from hub.synth.models import SyntheticVersion

    app = create_app({"data_dir": str(live_server.data_dir)})
    routes = []
    for rule in app.url_map.iter_rules():
        if "GET" not in (rule.methods or set()):
            continue
        if rule.rule.startswith(SKIP_PREFIXES) or rule.rule.endswith(SKIP_SUFFIXES):
            continue
        routes.append(Route(rule.rule, rule.endpoint, frozenset(rule.arguments)))
    with get_database(app).session() as s:
        versions = list(s.scalars(select(DatasetVersion).order_by(DatasetVersion.id)))
        # One version per institution: each contributor reaches their own.
        first: dict[int, int] = {}
        for v in versions:
            first.setdefault(v.institution_id, v.id)
        values = {
            "version_id": [str(i) for i in first.values()],
            "slug": list(s.scalars(select(AgreementRecord.slug).order_by(AgreementRecord.id))),
            "request_id": [str(i) for i in s.scalars(select(ReleaseRequest.id).limit(1))],
            "synthetic_id": [str(i) for i in s.scalars(select(SyntheticVersion.id).limit(1))],
            "table": ["batch"],
            "entry_id": [str(i) for i in s.scalars(select(AuditEntry.id).limit(1))],
        }
    return sorted(routes, key=lambda r: r.rule), DemoIds(values)


def _shot(page: Page, directory: Path, name: str) -> None:
    safe = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") or "home"
    page.screenshot(path=str(directory / f"{safe}.png"), full_page=True)


def _check(page: Page, url: str, label: str, shots: Path) -> tuple[int, list[Violation]]:
    response = page.goto(url)
    status = response.status if response is not None else 0
    page.wait_for_load_state("load")
    _shot(page, shots, label)
    return status, serious(violations(page, label))


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """Like conftest's ``page``, but axe's script may be injected past the portal's
    Content-Security-Policy (``script-src 'self'``); the pages' own behaviour is unchanged."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, bypass_csp=True)
    context.set_default_timeout(10_000)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture
def shots(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "screenshots"
    directory.mkdir()
    yield directory


def test_the_signed_out_pages_have_no_serious_violations(
    page: Page, live_server: LiveServer, shots: Path
) -> None:
    found: list[Violation] = []
    for path, expected in (("/login", 200), ("/no-such-page", 404)):
        status, problems = _check(page, f"{live_server.url}{path}", f"anonymous {path}", shots)
        assert status == expected, f"{path} answered {status}"
        found += problems
    assert len(list(shots.glob("*.png"))) == 2
    assert not found, "serious accessibility violations:\n" + describe(found)


@pytest.mark.parametrize("username", ROLES)
def test_every_page_a_role_reaches_has_no_serious_violations(
    page: Page,
    live_server: LiveServer,
    app_routes: tuple[list[Route], DemoIds],
    shots: Path,
    username: str,
) -> None:
    routes, ids = app_routes
    sign_in(page, live_server, username)
    page.wait_for_url(f"{live_server.url}/")
    found: list[Violation] = []
    reached, refused = [], []
    for route in routes:
        if route.endpoint == "auth.login":
            continue  # signed in, /login is the home page again
        for path in ids.fill(route):
            status, problems = _check(page, f"{live_server.url}{path}", f"{username} {path}", shots)
            assert status < 500, f"{path} answered {status} for {username}"
            (reached if status == 200 else refused).append(path)
            found += problems
    # The error page of a page this role may not reach, or of one that does not exist.
    status, problems = _check(
        page, f"{live_server.url}/no-such-page", f"{username} not found", shots
    )
    assert status == 404
    found += problems
    assert "/" in reached and "/inbox" in reached, reached
    assert len(list(shots.glob("*.png"))) == len(reached) + len(refused) + 1
    assert not found, f"serious accessibility violations for {username}:\n" + describe(found)


def test_the_check_reports_a_serious_violation_readably(page: Page) -> None:
    """The check itself can fail: a form field without a label and low-contrast text."""
    page.set_content(
        '<html lang="en"><head><title>t</title></head><body><main><h1>Form</h1>'
        '<input id="x"><p style="color:#ccc;background:#fff">faint</p></main></body></html>'
    )
    found = serious(violations(page, "a bad page"))
    rules = {v.rule for v in found}
    assert "label" in rules and "color-contrast" in rules, rules
    text = describe(found)
    assert "- label (critical) on a bad page at #x:" in text, text
