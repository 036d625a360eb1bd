"""Fixtures shared by the hub's tests.

- ``token``: an upload token of a contributor (nadia).
- ``served``: the app on loopback over real HTTP (waitress), for the researcher client.
- ``release_world``: a :class:`ReleaseWorld` (three sites pooling ``batch`` under an active
  agreement naming rosa, output checkers, contributors and admins in and out of the request's
  institutions, the steward) that makes release requests in each state.
"""

from __future__ import annotations

import socket
import textwrap
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flask import Flask
from flask.testing import FlaskClient
from waitress import create_server

from hub.accounts import services as accounts
from hub.agreements import services
from hub.db import Database
from hub.jobs.services import load_task_modules
from hub.settings import Settings
from policies import store
from policies.store import SyncedPolicy
from tests.conftest import Users, activate_agreement, bearer, release_into_pool


@pytest.fixture(autouse=True)
def _tasks() -> None:
    load_task_modules()


@pytest.fixture
def token(users: Users, database: Database, settings: Settings) -> str:
    users.make("nadia", "contributor")
    with database.session() as s:
        return accounts.create_token(
            s, settings, accounts.get_user(s, "nadia"), "lims", ["upload", "read"], actor="t"
        ).secret


@pytest.fixture
def served(app: Flask) -> Iterator[str]:
    """The app on loopback over real HTTP, for the researcher client."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = create_server(app, host="127.0.0.1", port=port, threads=2)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


# Reviewed release: a pooled world to ask in, and requests in each state -------------------

RELEASE_SITES = ("acme-bio", "st-aurelia", "kelvin")
RELEASE_ROWS = (1701, 1689, 1712)  # lots per site: every group count has four digits
V2V_TERMS = """\
id: v2v
title: Vein-to-vein benchmarking
purpose:
  code: vein_to_vein_benchmarking
  text: Compare manufacturing across sites.
parties:
  - institution: acme-bio
    roles: [contributor]
  - institution: st-aurelia
    roles: [contributor, recipient]
  - institution: kelvin
    roles: [contributor]
tables:
  batch: all
researchers: [rosa]
valid_from: 2026-01-01
valid_until: 2099-12-31
"""
RELEASE_TERMS = V2V_TERMS + "disclosure:\n  allow_model_fitting: true\n"
RELEASE_OUTPUTS = [
    {
        "sql": "SELECT platform, COUNT(*) AS n, AVG(viability) AS v FROM batch GROUP BY platform",
        "purpose": "Table 1: lots per platform",
    },
    {
        "sql": "SELECT manufacturing_outcome, COUNT(*) AS n, AVG(culture_days) AS d "
        "FROM batch GROUP BY manufacturing_outcome",
        "purpose": "Table 2: lots per outcome",
    },
    {
        "kind": "fit",
        "table": "batch",
        "model": "linear",
        "features": ["culture_days"],
        "target": "viability",
        "purpose": "Table 3: viability by culture days",
    },
]


def release_batch(seed: int, rows: int) -> pd.DataFrame:
    """One site's lots; viability depends on culture days, so the fit has a slope."""
    rng = np.random.default_rng(100 + seed)
    days = rng.integers(7, 13, rows)
    return pd.DataFrame(
        {
            "lot_id": [f"{seed:02d}{i:030x}" for i in range(rows)],
            "platform": rng.choice(["central", "point_of_care"], rows),
            "manufacturing_outcome": rng.choice(["conforming", "failed"], rows, p=[0.7, 0.3]),
            "viability": (95 - 0.7 * days + rng.normal(0, 3, rows)).round(3),
            "culture_days": days,
        }
    )


class ReleaseWorld:
    """Three sites pooling ``batch`` under agreement ``v2v`` naming rosa, and who is who
    around a release request:

    - ``rosa``: the researcher who asks (st-aurelia); ``omar``: a researcher not named;
    - ``chris`` and ``olga``: researchers named output checkers (the two approvals);
    - ``kelvin-data``: a contributor of a contributing site; ``<site>-admin``: its admins;
    - ``northwind-admin``: the admin of an institution that contributes nothing;
    - ``sam``: the steward.

    :meth:`request` makes a request of rosa's and moves it to a state through the services.
    """

    def __init__(self, app: Flask, database: Database, settings: Settings, users: Users) -> None:
        from hub.agreements import services as agreements

        self.app, self.database, self.settings = app, database, settings
        self.outputs = RELEASE_OUTPUTS
        for slug in RELEASE_SITES:
            users.institution(slug, "hospital")
            users.make(f"{slug}-admin", "contributor_admin", slug)
        users.institution("northwind", "academic")
        users.make("northwind-admin", "contributor_admin", "northwind")
        users.make("kelvin-data", "contributor", "kelvin")
        users.make("sam", "steward")
        users.make("rosa", "researcher", "st-aurelia")
        for name in ("omar", "chris", "olga"):
            users.make(name, "researcher", "kelvin")
        storage = app.extensions["cleanroom.storage"]
        with database.session() as s:
            for n, (slug, rows) in enumerate(zip(RELEASE_SITES, RELEASE_ROWS, strict=True)):
                release_into_pool(s, storage, slug, "batch", release_batch(n, rows))
            for name in ("chris", "olga"):
                accounts.get_user(s, name).is_output_checker = True
        with database.session() as s:
            agreements.create(s, RELEASE_TERMS, actor="user:sam")
        with database.session() as s:
            agreements.transition(s, agreements.get(s, "v2v"), "submit", actor="user:sam")
        for slug in RELEASE_SITES:
            with database.session() as s:
                admin = accounts.get_user(s, f"{slug}-admin")
                agreements.sign(s, agreements.get(s, "v2v"), admin, actor=f"user:{slug}-admin")
        self.rosa = self.bearer("rosa")

    def bearer(self, username: str) -> dict[str, str]:
        """Headers with a new sandbox-scoped token of ``username``."""
        with self.database.session() as s:
            secret = accounts.create_token(
                s, self.settings, accounts.get_user(s, username), "t", ["sandbox"], actor="t"
            ).secret
        return {"Authorization": f"Bearer {secret}"}

    def ask(self, outputs: list[dict] | None = None, title: str = "Paper 1") -> int:
        """A new request of rosa's through the API; its id."""
        resp = self.app.test_client().post(
            "/api/v1/releases",
            json={"agreement": "v2v", "title": title, "outputs": outputs or RELEASE_OUTPUTS},
            headers=self.rosa,
        )
        assert resp.status_code == 201, resp.get_json()
        return int(resp.get_json()["id"])

    def request(self, state: str, *, objection: bool = False) -> int:
        """A new request of rosa's in ``state``: ``in_review``, ``approved``, ``released``
        or ``rejected``. With ``objection``, kelvin's admin objects while it is in review
        (open, except on a released request, where the steward dismissed it)."""
        from hub.releases import services

        rid = self.ask(title=f"Paper ({state})")
        with self.database.session() as s:
            found = services.get(s, rid)
            if objection:
                raised = services.object_to(
                    s, found, accounts.get_user(s, "kelvin-admin"), "Our lots show."
                )
            if state == "rejected":
                services.review(
                    s, self.settings, found, accounts.get_user(s, "olga"), "reject", "Too fine."
                )
            elif state in ("approved", "released"):
                for name in ("chris", "olga"):
                    services.review(s, self.settings, found, accounts.get_user(s, name), "approve")
            if state == "released":
                if objection:
                    services.resolve(
                        s, found, raised, accounts.get_user(s, "sam"), "dismissed", "Fine."
                    )
                assert found.window_ends_at is not None
                assert services.settle(s, found, found.window_ends_at + timedelta(seconds=1))
            assert found.state == state, (found.state, state)
        return rid

    def pool(self, table: str = "batch") -> pd.DataFrame:
        """The pooled table as the files in the pool zone hold it, read with pandas (not
        through the hub), with each row's institution from its partition."""
        found = []
        root = Path(self.settings.data_dir)
        for path in sorted(root.rglob(f"pool/{table}/institution=*/version=*/*.parquet")):
            institution = next(p for p in path.parts if p.startswith("institution="))
            frame = pd.read_parquet(path)
            found.append(frame.assign(institution=institution.split("=", 1)[1]))
        assert found, f"no pooled {table} files under the data directory"
        return pd.concat(found, ignore_index=True)


@pytest.fixture
def release_world(app: Flask, database: Database, settings: Settings, users: Users) -> ReleaseWorld:
    """The :class:`ReleaseWorld`: pooled data, an active agreement naming rosa, output
    checkers, contributors and admins in and out of the request's institutions."""
    return ReleaseWorld(app, database, settings, users)


# The gateway's pool: three sites' released batch data under an agreement naming rosa ------

SITES = ("acme-bio", "st-aurelia", "kelvin")
# Lots per site: enough that a site's noisy count (a fit's rules spend ε 0.2: Laplace scale
# 5) falls below the institution threshold (10) about once in 10^6 runs, not once in 250.
ROWS_PER_SITE = 80
LOTS = ROWS_PER_SITE * len(SITES)


def gateway_terms(disclosure: str = "") -> str:
    return V2V_TERMS + disclosure


def batch_frame(seed: int, rows: int = ROWS_PER_SITE) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "lot_id": [f"{seed:02d}{i:030x}" for i in range(rows)],
            "platform": rng.choice(["central", "point_of_care"], rows),
            "manufacturing_outcome": rng.choice(["conforming", "failed"], rows, p=[0.8, 0.2]),
            "viability": rng.normal(88, 4, rows).round(1),
            "culture_days": rng.integers(7, 12, rows),
        }
    )


@pytest.fixture
def pooled(users: Users, database: Database, app) -> dict[str, str]:
    """Three contributors with released batch data, an active agreement naming rosa, and
    sandbox tokens for rosa (named) and omar (not named)."""
    for slug in SITES:
        users.institution(slug, "hospital")
        users.make(f"{slug}-admin", "contributor_admin", slug)
    users.make("sam", "steward")
    users.make("rosa", "researcher", "st-aurelia")
    users.make("omar", "researcher", "kelvin")
    storage = app.extensions["cleanroom.storage"]
    with database.session() as s:
        for n, slug in enumerate(SITES):
            release_into_pool(s, storage, slug, "batch", batch_frame(n))
    return {}


QUERY = (
    "SELECT platform, COUNT(*) AS n, AVG(viability) AS mean_viability FROM batch GROUP BY platform"
)


def whole_count(client: FlaskClient, headers: dict[str, str]) -> dict:
    """``SELECT COUNT(*) FROM batch`` with one row per patient: the 40 patients of each
    institution pass the noisy institution rules (threshold 2 scales = 6) all but certainly.
    The answer, with its count's noise ``scale``."""
    whole = client.post(
        "/api/v1/sandbox/query",
        json={"agreement": "v2v", "sql": "SELECT COUNT(*) FROM batch", "rows_per_patient": 1},
        headers=headers,
    ).get_json()
    return {**whole, "scale": whole["aggregates"][0]["noise_scale"]["n"]}


# Agreements between acme-bio and st-aurelia (the agreements' own tests) ------------------


def agreement_terms(
    slug: str = "mfp",
    *,
    researchers: str = "[rosa]",
    valid_from: str = "2026-01-01",
    valid_until: str = "2099-12-31",
    extra: str = "",
) -> str:
    return (
        textwrap.dedent(f"""\
        id: {slug}
        title: Manufacturing-failure prediction
        purpose:
          code: manufacturing_failure_prediction
          text: Predict failed runs.
        parties:
          - institution: acme-bio
            roles: [contributor]
          - institution: st-aurelia
            roles: [contributor, recipient]
        tables:
          batch: [lot_id, viability]
          collection: all
        researchers: {researchers}
        valid_from: {valid_from}
        valid_until: {valid_until}
        """)
        + extra
    )


class AgreementWorld:
    """Two parties with an admin each, a steward, and researchers at two institutions."""

    def __init__(self, users: Users, database: Database) -> None:
        self.database = database
        users.institution("acme-bio", "manufacturer")
        users.institution("st-aurelia", "hospital")
        users.institution("kelvin", "academic")
        self.ids = {}
        for name, role, inst in (
            ("sam", "steward", None),
            ("acme-admin", "contributor_admin", "acme-bio"),
            ("aurelia-admin", "contributor_admin", "st-aurelia"),
            ("aurelia-data", "contributor", "st-aurelia"),
            ("kelvin-admin", "contributor_admin", "kelvin"),
            ("rosa", "researcher", "st-aurelia"),
            ("omar", "researcher", "kelvin"),
        ):
            self.ids[name] = users.make(name, role, inst).id

    def run(self, fn: Callable[..., object], *args: object, **kwargs: object) -> object:
        with self.database.session() as s:
            return fn(s, *args, **kwargs)

    def create(self, text: str | None = None) -> str:
        with self.database.session() as s:
            return services.create(s, text or agreement_terms(), actor="user:sam").slug

    def move(self, slug: str, event: str) -> None:
        with self.database.session() as s:
            services.transition(s, services.get(s, slug), event, actor="user:sam")

    def sign(self, slug: str, username: str) -> str:
        with self.database.session() as s:
            return services.sign(
                s, services.get(s, slug), accounts.get_user(s, username), actor=f"user:{username}"
            ).value

    def active(self, text: str | None = None) -> str:
        slug = self.create(text)
        self.move(slug, "submit")
        self.sign(slug, "acme-admin")
        assert self.sign(slug, "aurelia-admin") == "active"
        return slug

    def rules(self, slug: str) -> list[tuple[str, ...]]:
        return store.load_rules(self.database.engine, [f"agreement:{slug}"])

    def policy(self, **kwargs: object) -> SyncedPolicy:
        return SyncedPolicy(self.database.engine, **kwargs)  # type: ignore[arg-type]

    def user(self, name: str):  # noqa: ANN201 - a detached User
        with self.database.session() as s:
            return accounts.get_user(s, name)


# Release review: the gateway's pool, its agreement active, output checkers ------------------

TABLE = "SELECT platform, COUNT(*) AS n, AVG(viability) AS v FROM batch GROUP BY platform"
REVIEW_TERMS = "disclosure:\n  allow_model_fitting: true\n  review_window_days: 7\n"


@pytest.fixture
def review_world(pooled, users, database: Database, settings: Settings):
    """The agreement active, rosa's sandbox token, two output checkers (one of them rosa's
    colleague omar), and rosa an output checker too (she may still not review her own)."""
    activate_agreement(database, gateway_terms(REVIEW_TERMS))
    users.make("chris", "researcher", "kelvin")
    with database.session() as s:
        for name in ("chris", "omar", "rosa"):
            accounts.get_user(s, name).is_output_checker = True
    return {"rosa": bearer(database, settings, "rosa")}
