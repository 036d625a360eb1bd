"""Each role's home page in a real headless Chromium: what waits for me, as links, and the
sign-in page that says what Cleanroom is and where the demo's logins are."""

from __future__ import annotations

import re
import textwrap

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import LiveServer, sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

SLUG = "e2e-home-inbox"
TERMS = textwrap.dedent(f"""\
    id: {SLUG}
    title: Home page inbox test
    purpose:
      code: process_comparability
      text: Compare release testing between a manufacturer and an institute.
    parties:
      - institution: northbridge-cell
        roles: [contributor]
      - institution: kelvin-institute
        roles: [contributor, recipient]
    tables:
      batch: [lot_id, viability]
    researchers: [researcher]
    valid_from: 2020-01-01
    valid_until: 2099-12-31
    """)


def _no_developer_text(page: Page) -> None:
    body = page.locator("main").inner_text()
    for needle in ("Traceback", '{"', "{'", "`cleanroom "):
        assert needle not in body, f"{needle!r} on {page.url}:\n{body}"


def _awaiting_signatures(server: LiveServer) -> None:
    """The steward's draft sent for signatures (through the services, as the portal does)."""
    from hub import create_app
    from hub.agreements import services
    from hub.agreements.models import AgreementRecord
    from hub.db import get_database

    app = create_app({"data_dir": str(server.data_dir)})
    with get_database(app).session() as s:
        if s.query(AgreementRecord).filter_by(slug=SLUG).first() is None:
            stored = services.create(s, TERMS, actor="user:steward")
            services.transition(s, stored, "submit", actor="user:steward")


def test_the_sign_in_page_says_what_cleanroom_is(page: Page, live_server: LiveServer) -> None:
    page.goto(f"{live_server.url}/login")
    expect(page.get_by_test_id("what-is-cleanroom")).to_contain_text("Cleanroom pools")
    expect(page.get_by_test_id("get-account")).to_contain_text("steward")
    hint = page.get_by_test_id("demo-logins")
    expect(hint).to_contain_text("demo-logins.json in the data directory")
    assert str(live_server.data_dir) not in page.content()


def test_a_researcher_with_nothing_waiting_is_told_so(page: Page, live_server: LiveServer) -> None:
    sign_in(page, live_server, "researcher")
    expect(page).to_have_url(f"{live_server.url}/")
    waiting = page.get_by_test_id("waiting")
    expect(waiting.get_by_role("heading", name="Waiting for you")).to_be_visible()
    expect(page.get_by_test_id("nothing-waits")).to_have_text("Nothing waits for you.")
    expect(waiting).to_contain_text("You have not asked for a release yet.")
    # A researcher is asked nothing of a data manager or a steward.
    expect(waiting).not_to_contain_text("Uploads awaiting you")
    expect(waiting).not_to_contain_text("Failed jobs")
    expect(waiting.get_by_role("link", name=re.compile("inbox"))).to_have_attribute(
        "href", "/inbox"
    )
    _no_developer_text(page)


def test_a_data_manager_sees_their_finished_jobs_as_links(
    page: Page, live_server: LiveServer
) -> None:
    sign_in(page, live_server, "kelvin-data")
    waiting = page.get_by_test_id("waiting")
    expect(waiting.get_by_role("heading", name="Uploads awaiting you")).to_be_visible()
    # The seed's uploads were this user's: their jobs finished minutes ago.
    job = waiting.get_by_role("link", name=re.compile(r"^Job \d+: "))
    expect(job.first).to_be_visible()
    job.first.click()
    expect(page).to_have_url(re.compile(r"/datasets/\d+$"))
    _no_developer_text(page)


def test_an_admin_is_asked_to_sign_and_the_steward_sees_it_pending(
    page: Page, live_server: LiveServer
) -> None:
    _awaiting_signatures(live_server)

    sign_in(page, live_server, "northbridge-admin")
    waiting = page.get_by_test_id("waiting")
    link = waiting.get_by_role("link", name="Agreement “Home page inbox test”")
    expect(link).to_be_visible()
    expect(page.get_by_test_id("nothing-waits")).to_have_count(0)
    link.click()
    expect(page).to_have_url(f"{live_server.url}/agreements/{SLUG}")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Home page inbox test")

    page.context.clear_cookies()
    sign_in(page, live_server, "aurelia-admin")  # not a party: nothing to sign
    expect(page.get_by_test_id("waiting")).not_to_contain_text("Home page inbox test")

    page.context.clear_cookies()
    sign_in(page, live_server, "steward")
    pending = page.get_by_test_id("waiting").get_by_role(
        "link", name="Agreement “Home page inbox test”"
    )
    expect(pending).to_have_attribute("href", f"/admin/agreements/{SLUG}")
    expect(page.get_by_test_id("waiting")).to_contain_text("awaiting signatures")
    _no_developer_text(page)
