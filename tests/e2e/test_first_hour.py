"""Each role's first hour on a fresh demo, in a real headless Chromium, as a new person.

Every walk starts at the sign-in page and then follows only the links and buttons the
person sees. On each page it checks what a lab data manager, a researcher or a steward
should never meet (a traceback, raw JSON, a Python dict, a command-line hint, an unexplained
``∅``, a page without a heading), runs axe-core for serious accessibility violations and
saves a full-page screenshot, ``<role>-<nn>-<page>.png``, for people to review; the folder
is printed at the end of each walk (``pytest -s`` shows it).

The server is this module's own: a fresh ``cleanroom demo seed`` (without synthetic
versions) served by ``cleanroom up`` with a sandbox address configured, so that the
researcher's "Open the sandbox" link is there (JupyterHub itself is not started; the
sandbox is walked in tests/e2e/test_jupyterhub.py). The output checker's walk reviews a
request the researcher sent through the API beforehand, so it needs no other walk.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.e2e.a11y import describe, serious, violations
from tests.e2e.conftest import LiveServer, demo_server
from tests.serving import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.slow]

# Waits on the server's worker thread (profiling, validation) get more than the default.
JOB_TIMEOUT_MS = 30_000

# What a person must never read on a page, with why.
FORBIDDEN = (
    (re.compile(r"Traceback"), "a Python traceback"),
    (re.compile(r'File "[^"]+", line \d+'), "a traceback's file line"),
    (re.compile(r"\b(\w*Error): \1:"), "an error prefix repeated"),
    (re.compile(r"\{\s*\""), "raw JSON"),
    (re.compile(r"\{\s*'"), "a Python dict"),
    (re.compile(r"\bcleanroom [a-z]+"), "a command-line hint"),
    (re.compile("∅"), "an unexplained ∅"),
)


@dataclass(frozen=True)
class Demo:
    server: LiveServer
    sandbox_url: str


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """A fresh demo consortium of this module's own, served by ``cleanroom up`` with the
    sandbox's address set (the portal links to it; nothing listens there). Every walk signs
    in from the same address: the per-address sign-in rate (covered by a unit test) must
    not answer 429 to a quick rerun."""
    sandbox_url = f"http://127.0.0.1:{free_port()}/"
    with demo_server(
        tmp_path_factory.mktemp("first-hour-server"),
        "--no-synthetic",
        login_rate_per_minute=1000,
        sandbox_public_url=sandbox_url,
    ) as server:
        yield Demo(server, sandbox_url)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the walks' screenshots go (one folder for every role, for review)."""
    return tmp_path_factory.mktemp("first-hour-screenshots")


@pytest.fixture
def fresh_page(browser: Browser) -> Iterator[Page]:
    """A new person's browser: no cookies; CSP bypassed so that axe-core can be injected."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    context.set_default_timeout(10_000)
    try:
        yield context.new_page()
    finally:
        context.close()


def visit_checks(page: Page, name: str, shots: Path) -> list[str]:
    """What is wrong with the page as it stands, for a person (an empty list when nothing
    is); saves its full-page screenshot as ``<name>.png`` in ``shots``."""
    page.wait_for_load_state("load")
    expect(page.locator("h1").first).to_be_visible()
    shot = shots / f"{name}.png"
    page.screenshot(path=str(shot), full_page=True)
    problems = []
    if shot.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        problems.append(f"{name}: the screenshot is not a PNG")
    text = page.locator("body").inner_text()
    for pattern, what in FORBIDDEN:
        hit = pattern.search(text)
        if hit:
            around = text[max(0, hit.start() - 80) : hit.end() + 80].replace("\n", " ")
            problems.append(f"{name} ({page.url}): {what}: …{around}…")
    found = serious(violations(page, f"{name} ({page.url})"))
    if found:
        problems.append(describe(found))
    return problems


@dataclass
class Walk:
    """One person's first hour: numbers the pages visited and gathers their problems, so
    that a walk reports every page's problems at once."""

    page: Page
    demo: Demo
    role: str
    shots: Path
    problems: list[str] = field(default_factory=list)
    visited: int = 0

    def check(self, name: str) -> None:
        self.visited += 1
        self.problems += visit_checks(
            self.page, f"{self.role}-{self.visited:02d}-{name}", self.shots
        )

    def sign_in(self, username: str, display_name: str) -> None:
        """Open the hub's address, as told, and sign in on the page it shows."""
        page = self.page
        page.goto(self.demo.server.url)
        expect(page).to_have_url(re.compile(r"/login"))
        expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
        expect(page.get_by_test_id("what-is-cleanroom")).to_contain_text("Cleanroom")
        self.check("sign-in")
        page.get_by_label("Username").fill(username)
        page.get_by_label("Password").fill(self.demo.server.logins[username])
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", level=1)).to_have_text(f"Welcome, {display_name}")
        expect(page.get_by_test_id("waiting")).to_be_visible()
        self.check("home")

    def nav(self, name: str) -> None:
        """Follow a link of the main navigation."""
        self.page.locator("header nav").get_by_role("link", name=name, exact=True).click()

    def finish(self) -> None:
        print(f"{self.role}: {self.visited} pages, screenshots in {self.shots}")
        assert not self.problems, "\n".join(self.problems)


def test_a_researchers_first_hour(fresh_page: Page, demo: Demo, shots: Path) -> None:
    page = fresh_page
    walk = Walk(page, demo, "researcher", shots)
    walk.sign_in("researcher", "Rosa Ibarra")
    expect(page.get_by_test_id("nothing-waits")).to_have_text("Nothing waits for you.")

    # The sandbox is one click away, at the address the hub was told.
    sandbox = page.locator("header nav").get_by_role("link", name="Open the sandbox")
    expect(sandbox).to_have_attribute("href", demo.sandbox_url)

    # What the pool holds: a table's columns, then an agreement's coverage.
    walk.nav("Data catalogue")
    expect(page.get_by_role("heading", level=1)).to_have_text("Data catalogue")
    expect(page.get_by_role("link", name="batch", exact=True).first).to_be_visible()
    walk.check("catalogue")
    page.get_by_role("link", name="batch", exact=True).first.click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("batch")
    expect(page.locator("main table").first).to_contain_text("viability")
    expect(page.locator("main table").first).to_contain_text("pseudonymised key")
    walk.check("catalogue-batch")
    page.get_by_role("link", name="demo-mfp").first.click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(
        "Demo: manufacturing-failure prediction across the consortium"
    )
    main = page.locator("main")
    expect(main).to_contain_text("Northbridge Cell Therapies")
    expect(main).to_contain_text(re.compile(r"about \d+"))  # patients, rounded
    expect(main).to_contain_text("never shared")
    walk.check("catalogue-agreement")

    # A release request: the form, one table, sent, its own page.
    walk.nav("Release requests")
    expect(page.get_by_role("heading", level=1)).to_have_text("Release requests")
    expect(page.get_by_text("No release request for you to see.")).to_be_visible()
    walk.check("releases")
    page.get_by_role("link", name="Ask for a release").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Ask for a release")
    walk.check("release-form")
    page.get_by_label("Agreement the outputs are computed under").select_option("demo-mfp")
    page.get_by_label("Title").fill("First hour: lots per platform")
    first = page.get_by_test_id("output-block").first
    first.get_by_label("Purpose").fill("How many lots each platform made")
    first.get_by_label("a table (an aggregate query)").check()
    first.get_by_label("Query, in the gateway's SQL").fill(
        "SELECT platform, COUNT(*) AS n FROM batch GROUP BY platform"
    )
    page.get_by_role("button", name="Send for review").click()
    expect(page).to_have_url(re.compile(r"/releases/\d+$"))
    expect(page.get_by_role("heading", level=1)).to_contain_text("First hour: lots per platform")
    expect(page.get_by_role("status").first).to_contain_text("is sent to the output checkers")
    expect(page.get_by_test_id("state")).to_have_text("in review")
    expect(page.get_by_test_id("result-table")).to_have_count(0)  # nothing before release
    walk.check("release-request")
    walk.finish()


def _deviations_file(folder: Path) -> tuple[Path, int]:
    """Northbridge's deviations as its LIMS exports them (the demo generator's site file,
    through pandas), plus one deviation on a lot Northbridge never released: (file, rows)."""
    from hub.demodata.generator import generate

    written = generate(folder / "site", institutions=3, patients=120, seed=7)
    source = next(
        p for p in written if p.parent.name == "northbridge-cell" and "deviation" in p.name
    )
    frame = pd.read_csv(source, sep=";", dtype=str, encoding="utf-8-sig")
    stray = frame.iloc[[0]].copy()
    stray["Deviation No."] = "DEV-2024-9999"
    stray["Lot No."] = "NC24-99999"  # no released batch has it
    frame = pd.concat([frame, stray], ignore_index=True)
    path = folder / "deviations-first-hour.csv"
    frame.to_csv(path, sep=";", index=False)
    return path, len(frame)


def _current_step(page: Page, label: str) -> None:
    steps = page.get_by_test_id("steps")
    expect(steps).to_be_visible()
    expect(steps.locator('[aria-current="step"]')).to_have_text(label)


def test_a_data_managers_first_hour(
    fresh_page: Page, demo: Demo, shots: Path, tmp_path: Path
) -> None:
    page = fresh_page
    upload, rows = _deviations_file(tmp_path)
    walk = Walk(page, demo, "contributor", shots)
    walk.sign_in("northbridge-data", "Nils Berg")

    walk.nav("Datasets")
    expect(page.get_by_role("heading", level=1)).to_have_text("Datasets")
    expect(page.get_by_test_id("steps")).to_be_visible()
    expect(page.locator("main")).to_contain_text("episode first")
    walk.check("datasets")

    page.get_by_label("Table (not for FHIR files)", exact=True).select_option("deviation")
    page.get_by_label("File", exact=True).set_input_files(upload)
    page.get_by_role("button", name="Upload").click()
    expect(page).to_have_url(re.compile(r"/datasets/\d+$"))
    expect(page.get_by_role("heading", level=1)).to_contain_text("deviation · version 2")
    expect(page.get_by_test_id("upload-kind")).to_contain_text("replacing the released one")
    state = page.get_by_test_id("state")
    expect(state).to_have_text("awaiting mapping", timeout=JOB_TIMEOUT_MS)
    _current_step(page, "Mapping")
    mapping = page.get_by_test_id("mapping")
    expect(mapping.locator('select[name="target::Lot No."]')).to_have_value("lot_id")
    expect(mapping.get_by_test_id("description").first).to_be_visible()
    walk.check("mapping")

    page.get_by_role("button", name="Confirm mapping and validate").click()
    expect(state).to_have_text("awaiting review", timeout=JOB_TIMEOUT_MS)
    _current_step(page, "De-identification review")
    # The deviation on an unreleased lot is held back, and the page says what to do.
    order = page.get_by_test_id("upload-order")
    expect(order.get_by_role("heading")).to_have_text(
        "Rows held back: upload the linked table first"
    )
    expect(order).to_contain_text("Upload the batch file that holds them first")
    expect(page.get_by_test_id("validation-summary")).to_contain_text(f"{rows}")
    expect(page.get_by_test_id("replaces")).to_contain_text(
        "Releasing this version replaces version 1"
    )
    walk.check("review")

    page.get_by_label("I have reviewed the de-identification report and approve it").check()
    release = page.get_by_role("button", name=re.compile(r"^Release [1-9][\d,]* rows to the pool$"))
    release.click()
    expect(state).to_have_text("released")
    expect(page.get_by_test_id("withdraw")).to_be_visible()
    walk.check("released")

    walk.nav("Datasets")
    versions = page.locator("main table tbody tr").filter(has_text="deviation")
    expect(versions.filter(has_text="deviations-first-hour.csv")).to_contain_text("released")
    expect(versions.filter(has_text="deviations.csv")).to_contain_text("withdrawn")
    walk.check("datasets-after")
    walk.finish()


def test_a_contributor_admins_first_hour(fresh_page: Page, demo: Demo, shots: Path) -> None:
    page = fresh_page
    walk = Walk(page, demo, "contributor-admin", shots)
    walk.sign_in("aurelia-admin", "Amaya Ruiz")
    waiting = page.get_by_test_id("waiting")
    expect(
        waiting.get_by_role("heading", name="Agreements awaiting your signature")
    ).to_be_visible()
    expect(waiting).to_contain_text("No agreement awaits you.")

    walk.nav("Agreements")
    expect(page.get_by_role("heading", level=1)).to_have_text("Agreements")
    expect(page.locator("main table")).to_contain_text("signed by you on")
    walk.check("agreements")
    page.get_by_role("link", name="demo-mfp").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(
        "Demo: manufacturing-failure prediction across the consortium"
    )
    walk.check("agreement")

    walk.nav("Our data in use")
    expect(page.get_by_role("heading", level=1)).to_be_visible()
    expect(page.get_by_test_id("included")).to_contain_text("Demo: vein-to-vein time")
    expect(page.get_by_role("heading", name="Every use of our data")).to_be_visible()
    expect(page.get_by_test_id("activity")).to_be_visible()
    walk.check("data-in-use")
    walk.finish()


def test_a_stewards_first_hour(fresh_page: Page, demo: Demo, shots: Path) -> None:
    page = fresh_page
    walk = Walk(page, demo, "steward", shots)
    walk.sign_in("steward", "Sam Steward")
    # (A notice of the researcher's release request may wait in the inbox by now.)
    waiting = page.get_by_test_id("waiting")
    expect(waiting.get_by_role("heading", name="Agreements in progress")).to_be_visible()
    expect(waiting).to_contain_text("No agreement is a draft or awaits signatures.")

    walk.nav("Institutions")
    expect(page.get_by_role("heading", level=1)).to_have_text("Institutions")
    expect(page.locator("main")).to_contain_text("St Aurelia University Hospital")
    walk.check("institutions")
    walk.nav("Users")
    expect(page.get_by_role("heading", level=1)).to_have_text("Users")
    expect(page.locator("main")).to_contain_text("Rosa Ibarra")
    walk.check("users")

    walk.nav("All agreements")
    expect(page.get_by_role("heading", level=1)).to_have_text("Agreements")
    walk.check("agreements")
    page.get_by_label("Start from a template").select_option(label="process comparability")
    page.get_by_role("button", name="Fill the form from it").click()
    expect(page.get_by_test_id("template-note")).to_be_visible()
    walk.check("agreement-form")
    form = page.get_by_test_id("agreement-form")
    form.get_by_label("Short name").fill("first-hour-pc")
    form.get_by_label("Title").fill("First hour: comparability between two sites")
    form.get_by_label("Northbridge Cell Therapies contributes data").check()
    form.get_by_label("Kelvin Institute for Regenerative Medicine contributes data").check()
    form.get_by_label("Kelvin Institute for Regenerative Medicine receives results").check()
    form.get_by_label("Rosa Ibarra").check()
    form.get_by_role("button", name="Create draft").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(
        "First hour: comparability between two sites"
    )
    expect(page.get_by_test_id("state")).to_have_text("draft")
    # A draft lets the parties' admins read it, named, not numbered.
    words = page.get_by_test_id("policy-words")
    expect(words).to_contain_text("Kiri Tane (party admin, Kelvin Institute")
    expect(words).not_to_contain_text("user:")
    walk.check("agreement-draft")
    # An active agreement's policy: what its researcher may do, in words.
    walk.nav("All agreements")
    page.get_by_role("link", name="demo-mfp").click()
    expect(page.get_by_test_id("state")).to_have_text("active")
    words = page.get_by_test_id("policy-words")
    expect(words).to_contain_text(re.compile(r"Rosa Ibarra[^.]* may query[^.]*batch"))
    expect(page.get_by_test_id("rules")).not_to_be_visible()  # the raw rules stay folded
    walk.check("agreement-policy")

    walk.nav("Audit ledger")
    expect(page.get_by_role("heading", level=1)).to_have_text("Audit ledger")
    walk.check("audit")
    page.get_by_role("link", name="details").first.click()
    expect(page).to_have_url(re.compile(r"/admin/audit/\d+$"))
    expect(page.get_by_test_id("entry-sentence")).to_contain_text(" UTC.")
    expect(page.get_by_test_id("raw-detail")).not_to_be_visible()
    walk.check("audit-entry")
    walk.finish()


BAD_PAGE = """<!doctype html><html lang="en"><head><title>Bad</title></head><body><main>
<h1>A page a person should not meet</h1>
<p>Traceback (most recent call last):</p>
<p>File "/srv/app.py", line 3, in view</p>
<p>ValueError: ValueError: k too small</p>
<p>{"error": {"code": 1}} and {'rows': 3}</p>
<p>Run cleanroom demo seed first. Missing: ∅</p>
<p style="color:#bbb;background:#fff">Too pale to read</p>
</main></body></html>"""


def test_the_checks_find_what_a_person_must_not_meet(fresh_page: Page, tmp_path: Path) -> None:
    """visit_checks is not a formality: on a page showing every forbidden thing it names
    each one, and axe's contrast rule, and still saves the screenshot."""
    fresh_page.set_content(BAD_PAGE)
    problems = "\n".join(visit_checks(fresh_page, "bad-01-page", tmp_path))
    for _pattern, what in FORBIDDEN:
        assert what in problems, (what, problems)
    assert "color-contrast (serious)" in problems, problems
    assert (tmp_path / "bad-01-page.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_output_checkers_first_hour(fresh_page: Page, demo: Demo, shots: Path) -> None:
    """The demo's second checker (the steward's office) finds a researcher's request on
    the home page, reads its evidence and approves it with a note per output."""
    import requests

    token = (demo.server.data_dir / "demo-researcher-token").read_text().strip()
    sent = requests.post(
        f"{demo.server.url}/api/v1/releases",
        json={
            "agreement": "demo-mfp",
            "title": "Checker's first hour: lots per outcome",
            "outputs": [
                {
                    "sql": "SELECT manufacturing_outcome, COUNT(*) AS n FROM batch "
                    "GROUP BY manufacturing_outcome",
                    "purpose": "Table 2: lots per outcome",
                }
            ],
        },
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    assert sent.status_code == 201, sent.text
    title = "Checker's first hour: lots per outcome"

    page = fresh_page
    walk = Walk(page, demo, "output-checker", shots)
    walk.sign_in("checker", "Olu Adeyemi")
    waiting = page.get_by_test_id("waiting")
    expect(waiting).to_contain_text("Release requests awaiting your check")
    waiting.get_by_role("link", name=re.compile(re.escape(title))).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(title)
    expect(page.get_by_test_id("state")).to_have_text("in review")
    # The evidence a checker decides on: the exact table and who is behind it.
    expect(page.get_by_test_id("result-table").first).to_contain_text("conforming")
    expect(page.locator("main")).to_contain_text("Table 2: lots per outcome")
    walk.check("release-evidence")
    review = page.get_by_test_id("review-form")
    review.get_by_label("Note on output 1 (optional)").fill("Counts well above the threshold.")
    review.get_by_role("button", name="Approve").click()
    expect(page.get_by_text("You have reviewed this revision.")).to_be_visible()
    expect(page.locator("main")).to_contain_text("Counts well above the threshold.")
    walk.check("release-approved")
    walk.nav("Release requests")
    expect(page.get_by_role("heading", level=1)).to_have_text("Release requests")
    expect(page.locator("main")).to_contain_text(title)
    walk.check("releases")
    walk.finish()


def test_an_auditors_first_hour(fresh_page: Page, demo: Demo, shots: Path) -> None:
    """The demo's auditor reads the period's events the Five Safes way, an agreement with its
    compiled policy and spending, the ledger, and downloads the period's events."""
    page = fresh_page
    walk = Walk(page, demo, "auditor", shots)
    walk.sign_in("auditor", "Ines Moreau")
    expect(page.get_by_test_id("auditor-card")).to_be_visible()
    walk.nav("Five Safes audit")
    expect(page.get_by_role("heading", level=1)).to_have_text("Five Safes audit")
    safes = page.get_by_test_id("safes")
    for safe in ("people", "projects", "settings", "data", "outputs"):
        expect(safes).to_contain_text(f"Safe {safe}")
    # The demo's seed signed agreements and released data today: counted, not zero.
    expect(safes.locator('tr[data-safe="projects"] td').nth(1)).not_to_have_text("0")
    expect(safes.locator('tr[data-safe="data"] td').nth(1)).not_to_have_text("0")
    walk.check("overview")
    with page.expect_download() as download:
        page.get_by_test_id("export-jsonl").click()
    lines = Path(download.value.path()).read_text().splitlines()
    assert '"record": "checkpoint"' in lines[0] and len(lines) > 10
    page.get_by_test_id("agreements").get_by_role("link", name=re.compile("manufacturing")).click()
    expect(page.get_by_test_id("policy-words")).to_contain_text("researcher")
    expect(page.get_by_test_id("spending")).to_be_visible()
    expect(page.locator("main form")).to_have_count(0)  # read-only: nothing to submit
    walk.check("agreement")
    page.get_by_role("link", name="its ledger entries").click()
    expect(page.get_by_role("heading", level=1)).to_be_visible()
    walk.check("ledger")
    walk.finish()
