"""Reviewed release in a real headless Chromium against a real ``cleanroom serve``: the
researcher asks through the portal form, output checkers decide from the evidence (our rules
and ACRO's), a revision resets the approvals, a contributing institution's objection holds
the release until the steward dismisses it, and the researcher downloads what the checkers
saw (docs/releases.md).

Screenshots go to a temporary directory, or to ``$RELEASE_SHOTS_DIR`` when set (to look at
them)."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from openpyxl import load_workbook
from playwright.sync_api import Browser, Locator, Page, expect

from tests.e2e.conftest import ConsoleProblems, LiveServer, sign_in
from tests.serving import cleanroom_command, server_env

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

AGREEMENT = "demo-mfp"
RESEARCHER = "researcher"  # Rosa; named an output checker too: she still never reviews her own
CHECKERS = ("northbridge-data", "aurelia-data")
ADMIN = "kelvin-admin"  # Kelvin Institute contributes to demo-mfp
STEWARD = "steward"

TABLES = [
    (
        "Table 1: lots and mean viability per platform",
        "SELECT platform, COUNT(*) AS n, AVG(viability) AS mean_viability "
        "FROM batch GROUP BY platform",
    ),
    (
        "Table 2: lots per manufacturing outcome",
        "SELECT manufacturing_outcome, COUNT(*) AS n FROM batch GROUP BY manufacturing_outcome",
    ),
    (
        "Table 3: patients and mean prior lines per indication",
        "SELECT indication, COUNT(*) AS n, AVG(prior_lines) AS mean_prior_lines "
        "FROM episode GROUP BY indication",
    ),
]
FIT = {
    "purpose": "Table 4: viability by culture days",
    "table": "batch",
    "model": "linear",
    "features": "culture_days",
    "target": "viability",
}
REVISED = (
    "Table 2: lots and mean culture days per manufacturing outcome",
    "SELECT manufacturing_outcome, COUNT(*) AS n, AVG(culture_days) AS mean_days "
    "FROM batch GROUP BY manufacturing_outcome",
)
# Disclosive on purpose: a GROUP BY over a value few lots hold, and a fit on a handful of them.
RARE_WHERE = "viability > 97"
RARE = f"SELECT platform, COUNT(*) AS n FROM batch WHERE {RARE_WHERE} GROUP BY platform"


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("RELEASE_SHOTS_DIR")
    if chosen:
        Path(chosen).mkdir(parents=True, exist_ok=True)
        return Path(chosen)
    return tmp_path_factory.mktemp("release-shots")


@pytest.fixture(scope="module")
def checkers(live_server: LiveServer) -> tuple[str, ...]:
    """The steward names the output checkers (``cleanroom user checker``): two data managers
    of contributing institutions, and the researcher herself."""
    port = int(live_server.url.rsplit(":", 1)[1])
    for name in (*CHECKERS, RESEARCHER):
        done = subprocess.run(  # noqa: S603
            [*cleanroom_command(), "user", "checker", name],
            env=server_env(live_server.data_dir, port),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
    return CHECKERS


@contextmanager
def signed_in(
    browser: Browser, server: LiveServer, username: str, problems: ConsoleProblems | None = None
) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(20_000)
    page = context.new_page()
    if problems is not None:
        problems.watch(page)
    try:
        sign_in(page, server, username)
        expect(page).to_have_url(f"{server.url}/")
        yield page
    finally:
        context.close()


def _block(page: Page, n: int) -> Locator:
    return page.get_by_test_id("output-block").nth(n - 1)


def _fill_query(page: Page, n: int, purpose: str, sql: str) -> None:
    block = _block(page, n)
    block.get_by_label("Purpose").fill(purpose)
    block.get_by_label("a table (an aggregate query)").check()
    block.get_by_label("Query, in the gateway's SQL").fill(sql)


def _fill_fit(page: Page, n: int, fit: dict[str, str]) -> None:
    block = _block(page, n)
    block.get_by_label("Purpose").fill(fit["purpose"])
    block.get_by_label("a model fit").check()
    expect(block.get_by_label("Query, in the gateway's SQL")).to_be_hidden()
    block.get_by_label("Table", exact=True).fill(fit["table"])
    block.get_by_label("Model", exact=True).select_option(fit["model"])
    block.get_by_label("Features").fill(fit["features"])
    block.get_by_label("Target column").fill(fit["target"])
    if fit.get("filters"):
        block.get_by_label("Only the records where").fill(fit["filters"])


def _open_form(page: Page, server: LiveServer) -> None:
    page.locator("header nav").get_by_role("link", name="Release requests").click()
    page.get_by_role("link", name="Ask for a release").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Ask for a release")
    expect(page.get_by_test_id("output-block")).to_have_count(3)
    page.get_by_label("Agreement the outputs are computed under").select_option(AGREEMENT)


def _request_id(page: Page) -> int:
    found = re.search(r"/releases/(\d+)$", page.url)
    assert found, page.url
    return int(found.group(1))


def _table(section: Locator) -> list[list[str]]:
    """The released columns of a result table as shown (evidence columns left out)."""
    table = section.get_by_test_id("result-table")
    heads = [h.strip() for h in table.locator("thead th").all_inner_texts()]
    keep = [i for i, h in enumerate(heads) if not h.startswith(("Patients", "ACRO"))]
    rows = [[heads[i] for i in keep]]
    for row in table.locator("tbody tr").all():
        cells = row.locator("td").all_inner_texts()
        rows.append([cells[i].split("\n")[0].strip() for i in keep])
    return rows


def _same(shown: str, stored: object) -> bool:
    if stored is None or stored == "":
        return shown in ("—", "— withheld")
    try:
        return abs(float(shown) - float(str(stored))) < 1e-9
    except ValueError:
        return shown == str(stored)


def _review(browser: Browser, server: LiveServer, name: str, rid: int, then: str) -> None:
    with signed_in(browser, server, name) as page:
        page.goto(f"{server.url}/releases/{rid}")
        page.get_by_test_id("review-form").get_by_role("button", name="Approve").click()
        expect(page.get_by_role("status").first).to_contain_text("Your review is recorded")
        expect(page.get_by_test_id("state")).to_have_text(then)


def _settle(server: LiveServer, rid: int) -> bool:
    """The review window passes: the service's own ``settle``, as the workers run it, at a
    moment just after the window's end (the demo agreement's window is five working days)."""
    from hub.db import Database
    from hub.releases import services

    database = Database(f"sqlite:///{server.data_dir / 'cleanroom.db'}")
    try:
        with database.session() as s:
            request = services.get(s, rid)
            assert request.window_ends_at is not None
            return services.settle(s, request, request.window_ends_at + timedelta(seconds=1))
    finally:
        database.engine.dispose()


def test_ask_review_revise_object_release_and_download(
    browser: Browser,
    live_server: LiveServer,
    checkers: tuple[str, ...],
    shots: Path,
    console_problems: ConsoleProblems,
) -> None:
    first, second = checkers
    problems = console_problems

    # The researcher asks through the portal form: three tables and one model.
    with signed_in(browser, live_server, RESEARCHER, problems) as page:
        _open_form(page, live_server)
        page.get_by_label("Title").fill("Paper 1: manufacturing across the consortium")
        for n, (purpose, sql) in enumerate(TABLES, start=1):
            _fill_query(page, n, purpose, sql)
        page.get_by_role("button", name="Add another output").click()  # in place, by script
        expect(page.get_by_test_id("output-block")).to_have_count(4)
        _fill_fit(page, 4, FIT)
        page.screenshot(path=str(shots / "form.png"), full_page=True)
        page.get_by_role("button", name="Send for review").click()
        expect(page).to_have_url(re.compile(r"/releases/\d+$"))
        expect(page.get_by_role("status").first).to_contain_text("is sent to the output checkers")
        rid = _request_id(page)
        expect(page.get_by_test_id("state")).to_have_text("in review")
        for n in range(1, 5):
            expect(page.get_by_test_id(f"output-{n}")).to_be_visible()
        expect(page.get_by_test_id("result-table")).to_have_count(0)  # no number before release

    # Checker 1 sees the evidence: the table, the patients behind each row, the rules, ACRO.
    with signed_in(browser, live_server, first, problems) as page:
        page.goto(f"{live_server.url}/releases/{rid}")
        one = page.get_by_test_id("output-1")
        expect(one.get_by_test_id("result-table")).to_contain_text("central")
        expect(one.locator("thead")).to_contain_text("Patients · institutions behind the row")
        expect(one.get_by_test_id("evidence-1")).to_contain_text("Rules applied: at least 10")
        fit = page.get_by_test_id("output-4")
        expect(fit.get_by_test_id("result-table")).to_contain_text("culture_days")
        expect(fit.get_by_test_id("evidence-4")).to_contain_text("residual degrees of freedom")
        expect(page.get_by_test_id("review-form")).to_be_visible()
        page.screenshot(path=str(shots / "request-as-checker.png"), full_page=True)
        # ACRO's second opinion on each output (from hub.releases' ACRO integration).
        expect(one.get_by_test_id("acro-1")).to_be_visible()
        expect(one.get_by_test_id("acro-status")).to_have_text(re.compile("pass|review"))

    # The researcher is an output checker too, and still cannot review her own request.
    with signed_in(browser, live_server, RESEARCHER, problems) as page:
        page.goto(f"{live_server.url}/releases/{rid}")
        expect(page.get_by_test_id("review-form")).to_have_count(0)
        expect(page.get_by_text("Nobody reviews their own request")).to_be_visible()
        page.screenshot(path=str(shots / "request-as-researcher.png"), full_page=True)
        token = page.locator("input[name=csrf_token]").first.get_attribute("value")
        refused = page.request.post(
            f"{live_server.url}/releases/{rid}/review",
            form={"decision": "approve", "comment": "", "csrf_token": token or ""},
        )
        # Refused: the page again (the redirect followed), with the refusal on it.
        assert refused.ok and "nobody reviews their own release request" in refused.text()
        page.reload()
        expect(page.get_by_test_id("approvals")).to_have_text("0 of 2")
        expect(page.get_by_test_id("reviews")).to_contain_text("None yet")

    _review(browser, live_server, first, rid, then="in review")

    # The researcher changes an output: the approval no longer counts.
    with signed_in(browser, live_server, RESEARCHER, problems) as page:
        page.goto(f"{live_server.url}/releases/{rid}")
        expect(page.get_by_test_id("approvals")).to_have_text("1 of 2")
        page.get_by_test_id("change-outputs").click()
        expect(page.get_by_role("heading", level=1)).to_contain_text("Change the outputs")
        expect(_block(page, 2).get_by_label("Purpose")).to_have_value(TABLES[1][0])
        expect(_block(page, 4).get_by_label("Target column")).to_have_value("viability")
        _fill_query(page, 2, *REVISED)
        page.get_by_role("button", name="Send the change for review").click()
        expect(page.get_by_role("status").first).to_contain_text("Revision 2 is sent")
        expect(page.get_by_test_id("approvals")).to_have_text("0 of 2")
        expect(page.get_by_test_id("output-2")).to_contain_text(REVISED[0])

    _review(browser, live_server, first, rid, then="in review")
    with signed_in(browser, live_server, second, problems) as page:
        page.goto(f"{live_server.url}/releases/{rid}")
        # What the checkers approve: each table as shown to them.
        shown = {n: _table(page.get_by_test_id(f"output-{n}")) for n in (1, 2, 3)}
        page.get_by_test_id("review-form").get_by_role("button", name="Approve").click()
        expect(page.get_by_test_id("state")).to_have_text("approved")
        expect(page.get_by_test_id("approvals")).to_have_text("2 of 2")

    # A contributing institution's admin objects; the release waits, even past the window.
    with signed_in(browser, live_server, ADMIN, problems) as page:
        page.goto(f"{live_server.url}/releases/{rid}")
        form = page.get_by_test_id("object-form")
        form.get_by_label("Object to this release").fill("Table 3 may show our rare products.")
        form.get_by_role("button", name="Object").click()
        expect(page.get_by_test_id("objections")).to_contain_text("open")
        expect(page.get_by_test_id("on-hold")).to_be_visible()
    assert not _settle(live_server, rid)
    with signed_in(browser, live_server, RESEARCHER, problems) as page:
        page.goto(f"{live_server.url}/releases/{rid}")
        expect(page.get_by_test_id("state")).to_have_text("approved")
        expect(page.get_by_test_id("on-hold")).to_contain_text("Nothing is released")

    # The steward dismisses the objection; the window has passed: released.
    with signed_in(browser, live_server, STEWARD, problems) as page:
        page.goto(f"{live_server.url}/releases/{rid}")
        objections = page.get_by_test_id("objections")
        objections.get_by_label("Why").fill("Product classes are coarse; every cell holds 10+.")
        objections.get_by_role("button", name="Dismiss").click()
        expect(objections).to_contain_text("dismissed by the steward")
    assert _settle(live_server, rid)

    # The researcher downloads CSV and XLSX: the numbers the checkers saw.
    with signed_in(browser, live_server, RESEARCHER, problems) as page:
        page.goto(f"{live_server.url}/releases/{rid}")
        expect(page.get_by_test_id("state")).to_have_text("released")
        for n, table in shown.items():
            section = page.get_by_test_id(f"output-{n}")
            assert _table(section) == table
            with page.expect_download() as got:
                section.get_by_role("link", name="CSV").click()
            text = Path(got.value.path()).read_text(encoding="utf-8")
            rows = list(csv.reader(io.StringIO(text)))
            assert rows[0] == table[0]
            for want, row in zip(table[1:], rows[1 : len(table)], strict=True):
                assert all(_same(w, v) for w, v in zip(want, row, strict=True)), (want, row)
            assert any(r and r[0].startswith("result hash") for r in rows)
            with page.expect_download() as got:
                section.get_by_role("link", name="XLSX").click()
            sheet = load_workbook(io.BytesIO(Path(got.value.path()).read_bytes())).active
            assert sheet is not None
            cells = [[c.value for c in row] for row in sheet.iter_rows()]
            assert cells[0] == table[0]
            for want, row in zip(table[1:], cells[1 : len(table)], strict=True):
                assert all(_same(w, v) for w, v in zip(want, row, strict=True)), (want, row)
        # Numbers, not only withheld cells, were compared.
        assert any(re.fullmatch(r"\d+", v) for t in shown.values() for r in t[1:] for v in r)
        page.screenshot(path=str(shots / "released-as-researcher.png"), full_page=True)
    assert problems == []


def test_a_disclosive_output_is_flagged_by_our_rules_and_by_acro(
    browser: Browser, live_server: LiveServer, checkers: tuple[str, ...], shots: Path
) -> None:
    with signed_in(browser, live_server, RESEARCHER) as page:
        _open_form(page, live_server)
        page.get_by_label("Title").fill("Rare lots")
        _fill_query(page, 1, "Lots above 97 % viability per platform", RARE)
        _fill_fit(
            page,
            2,
            {**FIT, "purpose": "Viability of the rare lots", "filters": RARE_WHERE},
        )
        page.get_by_role("button", name="Send for review").click()
        expect(page).to_have_url(re.compile(r"/releases/\d+$"))
        rid = _request_id(page)

    with signed_in(browser, live_server, checkers[0]) as page:
        page.goto(f"{live_server.url}/releases/{rid}")
        table = page.get_by_test_id("output-1")
        # Our rules: the small cells withheld, each with its reason.
        expect(table.get_by_test_id("evidence-1")).to_contain_text("withheld")
        expect(table.get_by_test_id("evidence-1")).to_contain_text(re.compile("fewer than"))
        # Our rules: a fit on too few records is not computed, and says why.
        expect(page.get_by_test_id("output-2").get_by_test_id("refused")).to_contain_text(
            "too few complete records"
        )
        page.screenshot(path=str(shots / "disclosive-as-checker.png"), full_page=True)
        # ACRO: fail, and the flagged cell named.
        acro = table.get_by_test_id("acro-1")
        expect(acro.get_by_test_id("acro-status")).to_contain_text("fail")
        expect(acro.get_by_test_id("acro-cells")).to_contain_text("threshold")


def test_a_bad_query_comes_back_with_the_input_kept(
    browser: Browser, live_server: LiveServer, console_problems: ConsoleProblems, shots: Path
) -> None:
    with signed_in(browser, live_server, RESEARCHER, console_problems) as page:
        _open_form(page, live_server)
        page.get_by_label("Title").fill("A slip")
        _fill_query(page, 1, TABLES[0][0], TABLES[0][1])
        _fill_query(page, 2, "Every lot's viability", "SELECT lot_id, viability FROM batch")
        page.get_by_role("button", name="Send for review").click()
        expect(page.get_by_test_id("form-problem")).to_contain_text("need mending")
        expect(page.get_by_label("Title")).to_have_value("A slip")
        second = _block(page, 2)
        expect(second.get_by_test_id("output-problem")).to_contain_text(
            "Cleanroom cannot compute this"
        )
        expect(second.get_by_label("Query, in the gateway's SQL")).to_have_value(
            "SELECT lot_id, viability FROM batch"
        )
        expect(_block(page, 1).get_by_test_id("output-problem")).to_have_count(0)
        expect(_block(page, 1).get_by_label("Purpose")).to_have_value(TABLES[0][0])
        page.screenshot(path=str(shots / "form-with-problem.png"), full_page=True)
    assert console_problems == []
