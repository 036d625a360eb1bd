"""Every API route declares the token scopes it accepts (issue 18, item 3).

The guard refuses a token without one of the route's scopes (403 ``insufficient_scope``),
refuses every token on an API route that declares none, and :func:`hub.web.check_api_scopes`
refuses an app holding such a route. JupyterHub's service endpoints (``sandbox_service.*``)
take the shared service secret, not a user's token: they are outside this, as
``tests/unit/hub/test_web.py`` proves separately.
"""

from __future__ import annotations

import json

import pytest
from flask import Blueprint, Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from hub.accounts.services import TOKEN_SCOPES
from hub.audit.models import AuditEntry
from hub.audit.services import verify
from hub.db import Database
from hub.settings import Settings
from hub.web import SERVICE_ENDPOINTS, check_api_scopes, guard
from tests.conftest import Users, bearer

pytestmark = pytest.mark.db


def _api_rules(app: Flask) -> list[tuple[str, str, set[str], tuple[str, ...]]]:
    found = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/") or rule.endpoint in SERVICE_ENDPOINTS:
            continue
        view = app.view_functions[rule.endpoint]
        methods = set(rule.methods or ()) - {"HEAD", "OPTIONS"}
        found.append((rule.rule, rule.endpoint, methods, getattr(view, "_cleanroom_scopes", ())))
    return found


def test_every_api_route_declares_its_scopes(app: Flask) -> None:
    """Per route kind: sandbox and reviewed-release routes take the ``sandbox`` scope;
    uploads and other writes the ``upload`` scope; reads the ``read`` scope (an upload
    script also follows its own upload and job with its upload token)."""
    rules = _api_rules(app)
    assert len(rules) >= 30  # the API is all there: the check below is not vacuous
    wrong = []
    for path, endpoint, methods, scopes in rules:
        if not scopes or not set(scopes) <= set(TOKEN_SCOPES):
            wrong.append(f"{path} ({endpoint}): declares {scopes!r}")
        elif path.startswith(("/api/v1/sandbox/", "/api/v1/releases")):
            if scopes != ("sandbox",):
                wrong.append(f"{path} ({endpoint}): a sandbox route takes 'sandbox', not {scopes}")
        elif "POST" in methods:
            if scopes != ("upload",):
                wrong.append(f"{path} ({endpoint}): a write takes 'upload', not {scopes}")
        elif "read" not in scopes or "sandbox" in scopes:
            wrong.append(f"{path} ({endpoint}): a read takes 'read', not {scopes}")
    assert wrong == []
    declared = {endpoint: scopes for _p, endpoint, _m, scopes in rules}
    # The two routes that used to accept a token of any scope, and the agreement API.
    assert declared["jobs_api.job"] == ("read", "upload")
    assert declared["uploads_api.api_show"] == ("read", "upload")
    assert declared["agreements_api.api_show"] == ("read",)
    check_api_scopes(app)  # the app as built passes its own check


def test_an_api_route_without_scopes_is_refused() -> None:
    """The control: an app with a guarded API route declaring no scope fails the check, and
    the guard refuses any token there."""
    app = Flask(__name__)
    bp = Blueprint("stray_api", __name__, url_prefix="/api/v1/stray")

    @bp.route("")
    @guard("read", "portal")
    def stray() -> str:
        return "no"

    app.register_blueprint(bp)
    with pytest.raises(RuntimeError, match=r"/api/v1/stray \(stray_api.stray\)"):
        check_api_scopes(app)


def test_a_scope_that_does_not_exist_is_refused_at_import() -> None:
    with pytest.raises(ValueError, match="guard scope 'admin'"):
        guard("read", "portal", scope="admin")


@pytest.mark.parametrize(
    ("method", "path", "held"),
    [
        ("GET", "/api/v1/me", ("upload",)),  # a read route
        ("GET", "/api/v1/jobs/1", ("sandbox",)),  # the jobs route (any scope before)
        ("GET", "/api/v1/agreements/mfp", ("sandbox",)),  # an agreement's API
        ("GET", "/api/v1/uploads/1", ("sandbox",)),  # an upload's state
        ("POST", "/api/v1/uploads?table=batch&filename=a.csv", ("read",)),  # an upload
        ("POST", "/api/v1/uploads/1/release", ("read", "sandbox")),  # a write
        ("GET", "/api/v1/sandbox/agreements", ("read", "upload")),  # a sandbox route
        ("POST", "/api/v1/releases", ("read",)),  # reviewed release
    ],
)
def test_a_token_without_the_scope_gets_403(
    client: FlaskClient,
    users: Users,
    database: Database,
    settings: Settings,
    method: str,
    path: str,
    held: tuple[str, ...],
) -> None:
    users.make("nadia", "contributor")
    headers = bearer(database, settings, "nadia", held)
    resp = client.open(path, method=method, headers=headers, data=b"lot_id\n1\n")
    assert resp.status_code == 403, resp.get_data(as_text=True)
    assert resp.get_json()["error"]["code"] == "insufficient_scope"
    # One entry: the guard's, or on the sandbox's routes (which record every request
    # themselves) the sandbox's own.
    sandbox = path.startswith("/api/v1/sandbox/")
    with database.session() as s:
        refused = s.scalars(
            select(AuditEntry).where(AuditEntry.action.in_(("access.refused", "sandbox.refused")))
        ).all()
        assert len(refused) == 1
        assert refused[0].action == ("sandbox.refused" if sandbox else "access.refused")
        assert refused[0].actor == "user:nadia"
        detail = json.loads(refused[0].detail)
        assert detail["code" if sandbox else "reason"] == "insufficient_scope"
        assert verify(s).ok


def test_a_token_with_the_scope_passes_the_scope_check(
    client: FlaskClient, users: Users, database: Database, settings: Settings
) -> None:
    """The other side: the upload token reads its job's state (404: no such job) and the
    read token the caller's account."""
    users.make("nadia", "contributor")
    upload = bearer(database, settings, "nadia", ("upload",))
    assert client.get("/api/v1/jobs/1", headers=upload).status_code in (403, 404)
    assert (
        client.get("/api/v1/jobs/1", headers=upload).get_json()["error"]["code"]
        != "insufficient_scope"
    )
    read = bearer(database, settings, "nadia", ("read",))
    assert client.get("/api/v1/me", headers=read).get_json()["username"] == "nadia"
