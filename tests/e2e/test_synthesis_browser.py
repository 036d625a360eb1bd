"""Synthesis in a real headless Chromium: the steward asks for an agreement's linked tables
together, the real worker of ``cleanroom up`` makes them, and the report pages show the
gates, how the relationships were kept and the real-vs-synthetic plots, served by the hub."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import ConsoleProblems, LiveServer, sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

FINISHED = {"published", "failed gates", "failed"}
DEADLINE_SECONDS = 600.0


def _states(page: Page) -> list[str]:
    """Each group member's state, as the page lists them: ``episode #5 (running), ...``."""
    return re.findall(r"\(([^)]+)\)", page.get_by_test_id("synthetic-group").inner_text())


def test_steward_synthesises_linked_tables_and_reads_the_report(
    page: Page, live_server: LiveServer, console_problems: ConsoleProblems
) -> None:
    sign_in(page, live_server, "steward")
    page.goto(f"{live_server.url}/synthetic")
    expect(page.get_by_role("heading", level=1)).to_have_text("Synthetic versions")
    page.select_option("#agreement", "demo-mfp")
    page.select_option("#table", label="all linked tables together")
    page.get_by_role("button", name="Generate synthetic version").click()

    expect(page).to_have_url(re.compile(r"/synthetic/\d+$"))
    expect(page.get_by_role("status")).to_contain_text("queued together as group")
    group = page.get_by_test_id("synthetic-group")
    expect(group).to_contain_text("episode")
    expect(group).to_contain_text("batch")
    first = page.url

    # The worker of `cleanroom up` runs the job; the page says how far it is.
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        states = _states(page)
        if states and all(s in FINISHED for s in states):
            break
        assert time.monotonic() < deadline, f"the group did not finish: {states}"
        time.sleep(3)
        page.goto(first)
    assert "failed" not in states, page.content()
    # All or none: every member ends the same way.
    assert len(set(states)) == 1, states

    expect(page.get_by_test_id("synthetic-state")).to_have_text(states[0])
    gates = page.get_by_test_id("gates")
    expect(gates).to_contain_text("DCR overfitting protection")
    expect(gates.get_by_role("cell", name="group", exact=True)).to_be_visible()
    relationships = page.get_by_test_id("relationships")
    expect(relationships).to_contain_text("kept by")
    expect(relationships).to_contain_text("Keys with no synthetic parent: 0")
    if states[0] == "failed gates":
        expect(page.get_by_test_id("failed-gates")).to_contain_text("Not published")

    # The plots are SVG files the hub serves itself, and the browser draws them.
    images = page.get_by_test_id("plots").locator("img")
    assert images.count() > 0
    for i in range(images.count()):
        image = images.nth(i)
        image.scroll_into_view_if_needed()
        src = image.get_attribute("src") or ""
        assert src.startswith("/synthetic/"), src
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
        )
    response = page.request.get(f"{live_server.url}{images.first.get_attribute('src')}")
    assert response.status == 200
    assert response.headers["content-type"].startswith("image/svg+xml")

    # Every member's page reads the same group outcome.
    for link in page.get_by_test_id("synthetic-group").get_by_role("link").all():
        href = link.get_attribute("href")
        assert href is not None
        member = page.context.new_page()
        console_problems.watch(member)
        member.goto(f"{live_server.url}{href}")
        expect(member.get_by_test_id("synthetic-state")).to_have_text(states[0])
        expect(member.get_by_test_id("relationships")).to_contain_text("kept by")
        member.close()
    assert console_problems == []
