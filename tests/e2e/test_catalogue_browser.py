"""The data catalogue in a real headless Chromium against the demo consortium: what the
researcher and a contributor see of tables, columns and their agreements. Each page is
screenshotted into the test's tmp directory for review."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import ConsoleProblems, LiveServer, sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

TABLES = (
    "episode",
    "collection",
    "custody_event",
    "batch",
    "release_test",
    "deviation",
    "administration",
)
DEMO_AGREEMENTS = {"demo-mfp", "demo-v2v", "demo-pc"}
ROUNDED = re.compile(r"^(about \d[\d,]*0|fewer than 10|none yet)$")
# What must never reach a person's page: tracebacks, Python or JSON dumps, CLI hints.
LEAKS = ("Traceback", "{'", '{"', "None", "cleanroom ", "`")


def _shoot(page: Page, directory: Path, name: str) -> None:
    directory.mkdir(exist_ok=True)
    path = directory / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _no_leaks(page: Page) -> None:
    text = page.locator("main").inner_text()
    for leak in LEAKS:
        assert leak not in text, leak


def _open_catalogue(page: Page) -> None:
    page.locator("header nav").get_by_role("link", name="Data catalogue").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Data catalogue")
    # The page's own stylesheet loaded (a CSP or path problem would leave it unstyled).
    legend = page.locator("dl.catalogue-legend")
    assert legend.evaluate("e => getComputedStyle(e).display") == "grid"


def test_researcher_reads_tables_columns_and_her_agreements(
    page: Page, live_server: LiveServer, tmp_path: Path, console_problems: ConsoleProblems
) -> None:
    shots = tmp_path / "screenshots"
    sign_in(page, live_server, "researcher")
    expect(page.get_by_role("heading", level=1)).to_have_text("Welcome, Rosa Ibarra")
    _open_catalogue(page)

    rows = page.get_by_test_id("catalogue-tables").locator("tbody tr")
    expect(rows).to_have_count(len(TABLES))
    assert [rows.nth(i).get_attribute("data-table") for i in range(len(TABLES))] == list(TABLES)
    expect(rows.filter(has_text="one row per manufacturing lot")).to_have_count(1)
    expect(page.get_by_test_id("protection-legend")).to_contain_text("pseudonymised key")

    cards = page.get_by_test_id("catalogue-agreements").locator("article")
    expect(cards).to_have_count(len(DEMO_AGREEMENTS))
    assert {cards.nth(i).get_attribute("data-agreement") for i in range(3)} == DEMO_AGREEMENTS
    for i in range(3):
        patients = cards.nth(i).get_by_test_id("patients").inner_text().strip()
        assert ROUNDED.match(patients), patients
        assert patients.startswith("about ")  # the demo pools hundreds of patients
        expect(cards.nth(i).get_by_test_id("contributors")).to_contain_text(
            "Northbridge Cell Therapies"
        )
    _no_leaks(page)
    _shoot(page, shots, "researcher-catalogue")

    page.get_by_test_id("catalogue-tables").get_by_role("link", name="batch").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Table batch")
    viability = page.locator("tr[data-column=viability]")
    expect(viability).to_contain_text("per cent")
    expect(viability).to_contain_text("safe")
    coi = page.locator("tr[data-column=coi_id]")
    expect(coi).to_contain_text("pseudonymised key")
    expect(coi.get_by_role("link", name="episode")).to_be_visible()
    released_by = page.locator("tr[data-column=released_by]")
    expect(released_by).to_contain_text("direct identifier")
    expect(page.get_by_test_id("protection-legend")).to_contain_text("never reaches the pool")
    # Which of her agreements cover each column.
    expect(viability.get_by_role("link", name="demo-pc")).to_be_visible()
    expect(released_by).to_contain_text("none")
    _no_leaks(page)
    _shoot(page, shots, "researcher-table-batch")

    page.goto(f"{live_server.url}/catalogue/agreements/demo-pc")
    expect(page.get_by_role("heading", level=1)).to_contain_text("process comparability")
    assert ROUNDED.match(page.get_by_test_id("patients").inner_text().split("\n")[0].split(" (")[0])
    batch = page.locator("section[data-table=batch]")
    expect(batch.locator("tr[data-column=viability]")).to_contain_text("covered")
    expect(batch.locator("tr[data-column=released_by]")).to_contain_text("never shared")
    expect(page.get_by_test_id("not-covered")).to_contain_text("episode")
    expect(
        page.get_by_role("link", name="The agreement’s terms and disclosure rules")
    ).to_be_visible()
    _no_leaks(page)
    _shoot(page, shots, "researcher-agreement")

    assert console_problems == []

    # A mistyped table: a plain 404 page naming the tables there are (Chromium logs the 404).
    missing = page.goto(f"{live_server.url}/catalogue/batches")
    assert missing is not None and missing.status == 404
    expect(page.locator("main")).to_contain_text("its tables are: episode")


def test_contributor_sees_the_agreements_its_institution_is_party_to(
    page: Page, live_server: LiveServer, tmp_path: Path, console_problems: ConsoleProblems
) -> None:
    shots = tmp_path / "screenshots"
    sign_in(page, live_server, "northbridge-data")
    expect(page.get_by_role("heading", level=1)).to_have_text("Welcome, Nils Berg")
    _open_catalogue(page)

    # Every agreement Northbridge is party to, in any state: the demo's three, and any
    # draft other tests of the session's shared server wrote with Northbridge in it.
    cards = page.get_by_test_id("catalogue-agreements").locator("article")
    expect(cards.first).to_be_visible()
    shown = {cards.nth(i).get_attribute("data-agreement") for i in range(cards.count())}
    assert shown >= DEMO_AGREEMENTS, shown
    for slug in DEMO_AGREEMENTS:
        card = page.locator(f"article[data-agreement={slug}]")
        assert ROUNDED.match(card.get_by_test_id("patients").inner_text().strip())
    _no_leaks(page)
    _shoot(page, shots, "contributor-catalogue")

    page.get_by_test_id("catalogue-tables").get_by_role("link", name="episode").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Table episode")
    age = page.locator("tr[data-column=age]")
    expect(age).to_contain_text("0 to 120 years")
    expect(age).to_contain_text("indirect identifier")
    expect(page.locator("tr[data-column=sex]")).to_contain_text("female")
    expect(page.locator("tr[data-column=mrn]")).to_contain_text("direct identifier")
    _no_leaks(page)
    _shoot(page, shots, "contributor-table-episode")

    cards_link = "/catalogue/agreements/demo-v2v"
    page.goto(f"{live_server.url}{cards_link}")
    expect(page.get_by_test_id("contributors")).to_contain_text("Northbridge Cell Therapies")
    # A contributor (not its admin) does not read the terms themselves: no dead link.
    expect(
        page.get_by_role("link", name="The agreement’s terms and disclosure rules")
    ).to_have_count(0)
    _no_leaks(page)
    _shoot(page, shots, "contributor-agreement")
    assert console_problems == []
