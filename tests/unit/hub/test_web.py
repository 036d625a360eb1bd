"""The portal and API plumbing: sign-in, guards, error shape, headers, CSRF."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from flask import Flask
from flask.testing import FlaskClient

from hub.web import OPEN_ENDPOINTS, SERVICE_ENDPOINTS
from tests.conftest import PASSWORD, AuthActions, Users, csrf_from

pytestmark = pytest.mark.db


def test_every_route_is_guarded(app: Flask) -> None:
    """Invariant 3: only sign-in, static files and /healthz are open; JupyterHub's service
    endpoints demand the service secret instead of a user."""
    unguarded, open_, service = [], set(), set()
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        if getattr(view, "_cleanroom_guard", None):
            continue
        if rule.endpoint in SERVICE_ENDPOINTS and getattr(view, "_cleanroom_service", False):
            service.add(rule.endpoint)
            continue
        if rule.endpoint in OPEN_ENDPOINTS and (
            getattr(view, "_cleanroom_open", False) or rule.endpoint == "static"
        ):
            open_.add(rule.endpoint)
            continue
        unguarded.append(f"{rule.rule} ({rule.endpoint})")
    assert unguarded == []
    assert open_ == {"static", "auth.login", "health.healthz"}
    assert service == {"sandbox_service.login", "sandbox_service.check", "sandbox_service.token"}


def test_agreement_routes_decide_in_the_agreement_domain(app: Flask) -> None:
    """A route about one agreement asks the policy in that agreement's domain, as the user:
    the global role alone never opens it."""
    found = []
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(("/agreements/<", "/api/v1/agreements/<")):
            _action, obj, domain = app.view_functions[rule.endpoint]._cleanroom_guard
            assert domain is not None and "{slug}" in obj, rule.rule
            assert domain(slug="mfp") == "agreement:mfp"
            found.append(rule.endpoint)
    assert sorted(found) == ["agreements.show", "agreements.sign", "agreements_api.api_show"]


def test_anonymous_requests_are_refused_everywhere(app: Flask, client: FlaskClient) -> None:
    for rule in app.url_map.iter_rules():
        if rule.endpoint in OPEN_ENDPOINTS:
            continue
        path = re.sub(r"<any\(([^,)]+)[^)]*\):\w+>", r"\1", rule.rule)
        path = re.sub(r"<(int:)?\w+>", "1", path)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            resp = client.open(path, method=method)
            if path.startswith("/api/"):
                assert resp.status_code == 401, (method, path)
            elif method == "GET":
                assert resp.status_code == 302 and "/login" in resp.location, (method, path)
            else:  # POST without a session: refused by CSRF before anything else
                assert resp.status_code in (302, 400), (method, path)


def test_login_logout_round_trip(client: FlaskClient, auth: AuthActions, users: Users) -> None:
    users.make("nadia", "researcher")
    resp = auth.login("nadia")
    assert resp.status_code == 302 and resp.location == "/"
    page = client.get("/")
    assert page.status_code == 200
    assert b"Welcome, nadia" in page.data
    assert page.headers["Cache-Control"] == "no-store"
    auth.logout()
    assert client.get("/").status_code == 302


def test_failed_login_keeps_the_username_and_says_why(auth: AuthActions, users: Users) -> None:
    users.make("nadia", "researcher")
    resp = auth.login("nadia", "not the password")
    assert resp.status_code == 401
    body = resp.get_data(as_text=True)
    assert "wrong username or password" in body
    assert 'value="nadia"' in body


def test_login_without_csrf_token_is_refused(client: FlaskClient, users: Users) -> None:
    users.make("nadia", "researcher")
    resp = client.post("/login", data={"username": "nadia", "password": PASSWORD})
    assert resp.status_code == 400
    assert "reload the page" in resp.get_data(as_text=True)


def test_next_parameter_cannot_redirect_off_site(client: FlaskClient, users: Users) -> None:
    users.make("nadia", "researcher")
    token = csrf_from(client, "/login")
    for target in ("https://evil.example/", "//evil.example/x", "javascript:alert(1)"):
        resp = client.post(
            "/login",
            data={"username": "nadia", "password": PASSWORD, "csrf_token": token, "next": target},
        )
        assert resp.location == "/", target
        client.post("/logout", data={"csrf_token": csrf_from(client, "/")})
        token = csrf_from(client, "/login")


def test_session_cookie_flags(
    app: Flask, client: FlaskClient, auth: AuthActions, users: Users
) -> None:
    users.make("nadia", "researcher")
    resp = auth.login("nadia")
    cookie = next(
        v
        for k, v in resp.headers.items()
        if k == "Set-Cookie" and v.startswith("cleanroom_session=")
    )
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_secure_cookies_and_hsts_behind_https(settings_overrides) -> None:
    from hub import create_app

    app = create_app({**settings_overrides, "public_url": "https://cleanroom.example"})
    assert app.config["SESSION_COOKIE_SECURE"] is True
    resp = app.test_client().get("/login")
    assert resp.headers["Strict-Transport-Security"].startswith("max-age=")


def test_security_headers(client: FlaskClient) -> None:
    resp = client.get("/login")
    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert "Strict-Transport-Security" not in resp.headers  # plain-HTTP development


def test_password_change_ends_other_sessions(
    client: FlaskClient, auth: AuthActions, users: Users, database
) -> None:
    from hub.accounts import services

    users.make("nadia", "researcher")
    auth.login("nadia")
    assert client.get("/").status_code == 200
    with database.session() as s:
        services.set_password(s, services.get_user(s, "nadia"), "a brand new password", actor="t")
    assert client.get("/").status_code == 302


def _cookie(client: FlaskClient) -> str:
    found = client.get_cookie("cleanroom_session")
    assert found is not None
    return found.value


def test_a_captured_cookie_is_worthless_after_logout(
    app: Flask, client: FlaskClient, auth: AuthActions, users: Users, database, settings
) -> None:
    """Logout ends the session on the server (and every other one, and the API tokens): a
    copy of the cookie taken before opens nothing afterwards."""
    from hub.accounts import services

    users.make("nadia", "contributor")
    with database.session() as s:
        token = services.create_token(
            s, settings, services.get_user(s, "nadia"), "lims", ["read"], actor="t"
        ).secret
    auth.login("nadia")
    captured = _cookie(client)
    other = app.test_client()
    AuthActions(other).login("nadia")  # a second browser
    assert client.get("/datasets").status_code == 200
    auth.logout()
    thief = app.test_client()
    thief.set_cookie("cleanroom_session", captured)
    assert thief.get("/datasets").status_code == 302
    assert other.get("/datasets").status_code == 302  # signed out everywhere
    assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_the_session_key_changes_at_every_sign_in(
    client: FlaskClient, auth: AuthActions, users: Users
) -> None:
    users.make("nadia", "researcher")
    auth.login("nadia")
    first = _cookie(client)
    auth.logout()
    auth.login("nadia")
    assert _cookie(client) != first


def test_an_idle_session_ends(
    client: FlaskClient, auth: AuthActions, users: Users, database, settings
) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from hub.accounts.models import UserSession
    from hub.db import utcnow

    users.make("nadia", "researcher")
    auth.login("nadia")
    assert client.get("/").status_code == 200
    with database.session() as s:
        s.execute(
            update(UserSession).values(
                last_seen_at=utcnow() - timedelta(minutes=settings.session_idle_minutes + 1)
            )
        )
    assert client.get("/").status_code == 302


def test_disabling_ends_sessions_and_tokens(
    client: FlaskClient, auth: AuthActions, users: Users, database, settings
) -> None:
    from hub.accounts import services

    users.make("nadia", "contributor")
    with database.session() as s:
        token = services.create_token(
            s, settings, services.get_user(s, "nadia"), "lims", ["read"], actor="t"
        ).secret
    auth.login("nadia")
    with database.session() as s:
        services.set_active(s, services.get_user(s, "nadia"), False, actor="user:sam")
    assert client.get("/").status_code == 302
    with database.session() as s:
        services.set_active(s, services.get_user(s, "nadia"), True, actor="user:sam")
    assert client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_a_password_the_steward_chose_is_replaced_at_the_first_sign_in(
    client: FlaskClient, auth: AuthActions, users: Users, database
) -> None:
    from hub.accounts import services

    with database.session() as s:
        services.create_user(
            s,
            "nadia",
            "the stewards pick 2026",
            "researcher",
            institution=None,
            actor="user:sam",
            temporary=True,
        )
    resp = auth.login("nadia", "the stewards pick 2026")
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/account/password")
    for path in ("/", "/agreements", "/account/tokens"):
        resp = client.get(path)
        assert resp.status_code == 302 and resp.headers["Location"].endswith("/account/password")
    token = csrf_from(client, "/account/password")

    def change(current: str, new: str):
        return client.post(
            "/account/password",
            data={"current": current, "new": new, "again": new, "csrf_token": token},
        )

    weak = change("the stewards pick 2026", "password1234")
    assert weak.status_code == 400 and "common" in weak.get_data(as_text=True)
    wrong = change("not it", "my own long passphrase")
    assert wrong.status_code == 400 and "current password is wrong" in wrong.get_data(as_text=True)
    done = change("the stewards pick 2026", "my own long passphrase")
    assert done.status_code == 302
    assert client.get("/").status_code == 200  # this browser stays signed in
    auth.logout()
    assert auth.login("nadia", "my own long passphrase").status_code == 302
    assert client.get("/").status_code == 200


# Error shape ----------------------------------------------------------------------------


def test_api_error_shape_is_pinned(client: FlaskClient) -> None:
    resp = client.get("/api/v1/me")
    assert resp.status_code == 401
    assert resp.is_json
    assert resp.get_json() == {
        "error": {
            "code": "missing_token",
            "message": "this API needs a bearer token: `Authorization: Bearer crt_...`.",
        }
    }
    missing = client.get("/api/v1/nothing-here")
    assert missing.status_code == 404
    assert set(missing.get_json()["error"]) == {"code", "message"}


def test_html_errors_never_show_a_traceback(app: Flask, client: FlaskClient) -> None:
    @app.route("/boom-test")
    def boom() -> str:
        raise RuntimeError("secret internal detail")

    resp = client.get("/boom-test")
    body = resp.get_data(as_text=True)
    assert resp.status_code == 500
    assert "secret internal detail" not in body and "Traceback" not in body
    assert "something went wrong" in body.lower()


def test_api_unexpected_error_is_json(app: Flask, client: FlaskClient) -> None:
    @app.route("/api/v1/boom-test")
    def boom() -> str:
        raise RuntimeError("secret internal detail")

    resp = client.get("/api/v1/boom-test")
    assert resp.status_code == 500
    assert resp.get_json()["error"]["code"] == "internal_error"
    assert "secret" not in resp.get_data(as_text=True)


# API tokens over HTTP -------------------------------------------------------------------


def _token(database, settings, username: str, scopes: list[str]) -> str:
    from hub.accounts import services

    with database.session() as s:
        return services.create_token(
            s, settings, services.get_user(s, username), "t", scopes, actor="t"
        ).secret


def test_api_with_token(client: FlaskClient, users: Users, database, settings) -> None:
    users.make("nadia", "contributor")
    token = _token(database, settings, "nadia", ["read"])
    resp = client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200
    assert resp.get_json() == {
        "username": "nadia",
        "display_name": "nadia",
        "role": "contributor",
        "institution": "st-aurelia",
    }
    from sqlalchemy import select

    from hub.audit.models import AuditEntry

    with database.session() as s:
        assert "token.use" in s.scalars(select(AuditEntry.action)).all()


def test_api_refuses_scope_expired_and_cookie(
    client: FlaskClient, auth: AuthActions, users: Users, database, settings
) -> None:
    users.make("nadia", "contributor")
    upload_only = _token(database, settings, "nadia", ["upload"])
    resp = client.get("/api/v1/me", headers={"Authorization": f"Bearer {upload_only}"})
    assert resp.status_code == 403
    assert resp.get_json()["error"]["code"] == "insufficient_scope"
    resp = client.get("/api/v1/me", headers={"Authorization": "Basic abc"})
    assert resp.status_code == 401
    # A signed-in browser session does not open the API (no CSRF through it).
    auth.login("nadia")
    assert client.get("/api/v1/me").status_code == 401


def test_jobs_api_owner_and_steward(client: FlaskClient, users: Users, database, settings) -> None:
    from hub.jobs.services import enqueue, load_task_modules

    load_task_modules()
    users.make("nadia", "contributor")
    users.make("omar", "contributor")
    users.make("steward", "steward")
    with database.session() as s:
        job_id = enqueue(s, "audit.verify", actor="user:nadia").id
    for who, status in (("nadia", 200), ("omar", 403), ("steward", 200)):
        token = _token(database, settings, who, ["read"])
        resp = client.get(f"/api/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == status, who
    token = _token(database, settings, "steward", ["read"])
    resp = client.get("/api/v1/jobs/999", headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 404


def test_tokens_page_creates_shows_once_and_revokes(
    client: FlaskClient, auth: AuthActions, users: Users, database
) -> None:
    from sqlalchemy import select

    from hub.accounts.models import ApiToken

    users.make("nadia", "contributor")
    auth.login("nadia")
    token = csrf_from(client, "/account/tokens")
    resp = client.post(
        "/account/tokens",
        data={"name": "LIMS", "scopes": ["upload", "read"], "days": "7", "csrf_token": token},
    )
    body = resp.get_data(as_text=True)
    assert resp.status_code == 200 and 'data-testid="new-token">crt_' in body
    listing = client.get("/account/tokens").get_data(as_text=True)
    assert 'data-testid="new-token"' not in listing and "LIMS" in listing
    with database.session() as s:
        tid = s.scalar(select(ApiToken.id))
    client.post(f"/account/tokens/{tid}/revoke", data={"csrf_token": token})
    with database.session() as s:
        assert s.scalar(select(ApiToken.revoked_at)) is not None


def test_cannot_revoke_someone_elses_token(
    client: FlaskClient, auth: AuthActions, users: Users, database, settings
) -> None:
    from sqlalchemy import select

    from hub.accounts.models import ApiToken

    users.make("nadia", "contributor")
    users.make("omar", "contributor")
    _token(database, settings, "omar", ["read"])
    auth.login("nadia")
    with database.session() as s:
        tid = s.scalar(select(ApiToken.id))
    resp = client.post(f"/account/tokens/{tid}/revoke", data={"csrf_token": csrf_from(client, "/")})
    assert resp.status_code == 403
    with database.session() as s:
        assert s.scalar(select(ApiToken.revoked_at)) is None


# Steward pages --------------------------------------------------------------------------


def test_admin_pages_for_steward_only(client: FlaskClient, auth: AuthActions, users: Users) -> None:
    users.make("nadia", "contributor")
    users.make("sam", "steward")
    auth.login("nadia")
    assert client.get("/admin/users").status_code == 403
    auth.logout()
    auth.login("sam")
    for path in ("/admin/institutions", "/admin/users", "/admin/audit?verify=1"):
        assert client.get(path).status_code == 200, path
    assert "chain verified" in client.get("/admin/audit?verify=1").get_data(as_text=True)


def test_steward_adds_institution_and_keeps_input_on_error(
    client: FlaskClient, auth: AuthActions, users: Users
) -> None:
    users.make("sam", "steward")
    auth.login("sam")
    token = csrf_from(client, "/admin/institutions")
    ok = client.post(
        "/admin/institutions",
        data={
            "slug": "kelvin",
            "name": "Kelvin Institute",
            "kind": "academic",
            "csrf_token": token,
        },
        follow_redirects=True,
    )
    assert "Kelvin Institute" in ok.get_data(as_text=True)
    bad = client.post(
        "/admin/institutions",
        data={
            "slug": "Bad Slug!",
            "name": "Typo Hospital",
            "kind": "hospital",
            "csrf_token": token,
        },
    )
    body = bad.get_data(as_text=True)
    assert bad.status_code == 400
    assert "lower-case letters" in body and 'value="Typo Hospital"' in body


def test_audit_csv_is_formula_safe(
    client: FlaskClient, auth: AuthActions, users: Users, database
) -> None:
    from hub.audit.services import record

    users.make("sam", "steward")
    with database.session() as s:
        record(s, actor="user:x", action="upload", target='=HYPERLINK("http://x")')
    auth.login("sam")
    with client.get("/admin/audit.csv") as resp:  # closing it ends the streamed query
        text = resp.get_data(as_text=True)
    assert resp.mimetype == "text/csv"
    assert "'=HYPERLINK" in text
    assert ",=HYPERLINK" not in text


def test_healthz_is_open(client: FlaskClient) -> None:
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.get_json()["checks"]["database"] == "ok"


def test_the_web_process_does_not_load_the_model_libraries(tmp_path) -> None:
    """Presidio, spaCy, torch and SDV belong to the worker: a web process that imported them
    would start at ~420 MB instead of ~180 MB (benchmarks/upload_memory.py)."""
    code = (
        "import sys\n"
        "from hub import create_app\n"
        "from hub.settings import load_settings\n"
        f"settings = load_settings({{'data_dir': {str(tmp_path)!r}, 'embedded_worker': False}},"
        " environ={})\n"
        "create_app(settings)\n"
        "heavy = ('torch', 'spacy', 'presidio_analyzer', 'sdv', 'sklearn', 'opendp')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == ""
