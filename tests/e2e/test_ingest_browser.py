"""The contributor's ingest journey in a real headless Chromium against ``cleanroom up``.

Upload through the real file input → live progress → mapping form → validation and
de-identification review → report downloads → release → withdrawal; what other users may
not see; a binary file posing as CSV. The jobs run on the embedded worker thread of
``cleanroom up``, so every wait is on what the page shows (no sleeps).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from tests.e2e.conftest import ConsoleProblems, LiveServer, demo_server, sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

# Waits on the background worker (profiling, validation) get more than the 10 s default.
JOB_TIMEOUT_MS = 30_000

FORMULA = '=HYPERLINK("http://x")'
# EPISODE_CSV of tests/unit/hub/test_ingest.py with its own chain-of-identity ids (the demo
# data of every institution uses COI-<facility>-<yy>-<seq>): a BOM, `;` as the delimiter,
# two direct identifiers (name, MRN), and one broken row (file row 5): age 130 is out of
# range and its indication is a formula-looking cell, so both the report and the held-back
# rows have a cell that a spreadsheet would run unless it is neutralised.
EPISODE_CSV = (
    "\ufeffPatient ID;Site;Product Class;Indication;Age;Sex;Patient Name;MRN;Weight (kg)\n"
    "COI-E2E-0001;Kelvin Clinic;autologous_car_t;LBCL;54;female;Jane Doe;MRN123456;71.5\n"
    "COI-E2E-0002;Kelvin Clinic;autologous_car_t;ALL;23;male;John Roe;MRN654321;80\n"
    "COI-E2E-0003;Kelvin Clinic;autologous_car_t;MM;67;female;Ann Poe;MRN111111;64\n"
    f"COI-E2E-0004;Kelvin Clinic;autologous_car_t;{FORMULA};130;male;Bob Loe;MRN222222;90\n"
    # Look-alike episodes, so that k-anonymity (k=5) keeps rows to release.
    + "".join(
        f"COI-E2E-{i:04d};Kelvin Clinic;autologous_car_t;LBCL;{50 + i % 5};"
        f"{'female' if i % 2 else 'male'};Pat Person{i};MRN{700000 + i};{70 + i % 3}\n"
        for i in range(5, 25)
    )
)
FORMULA_STARTS = ("=", "+", "@")

BINARY_FILES = {
    "png": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06",
    "pdf": b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
}


@pytest.fixture
def other_page(browser: Browser) -> Iterator[Page]:
    """A second, independent browser context (another user's session)."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(10_000)
    try:
        yield context.new_page()
    finally:
        context.close()


def _shoot(page: Page, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 0
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return shot


def _download(page: Page, link: Locator) -> tuple[str, list[list[str]]]:
    with page.expect_download() as info:
        link.click()
    download = info.value
    assert download.failure() is None
    text = Path(download.path()).read_text(encoding="utf-8")
    return download.suggested_filename, list(csv.reader(io.StringIO(text)))


def _signed_in(page: Page, server: LiveServer, username: str, name: str) -> None:
    sign_in(page, server, username)
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Welcome, {name}")


def _version_rows(page: Page) -> Locator:
    return page.locator("main table tbody tr")


def test_contributor_uploads_maps_reviews_releases_and_withdraws(
    page: Page,
    other_page: Page,
    live_server: LiveServer,
    console_problems: ConsoleProblems,
    tmp_path: Path,
) -> None:
    _signed_in(page, live_server, "kelvin-data", "Lena Fischer")
    page.locator("header nav").get_by_role("link", name="Datasets").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Datasets")

    # The seeded demo data: every table of the institution is already in the pool.
    tables = page.locator("#table option").all_inner_texts()
    assert "episode" in tables and len(tables) == 7, tables
    rows = _version_rows(page)
    for table in tables:
        seeded = rows.filter(has=page.get_by_role("cell", name=table, exact=True))
        expect(seeded.filter(has_text="released").first).to_be_visible()

    # Upload through the real file input.
    upload = tmp_path / "episodes-e2e.csv"
    upload.write_bytes(EPISODE_CSV.encode("utf-8"))
    page.select_option("#table", "episode")
    page.set_input_files("#file", upload)
    # Additional rows: the seeded episode table of the institution stays (other tests of
    # the session read it); test_second_version_replaces_the_first covers replacing.
    page.get_by_test_id("additional-rows").check()
    page.get_by_role("button", name="Upload").click()

    expect(page).to_have_url(re.compile(r"/datasets/\d+$"))
    version_id = int(page.url.rsplit("/", 1)[1])
    version_url = page.url
    expect(page.get_by_role("heading", level=1)).to_contain_text(
        re.compile(r"^episode · version \d+")
    )
    expect(page.locator("dl.facts")).to_contain_text("episodes-e2e.csv (csv,")
    # Either the job is still running (a live progress bar) or it has already finished.
    state = page.get_by_test_id("state")
    mapping = page.get_by_test_id("mapping")
    expect(page.get_by_test_id("progress").or_(mapping)).to_be_visible()
    # One snapshot of the page (progress.js may reload it at any moment).
    landed = page.evaluate(
        """() => {
            const bar = document.querySelector('[data-testid=progress]');
            return {
                state: document.querySelector('[data-testid=state]').textContent.trim(),
                bar: bar && { max: bar.max, value: bar.value },
                script: !!document.querySelector('script[src$="/progress.js"]'),
            };
        }"""
    )
    if landed["state"] in ("uploaded", "profiling"):
        assert landed["bar"] is not None and landed["bar"]["max"] == 100, landed
        assert 0 <= landed["bar"]["value"] <= 100 and landed["script"], landed
    else:
        assert landed["state"] == "awaiting mapping" and landed["bar"] is None, landed

    # progress.js reloads the page when profiling is done: the mapping form appears.
    expect(state).to_have_text("awaiting mapping", timeout=JOB_TIMEOUT_MS)
    expect(mapping).to_be_visible()
    assert page.url == version_url
    expect(mapping.locator("xpath=ancestor::section")).to_contain_text(
        "matched 9 of your 9 columns (24 rows)"
    )
    proposed = {
        "Patient ID": "coi_id",
        "Site": "site",
        "Indication": "indication",
        "Age": "age",
        "Patient Name": "patient_name",
        "MRN": "mrn",
        "Weight (kg)": "weight_kg",
    }
    for source, target in proposed.items():
        expect(mapping.locator(f'select[name="target::{source}"]')).to_have_value(target)
    expect(mapping.locator('input[name="unit::Weight (kg)"]')).to_have_value("kg")
    _shoot(page, tmp_path, "ingest-mapping.png")

    # The contributor decides the weight column is not to be used.
    page.get_by_label("target for Weight (kg)").select_option(label="— not used —")
    expect(mapping.locator('select[name="target::Weight (kg)"]')).to_have_value("")
    # The formula-looking indication is not a value of the list: asked about, never
    # guessed; the contributor holds its row back (validation then lists it).
    formula_term = page.get_by_label(f"what {FORMULA} means")
    expect(formula_term).to_have_value("")
    expect(page.get_by_test_id("terms-indication")).to_contain_text("new to your institution")
    formula_term.select_option(label="Hold these rows back")
    page.get_by_role("button", name="Confirm mapping and validate").click()

    expect(state).to_have_text("awaiting review", timeout=JOB_TIMEOUT_MS)
    summary = page.get_by_test_id("validation-summary")
    expect(summary).to_have_text(re.compile(r"^\s*24\s*rows\s*23\s*valid\s*1\s*held back\s*$"))
    validation_rows = page.locator("section.card", has=summary).locator("tbody tr")
    weight = validation_rows.filter(has=page.locator("code", has_text=re.compile("^weight_kg$")))
    expect(weight).to_have_count(0)  # the confirmed choice was applied: no weight column
    age = validation_rows.filter(has=page.locator("code", has_text=re.compile("^age$")))
    expect(age).to_contain_text("above 120 years")

    deid = page.get_by_test_id("deid")
    expect(deid).to_be_visible()

    def deid_action(column: str) -> Locator:
        row = deid.locator("tbody tr").filter(
            has=page.locator("code", has_text=re.compile(f"^{column}$"))
        )
        return row.get_by_test_id("deid-action")

    expect(deid_action("patient_name")).to_have_text("drop")
    expect(deid_action("mrn")).to_have_text("drop")
    expect(deid_action("coi_id")).to_have_text(re.compile(r"^pseudonymise"))
    # Only the columns the file brought are listed (the weight column was not used).
    expect(deid.locator("code", has_text=re.compile("^weight_kg$"))).to_have_count(0)
    _shoot(page, tmp_path, "ingest-review.png")

    # The reports, downloaded through the links.
    name, report = _download(
        page, page.get_by_role("link", name="Download the validation report (CSV)")
    )
    assert name == f"episode-v{_version_number(page)}-report.csv"
    assert report[0] == ["row", "column", "source_column", "rule", "value", "message"]
    assert ["5", "age", "Age", "maximum", "130"] in [r[:5] for r in report]
    assert any(r[1] == "indication" and r[4] == "'" + FORMULA for r in report), report
    for row in report:
        for cell in row:
            assert not cell.startswith(FORMULA_STARTS), row

    name, held = _download(page, page.get_by_role("link", name="the held-back rows (CSV)"))
    assert name == f"episode-v{_version_number(page)}-held-back.csv"
    assert held[0][:3] == ["row", "problems", "Patient ID"]
    assert [r[0] for r in held[1:]] == ["5"]
    broken = dict(zip(held[0], held[1], strict=True))
    assert broken["Patient ID"] == "COI-E2E-0004"
    assert broken["Age"] == "130"
    assert broken["Indication"] == "'" + FORMULA  # formula-safe, still readable
    assert "above the maximum 120" in broken["problems"]
    for row in held:
        for cell in row:
            assert not cell.startswith(FORMULA_STARTS), row

    # The review: the summary, the evidence, and only stronger choices on offer.
    expect(page.get_by_test_id("deid-summary")).to_contain_text("k required")
    coi_choice = page.get_by_label("action for coi_id")
    expect(coi_choice.locator("option")).to_have_text(["pseudonymise", "drop"])
    # Strengthen one column: drop `sex`, and de-identify again.
    page.get_by_label("action for sex").select_option("drop")
    page.get_by_role("button", name="Strengthen and de-identify again").click()
    expect(page.get_by_role("status")).to_contain_text("De-identifying again")
    expect(state).to_have_text("awaiting review", timeout=JOB_TIMEOUT_MS)
    deid = page.get_by_test_id("deid")
    expect(deid_action("sex")).to_contain_text("drop")
    expect(deid_action("sex")).to_contain_text("your choice")

    # Release (the approval box must be ticked), then withdraw.
    release = page.get_by_role("button", name=re.compile(r"^Release \d+ rows to the pool$"))
    release.click()  # not ticked: the browser refuses to submit the form
    expect(state).to_have_text("awaiting review")
    page.get_by_test_id("approve").check()
    release.click()
    expect(state).to_have_text("released")
    expect(page.get_by_role("status")).to_contain_text("released to the pool")
    expect(page.locator("dl.facts")).to_contain_text("by kelvin-data")
    expect(page.get_by_role("button", name=re.compile("^Release"))).to_have_count(0)
    expect(page.get_by_role("button", name="Discard this upload")).to_have_count(0)

    page.get_by_role("button", name="Withdraw from the pool").click()
    expect(state).to_have_text("released")  # not confirmed: the browser refuses to submit
    page.get_by_test_id("confirm-withdraw").check()
    page.get_by_role("button", name="Withdraw from the pool").click()
    expect(state).to_have_text("withdrawn")
    expect(page.get_by_role("status")).to_contain_text("withdrawn from the pool")
    expect(page.get_by_role("button", name="Withdraw from the pool")).to_have_count(0)

    page.locator("header nav").get_by_role("link", name="Datasets").click()
    listed = _version_rows(page).filter(
        has=page.get_by_role("link", name=str(version_id), exact=True)
    )
    expect(listed).to_contain_text("episodes-e2e.csv")
    expect(listed).to_contain_text("withdrawn")

    # A contributor of another institution can neither open the version nor its reports.
    _signed_in(other_page, live_server, "aurelia-data", "Tom Achterberg")
    response = other_page.goto(version_url)
    assert response is not None and response.status == 403
    expect(other_page.get_by_role("heading", level=1)).to_contain_text("403")
    expect(other_page.get_by_test_id("state")).to_have_count(0)
    expect(other_page.get_by_text("episodes-e2e.csv")).to_have_count(0)
    for which in ("report", "held-back", "status"):
        suffix = "status.json" if which == "status" else f"{which}.csv"
        refused = other_page.request.get(f"{version_url}/{suffix}")
        assert refused.status == 403, (which, refused.status)
    other_page.goto(f"{live_server.url}/datasets")
    expect(other_page.get_by_role("heading", level=1)).to_have_text("Datasets")
    expect(other_page.get_by_role("link", name=str(version_id), exact=True)).to_have_count(0)

    assert console_problems == []


def _version_number(page: Page) -> int:
    heading = page.get_by_role("heading", level=1).inner_text()
    found = re.search(r"version (\d+)", heading)
    assert found, heading
    return int(found.group(1))


def test_researcher_has_no_datasets_page(
    page: Page, live_server: LiveServer, console_problems: ConsoleProblems
) -> None:
    _signed_in(page, live_server, "researcher", "Rosa Ibarra")
    nav = page.locator("header nav")
    expect(nav.get_by_role("link", name="API tokens")).to_be_visible()
    expect(nav.get_by_role("link", name="Datasets")).to_have_count(0)

    response = page.goto(f"{live_server.url}/datasets")
    assert response is not None and response.status == 403
    expect(page.get_by_role("heading", level=1)).to_contain_text("403")
    expect(page.locator("#file")).to_have_count(0)
    expect(page.get_by_role("table")).to_have_count(0)
    # Chromium logs the refused navigation itself; nothing else may be logged.
    assert [p for p in console_problems if "status of 403" not in p] == []
    assert len(console_problems) == 1


@pytest.mark.parametrize("kind", sorted(BINARY_FILES))
def test_binary_file_posing_as_csv_is_refused(
    page: Page,
    live_server: LiveServer,
    console_problems: ConsoleProblems,
    tmp_path: Path,
    kind: str,
) -> None:
    _signed_in(page, live_server, "kelvin-data", "Lena Fischer")
    page.goto(f"{live_server.url}/datasets")
    expect(page.get_by_role("heading", level=1)).to_have_text("Datasets")
    rows = _version_rows(page)
    expect(rows.first).to_be_visible()
    before = rows.count()

    fake = tmp_path / "fake.csv"
    fake.write_bytes(BINARY_FILES[kind])
    page.select_option("#table", "episode")
    page.set_input_files("#file", fake)
    page.get_by_role("button", name="Upload").click()

    expect(page).to_have_url(f"{live_server.url}/datasets")
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("'fake.csv' looks like a binary file")
    expect(alert).to_contain_text(f"a {kind.upper()}")
    expect(alert).to_contain_text("upload CSV, XLSX or Parquet")
    expect(rows).to_have_count(before)
    expect(rows.filter(has_text="fake.csv")).to_have_count(0)
    assert console_problems == []


# A contributor's first hour on an empty institution (issue 16) -------------------------------
#
# Its own server, seeded without data (`cleanroom demo seed --no-data`): the institution has
# released nothing, so uploading `batch` first meets the upload-order message, and releasing a
# second `episode` version replaces the first without touching the session's shared demo.

# The first episode file without its broken row: a corrected file, same chain-of-identity IDs.
CORRECTED_CSV = "".join(line + "\n" for line in EPISODE_CSV.splitlines() if FORMULA not in line)
ORPHAN_BATCH_CSV = (
    "Lot No.,COI,Manufacturing Facility,Platform,Outcome,Viability %\n"
    "LOT-E2E-1,COI-E2E-0001,Kelvin,central,conforming,91.5\n"
)
#: What a page a lab data manager reads must not show.
NOT_ON_A_PAGE = ("Traceback", '{"', "`", "cleanroom ", "InvalidDataError", "∅")


@pytest.fixture(scope="module")
def empty_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """``cleanroom up`` over the demo consortium's users and agreement, without data."""
    with demo_server(
        tmp_path_factory.mktemp("empty-server"), "--no-data", login_rate_per_minute=1000
    ) as server:
        yield server


def _readable(page: Page) -> None:
    """What a person reads on the page: no traceback, raw JSON, code marks or CLI hint."""
    text = page.locator("main").inner_text()
    for marker in NOT_ON_A_PAGE:
        assert marker not in text, (marker, text)


def _current_step(page: Page) -> Locator:
    return page.get_by_test_id("steps").locator("li[aria-current=step]")


def _upload_file(page: Page, tmp_path: Path, table: str, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    page.select_option("#table", table)
    page.set_input_files("#file", path)
    page.get_by_role("button", name="Upload").click()
    expect(page).to_have_url(re.compile(r"/datasets/\d+$"))


def _fits_its_card(page: Page, selector: str) -> None:
    """Nothing of ``selector`` sticks out of its card, and no select is cut."""
    report = page.evaluate(
        """(sel) => {
            const table = document.querySelector(sel);
            const card = table.closest('section');
            const box = card.getBoundingClientRect();
            const out = [...table.querySelectorAll('th, td, select')]
                .filter(e => e.getBoundingClientRect().right > box.right + 1)
                .map(e => e.outerHTML.slice(0, 80));
            const cut = [...table.querySelectorAll('select')]
                .filter(s => s.scrollWidth > s.clientWidth + 1)
                .map(s => s.name);
            return {out, cut, wide: table.scrollWidth > card.clientWidth + 1};
        }""",
        selector,
    )
    assert report == {"out": [], "cut": [], "wide": False}, report


def test_second_version_replaces_the_first(
    page: Page, empty_server: LiveServer, console_problems: ConsoleProblems, tmp_path: Path
) -> None:
    _signed_in(page, empty_server, "kelvin-data", "Lena Fischer")
    page.goto(f"{empty_server.url}/datasets")
    expect(_current_step(page)).to_have_text("Upload")
    _shoot(page, tmp_path, "01-upload.png")

    # `batch` before `episode`: said in words, with a link to the fix; nothing is held back.
    _upload_file(page, tmp_path, "batch", "batch-first.csv", ORPHAN_BATCH_CSV)
    order = page.get_by_test_id("upload-order")
    expect(order).to_contain_text("Upload episode first")
    expect(order.locator("code", has_text="episode").first).to_be_visible()
    state = page.get_by_test_id("state")
    expect(state).to_have_text("awaiting mapping", timeout=JOB_TIMEOUT_MS)
    _readable(page)
    _shoot(page, tmp_path, "02-upload-order.png")
    # Discard needs its confirmation box.
    page.get_by_role("button", name="Discard this upload").click()
    expect(state).to_have_text("awaiting mapping")
    page.get_by_test_id("confirm-discard").check()
    page.get_by_role("button", name="Discard this upload").click()
    expect(state).to_have_text("rejected")

    # Version 1 of episode: mapping with samples and descriptions, review, release.
    page.goto(f"{empty_server.url}/datasets?table=episode")
    expect(page.locator("#table")).to_have_value("episode")
    _upload_file(page, tmp_path, "episode", "episodes-v1.csv", EPISODE_CSV)
    first_url = page.url
    expect(state).to_have_text("awaiting mapping", timeout=JOB_TIMEOUT_MS)
    expect(_current_step(page)).to_have_text("Mapping")
    mapping = page.get_by_test_id("mapping")
    row = mapping.locator("tbody tr").filter(has=page.locator("code", has_text="Patient ID"))
    expect(row.get_by_test_id("samples")).to_contain_text("COI-E2E-0001")
    expect(row.get_by_test_id("description")).to_contain_text("Chain of Identity")
    expect(page.get_by_test_id("looks-like")).to_have_count(0)
    _readable(page)
    _fits_its_card(page, "[data-testid=mapping]")
    _shoot(page, tmp_path, "03-mapping.png")
    page.get_by_label(f"what {FORMULA} means").select_option(label="Hold these rows back")
    page.get_by_role("button", name="Confirm mapping and validate").click()

    expect(state).to_have_text("awaiting review", timeout=JOB_TIMEOUT_MS)
    expect(_current_step(page)).to_have_text("De-identification review")
    formulas = page.get_by_test_id("formulas")
    expect(formulas).to_contain_text("Indication")
    expect(formulas).to_contain_text(FORMULA)
    expect(page.get_by_test_id("replaces")).to_have_count(0)  # nothing released yet
    coi = (
        page.get_by_test_id("deid")
        .locator("tbody tr")
        .filter(has=page.locator("code", has_text=re.compile("^coi_id$")))
    )
    expect(coi.locator(".evidence")).to_contain_text("common data model says")
    expect(page.get_by_label("action for coi_id").locator("option")).to_have_text(
        ["pseudonymise", "drop"]
    )
    _readable(page)
    _fits_its_card(page, "[data-testid=deid]")
    _shoot(page, tmp_path, "04-review.png")
    page.get_by_test_id("approve").check()
    release = page.get_by_role("button", name=re.compile(r"^Release \d+ rows to the pool$"))
    first_rows = int(re.findall(r"\d+", release.inner_text())[0])
    assert first_rows > 0
    release.click()
    expect(state).to_have_text("released")
    expect(page.get_by_test_id("steps").locator("li.done")).to_have_count(5)
    _readable(page)
    _shoot(page, tmp_path, "05-released.png")

    # Version 2, a corrected file: it replaces version 1 when released.
    page.goto(f"{empty_server.url}/datasets")
    _upload_file(page, tmp_path, "episode", "episodes-v2.csv", CORRECTED_CSV)
    expect(state).to_have_text("awaiting mapping", timeout=JOB_TIMEOUT_MS)
    page.get_by_role("button", name="Confirm mapping and validate").click()
    expect(state).to_have_text("awaiting review", timeout=JOB_TIMEOUT_MS)
    expect(page.get_by_test_id("replaces")).to_contain_text("replaces version 1")
    expect(page.get_by_test_id("overlaps")).to_contain_text("expected for a corrected")
    expect(page.get_by_test_id("formulas")).to_have_count(0)
    _readable(page)
    _shoot(page, tmp_path, "06-replacing.png")
    page.get_by_test_id("approve").check()
    page.get_by_role("button", name=re.compile(r"^Release \d+ rows to the pool$")).click()
    expect(state).to_have_text("released")

    # Version 1 is withdrawn; one released episode version: counts are not doubled.
    page.goto(first_url)
    expect(state).to_have_text("withdrawn")
    page.goto(f"{empty_server.url}/datasets")
    episodes = _version_rows(page).filter(has=page.get_by_role("cell", name="episode", exact=True))
    expect(episodes).to_have_count(2)
    released = episodes.filter(has_text="released")
    expect(released).to_have_count(1)
    expect(released).to_contain_text("episodes-v2.csv")
    expect(episodes.filter(has_text="withdrawn")).to_contain_text("episodes-v1.csv")
    _readable(page)
    _shoot(page, tmp_path, "07-versions.png")
    assert console_problems == []
