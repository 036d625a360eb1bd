"""An agreement's linked tables synthesised together (``synth.agreement_tables``): one group
of synthetic versions whose pseudonymous keys join, published all together or not at all;
its entry points (portal, CLI, service); and withdrawal of the data they were trained on.

The pool holds the demo generator's episode → collection → batch → release_test of two
institutions (60 patients each), de-identified the way the ingest pipeline does it. On so
few rows the default gates (quality 0.75, DCR overfitting 0.9) fail for reasons that have
nothing to do with grouping (see docs/synthesis.md), so these tests set laxer gates; the
gates that matter here (copied rows, the group gate) still bite."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from anonymisation.dates import anchor_table
from anonymisation.synthesis import BACKENDS, SDVBackend, register_backend
from hub.audit.models import AuditEntry
from hub.cli import cli
from hub.db import Database
from hub.errors import BadRequest
from hub.ingest import services as ingest
from hub.jobs.services import Worker
from hub.settings import Settings
from hub.synth import services as synth
from hub.synth.models import SyntheticVersion
from hub.synth.views import ALL_LINKED
from tests.conftest import (
    AuthActions,
    Users,
    activate_agreement,
    bearer,
    csrf_from,
    release_into_pool,
)
from tests.unit.anonymisation.deidentified import deidentify
from tests.unit.hub.conftest import SITES, gateway_terms

pytestmark = pytest.mark.db

TABLES = ("episode", "collection", "batch", "release_test")
CONTRIBUTORS = SITES[:2]  # acme-bio and st-aurelia hold data; kelvin signs but has none
SEED = 5
TERMS = gateway_terms("disclosure:\n  allow_synthetic: true\n").replace(
    "tables:\n  batch: all\n", "tables:\n" + "".join(f"  {t}: all\n" for t in TABLES)
)


@pytest.fixture
def settings_overrides(settings_overrides: dict) -> dict:
    """Laxer quality and overfitting gates for 60-patient tables; copies still fail."""
    return {
        **settings_overrides,
        "synth_gate_quality": 0.5,
        "synth_gate_dcr_overfitting": 0.0,
        "synth_gate_copied_rows": 20,
    }


@pytest.fixture(scope="module")
def linked_frames() -> dict[str, dict[str, pd.DataFrame]]:
    """Institution slug -> table -> de-identified frame (pseudonyms, day offsets)."""
    from hub.demodata import generate_frames

    frames = generate_frames(institutions=2, patients=60, seed=11)
    out = {}
    for slug, raw in zip(CONTRIBUTORS, frames.values(), strict=True):
        anchors = anchor_table(raw["collection"])
        lot_coi = raw["batch"].set_index("lot_id")["coi_id"]
        out[slug] = {t: deidentify(t, raw[t], anchors, lot_coi) for t in TABLES}
    return out


@pytest.fixture
def linked_pool(
    users: Users, database: Database, app: Flask, linked_frames: dict
) -> dict[tuple[str, str], int]:
    """Released versions of the four tables for two contributors, an active agreement over
    them that allows synthetic rows; sam the steward, rosa a named researcher. Returns the
    dataset version ids by (institution, table)."""
    for slug in SITES:
        users.institution(slug, "hospital")
        users.make(f"{slug}-admin", "contributor_admin", slug)
    users.make("sam", "steward")
    users.make("rosa", "researcher", "st-aurelia")
    storage = app.extensions["cleanroom.storage"]
    ids = {}
    with database.session() as s:
        for slug in CONTRIBUTORS:
            for table in TABLES:
                frame = linked_frames[slug][table]
                ids[(slug, table)] = release_into_pool(s, storage, slug, table, frame).id
    activate_agreement(database, TERMS)
    return ids


def _run_jobs(database: Database, settings: Settings) -> None:
    worker = Worker(database, settings, "test")
    while worker.run_once() is not None:
        pass


def _members(database: Database) -> dict[str, SyntheticVersion]:
    with database.session() as s:
        found = s.scalars(select(SyntheticVersion).where(SyntheticVersion.group_id.is_not(None)))
        return {m.cdm_table: m for m in found}


def _ledger(database: Database, action: str) -> list[dict]:
    with database.session() as s:
        entries = s.scalars(
            select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)
        )
        return [{"target": e.target, **json.loads(e.detail)} for e in entries]


def _synthetic_rows(client: FlaskClient, headers: dict, table: str) -> tuple[dict, pd.DataFrame]:
    resp = client.get(f"/api/v1/sandbox/synthetic/{table}?agreement=v2v", headers=headers)
    body = resp.get_json()
    assert resp.status_code == 200, body
    return body, pd.DataFrame(body["rows"], columns=body["columns"])


def _keys(app: Flask, prefix: str = "synthetic/") -> list[str]:
    return [info.key for info in app.extensions["cleanroom.storage"].list(prefix)]


def test_linked_tables_are_the_covered_tables_of_the_hierarchy() -> None:
    covered = {"release_test", "batch", "custody_event", "collection"}
    assert synth.linked_tables(covered) == ["collection", "batch", "release_test"]
    assert synth.linked_tables({"batch"}) == []
    assert synth.linked_tables({"episode", "release_test"}) == []  # no direct relationship


def test_steward_synthesises_linked_tables_together_and_synthetic_keys_join(
    app: Flask,
    client: FlaskClient,
    auth: AuthActions,
    database: Database,
    settings: Settings,
    linked_pool: dict,
    linked_frames: dict,
) -> None:
    auth.login("sam")
    page = client.get("/synthetic").get_data(as_text=True)
    assert f'<option value="{ALL_LINKED}">all linked tables together</option>' in page
    resp = client.post(
        "/synthetic",
        data={
            "csrf_token": csrf_from(client, "/synthetic"),
            "agreement": "v2v",
            "table": ALL_LINKED,
            "method": "gaussian_copula",
            "seed": str(SEED),
        },
    )
    assert resp.status_code == 303
    members = _members(database)
    assert set(members) == set(TABLES)
    group_id = members["episode"].group_id
    assert {m.group_id for m in members.values()} == {group_id}
    assert len({m.job_id for m in members.values()}) == 1  # one job makes the whole group
    assert resp.headers["Location"].endswith(f"/synthetic/{group_id}")
    queued_page = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert f"queued together as group {group_id}: episode #{group_id}" in queued_page
    assert "release_test #" in queued_page and "Being made" in queued_page

    _run_jobs(database, settings)
    members = _members(database)
    states = {t: (m.state, m.error) for t, m in members.items()}
    assert all(state == "published" for state, _ in states.values()), states
    for table, member in members.items():
        report = json.loads(member.report)
        group = report["group"]
        assert group["group_id"] == group_id and group["published"] is True
        assert group["tables"] == list(TABLES)
        # Four tables have depth 4: SDV's HMA refuses, and the report says so and why.
        assert group["mode"] == "per_table"
        assert group["relationships"].startswith("kept by the per-table fallback")
        assert "depth" in group["relationships"]
        assert all(i["orphans"] == 0 for i in group["integrity"])
        # Trained on both contributors' versions of its table, recorded for withdrawal.
        assert set(member.trained_on) == {linked_pool[(s, table)] for s in CONTRIBUTORS}
    group_entry = _ledger(database, "synth.group")
    assert len(group_entry) == 1 and group_entry[0]["state"] == "published"
    assert group_entry[0]["failed_tables"] == [] and group_entry[0]["mode"] == "per_table"

    # The researcher reads each table of the group through the gateway, and joins work.
    rosa = bearer(database, settings, "rosa")
    syn = {}
    for table in TABLES:
        body, syn[table] = _synthetic_rows(client, rosa, table)
        assert body["synthetic_versions"] == [members[table].id]
        assert body["synthetic_groups"] == [members[TABLES[0]].id]  # the group's id
        assert body["total"] == members[table].rows > 0
    assert syn["collection"]["coi_id"].isin(syn["episode"]["coi_id"]).all()
    assert syn["batch"]["din"].dropna().isin(syn["collection"]["din"]).all()
    assert syn["release_test"]["lot_id"].isin(syn["batch"]["lot_id"]).all()
    joined = (
        syn["release_test"]
        .merge(syn["batch"][["lot_id", "din", "coi_id"]], on="lot_id")
        .dropna(subset=["din"])
        .merge(syn["collection"][["din", "coi_id"]], on="din", suffixes=("", "_collection"))
        .merge(syn["episode"][["coi_id"]], on="coi_id")
    )
    assert len(joined) > 0.5 * len(syn["release_test"])
    assert (joined["coi_id"] == joined["coi_id_collection"]).all()
    # Synthetic keys are never real pseudonyms.
    real = pd.concat([linked_frames[slug]["episode"] for slug in CONTRIBUTORS])
    assert not syn["episode"]["coi_id"].isin(real["coi_id"]).any()

    # The report page names the group and says how the relationships were kept.
    report_page = client.get(f"/synthetic/{members['batch'].id}").get_data(as_text=True)
    assert f"group {group_id}" in report_page and "episode #" in report_page
    assert "per-table fallback" in report_page and "Keys with no synthetic parent: 0" in report_page
    api = client.get(
        f"/api/v1/synthetic/{members['batch'].id}",
        headers=bearer(database, settings, "sam", ("read",)),
    ).get_json()
    assert api["group_id"] == group_id and api["report"]["group"]["tables"] == list(TABLES)


class LeakyBatch:
    """GaussianCopula, except that batch rows are drawn from the training rows (with new
    ids): batch fails the copied-rows gate while the other tables pass theirs."""

    name = "leaky_batch"

    def fit(self, frames, metadata, *, seed):  # type: ignore[no-untyped-def]
        self.frames = {n: f.reset_index(drop=True) for n, f in frames.items()}
        self.ids = {n: metadata.tables[n].id_columns for n in frames}
        self.inner = SDVBackend("gaussian_copula")
        if "batch" not in frames:
            self.inner.fit(frames, metadata, seed=seed)

    def sample(self, *, num_rows=None, scale=None, seed):  # type: ignore[no-untyped-def]
        if "batch" not in self.frames:
            return self.inner.sample(num_rows=num_rows, scale=scale, seed=seed)
        rows = self.frames["batch"].sample(n=num_rows, replace=True, random_state=seed)
        rows = rows.reset_index(drop=True)
        for column in self.ids["batch"]:
            rows[column] = [f"S{column[:3]}{i:028x}" for i in range(len(rows))]
        return {"batch": rows}


def test_a_group_is_published_all_together_or_not_at_all(
    app: Flask,
    client: FlaskClient,
    auth: AuthActions,
    database: Database,
    settings: Settings,
    linked_pool: dict,
) -> None:
    register_backend("leaky_batch", LeakyBatch)
    try:
        with database.session() as s:
            queued = synth.request_for_agreement_tables(
                s, settings, "v2v", actor="user:sam", method="leaky_batch", seed=SEED
            )
            assert [m.cdm_table for m in queued] == list(TABLES)
        _run_jobs(database, settings)
    finally:
        BACKENDS.pop("leaky_batch", None)
    members = _members(database)
    failed = {t: {g["gate"] for g in synth.scores(m)["failed_gates"]} for t, m in members.items()}
    assert "copied_rows" in failed["batch"] and "group" not in failed["batch"]
    for table in ("episode", "collection", "release_test"):
        assert failed[table] == {"group"}, failed  # passed its own gates, held back with batch
    assert {m.state for m in members.values()} == {"failed_gates"}
    assert all(m.data_key == "" for m in members.values())
    assert not [k for k in _keys(app) if k.endswith(".parquet")]  # no rows written at all
    episode_report = json.loads(members["episode"].report)
    assert episode_report["group"]["published"] is False
    assert episode_report["group"]["failed_tables"] == ["batch"]
    entry = _ledger(database, "synth.group")
    assert entry[0]["state"] == "failed_gates" and entry[0]["failed_tables"] == ["batch"]
    per_table = {e["target"]: e["failed_gates"] for e in _ledger(database, "synth.failed_gates")}
    assert per_table[f"synthetic:{members['episode'].id}"] == ["group"]

    rosa = bearer(database, settings, "rosa")
    resp = client.get("/api/v1/sandbox/synthetic/episode?agreement=v2v", headers=rosa)
    assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "no_synthetic_version"
    auth.login("sam")
    page = client.get(f"/synthetic/{members['episode'].id}").get_data(as_text=True)
    assert "Not published" in page and "linked table(s) batch" in page


def test_cli_all_tables_then_withdrawal_takes_down_what_was_trained_on_it(
    app: Flask,
    runner: CliRunner,
    client: FlaskClient,
    database: Database,
    settings: Settings,
    linked_pool: dict,
) -> None:
    # Usage: --all-tables goes with --agreement and without --table.
    bad = runner.invoke(cli, ["synth", "--agreement", "v2v", "--all-tables", "--table", "batch"])
    assert bad.exit_code != 0 and "--all-tables goes with --agreement" in bad.output
    result = runner.invoke(
        cli, ["synth", "--agreement", "v2v", "--all-tables", "--seed", str(SEED)]
    )
    assert result.exit_code == 0, result.output
    assert "relationships kept by the per-table fallback" in result.output
    assert result.output.count("gates: all passed; published") == 4
    members = _members(database)
    assert {m.state for m in members.values()} == {"published"}

    # Alongside: a single-table agreement synthesis of collection and one of episode, and
    # dataset-level syntheses of each contributor's collection version.
    acme_collection = linked_pool[("acme-bio", "collection")]
    aurelia_collection = linked_pool[("st-aurelia", "collection")]
    with database.session() as s:
        pooled_collection = synth.request_for_agreement(
            s, settings, "v2v", "collection", actor="t", seed=SEED
        ).id
        pooled_episode = synth.request_for_agreement(
            s, settings, "v2v", "episode", actor="t", seed=SEED
        ).id
        own = {
            v: synth.request_for_version(s, settings, ingest.get_version(s, v), actor="t").id
            for v in (acme_collection, aurelia_collection)
        }
    _run_jobs(database, settings)
    made = {m.id: m for m in members.values()}
    with database.session() as s:
        for i in (pooled_collection, pooled_episode, *own.values()):
            made[i] = synth.get(s, i)
    assert {m.state for m in made.values()} == {"published"}
    objects = {i: synth._objects(m) for i, m in made.items()}
    assert all(any(k.endswith(".svg") for k in keys) for keys in objects.values())
    assert {k for keys in objects.values() for k in keys} <= set(_keys(app))

    # acme-bio withdraws its collection version.
    storage = app.extensions["cleanroom.storage"]
    with database.session() as s:
        version = ingest.get_version(s, acme_collection)
        ingest.withdraw(s, storage, version, actor="user:acme-bio-admin")
    gone = {m.id for m in members.values()} | {pooled_collection, own[acme_collection]}
    kept = {pooled_episode, own[aurelia_collection]}  # other table; other institution
    with database.session() as s:
        states = {i: synth.get(s, i).state for i in made}
    assert {states[i] for i in gone} == {"withdrawn"}
    assert {states[i] for i in kept} == {"published"}
    left = set(_keys(app))
    for i in gone:
        assert not set(objects[i]) & left, f"objects of synthetic version {i} remain"
    for i in kept:
        assert set(objects[i]) <= left
    entries = {e["target"]: e for e in _ledger(database, "synth.withdrawn")}
    assert set(entries) == {f"synthetic:{i}" for i in gone}
    via_group = {e["target"] for e in entries.values() if e["via_group"]}
    assert via_group == {f"synthetic:{members[t].id}" for t in ("episode", "batch", "release_test")}
    assert all(e["dataset_version"] == acme_collection for e in entries.values())
    assert all(e["deleted_objects"] > 0 for e in entries.values())

    # The gateway stops serving them: collection falls back to the synthesis of the
    # version still pooled; batch has nothing left; episode keeps its own synthesis.
    rosa = bearer(database, settings, "rosa")
    body, _ = _synthetic_rows(client, rosa, "collection")
    assert body["synthetic_versions"] == [own[aurelia_collection]]
    resp = client.get("/api/v1/sandbox/synthetic/batch?agreement=v2v", headers=rosa)
    assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "no_synthetic_version"
    body, _ = _synthetic_rows(client, rosa, "episode")
    assert body["synthetic_versions"] == [pooled_episode]


def test_a_withdrawal_during_the_job_keeps_its_rows_unpublished(
    app: Flask,
    database: Database,
    settings: Settings,
    linked_pool: dict,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    version_id = linked_pool[("acme-bio", "batch")]
    storage = app.extensions["cleanroom.storage"]
    synthesize = synth._synthesize

    def withdrawn_meanwhile(ctx, plan, frames):  # type: ignore[no-untyped-def]
        out = synthesize(ctx, plan, frames)  # the rows were read before the withdrawal
        with database.session() as s:
            ingest.withdraw(s, storage, ingest.get_version(s, version_id), actor="t")
        return out

    monkeypatch.setattr(synth, "_synthesize", withdrawn_meanwhile)
    with database.session() as s:
        synthetic_id = synth.request_for_version(
            s, settings, ingest.get_version(s, version_id), actor="t"
        ).id
    _run_jobs(database, settings)
    with database.session() as s:
        synthetic = synth.get(s, synthetic_id)
        assert synthetic.state == "withdrawn" and synthetic.data_key == ""
        assert synthetic.plot_keys == "{}" and "withdrew" in synthetic.error
    assert not _keys(app, f"synthetic/batch/dataset={version_id}/")
    assert [e["target"] for e in _ledger(database, "synth.withdrawn")] == [
        f"synthetic:{synthetic_id}"
    ]
    assert not _ledger(database, "synth.published")


def test_an_agreement_without_linked_tables_is_refused(
    database: Database, settings: Settings, users: Users
) -> None:
    for slug in SITES:
        users.institution(slug, "hospital")
        users.make(f"{slug}-admin", "contributor_admin", slug)
    users.make("rosa", "researcher", "st-aurelia")
    activate_agreement(database, gateway_terms())  # batch only
    with database.session() as s, pytest.raises(BadRequest) as refused:
        synth.request_for_agreement_tables(s, settings, "v2v", actor="t")
    assert refused.value.code == "no_linked_tables"
    with database.session() as s:
        assert s.scalars(select(SyntheticVersion)).first() is None


def test_withdrawal_takes_down_an_agreement_synthesis_that_recorded_no_sources(
    app: Flask, database: Database, linked_pool: dict
) -> None:
    """Made before migration 0006 (no ``source_versions``): taken down when the version's
    institution contributes to the agreement; one of another table is left alone."""
    storage = app.extensions["cleanroom.storage"]
    made = {}
    with database.session() as s:
        for table in ("batch", "episode"):
            legacy = SyntheticVersion(
                agreement_slug="v2v",
                cdm_table=table,
                method="gaussian_copula",
                state="published",
                created_by="t",
            )
            s.add(legacy)
            s.flush()
            legacy.data_key = (
                f"synthetic/{table}/agreement=v2v/synthetic={legacy.id}/part-0.parquet"
            )
            storage.put(legacy.data_key, io.BytesIO(b"rows"))
            made[table] = (legacy.id, legacy.data_key)
    with database.session() as s:
        version = ingest.get_version(s, linked_pool[("st-aurelia", "batch")])
        ingest.withdraw(s, storage, version, actor="t")
    with database.session() as s:
        assert synth.get(s, made["batch"][0]).state == "withdrawn"
        assert synth.get(s, made["episode"][0]).state == "published"
    assert not storage.exists(made["batch"][1]) and storage.exists(made["episode"][1])
