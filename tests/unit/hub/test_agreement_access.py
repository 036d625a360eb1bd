"""Who reaches what through agreements, over HTTP: every role x every agreement route x every
agreement state, expiry, revocation, users moving between institutions, a researcher named
in one agreement asking for another's, and two processes staying consistent."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from hub.accounts import services as accounts
from hub.settings import Settings
from tests.conftest import PASSWORD, AuthActions, Users, csrf_from
from tests.unit.hub.conftest import AgreementWorld, agreement_terms

pytestmark = pytest.mark.db

ROOT = Path(__file__).resolve().parents[3]
STATES = ("draft", "awaiting_signatures", "active", "suspended", "expired", "terminated")

# Who: (username or None for anonymous) -> what they are in the agreements under test.
ROLES = {
    "anonymous": None,
    "steward": "sam",
    "party_admin": "acme-admin",
    "other_admin": "kelvin-admin",  # admin of an institution that is no party
    "contributor": "aurelia-data",  # party institution, not its admin
    "named_researcher": "rosa",
    "other_researcher": "omar",  # named in another agreement only
}


def _build(world: AgreementWorld) -> dict[str, str]:
    """One agreement in each state (parties acme-bio, st-aurelia; rosa named), and an
    active agreement of acme-bio and kelvin naming omar."""
    slugs = {}
    for state in STATES:
        slug = f"s-{state.replace('_', '-')}"
        past = state == "expired"
        world.create(
            agreement_terms(
                slug,
                valid_from="2020-01-01" if past else "2026-01-01",
                valid_until="2020-12-31" if past else "2099-12-31",
            )
        )
        if state != "draft":
            world.move(slug, "submit")
        if state in ("active", "suspended", "expired"):
            world.sign(slug, "aurelia-admin")
            world.sign(slug, "acme-admin")
        if state == "suspended":
            world.move(slug, "suspend")
        if state == "terminated":
            world.move(slug, "terminate")
        slugs[state] = slug
    other = agreement_terms("other", researchers="[omar]").replace("st-aurelia", "kelvin")
    world.create(other)
    world.move("other", "submit")
    world.sign("other", "acme-admin")
    assert world.sign("other", "kelvin-admin") == "active"
    return slugs


def _expected(role: str, route: str, state: str) -> bool:
    """The policy the matrix checks, written out independently of the rules."""
    if role == "anonymous":
        return False
    if route in ("admin_show", "admin_suspend"):
        return role == "steward"
    if route == "read":  # portal page and API
        if role == "party_admin":
            return True
        return role == "named_researcher" and state == "active"
    if route == "sign":
        return role == "party_admin" and state == "awaiting_signatures"
    raise AssertionError(route)


class Caller:
    def __init__(self, app: Flask, username: str | None, token: str | None) -> None:
        self.client = app.test_client()
        self.token = token
        self.csrf = ""
        if username is not None:
            AuthActions(self.client).login(username, PASSWORD)
            self.csrf = csrf_from(self.client, "/")

    def call(self, route: str, slug: str) -> int:
        c = self.client
        if route == "read":
            page = c.get(f"/agreements/{slug}").status_code
            if self.token is not None:  # the API decides the same
                api = c.get(
                    f"/api/v1/agreements/{slug}", headers={"Authorization": f"Bearer {self.token}"}
                ).status_code
                assert (page == 200) == (api == 200), (page, api)
            return page
        if route == "sign":
            return c.post(f"/agreements/{slug}/sign", data={"csrf_token": self.csrf}).status_code
        if route == "admin_show":
            return c.get(f"/admin/agreements/{slug}").status_code
        if route == "admin_suspend":
            return c.post(
                f"/admin/agreements/{slug}/suspend",
                data={"csrf_token": self.csrf, "confirmed": "yes"},
            ).status_code
        raise AssertionError(route)


def _token(world: AgreementWorld, settings: Settings, username: str) -> str:
    with world.database.session() as s:
        return accounts.create_token(
            s, settings, accounts.get_user(s, username), "t", ["read"], actor="t"
        ).secret


@pytest.fixture
def world(users: Users, database) -> AgreementWorld:  # noqa: ANN001 - the conftest fixture
    return AgreementWorld(users, database)


def test_every_role_every_route_every_state(
    world: AgreementWorld, app: Flask, settings: Settings
) -> None:
    slugs = _build(world)
    callers = {
        role: Caller(app, name, _token(world, settings, name) if name else None)
        for role, name in ROLES.items()
    }
    failures = []
    # The suspension mutates: it runs last, the steward last of all.
    for route in ("read", "sign", "admin_show", "admin_suspend"):
        for state in STATES:
            for role in sorted(ROLES, key=lambda r: r == "steward"):
                status = callers[role].call(route, slugs[state])
                if role == "anonymous":
                    ok = False
                    assert status in (302, 400, 401), (role, route, state, status)
                else:
                    assert status in (200, 302, 403), (role, route, state, status)
                    ok = status != 403
                if ok != _expected(role, route, state):
                    failures.append(f"{role} {route} {state}: {status}")
    assert failures == []
    # The other agreement: its researcher reads it, ours does not (and vice versa).
    assert callers["other_researcher"].call("read", "other") == 200
    assert callers["named_researcher"].call("read", "other") == 403
    assert callers["other_researcher"].call("read", slugs["active"]) == 403


def test_revocation_and_expiry_take_effect_on_the_next_request(
    world: AgreementWorld, client: FlaskClient, settings: Settings
) -> None:
    slug = world.active()
    headers = {"Authorization": f"Bearer {_token(world, settings, 'rosa')}"}
    assert client.get(f"/api/v1/agreements/{slug}", headers=headers).status_code == 200
    world.move(slug, "suspend")
    assert client.get(f"/api/v1/agreements/{slug}", headers=headers).status_code == 403
    world.move(slug, "resume")
    assert client.get(f"/api/v1/agreements/{slug}", headers=headers).status_code == 200
    world.move(slug, "terminate")
    assert client.get(f"/api/v1/agreements/{slug}", headers=headers).status_code == 403
    # An agreement whose window has closed grants nothing, though stored as active.
    expired = world.active(
        agreement_terms("gone", valid_from="2020-01-01", valid_until="2020-06-30")
    )
    assert client.get(f"/api/v1/agreements/{expired}", headers=headers).status_code == 403
    assert client.get("/api/v1/agreements", headers=headers).get_json() == {"agreements": []}


def test_users_moved_between_institutions(
    world: AgreementWorld, app: Flask, settings: Settings
) -> None:
    slug = world.create()
    world.move(slug, "submit")
    admin = Caller(app, "aurelia-admin", None)
    assert admin.call("read", slug) == 200
    with world.database.session() as s:  # the admin moves to kelvin (no party)
        accounts.change_user(
            s,
            accounts.get_user(s, "aurelia-admin"),
            role="contributor_admin",
            institution="kelvin",
            actor="user:sam",
        )
    admin = Caller(app, "aurelia-admin", None)  # the move ended the old session
    assert admin.call("read", slug) == 403
    assert admin.call("sign", slug) == 403
    # kelvin's admin moves to st-aurelia and signs for it instead.
    with world.database.session() as s:
        accounts.change_user(
            s,
            accounts.get_user(s, "kelvin-admin"),
            role="contributor_admin",
            institution="st-aurelia",
            actor="user:sam",
        )
    newcomer = Caller(app, "kelvin-admin", None)
    assert newcomer.call("sign", slug) == 302
    world.sign(slug, "acme-admin")
    rosa = Caller(app, "rosa", _token(world, settings, "rosa"))
    assert rosa.call("read", slug) == 200
    with world.database.session() as s:  # the researcher leaves for a non-recipient party
        accounts.change_user(
            s,
            accounts.get_user(s, "rosa"),
            role="researcher",
            institution="acme-bio",
            actor="user:sam",
        )
    rosa = Caller(app, "rosa", _token(world, settings, "rosa"))
    assert rosa.call("read", slug) == 403


def test_steward_moves_a_user_in_the_portal(
    world: AgreementWorld, client: FlaskClient, auth: AuthActions, database
) -> None:  # noqa: ANN001
    slug = world.active()
    auth.login("sam")
    token = csrf_from(client, "/admin/users")
    page = client.post(
        f"/admin/users/{world.ids['rosa']}/edit",
        data={"role": "researcher", "institution": "kelvin", "csrf_token": token},
        follow_redirects=True,
    )
    assert "their sessions end" in page.get_data(as_text=True)
    by_user = client.get("/admin/access?user=rosa").get_data(as_text=True)
    assert f"{slug}</code>" not in by_user
    refused = client.post(
        f"/admin/users/{world.ids['rosa']}/edit",
        data={"role": "contributor", "institution": "", "csrf_token": token},
        follow_redirects=True,
    )
    assert "must belong to an institution" in refused.get_data(as_text=True)


# Two processes ------------------------------------------------------------------------------

CHILD = r"""
import json, sys
from hub import create_app
app = create_app(json.loads(sys.argv[1]))
client = app.test_client()
headers = {"Authorization": "Bearer " + sys.argv[2]}
print("ready", flush=True)
for line in sys.stdin:
    print(client.get(line.strip(), headers=headers).status_code, flush=True)
"""


def test_a_suspension_in_one_process_holds_on_the_next_request_in_another(
    world: AgreementWorld,
    client: FlaskClient,
    auth: AuthActions,
    settings: Settings,
    settings_overrides: dict[str, Any],
) -> None:
    """The steward suspends through this process's portal; a second OS process running its
    own app (its own SyncedPolicy) refuses the researcher on its very next request."""
    slug = world.create()
    world.move(slug, "submit")
    token = _token(world, settings, "rosa")
    child = subprocess.Popen(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", CHILD, json.dumps(settings_overrides), token],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert child.stdin is not None and child.stdout is not None
    ask: Callable[[], int]

    def ask() -> int:
        child.stdin.write(f"/api/v1/agreements/{slug}\n")
        child.stdin.flush()
        return int(child.stdout.readline())

    try:
        assert child.stdout.readline().strip() == "ready"
        assert ask() == 403  # awaiting signatures
        world.sign(slug, "acme-admin")
        world.sign(slug, "aurelia-admin")
        assert ask() == 200
        auth.login("sam")
        csrf = csrf_from(client, f"/admin/agreements/{slug}")
        client.post(
            f"/admin/agreements/{slug}/suspend", data={"csrf_token": csrf, "confirmed": "yes"}
        )
        assert ask() == 403
        client.post(f"/admin/agreements/{slug}/resume", data={"csrf_token": csrf})
        assert ask() == 200
    finally:
        child.stdin.close()
        child.wait(timeout=30)
