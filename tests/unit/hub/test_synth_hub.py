"""Synthetic versions in the hub (hub.synth): the jobs, the gates, "share synthetic only",
the gateway's synthetic endpoint, the portal report and ``cleanroom synth``.

Tables are small (150 rows per institution) so each synthesis takes a few seconds. On so few
rows the DCR overfitting score (a 30-row holdout) is noisy from seed to seed; the seeds of
the passing cases are ones whose synthesis passes every default gate (the same every run:
synthesis is seeded)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from anonymisation.synthesis import BACKENDS, register_backend
from hub.agreements import services as agreements
from hub.audit.models import AuditEntry
from hub.cli import cli
from hub.db import Database
from hub.ingest import services as ingest
from hub.jobs.services import Worker
from hub.settings import Settings
from hub.synth import services as synth
from hub.synth.models import SyntheticVersion
from tests.conftest import AuthActions, Users, activate_agreement, bearer, release_into_pool
from tests.unit.hub.conftest import SITES, gateway_terms

pytestmark = pytest.mark.db

ALLOW = "disclosure:\n  allow_synthetic: true\n"


def _deidentified_batch(seed: int, rows: int = 150) -> pd.DataFrame:
    """A batch table as the pool holds it: pseudonyms, day offsets, no direct identifier."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, 40, rows)
    return pd.DataFrame(
        {
            "lot_id": [f"{seed:02x}{i:030x}" for i in range(rows)],
            "coi_id": [f"c{seed:01x}{i:030x}" for i in range(rows)],
            "platform": rng.choice(["central", "point_of_care"], rows),
            "manufacturing_outcome": rng.choice(["conforming", "failed"], rows, p=[0.8, 0.2]),
            "viability": rng.normal(88, 4, rows).round(1),
            "culture_days": rng.integers(7, 12, rows),
            "manufacturing_start": start,
            "release_date": start + rng.integers(8, 20, rows),
        }
    )


@pytest.fixture
def pool(users: Users, database: Database, app: Flask) -> dict[str, int]:
    """Three contributors with a released batch version each; rosa a researcher; sam the
    steward. Returns the dataset version ids by institution."""
    for slug in SITES:
        users.institution(slug, "hospital")
        users.make(f"{slug}-admin", "contributor_admin", slug)
    users.make("sam", "steward")
    users.make("rosa", "researcher", "st-aurelia")
    storage = app.extensions["cleanroom.storage"]
    ids = {}
    with database.session() as s:
        for n, slug in enumerate(SITES):
            frame = _deidentified_batch(n + 1)
            ids[slug] = release_into_pool(s, storage, slug, "batch", frame).id
    return ids


def _run_jobs(database: Database, settings: Settings) -> None:
    worker = Worker(database, settings, "test")
    while worker.run_once() is not None:
        pass


def _pool_ids(app: Flask, column: str = "lot_id") -> set[str]:
    storage = app.extensions["cleanroom.storage"]
    ids: set[str] = set()
    for info in storage.list("pool/"):
        with storage.open(info.key) as fh:
            ids |= set(pq.read_table(pa.BufferReader(fh.read())).column(column).to_pylist())
    return ids


def test_contributor_synthesises_a_version_and_researchers_read_its_rows(
    app: Flask,
    client: FlaskClient,
    auth: AuthActions,
    database: Database,
    settings: Settings,
    pool: dict[str, int],
) -> None:
    activate_agreement(database, gateway_terms(ALLOW))
    acme = bearer(database, settings, "acme-bio-admin", ("upload", "read"))
    resp = client.post(
        f"/api/v1/uploads/{pool['acme-bio']}/synthesise", json={"seed": 1}, headers=acme
    )
    assert resp.status_code == 202, resp.get_json()
    synthetic_id = resp.get_json()["id"]
    assert resp.get_json()["state"] == "queued" and resp.get_json()["method"] == "gaussian_copula"
    # Not yet published: the gateway says so.
    rosa = bearer(database, settings, "rosa")
    url = "/api/v1/sandbox/synthetic/batch?agreement=v2v"
    assert client.get(url, headers=rosa).get_json()["error"]["code"] == "no_synthetic_version"

    _run_jobs(database, settings)
    shown = client.get(f"/api/v1/synthetic/{synthetic_id}", headers=acme).get_json()
    assert shown["state"] == "published", shown["error"] or shown["report"]["gates"]
    report = shown["report"]
    assert report["gates"] == {"passed": True, "failed": []}
    assert report["quality"]["score"] >= 0.75
    assert report["privacy"]["copied_rows"] == 0
    assert shown["plots"] and all(p.endswith(".svg") for p in shown["plots"])

    body = client.get(url + "&limit=100", headers=rosa).get_json()
    assert body["synthetic_versions"] == [synthetic_id]
    assert body["total"] == 150 and len(body["rows"]) == 100 and body["next_offset"] == 100
    assert {"lot_id", "platform", "viability"} <= set(body["columns"])
    rest = client.get(url + "&offset=100", headers=rosa).get_json()
    assert len(rest["rows"]) == 50 and rest["next_offset"] is None
    frame = pd.DataFrame(body["rows"] + rest["rows"], columns=body["columns"])
    # Never a real pseudonym: synthetic ids are "S" + 31 hex and differ from every pool id.
    assert frame["lot_id"].str.fullmatch(r"S[0-9a-f]{31}").all()
    assert not set(frame["lot_id"]) & _pool_ids(app)
    assert not set(frame["coi_id"].dropna()) & _pool_ids(app, "coi_id")
    with database.session() as s:
        actions = [e.action for e in s.scalars(select(AuditEntry).order_by(AuditEntry.id))]
    assert {"synth.request", "synth.published", "sandbox.synthetic"} <= set(actions)

    # The portal: the version page lists it, the report page shows scores, gates and plots.
    auth.login("acme-bio-admin")
    page = client.get(f"/datasets/{pool['acme-bio']}").get_data(as_text=True)
    assert "Synthetic versions" in page and "Generate synthetic version" in page
    report_page = client.get(f"/synthetic/{synthetic_id}").get_data(as_text=True)
    assert "DCR overfitting protection" in report_page and "failed" not in report_page
    plot = client.get(f"/synthetic/{synthetic_id}/plots/{shown['plots'][0]}")
    assert plot.status_code == 200 and plot.mimetype == "image/svg+xml"
    assert b"<svg" in plot.data and b"http" not in plot.data.replace(b"http://www.w3.org", b"")
    assert client.get(f"/synthetic/{synthetic_id}/plots/..%2Fx.svg").status_code == 404
    # Another institution's contributor sees none of it.
    auth.logout()
    auth.login("kelvin-admin")
    assert client.get(f"/synthetic/{synthetic_id}").status_code == 403
    assert client.get(f"/synthetic/{synthetic_id}/plots/{shown['plots'][0]}").status_code == 403


class LeakyBackend:
    """Hands back its training rows: the gates must stop it."""

    name = "leaky"

    def fit(self, frames, metadata, *, seed):  # type: ignore[no-untyped-def]
        self.frames = {n: f.reset_index(drop=True) for n, f in frames.items()}

    def sample(self, *, num_rows=None, scale=None, seed):  # type: ignore[no-untyped-def]
        return {n: f.head(num_rows) for n, f in self.frames.items()}


def test_a_version_failing_a_gate_is_not_published(
    app: Flask,
    client: FlaskClient,
    auth: AuthActions,
    database: Database,
    settings: Settings,
    pool: dict[str, int],
) -> None:
    activate_agreement(database, gateway_terms(ALLOW))
    register_backend("leaky", LeakyBackend)
    try:
        with database.session() as s:
            version = ingest.get_version(s, pool["acme-bio"])
            synthetic_id = synth.request_for_version(
                s, settings, version, actor="t", method="leaky"
            ).id
        _run_jobs(database, settings)
    finally:
        BACKENDS.pop("leaky", None)
    with database.session() as s:
        synthetic = synth.get(s, synthetic_id)
        assert synthetic.state == "failed_gates" and synthetic.data_key == ""
        failed = {g["gate"] for g in synth.scores(synthetic)["failed_gates"]}
        assert "copied_rows" in failed
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "synth.failed_gates"))
        assert "copied_rows" in json.loads(entry.one().detail)["failed_gates"]
    assert not list(
        app.extensions["cleanroom.storage"].list(
            f"synthetic/batch/dataset={pool['acme-bio']}/synthetic={synthetic_id}/part"
        )
    )
    rosa = bearer(database, settings, "rosa")
    resp = client.get("/api/v1/sandbox/synthetic/batch?agreement=v2v", headers=rosa)
    assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "no_synthetic_version"
    auth.login("sam")  # the steward sees the report and which gate failed
    page = client.get(f"/synthetic/{synthetic_id}").get_data(as_text=True)
    assert "Not published" in page and "copy a unique real row" in page
    assert "failed_gates" in client.get("/synthetic").get_data(as_text=True)


def test_synthetic_only_versions_leave_the_real_data_views(
    client: FlaskClient, database: Database, settings: Settings, pool: dict[str, int]
) -> None:
    activate_agreement(database, gateway_terms(ALLOW))
    kelvin = bearer(database, settings, "kelvin-admin", ("upload",))
    resp = client.post(f"/api/v1/uploads/{pool['kelvin']}/synthetic-only", headers=kelvin)
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["upload"]["synthetic_only"] is True and body["synthetic"]["state"] == "queued"
    with database.session() as s:
        stored = agreements.get(s, "v2v")
        real = {v.id for v in agreements.pool_versions(s, stored, "batch")}
        assert real == {pool["acme-bio"], pool["st-aurelia"]}
        every = agreements.pool_versions(s, stored, "batch", include_synthetic_only=True)
        assert {v.id for v in every} == set(pool.values())
        assert len(ingest.released_keys(s, "batch")) == 2
        queued = s.scalars(select(SyntheticVersion)).one()
        assert queued.dataset_version_id == pool["kelvin"]
    rosa = bearer(database, settings, "rosa")
    resp = client.post(
        "/api/v1/sandbox/query",
        headers=rosa,
        json={"agreement": "v2v", "sql": "SELECT COUNT(*) AS n FROM batch"},
    )
    assert resp.status_code == 200, resp.get_json()
    with database.session() as s:
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "sandbox.query")).one()
    assert json.loads(entry.detail)["institutions"] == ["acme-bio", "st-aurelia"]
    # Asking again changes nothing; another institution may not flag it.
    again = client.post(f"/api/v1/uploads/{pool['kelvin']}/synthetic-only", headers=kelvin)
    assert again.get_json()["synthetic"] is None
    acme = bearer(database, settings, "acme-bio-admin", ("upload",))
    assert (
        client.post(f"/api/v1/uploads/{pool['kelvin']}/synthetic-only", headers=acme).status_code
        == 403
    )


def test_cli_synthesises_an_agreement_table_and_prints_scores(
    runner: CliRunner,
    client: FlaskClient,
    database: Database,
    settings: Settings,
    pool: dict[str, int],
) -> None:
    activate_agreement(database, gateway_terms(ALLOW))
    result = runner.invoke(cli, ["synth", "--agreement", "v2v", "--table", "batch", "--seed", "7"])
    assert result.exit_code == 0, result.output
    assert "quality score" in result.output and "DCR overfitting protection" in result.output
    assert "gates: all passed; published" in result.output
    with database.session() as s:
        synthetic = s.scalars(select(SyntheticVersion)).one()
        assert synthetic.agreement_slug == "v2v" and synthetic.state == "published"
        assert json.loads(synthetic.report)["synthesis"]["rows_in"] == 450
    rosa = bearer(database, settings, "rosa")
    body = client.get("/api/v1/sandbox/synthetic/batch?agreement=v2v", headers=rosa).get_json()
    assert body["synthetic_versions"] == [synthetic.id] and body["total"] == 450
    # A version number shared by several institutions needs --institution.
    ambiguous = runner.invoke(cli, ["synth", "--table", "batch", "--version", "1"])
    assert ambiguous.exit_code != 0 and "--institution" in ambiguous.output


def test_synthetic_rows_need_an_agreement_that_allows_them(
    client: FlaskClient, database: Database, settings: Settings, pool: dict[str, int]
) -> None:
    activate_agreement(database, gateway_terms())
    rosa = bearer(database, settings, "rosa")
    resp = client.get("/api/v1/sandbox/synthetic/batch?agreement=v2v", headers=rosa)
    assert resp.status_code == 403


def test_a_synthesis_queued_when_its_version_is_withdrawn_stays_withdrawn(
    app: Flask, database: Database, settings: Settings, pool: dict[str, int]
) -> None:
    storage = app.extensions["cleanroom.storage"]
    with database.session() as s:
        version = ingest.get_version(s, pool["acme-bio"])
        synthetic_id = synth.request_for_version(s, settings, version, actor="t").id
    with database.session() as s:  # withdrawn before any worker picks the job up
        ingest.withdraw(s, storage, ingest.get_version(s, pool["acme-bio"]), actor="t")
    _run_jobs(database, settings)
    target = f"synthetic:{synthetic_id}"
    with database.session() as s:
        synthetic = synth.get(s, synthetic_id)
        assert synthetic.state == "withdrawn" and synthetic.data_key == ""
        assert "withdrew" in synthetic.error
        entries = s.scalars(select(AuditEntry).where(AuditEntry.target == target))
        actions = [e.action for e in entries]
    assert actions == ["synth.request", "synth.withdrawn"]  # no synth.failed after it
    assert not list(storage.list(f"synthetic/batch/dataset={pool['acme-bio']}/"))


def test_synthetic_rows_hold_only_the_covered_columns(
    client: FlaskClient,
    database: Database,
    settings: Settings,
    pool: dict[str, int],
) -> None:
    """The synthetic channel sees the same columns as queries and fits: the agreement's."""
    terms = gateway_terms(ALLOW).replace("batch: all", "batch: [lot_id, platform, viability]")
    assert terms != gateway_terms(ALLOW)
    activate_agreement(database, terms)
    acme = bearer(database, settings, "acme-bio-admin", ("upload", "read"))
    resp = client.post(
        f"/api/v1/uploads/{pool['acme-bio']}/synthesise", json={"seed": 1}, headers=acme
    )
    assert resp.status_code == 202, resp.get_json()
    _run_jobs(database, settings)
    rosa = bearer(database, settings, "rosa")
    body = client.get("/api/v1/sandbox/synthetic/batch?agreement=v2v", headers=rosa).get_json()
    assert body["columns"] == ["lot_id", "platform", "viability"], body
    assert all(len(row) == 3 for row in body["rows"])
