"""A site's own terms for category values, in a real headless Chromium against
``cleanroom up``: proposed below the column mapping, a new term must be chosen (the browser
will not submit without it), confirmed terms are remembered and can be forgotten."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.e2e.a11y import describe, serious, violations
from tests.e2e.conftest import ConsoleProblems, LiveServer, sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

JOB_TIMEOUT_MS = 30_000
PRODUCTS = ["Kymriah", "Yescarta", "Breyanzi", "Flux-cel"]
SITE_CSV = "Patient ID,Site,Product Class,Product,Indication,Sex,Age\n" + "".join(
    f"COI-TRM-{i:04d},St Aurelia,autologous_car_t,{PRODUCTS[i % 4]},LBCL,"
    f"{'F' if i % 2 else 'M'},{50 + i % 3}\n"
    for i in range(40)
)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page whose CSP lets axe-core be injected (the accessibility check below)."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, bypass_csp=True)
    context.set_default_timeout(10_000)
    try:
        yield context.new_page()
    finally:
        context.close()


def test_contributor_confirms_terms_and_forgets_one(
    page: Page, live_server: LiveServer, console_problems: ConsoleProblems, tmp_path: Path
) -> None:
    sign_in(page, live_server, "aurelia-data")
    page.goto(f"{live_server.url}/datasets")
    upload = tmp_path / "site-terms.csv"
    upload.write_text(SITE_CSV, encoding="utf-8")
    page.select_option("#table", "episode")
    page.set_input_files("#file", upload)
    page.get_by_test_id("additional-rows").check()
    page.get_by_role("button", name="Upload").click()
    expect(page).to_have_url(re.compile(r"/datasets/\d+$"))
    version_url = page.url
    expect(page.get_by_test_id("state")).to_have_text("awaiting mapping", timeout=JOB_TIMEOUT_MS)

    product = page.get_by_test_id("terms-product")
    expect(product).to_be_visible()
    kymriah = product.locator("tr", has_text="Kymriah")
    expect(kymriah).to_contain_text("proposed")
    expect(kymriah.locator("select")).to_have_value("tisa-cel")
    new = page.get_by_label("what Flux-cel means")
    expect(new).to_have_value("")
    expect(page.get_by_test_id("terms-sex")).to_contain_text("HL7 FHIR AdministrativeGender")
    found = serious(violations(page, "mapping with terms"))
    assert not found, describe(found)

    # The new term left unchosen: the browser refuses to submit, nothing is queued.
    page.get_by_role("button", name="Confirm mapping and validate").click()
    assert new.evaluate("el => el.validity.valueMissing") is True
    expect(page.get_by_test_id("state")).to_have_text("awaiting mapping")

    new.select_option("academic")
    page.get_by_role("button", name="Confirm mapping and validate").click()
    expect(page.get_by_test_id("state")).to_have_text(
        re.compile("processing|awaiting review"), timeout=JOB_TIMEOUT_MS
    )

    page.goto(f"{live_server.url}/datasets")
    page.get_by_test_id("terms-link").click()
    remembered = page.get_by_test_id("remembered-terms")
    row = remembered.locator("tr", has_text="Flux-cel")
    expect(row).to_contain_text("academic")
    expect(remembered.locator("tr", has_text="Kymriah")).to_contain_text("Tisagenlecleucel")
    row.get_by_role("button", name="forget Flux-cel").click()
    expect(page.locator(".flash, [role=status], .callout").first).to_contain_text("Flux-cel")
    expect(page.get_by_test_id("remembered-terms")).not_to_contain_text("Flux-cel")

    # Leave the demo as it was: discard the upload.
    page.goto(version_url)
    expect(page.get_by_test_id("state")).to_have_text("awaiting review", timeout=JOB_TIMEOUT_MS)
    page.get_by_test_id("confirm-discard").check()
    page.get_by_role("button", name="Discard this upload").click()
    expect(page.get_by_test_id("state")).to_have_text("rejected")
    assert not console_problems, console_problems
