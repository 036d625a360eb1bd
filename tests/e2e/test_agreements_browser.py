"""The steward's agreement flow in a real headless Chromium against ``cleanroom serve``:
create an agreement, both parties' admins sign, the researcher gains access, the steward
suspends it, and the access is gone on the researcher's next request."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, Page, expect

from tests.e2e.a11y import describe, serious, violations
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
    # bypass_csp: axe-core is injected as a script the hub's policy would refuse.
    context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
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
        expect(page.get_by_role("status")).to_contain_text(f"You signed agreement {SLUG}")
        expect(page.get_by_test_id("sign-box")).to_have_count(0)
        expect(page.get_by_test_id("state")).to_have_text(then)


def test_create_sign_access_suspend(browser: Browser, live_server: LiveServer) -> None:
    with signed_in(browser, live_server, "steward") as steward:
        steward.locator("header nav").get_by_role("link", name="All agreements").click()
        expect(steward.get_by_role("heading", level=1)).to_have_text("Agreements")
        steward.get_by_text("Advanced: write the agreement as text (YAML)").click()
        steward.fill("#terms", TERMS)
        steward.get_by_role("button", name="Create draft from the text").click()
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
            steward.get_by_role("link", name="Suspend…").click()
            expect(steward.get_by_test_id("confirm")).to_contain_text("loses access")
            steward.get_by_role("button", name="Suspend").click()
            expect(steward.get_by_role("status")).to_contain_text("is now suspended")
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


# The first hour of the steward and a contributor admin, written for people (issue 16) -------

FORM_SLUG = "e2e-form"
CLI_HINT = re.compile(r"cleanroom (agreement|institution|user|audit|synth)\b")


def _reads_like_a_page(page: Page, shots: Path, name: str) -> None:
    """What a person sees: no traceback, no raw JSON or Python dict outside a collapsed
    technical detail, no command-line hint; and a screenshot for review."""
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    text = page.locator("main").inner_text()  # collapsed <details> bodies are not rendered
    assert "Traceback" not in text, name
    assert not CLI_HINT.search(text), (name, CLI_HINT.search(text))
    assert not re.search(r"\{['\"][a-z_]+['\"]:", text), (name, text[:2000])
    found = serious(violations(page, name))  # axe-core: labels, headings, contrast
    assert not found, describe(found)


def test_steward_writes_an_agreement_with_the_form_and_reads_it_in_words(
    browser: Browser, live_server: LiveServer, tmp_path: Path
) -> None:
    with signed_in(browser, live_server, "steward") as steward:
        steward.locator("header nav").get_by_role("link", name="All agreements").click()
        steward.select_option("#template", "process_comparability")
        steward.get_by_role("button", name="Fill the form from it").click()
        expect(steward.get_by_test_id("template-note")).to_be_visible()
        _reads_like_a_page(steward, tmp_path, "steward-agreement-form")
        form = steward.get_by_test_id("agreement-form")
        form.locator("#f-id").fill(FORM_SLUG)
        form.locator("#f-title").fill("Form-written comparability study")
        form.get_by_label("Northbridge Cell Therapies contributes data").check()
        form.get_by_label("Kelvin Institute for Regenerative Medicine contributes data").check()
        form.get_by_label("Kelvin Institute for Regenerative Medicine receives results").check()
        form.locator('input[name="researchers"][value="researcher"]').check()
        form.locator("#f-k").fill("3")  # below the hub's floor: refused beside the field
        form.get_by_role("button", name="Create draft").click()
        expect(steward.get_by_test_id("form-problems")).to_be_visible()
        expect(steward.locator("#err-disclosure-k")).to_contain_text("floor is 10")
        expect(steward.locator("#f-title")).to_have_value("Form-written comparability study")
        _reads_like_a_page(steward, tmp_path, "steward-agreement-form-error")
        steward.locator("#f-k").fill("10")
        steward.get_by_test_id("agreement-form").get_by_role("button", name="Create draft").click()
        expect(steward).to_have_url(f"{live_server.url}/admin/agreements/{FORM_SLUG}")
        expect(steward.get_by_test_id("state")).to_have_text("draft")
        expect(steward.get_by_test_id("policy-words")).to_contain_text("Kiri Tane")
        _reads_like_a_page(steward, tmp_path, "steward-agreement-draft")

        # A second draft, deleted after a confirmation.
        steward.goto(f"{live_server.url}/admin/agreements")
        steward.get_by_text("Advanced: write the agreement as text (YAML)").click()
        steward.fill("#terms", TERMS.replace(SLUG, "e2e-throwaway"))
        steward.get_by_role("button", name="Create draft from the text").click()
        steward.get_by_role("link", name="Delete draft…").click()
        expect(steward.get_by_test_id("confirm")).to_contain_text("never sent for signatures")
        _reads_like_a_page(steward, tmp_path, "steward-confirm-delete")
        steward.get_by_role("button", name="Delete the draft").click()
        expect(steward.get_by_role("status")).to_contain_text(
            "Draft agreement e2e-throwaway deleted"
        )
        expect(steward.locator('tr[data-agreement="e2e-throwaway"]')).to_have_count(0)

        # The form's draft goes out; the policy of the active demo agreement reads in words.
        steward.goto(f"{live_server.url}/admin/agreements/{FORM_SLUG}")
        steward.get_by_role("button", name="Send for signatures").click()
        expect(steward.get_by_test_id("state")).to_have_text("awaiting signatures")
        steward.goto(f"{live_server.url}/admin/agreements/demo-mfp")
        words = steward.get_by_test_id("policy-words")
        expect(words).to_contain_text("Rosa Ibarra")
        expect(words).to_contain_text(re.compile(r"may query[^.]*batch"))
        expect(steward.get_by_test_id("rules")).not_to_be_visible()  # raw rules: collapsed
        _reads_like_a_page(steward, tmp_path, "steward-agreement-policy")
        steward.goto(f"{live_server.url}/admin/access?user=researcher")
        expect(steward.get_by_test_id("reach-words")).to_contain_text(
            "Rosa Ibarra (researcher) may"
        )
        _reads_like_a_page(steward, tmp_path, "steward-access")

        # The ledger: an entry in words, its JSON only in the technical detail.
        steward.goto(f"{live_server.url}/admin/audit?action=agreement.delete")
        steward.get_by_role("link", name="details").first.click()
        expect(steward.get_by_test_id("entry-sentence")).to_contain_text(
            "deleted the draft agreement"
        )
        expect(steward.get_by_test_id("chain")).to_contain_text("matches entry")
        expect(steward.get_by_test_id("raw-detail")).not_to_be_visible()
        _reads_like_a_page(steward, tmp_path, "steward-ledger-entry")
        steward.goto(f"{live_server.url}/admin/users")
        _reads_like_a_page(steward, tmp_path, "steward-users")

    # The contributor admin: prompted, signs, the box gives way to who signed when.
    with signed_in(browser, live_server, "northbridge-admin") as admin:
        admin.locator("header nav").get_by_role("link", name="Agreements", exact=True).click()
        prompt = admin.get_by_test_id("awaiting-signature")
        expect(prompt).to_contain_text("Form-written comparability study")
        _reads_like_a_page(admin, tmp_path, "admin-agreements-prompt")
        prompt.get_by_role("link", name="Form-written comparability study").click()
        admin.get_by_test_id("sign-box").get_by_role("button", name="Sign agreement").click()
        expect(admin.get_by_test_id("sign-box")).to_have_count(0)
        expect(admin.get_by_test_id("signed")).to_contain_text(
            re.compile(r"Signed by you on \d{4}-")
        )
        _reads_like_a_page(admin, tmp_path, "admin-signed")
        admin.goto(f"{live_server.url}/agreements")
        expect(admin.get_by_test_id("awaiting-signature")).to_have_count(0)


def test_transparency_log_reads_in_words(
    browser: Browser, live_server: LiveServer, tmp_path: Path
) -> None:
    token = (live_server.data_dir / "demo-researcher-token").read_text().strip()
    asked = requests.post(
        f"{live_server.url}/api/v1/sandbox/query",
        json={
            "agreement": "demo-mfp",
            "sql": "SELECT platform, COUNT(*) AS n FROM batch GROUP BY platform",
        },
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    assert asked.status_code == 200, asked.text
    withheld = len(asked.json()["suppressed"])
    with signed_in(browser, live_server, "northbridge-admin") as admin:
        admin.locator("header nav").get_by_role("link", name="Our data in use").click()
        row = (
            admin.get_by_test_id("activity")
            .get_by_role("row")
            .filter(has_text="FROM batch GROUP BY platform")
            .first
        )
        expect(row).to_contain_text("Query")
        expect(row).to_contain_text("batch")
        expect(row).to_contain_text(re.compile(r"demo|Manufacturing", re.I))
        # "1 cell withheld: …" or "2 cells withheld: …", as the noise falls.
        expect(row).to_contain_text(
            re.compile(r"\d+ cells? withheld: fewer than") if withheld else "nothing"
        )
        _reads_like_a_page(admin, tmp_path, "admin-transparency")
