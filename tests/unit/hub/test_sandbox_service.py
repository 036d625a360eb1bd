"""``/api/v1/sandbox/service/``: what JupyterHub asks the hub (login, re-check, notebook
token), behind the shared service secret."""

from __future__ import annotations

import asyncio
import socket
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient

from hub.accounts import services as accounts
from hub.agreements import services
from hub.db import Database, utcnow
from hub.jupyterhub.service import service_secret
from hub.settings import Settings
from sandbox.jupyterhub.access import hub_allows, sweep
from tests.conftest import PASSWORD, Users, activate_agreement
from tests.unit.hub.conftest import SITES, gateway_terms

pytestmark = pytest.mark.db


def _run(coro):  # noqa: ANN001, ANN202
    """Run a coroutine on its own loop in a worker thread: an earlier test (Playwright's
    sync API) may leave an event loop running in this thread, and asyncio.run refuses it."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture
def world(users: Users, database: Database, app: Flask, settings: Settings) -> dict[str, str]:
    """An active agreement naming rosa; omar is a researcher named nowhere; sam a steward."""
    for slug in SITES:
        users.institution(slug, "hospital")
        users.make(f"{slug}-admin", "contributor_admin", slug)
    users.make("sam", "steward")
    users.make("rosa", "researcher", "st-aurelia")
    users.make("omar", "researcher", "kelvin")
    activate_agreement(database, gateway_terms())
    return {"Authorization": f"Bearer {service_secret(settings)}"}


def test_the_secret_is_generated_once_and_private(settings: Settings) -> None:
    first = service_secret(settings)
    path = settings.data_path / "sandbox-service-secret"
    assert len(first) >= 32 and service_secret(settings) == first
    assert path.stat().st_mode & 0o777 == 0o600


def test_without_the_secret_every_service_endpoint_is_refused(
    client: FlaskClient, world: dict[str, str], token: str
) -> None:
    body = {"username": "rosa", "password": PASSWORD}
    for path in ("login", "check", "token"):
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Bearer {token}"},
        ):  # a user's token is no secret
            resp = client.post(f"/api/v1/sandbox/service/{path}", json=body, headers=headers)
            assert resp.status_code == 401, (path, headers)
            assert resp.json["error"]["code"] == "service_secret_required"


def test_login_checks_the_password_and_the_agreements(
    client: FlaskClient, world: dict[str, str]
) -> None:
    def login(username: str, password: str = PASSWORD):
        return client.post(
            "/api/v1/sandbox/service/login",
            headers=world,
            json={"username": username, "password": password},
        )

    ok = login("Rosa")
    assert ok.status_code == 200
    assert ok.json == {"name": "rosa", "allowed": True, "agreements": ["v2v"], "reason": None}
    nowhere = login("omar").json  # a researcher named nowhere
    assert nowhere["allowed"] is False and "not named in an active" in nowhere["reason"]
    steward = login("sam").json  # stewards are not researchers
    assert steward["allowed"] is False and "is for researchers" in steward["reason"]
    bad = login("rosa", "not the password")
    assert bad.status_code == 401 and bad.json["error"]["code"] == "login_failed"


def test_login_failures_are_throttled_as_the_portal_does(
    client: FlaskClient, world: dict[str, str], settings: Settings
) -> None:
    """JupyterHub's sign-ins pass through the same throttling: after the free failures from
    one address, that address waits; another address signs in."""

    def login(password: str, address: str):
        return client.post(
            "/api/v1/sandbox/service/login",
            headers=world,
            json={"username": "rosa", "password": password, "address": address},
        )

    for _ in range(settings.login_free_failures):
        assert login("wrong", "10.0.0.9").status_code == 401
    throttled = login(PASSWORD, "10.0.0.9")
    assert throttled.status_code == 429 and throttled.json["error"]["code"] == "login_throttled"
    assert login(PASSWORD, "10.0.0.10").status_code == 200


def test_a_password_set_by_someone_else_opens_no_sandbox(
    client: FlaskClient, world: dict[str, str], database: Database
) -> None:
    from hub.accounts import services as accounts

    with database.session() as s:
        accounts.set_password(
            s, accounts.get_user(s, "rosa"), "the stewards choice 2026", actor="t"
        )
    resp = client.post(
        "/api/v1/sandbox/service/login",
        headers=world,
        json={"username": "rosa", "password": "the stewards choice 2026"},
    )
    assert resp.status_code == 200 and resp.json["allowed"] is False
    assert "choose your own" in resp.json["reason"]


def test_check_follows_a_suspension(
    client: FlaskClient, world: dict[str, str], database: Database
) -> None:
    def check(username: str) -> bool:
        resp = client.post(
            "/api/v1/sandbox/service/check", headers=world, json={"username": username}
        )
        assert resp.status_code == 200
        return bool(resp.json["allowed"])

    assert check("rosa") and not check("omar") and not check("nobody")
    with database.session() as s:
        services.transition(s, services.get(s, "v2v"), "suspend", actor="user:sam")
    assert not check("rosa")


def test_token_is_short_lived_sandbox_scoped_and_replaces_the_last(
    client: FlaskClient, world: dict[str, str], database: Database
) -> None:
    first = client.post("/api/v1/sandbox/service/token", headers=world, json={"username": "rosa"})
    assert first.status_code == 200
    second = client.post(
        "/api/v1/sandbox/service/token", headers=world, json={"username": "rosa"}
    ).json
    with database.session() as s:
        token = accounts.verify_token(s, second["token"])
        assert token.scope_set == {"sandbox"}
        assert token.expires_at <= utcnow() + timedelta(hours=8, minutes=1)
    old = client.get(
        "/api/v1/sandbox/agreements", headers={"Authorization": f"Bearer {first.json['token']}"}
    )
    assert old.status_code == 401  # revoked by the second spawn
    new = client.get(
        "/api/v1/sandbox/agreements", headers={"Authorization": f"Bearer {second['token']}"}
    )
    assert new.status_code == 200
    refused = client.post("/api/v1/sandbox/service/token", headers=world, json={"username": "omar"})
    assert refused.status_code == 403 and refused.json["error"]["code"] == "policy_denied"


class FakeJupyterHub:
    """JupyterHub's REST side of the access sweep (list running servers, stop one)."""

    def __init__(self, *running: str) -> None:
        self.servers = set(running)
        self.stopped: list[str] = []

    async def running(self) -> list[str]:
        return sorted(self.servers)

    async def stop(self, name: str) -> None:
        self.servers.discard(name)
        self.stopped.append(name)


def test_access_sweep_stops_servers_of_users_who_lost_their_last_agreement(
    served: str,  # noqa: F811
    world: dict[str, str],
    database: Database,
    settings: Settings,
) -> None:
    # The hub's own answer over HTTP, as the JupyterHub-managed service asks it.
    allowed = hub_allows(served, service_secret(settings))
    jupyterhub = FakeJupyterHub("rosa", "omar", "sam")
    # omar is named in no agreement, sam is a steward: their servers go; rosa's stays.
    assert _run(sweep(jupyterhub.running, allowed, jupyterhub.stop)) == ["omar", "sam"]
    assert jupyterhub.servers == {"rosa"}
    assert _run(sweep(jupyterhub.running, allowed, jupyterhub.stop)) == []

    with database.session() as s:
        services.transition(s, services.get(s, "v2v"), "suspend", actor="user:sam")
    assert _run(sweep(jupyterhub.running, allowed, jupyterhub.stop)) == ["rosa"]
    assert jupyterhub.servers == set() and jupyterhub.stopped == ["omar", "sam", "rosa"]


def test_access_sweep_leaves_servers_running_while_the_hub_does_not_answer(
    served: str,  # noqa: F811
    world: dict[str, str],
    settings: Settings,
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    jupyterhub = FakeJupyterHub("rosa", "omar")
    assert (
        _run(sweep(jupyterhub.running, hub_allows(dead, service_secret(settings)), jupyterhub.stop))
        == []
    )
    assert jupyterhub.servers == {"rosa", "omar"}
    # A wrong secret is no answer of "allowed": refused, so the servers are stopped.
    assert _run(sweep(jupyterhub.running, hub_allows(served, "wrong"), jupyterhub.stop)) == [
        "omar",
        "rosa",
    ]


def test_access_sweep_stops_quietly_on_sigint_twice(tmp_path) -> None:
    """JupyterHub stops its services with SIGINT, and Ctrl-C on `cleanroom up` sends the
    process group another: the sweep ends with status 0 and no traceback."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    with socket.socket() as probe:  # nothing listens here: every sweep fails and retries
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    config = tmp_path / "run.json"
    config.write_text(
        json.dumps({"hub_url": dead, "service_secret": "x", "access_check_seconds": 30})
    )
    env = {
        **os.environ,
        "CLEANROOM_SANDBOX_CONFIG": str(config),
        "JUPYTERHUB_API_URL": f"{dead}/hub/api",
        "JUPYTERHUB_API_TOKEN": "x",
    }
    log = tmp_path / "access.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sandbox.jupyterhub.access"], env=env, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 60
        while "access sweep failed" not in log.read_text():  # the first sweep has run
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.02)  # the second lands while the first is being handled
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    err = log.read_text()
    assert proc.returncode == 0, err
    assert "KeyboardInterrupt" not in err and "Event loop stopped" not in err, err
    assert err.count("Traceback") == 1  # only the logged failure of the first sweep (no hub)
