"""The portal in a real headless Chromium against a real ``cleanroom serve`` subprocess."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Page, expect

from tests.e2e.conftest import ConsoleProblems, LiveServer, sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

LOGIN_URL = re.compile(r"/login(\?.*)?$")
SESSION_COOKIE = "cleanroom_session"


def test_steward_signs_in_verifies_the_ledger_and_signs_out(
    page: Page, live_server: LiveServer
) -> None:
    sign_in(page, live_server, "steward")

    expect(page).to_have_url(f"{live_server.url}/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Welcome, Sam Steward")
    expect(page.get_by_test_id("role")).to_have_text("steward")
    ledger_link = page.locator("header nav").get_by_role("link", name="Audit ledger")
    expect(ledger_link).to_be_visible()

    ledger_link.click()
    expect(page).to_have_url(re.compile(r"/admin/audit"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Audit ledger")
    page.get_by_role("button", name="Verify chain").click()
    expect(page).to_have_url(re.compile(r"[?&]verify=1"))
    expect(page.get_by_test_id("verification")).to_contain_text("chain verified")

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(LOGIN_URL)
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    expect(page.get_by_role("status")).to_contain_text("You are signed out everywhere.")
    expect(page.get_by_role("button", name="Sign out")).to_have_count(0)

    page.goto(f"{live_server.url}/")
    expect(page).to_have_url(LOGIN_URL)
    expect(page.locator("#password")).to_be_visible()


def test_wrong_password_is_refused_and_keeps_the_username(
    page: Page, live_server: LiveServer
) -> None:
    sign_in(page, live_server, "northbridge-data", password="not-the-password-at-all")

    expect(page.get_by_role("alert")).to_contain_text("wrong username or password")
    expect(page.locator("#username")).to_have_value("northbridge-data")
    expect(page.locator("#password")).to_have_value("")

    page.goto(f"{live_server.url}/")
    expect(page).to_have_url(LOGIN_URL)
    expect(page.get_by_text("Welcome,")).to_have_count(0)
    # Whatever cookies the failed attempt left in the browser, they do not open the portal.
    jar = {c["name"]: c["value"] for c in page.context.cookies(live_server.url)}
    home = requests.get(f"{live_server.url}/", cookies=jar, allow_redirects=False, timeout=10)
    assert home.status_code == 302
    assert LOGIN_URL.search(home.headers["Location"])


def test_researcher_is_forbidden_the_admin_pages(page: Page, live_server: LiveServer) -> None:
    sign_in(page, live_server, "researcher")
    expect(page.get_by_role("heading", level=1)).to_have_text("Welcome, Rosa Ibarra")
    expect(page.get_by_test_id("role")).to_have_text("researcher")
    nav = page.locator("header nav")
    expect(nav.get_by_role("link", name="API tokens")).to_be_visible()
    expect(nav.get_by_role("link", name="Audit ledger")).to_have_count(0)

    response = page.goto(f"{live_server.url}/admin/users")
    assert response is not None
    assert response.status == 403
    expect(page.get_by_role("heading", level=1)).to_contain_text("403")
    expect(page.get_by_role("table")).to_have_count(0)


def test_token_made_in_the_browser_works_against_the_api(
    page: Page, live_server: LiveServer
) -> None:
    sign_in(page, live_server, "northbridge-data")
    expect(page.get_by_role("heading", level=1)).to_have_text("Welcome, Nils Berg")
    page.locator("header nav").get_by_role("link", name="API tokens").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("API tokens")

    page.fill("#name", "browser e2e token")
    read, upload = page.get_by_label("read", exact=True), page.get_by_label("upload", exact=True)
    expect(read).to_be_checked()  # the page's default
    read.check()
    upload.check()
    page.get_by_role("button", name="Create token").click()

    shown = page.get_by_test_id("new-token")
    expect(shown).to_have_text(re.compile(r"^crt_"))
    token = shown.inner_text().strip()
    expect(page.get_by_role("row").filter(has_text="browser e2e token")).to_contain_text(
        "read upload"
    )

    resp = requests.get(
        f"{live_server.url}/api/v1/me",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["username"] == "northbridge-data"
    assert body["role"] == "contributor"
    assert body["institution"] == "northbridge-cell"

    # The page shows the secret once: a reload (GET) never repeats it.
    page.goto(f"{live_server.url}/account/tokens")
    expect(page.get_by_test_id("new-token")).to_have_count(0)

    # A garbled token is refused, so the 200 above really came from the token.
    refused = requests.get(
        f"{live_server.url}/api/v1/me",
        headers={"Authorization": f"Bearer {token[:-4]}XXXX"},
        timeout=10,
    )
    assert refused.status_code == 401


def test_security_headers_and_session_cookie_flags(page: Page, live_server: LiveServer) -> None:
    resp = requests.get(f"{live_server.url}/login", timeout=10)
    assert resp.status_code == 200
    csp = resp.headers.get("Content-Security-Policy", "")
    assert "frame-ancestors 'none'" in csp
    assert "script-src 'self'" in csp
    assert resp.headers.get("X-Content-Type-Options") == "nosniff"

    sign_in(page, live_server, "kelvin-data")
    expect(page.get_by_role("heading", level=1)).to_have_text("Welcome, Lena Fischer")
    sessions = [c for c in page.context.cookies(live_server.url) if c["name"] == SESSION_COOKIE]
    assert len(sessions) == 1, page.context.cookies()
    cookie = sessions[0]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Lax"
    assert cookie["secure"] is False  # plain-HTTP public URL: Secure would break sign-in
    assert SESSION_COOKIE not in page.evaluate("document.cookie")  # invisible to scripts


def test_pages_render_without_console_errors(
    page: Page, live_server: LiveServer, tmp_path: Path, console_problems: ConsoleProblems
) -> None:
    problems = console_problems

    sign_in(page, live_server, "steward")
    expect(page.get_by_role("heading", level=1)).to_have_text("Welcome, Sam Steward")
    # The stylesheet loaded (a CSP or path problem would leave the page unstyled).
    display = page.evaluate("getComputedStyle(document.querySelector('header.top')).display")
    assert display == "flex"

    shot = tmp_path / "steward-home.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 0
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    for path in ("/account/tokens", "/admin/institutions", "/admin/users", "/admin/audit"):
        response = page.goto(f"{live_server.url}{path}")
        assert response is not None and response.status == 200, path
    assert problems == []

    # The listener really sees CSP violations: an injected inline script is refused.
    with page.expect_console_message(lambda m: "Content Security Policy" in m.text) as refused:
        page.evaluate(
            "() => { const s = document.createElement('script');"
            " s.textContent = 'window.injected = true'; document.body.appendChild(s); }"
        )
    assert refused.value.type == "error"
    assert page.evaluate("window.injected === undefined")
