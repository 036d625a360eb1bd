"""The steward's agreement flow in a real headless Chromium against ``cleanroom serve``:
create an agreement, both parties' admins sign, the researcher gains access, the steward
suspends it, and the access is gone on the researcher's next request."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.e2e.conftest import LiveServer, sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

SLUG = "e2e-steward-flow"
TERMS = textwrap.dedent(f"""\
    id: {SLUG}
    title: Browser test of the steward flow
    purpose:
      code: process_comparability
      text: Compare release testing between a manufacturer and an institute.
    parties:
      - institution: northbridge-cell
        roles: [contributor]
      - institution: kelvin-institute
        roles: [contributor, recipient]
    tables:
      release_test: all
      batch: [lot_id, viability]
    researchers: [researcher]
    valid_from: 2020-01-01
    valid_until: 2099-12-31
    """)


@contextmanager
def signed_in(browser: Browser, server: LiveServer, username: str) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    page = context.new_page()
    try:
        sign_in(page, server, username)
        expect(page).to_have_url(f"{server.url}/")
        yield page
    finally:
        context.close()


def _row(page: Page):  # noqa: ANN202 - a Playwright locator
    return page.locator(f'tr[data-agreement="{SLUG}"]')


def _sign(browser: Browser, server: LiveServer, admin: str, then: str) -> None:
    with signed_in(browser, server, admin) as page:
        page.locator("header nav").get_by_role("link", name="Agreements", exact=True).click()
        row = _row(page)
        expect(row).to_contain_text("awaiting your signature")
        row.get_by_role("link", name=SLUG).click()
        expect(page.get_by_test_id("state")).to_have_text("awaiting signatures")
        page.get_by_role("button", name="Sign agreement").click()
        expect(page.get_by_role("status")).to_contain_text(f"Signed agreement {SLUG}.")
        expect(page.get_by_test_id("state")).to_have_text(then)


def test_create_sign_access_suspend(browser: Browser, live_server: LiveServer) -> None:
    with signed_in(browser, live_server, "steward") as steward:
        steward.locator("header nav").get_by_role("link", name="All agreements").click()
        expect(steward.get_by_role("heading", level=1)).to_have_text("Agreements")
        steward.fill("#terms", TERMS)
        steward.get_by_role("button", name="Create draft").click()
        expect(steward).to_have_url(f"{live_server.url}/admin/agreements/{SLUG}")
        expect(steward.get_by_test_id("state")).to_have_text("draft")
        steward.get_by_role("button", name="Send for signatures").click()
        expect(steward.get_by_test_id("state")).to_have_text("awaiting signatures")

    with signed_in(browser, live_server, "researcher") as researcher:
        researcher.goto(f"{live_server.url}/agreements")
        expect(_row(researcher)).to_have_count(0)
        denied = researcher.goto(f"{live_server.url}/agreements/{SLUG}")
        assert denied is not None and denied.status == 403

    _sign(browser, live_server, "northbridge-admin", then="awaiting signatures")
    _sign(browser, live_server, "kelvin-admin", then="active")

    with signed_in(browser, live_server, "researcher") as researcher:
        researcher.locator("header nav").get_by_role("link", name="Agreements", exact=True).click()
        expect(_row(researcher)).to_contain_text("active")
        _row(researcher).get_by_role("link", name=SLUG).click()
        expect(researcher.get_by_test_id("state")).to_have_text("active")
        expect(researcher.get_by_test_id("tables")).to_contain_text("release_test")

        with signed_in(browser, live_server, "steward") as steward:
            steward.goto(f"{live_server.url}/admin/agreements/{SLUG}")
            steward.get_by_role("button", name="Suspend").click()
            expect(steward.get_by_role("status")).to_contain_text("it is now suspended")
            expect(steward.get_by_test_id("state")).to_have_text("suspended")
            steward.goto(f"{live_server.url}/admin/audit?target=agreement:{SLUG}")
            ledger = steward.locator("table.ledger")
            for action in (
                "agreement.create",
                "agreement.sign",
                "agreement.activate",
                "agreement.suspend",
            ):
                expect(ledger).to_contain_text(action)

        # The researcher's still-open session: the very next request is refused.
        gone = researcher.goto(f"{live_server.url}/agreements/{SLUG}")
        assert gone is not None and gone.status == 403
        expect(researcher.locator("main")).to_contain_text(re.compile("may not read"))
        researcher.goto(f"{live_server.url}/agreements")
        expect(_row(researcher)).to_have_count(0)
