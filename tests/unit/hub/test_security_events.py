"""Everything security-relevant is in the ledger (issue 18, item 5): refused uploads, failed
sign-ins on the portal, the API and JupyterHub's login, refusals by the guard on pages and
API routes (not static files), and downloads. Each leaves exactly one entry naming who and
what; hostile input (a 400-character name, a token of garbage) leaves the chain intact."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from hub.audit.models import AuditEntry
from hub.audit.services import verify
from hub.db import Database
from hub.settings import Settings
from tests.conftest import PASSWORD, AuthActions, Users, bearer, csrf_from
from tests.unit.hub.conftest import ReleaseWorld

pytestmark = pytest.mark.db

BATCH_CSV = b"Lot No.,COI,Platform\nLOT-1,COI-0001,central\nLOT-2,COI-0002,central\n"


@pytest.fixture
def settings_overrides(settings_overrides: dict[str, Any]) -> dict[str, Any]:
    """Uploads limited to 1 MB, so that a refused size costs little to send."""
    return {**settings_overrides, "max_upload_mb": 1}


def entries(database: Database, action: str) -> list[dict[str, Any]]:
    """The ledger's ``action`` entries (actor, target, detail), after checking the chain."""
    with database.session() as s:
        assert verify(s).ok
        return [
            {"actor": e.actor, "target": e.target, "detail": json.loads(e.detail or "{}")}
            for e in s.scalars(
                select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)
            )
        ]


def _upload(client: FlaskClient, headers: dict[str, str], body: bytes, **query: str) -> Any:
    args = {"table": "batch", "filename": "lims.csv", **query}
    return client.post(
        "/api/v1/uploads?" + "&".join(f"{k}={v}" for k, v in args.items()),
        data=body,
        headers={**headers, "Content-Type": "application/octet-stream"},
    )


# Refused uploads ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "query", "status", "reason"),
    [
        (b"x" * (3 << 20), {}, 413, "too_large"),  # declared over the limit: before the view
        (b"x," * (600 << 10), {}, 413, "payload_too_large"),  # over it while it streams
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, {}, 400, None),  # not a table
        (BATCH_CSV, {"table": "no_such_table"}, 400, None),  # no such CDM table
        (BATCH_CSV, {"filename": ""}, 400, "bad_request"),  # malformed request
    ],
)
def test_a_refused_upload_leaves_one_entry(
    client: FlaskClient,
    users: Users,
    database: Database,
    settings: Settings,
    body: bytes,
    query: dict[str, str],
    status: int,
    reason: str | None,
) -> None:
    users.make("nadia", "contributor")
    resp = _upload(client, bearer(database, settings, "nadia", ("upload",)), body, **query)
    assert resp.status_code == status, resp.get_json()
    (entry,) = entries(database, "upload.refused")
    assert entry["actor"] == "user:nadia" and entry["target"] == "institution:st-aurelia"
    assert entry["detail"]["reason"] == (reason or resp.get_json()["error"]["code"])
    assert entry["detail"]["status"] == status
    assert entries(database, "upload") == []  # and nothing was taken in


def test_an_accepted_upload_is_not_a_refusal(
    client: FlaskClient, users: Users, database: Database, settings: Settings
) -> None:
    users.make("nadia", "contributor")
    resp = _upload(client, bearer(database, settings, "nadia", ("upload",)), BATCH_CSV)
    assert resp.status_code == 201
    assert entries(database, "upload.refused") == []
    assert len(entries(database, "upload")) == 1


def test_a_refused_portal_upload_leaves_one_entry(
    client: FlaskClient, auth: AuthActions, users: Users, database: Database
) -> None:
    users.make("nadia", "contributor")
    auth.login("nadia")
    token = csrf_from(client, "/datasets")
    resp = client.post(
        "/datasets",
        data={
            "csrf_token": token,
            "table": "batch",
            "file": (io.BytesIO(b"\x00\x01\x02binary" * 50), "lims.csv"),
        },
        content_type="multipart/form-data",
    )
    assert resp.status_code == 303
    (entry,) = entries(database, "upload.refused")
    assert entry["actor"] == "user:nadia" and entry["detail"]["filename"] == "lims.csv"


def test_an_upload_refused_by_the_policy_is_an_access_refusal(
    client: FlaskClient, users: Users, database: Database, settings: Settings
) -> None:
    """A researcher may not upload: the guard refuses and records it (once)."""
    users.make("rosa", "researcher")
    resp = _upload(client, bearer(database, settings, "rosa", ("upload",)), BATCH_CSV)
    assert resp.status_code == 403
    (entry,) = entries(database, "access.refused")
    assert entry["actor"] == "user:rosa" and entry["target"] == "route:uploads_api.api_upload"
    assert entry["detail"]["action"] == "upload" and entry["detail"]["object"] == "datasets"


# Failed sign-ins ---------------------------------------------------------------------------


def test_a_failed_portal_sign_in_leaves_one_entry(
    auth: AuthActions, users: Users, database: Database
) -> None:
    users.make("nadia", "contributor")
    assert auth.login("nadia", "not the password").status_code == 401
    (entry,) = entries(database, "login.failure")
    assert entry["target"] == "user:nadia" and entry["detail"]["reason"] == "wrong password"


@pytest.mark.parametrize(
    ("header", "reason", "target"),
    [
        ("Bearer crt_AAAAAAAAAAAAAAAA_" + "x" * 30, "invalid_token", "token:AAAAAAAAAAAAAAAA"),
        ("Bearer " + "A" * 400, "invalid_token", "token:malformed"),
        ("Basic bmFkaWE6cHc=", "invalid_token", "token:malformed"),
    ],
)
def test_a_refused_api_token_leaves_one_entry(
    client: FlaskClient, database: Database, header: str, reason: str, target: str
) -> None:
    resp = client.get("/api/v1/me", headers={"Authorization": header})
    assert resp.status_code == 401
    (entry,) = entries(database, "token.failure")
    assert entry == {
        "actor": "anonymous",
        "target": target,
        "detail": {"reason": reason, "method": "GET", "path": "/api/v1/me"},
    }


def test_a_revoked_token_leaves_one_entry(
    client: FlaskClient, users: Users, database: Database, settings: Settings
) -> None:
    from hub.accounts import services as accounts
    from hub.accounts.models import ApiToken

    users.make("nadia", "contributor")
    headers = bearer(database, settings, "nadia", ("read",))
    with database.session() as s:
        accounts.revoke_token(s, s.scalars(select(ApiToken)).one(), actor="user:nadia")
    assert client.get("/api/v1/me", headers=headers).status_code == 401
    (entry,) = entries(database, "token.failure")
    assert entry["detail"]["reason"] == "token_revoked"


def test_jupyterhub_sign_ins_are_recorded(
    client: FlaskClient, app: Flask, users: Users, database: Database
) -> None:
    """A wrong password through JupyterHub is a failed sign-in; a wrong service secret is a
    refused access to the service endpoint."""
    from hub.jupyterhub.service import service_secret

    users.make("rosa", "researcher")
    secret = service_secret(app.config["CLEANROOM_SETTINGS"])
    resp = client.post(
        "/api/v1/sandbox/service/login",
        json={"username": "rosa", "password": "wrong", "address": "10.0.0.9"},
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert resp.status_code == 401
    (failure,) = entries(database, "login.failure")
    assert failure["target"] == "user:rosa"
    assert failure["detail"]["address"] == "sandbox:10.0.0.9"
    resp = client.post(
        "/api/v1/sandbox/service/login",
        json={"username": "rosa", "password": PASSWORD},
        headers={"Authorization": "Bearer not-the-secret"},
    )
    assert resp.status_code == 401
    (refused,) = entries(database, "access.refused")
    assert refused["actor"] == "anonymous"
    assert refused["target"] == "route:sandbox_service.login"
    assert len(entries(database, "login.failure")) == 1  # the password was never checked


def test_hostile_names_keep_the_ledger_intact(client: FlaskClient, database: Database) -> None:
    """An anonymous caller with a 400-character name (control characters, quotes, a
    formula) fails to sign in; the entry keeps a bounded name and the chain verifies."""
    name = ("=cmd|'/c calc'!A0\"\x00\x1b" + "é" * 40) * 8
    assert len(name) >= 400
    token = csrf_from(client, "/login")
    resp = client.post(
        "/login", data={"username": name, "password": "x" * 400, "csrf_token": token}
    )
    assert resp.status_code == 401
    (entry,) = entries(database, "login.failure")  # entries() verifies the chain
    assert entry["actor"] == "anonymous"
    assert len(entry["target"]) <= len("user:") + 64
    assert "\x00" not in entry["target"] and "\x1b" not in entry["target"]


# Refusals by the guard ---------------------------------------------------------------------


def test_a_refused_page_leaves_one_entry_and_static_files_none(
    client: FlaskClient, auth: AuthActions, users: Users, database: Database
) -> None:
    users.make("nadia", "contributor")
    auth.login("nadia")
    assert client.get("/admin/").status_code == 403
    (entry,) = entries(database, "access.refused")
    assert entry["actor"] == "user:nadia"
    assert entry["target"] == "route:admin.index"
    assert entry["detail"] == {
        "action": "read",
        "object": "admin",
        "method": "GET",
        "path": "/admin/",
        "reason": "forbidden",
        "token": None,
    }
    static = [r.rule for r in client.application.url_map.iter_rules() if r.endpoint == "static"]
    assert static
    client.get("/static/does-not-matter.css")
    client.get("/static/app.css")
    assert len(entries(database, "access.refused")) == 1


def test_a_refused_api_route_names_the_token(
    client: FlaskClient, users: Users, database: Database, settings: Settings
) -> None:
    users.make("nadia", "contributor")
    headers = bearer(database, settings, "nadia", ("read",))
    assert client.get("/api/v1/uploads", headers=headers).status_code == 200
    researcher_only = bearer(database, settings, "nadia", ("read", "upload"))
    assert client.get("/api/v1/agreements/v2v", headers=researcher_only).status_code == 403
    (entry,) = entries(database, "access.refused")
    assert entry["actor"] == "user:nadia" and entry["target"] == "route:agreements_api.api_show"
    assert entry["detail"]["object"] == "agreements/v2v" and len(entry["detail"]["token"]) == 16


def test_a_refused_sandbox_request_is_its_one_sandbox_entry(
    client: FlaskClient, users: Users, database: Database, settings: Settings
) -> None:
    """The sandbox's routes record every request themselves: a refusal by the guard there is
    their one ``sandbox.refused`` entry, not a second ``access.refused``."""
    users.make("nadia", "contributor")
    headers = bearer(database, settings, "nadia", ("sandbox",))
    assert client.post("/api/v1/sandbox/query", headers=headers, json={}).status_code == 403
    assert entries(database, "access.refused") == []
    (entry,) = entries(database, "sandbox.refused")
    assert entry["actor"] == "user:nadia" and entry["detail"]["code"] == "forbidden"


# Downloads ---------------------------------------------------------------------------------


def test_a_report_download_leaves_one_entry(
    client: FlaskClient, auth: AuthActions, users: Users, database: Database, settings: Settings
) -> None:
    from hub.ingest.models import DatasetVersion

    users.make("nadia", "contributor")
    resp = _upload(client, bearer(database, settings, "nadia", ("upload",)), BATCH_CSV)
    version_id = resp.get_json()["id"]
    with database.session() as s:
        version = s.get(DatasetVersion, version_id)
        assert version is not None
        storage = client.application.extensions["cleanroom.storage"]
        version.report_key = f"quarantine/st-aurelia/report-{version_id}.csv"
        storage.put(version.report_key, io.BytesIO(b"row,problem\n"))
    auth.login("nadia")
    got = client.get(f"/datasets/{version_id}/report.csv")
    assert got.status_code == 200 and got.data == b"row,problem\n"
    (entry,) = entries(database, "export.download")
    assert entry["actor"] == "user:nadia" and entry["target"] == f"dataset:{version_id}"
    assert entry["detail"]["format"] == "csv" and entry["detail"]["file"] == "report"


def test_a_release_download_leaves_one_entry_per_file(
    app: Flask, release_world: ReleaseWorld, database: Database
) -> None:
    rid = release_world.request("released")
    browser = app.test_client()
    AuthActions(browser).login("rosa")
    assert browser.get(f"/releases/{rid}/1.csv").status_code == 200
    assert browser.get(f"/releases/{rid}/1.xlsx").status_code == 200
    got = entries(database, "export.download")
    assert [(e["actor"], e["target"], e["detail"]["format"]) for e in got] == [
        ("user:rosa", f"release:{rid}", "csv"),
        ("user:rosa", f"release:{rid}", "xlsx"),
    ]
    assert all(e["detail"]["output"] == 1 and e["detail"]["result_hash"] for e in got)


def test_a_wrong_current_password_leaves_one_entry(
    client: FlaskClient, auth: AuthActions, users: Users, database: Database
) -> None:
    """Someone at a signed-in browser who does not know its password cannot change it, and
    the attempt is recorded."""
    users.make("nadia", "contributor")
    auth.login("nadia")
    token = csrf_from(client, "/account/password")
    new = "a brand new passphrase for nadia 42"
    resp = client.post(
        "/account/password",
        data={"csrf_token": token, "current": "a guess", "new": new, "again": new},
    )
    assert resp.status_code == 400
    (entry,) = entries(database, "password.failure")
    assert entry["actor"] == "user:nadia" and entry["target"] == "user:nadia"
