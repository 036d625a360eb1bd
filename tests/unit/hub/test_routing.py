"""hub.routing: an id larger than the database can hold is an ordinary 404 on every route
that takes one, portal and API, GET and POST, on SQLite and PostgreSQL (issue 14, item 7);
numbers in query parameters and bodies are bounded too."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient

from hub.accounts import services as accounts
from hub.db import Database
from hub.routing import MAX_ID
from hub.settings import Settings
from tests.conftest import AuthActions, Users, release_into_pool

pytestmark = pytest.mark.db

#: Just beyond PostgreSQL's integer, beyond SQLite's, far beyond, and beyond what Python
#: converts from text at all (4300 digits).
TOO_LARGE = (str(MAX_ID + 1), str(2**63), str(10**30), "9" * 5000)
_PART = re.compile(r"<(?:(?P<conv>\w+)(?:\((?P<args>[^)]*)\))?:)?(?P<name>\w+)>")


def _id_routes(app: Flask, value: str) -> Iterator[tuple[str, str, str]]:
    """``(endpoint, method, path)`` of every route with an ``<int:...>`` argument, that
    argument set to ``value`` and any other to a value its converter accepts."""

    def fill(match: re.Match[str]) -> str:
        conv, args = match["conv"], match["args"] or ""
        if conv == "int":
            return value
        if conv == "any":
            return args.split(",")[0].strip().strip("'\"")
        return "x"

    for rule in app.url_map.iter_rules():
        if not any(m["conv"] == "int" for m in _PART.finditer(rule.rule)):
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            yield rule.endpoint, method, _PART.sub(fill, rule.rule)


@pytest.fixture
def steward(users: Users, database: Database, settings: Settings) -> dict[str, str]:
    """The steward, signed in to the portal; their API token's header."""
    users.make("sam", "steward")
    with database.session() as s:
        secret = accounts.create_token(
            s,
            settings,
            accounts.get_user(s, "sam"),
            "t",
            ["read", "upload", "sandbox"],
            actor="t",
        ).secret
    return {"Authorization": f"Bearer {secret}"}


def test_ids_too_large_for_the_database_are_404_on_every_route(
    app: Flask, client: FlaskClient, auth: AuthActions, steward: dict[str, str]
) -> None:
    auth.login("sam")
    seen = set()
    for value in TOO_LARGE:
        for endpoint, method, path in _id_routes(app, value):
            seen.add(endpoint)
            api = path.startswith("/api/")
            resp = client.open(path, method=method, headers=steward if api else {})
            assert resp.status_code == 404, (method, path[:80], resp.status_code)
            if api:
                assert resp.get_json() == {
                    "error": {"code": "not_found", "message": "there is nothing at this address."}
                }
            else:
                page = resp.get_data(as_text=True)
                assert "404 · not found" in page and "here is nothing at this address." in page
    # Portal and API, datasets, jobs, synthetic versions, users and tokens.
    assert {
        "datasets.show",
        "datasets.status",
        "uploads_api.api_show",
        "uploads_api.api_mapping",
        "jobs_api.job",
        "synthetic.show",
        "synthetic_api.api_show",
        "admin.user_edit",
        "tokens.revoke_token",
    } <= seen


def test_the_largest_id_still_reaches_the_view(
    client: FlaskClient, steward: dict[str, str]
) -> None:
    """The bound is the database's: the largest id is looked up, and simply not found."""
    for path, message in (
        (f"/api/v1/uploads/{MAX_ID}", f"no dataset version {MAX_ID}."),
        (f"/api/v1/jobs/{MAX_ID}", f"no job {MAX_ID}."),
    ):
        resp = client.get(path, headers=steward)
        assert resp.status_code == 404, resp.get_json()
        assert resp.get_json()["error"]["message"] == message


def test_large_numbers_in_parameters_and_bodies_are_bounded(
    app: Flask,
    client: FlaskClient,
    auth: AuthActions,
    users: Users,
    database: Database,
    settings: Settings,
    steward: dict[str, str],
) -> None:
    auth.login("sam")
    for before in (str(MAX_ID + 1), str(2**63), "9" * 5000, "-" + str(2**63)):
        assert client.get(f"/admin/audit?before={before}").status_code == 200
    users.make("nadia", "contributor")
    with database.session() as s:
        import pandas as pd

        storage = app.extensions["cleanroom.storage"]
        frame = pd.DataFrame({"lot_id": ["a"], "platform": ["central"]})
        vid = release_into_pool(s, storage, "st-aurelia", "batch", frame).id
        secret = accounts.create_token(
            s, settings, accounts.get_user(s, "nadia"), "t", ["upload"], actor="t"
        ).secret
    for seed in (MAX_ID + 1, 2**63, -1):
        resp = client.post(
            f"/api/v1/uploads/{vid}/synthesise",
            json={"seed": seed},
            headers={"Authorization": f"Bearer {secret}"},
        )
        assert resp.status_code == 400, resp.get_json()
        assert "`seed` must be between 0 and" in resp.get_json()["error"]["message"]
