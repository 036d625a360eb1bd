"""The round trip of issue 19 through synthetic data: site spreadsheets → the pool → a
synthetic version of the linked tables → FHIR R5 export (the researcher's gateway route) →
FHIR import into a fresh hub → the same CDM rows, keys relinked.

The expected rows are the synthetic rows the gateway serves as JSON, compared with plain
pandas (:func:`differences`), never through ``contracts.fhir``. A tampered export is caught
by the same comparison (the control)."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from fhir.resources import get_fhir_model_class
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from contracts.cdm import load_cdm
from hub import create_app
from hub.accounts import services as accounts
from hub.db import Database
from hub.ingest.models import DatasetVersion
from hub.jobs.services import load_task_modules
from hub.settings import Settings, load_settings
from hub.synth.models import SyntheticVersion
from hub.synth.views import ALL_LINKED
from tests.conftest import PASSWORD, AuthActions, Users, activate_agreement, bearer, csrf_from
from tests.unit.hub.uploads import (
    accept_mapping,
    api_upload,
    drain,
    pooled_rows,
    release_all,
    show,
)

pytestmark = [pytest.mark.db, pytest.mark.slow]

TABLES = ("episode", "collection", "batch", "release_test")
N = 40  # patients at the site: enough for the synthesizer, few enough to stay quick
SEED = 3

# What FHIR R5 cannot carry from the pool, decided here from what the pool holds (age as a
# band, every date as whole days since the patient's anchor date), not from the exporter.
LEFT_OUT = {
    "episode": {"age"},
    "collection": {"collection_date"},
    "batch": {"release_date"},
    "release_test": {"test_date"},
}
RESOURCE = {
    "episode": "Patient",
    "collection": "BiologicallyDerivedProduct",
    "batch": "BiologicallyDerivedProduct",
    "release_test": "Observation",
}
# Child table → (its key column, parent table, the parent's key) for the CDM links kept.
LINKS = (
    ("collection", "coi_id", "episode", "coi_id"),
    ("batch", "din", "collection", "din"),
    ("batch", "coi_id", "episode", "coi_id"),
    ("release_test", "lot_id", "batch", "lot_id"),
)

TERMS = """\
id: rt
title: FHIR round trip
purpose:
  code: vein_to_vein_benchmarking
  text: Synthetic rows for developing analysis code.
parties:
  - institution: st-aurelia
    roles: [contributor, recipient]
tables:
  episode: all
  collection: all
  batch: all
  release_test: all
researchers: [rosa]
valid_from: 2026-01-01
valid_until: 2099-12-31
disclosure:
  allow_synthetic: true
"""


# The site's spreadsheets --------------------------------------------------------------------


def site_files() -> dict[str, str]:
    """One row per patient, collection and lot, two release tests per lot; few distinct
    quasi-identifiers so that k-anonymity keeps every row."""
    episodes = ["coi_id,site,product_class,indication,age,sex"]
    collections = ["din,coi_id,collection_date,fresh_or_cryo,device,alc_pre,cd3_pre"]
    batches = [
        "lot_id,coi_id,din,processing_facility,platform,manufacturing_outcome,viability,"
        "culture_days,release_date"
    ]
    tests = ["lot_id,test,value,unit,passed,test_date"]
    for i in range(N):
        coi, din, lot = f"COI-{i:04d}", f"A99992412{i:04d}", f"LOT-{i:04d}"
        sex = "female" if i % 2 else "male"
        episodes.append(f"{coi},St Aurelia,autologous_car_t,LBCL,{60 + i % 5},{sex}")
        day = 1 + i % 20
        collections.append(
            f"{din},{coi},2024-03-{day:02d},{'fresh' if i % 3 else 'cryopreserved'},"
            f"Spectra Optia,{0.5 + (i * 37 % 20) / 10:.1f},{300 + i * 53 % 900}"
        )
        outcome = "failed" if i % 7 == 0 else "conforming"
        batches.append(
            f"{lot},{coi},{din},Northbridge,{'central' if i % 4 else 'point_of_care'},"
            f"{outcome},{80 + i * 29 % 17}.{i % 10},{8 + i % 5},2024-04-{day + 5:02d}"
        )
        tests.append(f"{lot},viability,{80 + i * 29 % 17}.{i % 10},%,true,2024-04-{day + 3:02d}")
        tests.append(f"{lot},endotoxin,{0.1 + (i % 9) / 10:.1f},EU/mL,true,2024-04-{day + 3:02d}")
    rows = {"episode": episodes, "collection": collections, "batch": batches, "release_test": tests}
    return {t: "\n".join(lines) + "\n" for t, lines in rows.items()}


# The comparison, in plain pandas --------------------------------------------------------------


def _cell(value: Any) -> Any:
    """A cell as compared: missing as None, numbers as rounded floats, booleans as
    booleans, everything else as text."""
    if isinstance(value, str):
        return str(value)
    if value is None or pd.isna(value):
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.number)):
        return round(float(value), 6)
    return str(value)


def _normalised(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    out = pd.DataFrame({c: [_cell(v) for v in frame[c]] for c in columns}, dtype=object)
    order = out.astype(str).sort_values(columns).index
    return out.loc[order].reset_index(drop=True)


def differences(table: str, expected: pd.DataFrame, imported: pd.DataFrame) -> list[str]:
    """Where ``imported`` (the rows a hub took in) differs from ``expected`` (the rows that
    were exported) in the columns FHIR carries, in words; empty when they are the same."""
    columns = [c for c in expected.columns if c not in LEFT_OUT[table]]
    problems = [f"{table}: column {c} was not imported" for c in columns if c not in imported]
    # Columns left out (or never in the rows) must come back empty.
    extra = [c for c in imported.columns if c not in columns and imported[c].notna().any()]
    problems += [f"{table}: column {c} was not exported but has values" for c in extra]
    if len(expected) != len(imported):
        problems.append(f"{table}: {len(expected)} rows exported, {len(imported)} imported")
    if problems:
        return problems
    left, right = _normalised(expected, columns), _normalised(imported, columns)
    for column in columns:
        for row, (a, b) in enumerate(zip(left[column], right[column], strict=True)):
            if a != b:
                problems.append(f"{table}.{column}, row {row}: exported {a!r}, imported {b!r}")
    return problems


def link_shape(
    frames: dict[str, pd.DataFrame], safe: dict[str, list[str]], links: list[str]
) -> dict[str, pd.DataFrame]:
    """Per link, every child row joined to its parent, described by the values de-
    identification leaves alone (the keys themselves differ between hubs), with the number
    of children of that parent; sorted, so two hubs' joins compare as tables."""
    out = {}
    for child, column, parent, key in LINKS:
        name = f"{child}.{column} -> {parent}.{key}"
        if name not in links:
            continue
        kids = frames[child][[column, *safe[child]]].rename(columns={column: "_key"})
        kids = kids.dropna(subset=["_key"])
        counts = kids.groupby("_key").size().rename("children").reset_index()
        parents = frames[parent][[key, *safe[parent]]].rename(columns={key: "_key"})
        joined = kids.merge(parents, on="_key", how="left", suffixes=("", "_parent"))
        joined = joined.merge(counts, on="_key").drop(columns="_key")
        columns = list(joined.columns)
        out[name] = _normalised(joined, columns)
    return out


# Hubs ---------------------------------------------------------------------------------------


@dataclass
class Hub:
    app: Flask
    settings: Settings
    database: Database
    token: str

    @property
    def client(self) -> FlaskClient:
        return self.app.test_client()


@contextmanager
def fresh_hub(
    root: Path, template: Path, overrides: dict[str, Any], slug: str = "kelvin"
) -> Iterator[Hub]:
    """A hub with its own SQLite database and data directory (hence its own pseudonym key)
    and a contributor's upload token there. (As ``fresh_hub`` in
    tests/unit/hub/test_fhir_upload.py, made a context manager so a test can have two.)"""
    root.mkdir()
    shutil.copy(template, root / "hub.db")
    (root / "data").mkdir(mode=0o700)
    settings = load_settings(
        {
            **overrides,
            "data_dir": str(root / "data"),
            "database_url": f"sqlite:///{root / 'hub.db'}",
        },
        environ={},
    )
    app = create_app(settings)
    app.config["TESTING"] = True
    database = Database(settings.database_url)
    with database.session() as s:
        accounts.create_institution(s, slug, slug.title(), "hospital", actor="test")
        user = accounts.create_user(s, "kai", PASSWORD, "contributor", institution=slug, actor="t")
        token = accounts.create_token(s, settings, user, "lims", ["upload", "read"], actor="t")
        secret = token.secret
    try:
        yield Hub(app, settings, database, secret)
    finally:
        app.extensions["cleanroom.policy"].close()
        app.extensions["cleanroom.db"].dispose()
        database.dispose()


@pytest.fixture(autouse=True)
def _tasks() -> None:
    load_task_modules()


@pytest.fixture
def settings_overrides(settings_overrides: dict[str, Any]) -> dict[str, Any]:
    """Laxer quality and overfitting gates for 40-patient tables (see
    tests/unit/hub/test_synth_tables.py); the copied-rows gate still bites."""
    return {
        **settings_overrides,
        "synth_gate_quality": 0.5,
        "synth_gate_dcr_overfitting": 0.0,
        "synth_gate_copied_rows": 20,
    }


def _raw_rows(hub: Hub, version_ids: dict[str, int]) -> dict[str, pd.DataFrame]:
    """The rows each version took in, before its hub de-identified them."""
    storage = hub.app.extensions["cleanroom.storage"]
    out = {}
    with hub.database.session() as s:
        for table, vid in version_ids.items():
            version = s.get(DatasetVersion, vid)
            assert version is not None and version.raw_key, (table, vid)
            with storage.open(version.raw_key) as fh:
                out[table] = pq.read_table(io.BytesIO(fh.read())).to_pandas()
    return out


def _tampered(ndjson: bytes, lot: str) -> tuple[bytes, float]:
    """The export with the viability of lot ``lot`` raised by 1.5 points."""
    lines = []
    old = None
    for line in ndjson.decode().splitlines():
        resource = json.loads(line)
        ids = [i.get("value") for i in resource.get("identifier", [])]
        if resource["resourceType"] == "BiologicallyDerivedProduct" and lot in ids:
            for prop in resource["property"]:
                if prop["type"]["coding"][0]["code"] == "viability":
                    old = prop["valueQuantity"]["value"]
                    prop["valueQuantity"]["value"] = old + 1.5
            line = json.dumps(resource)
        lines.append(line)
    assert old is not None, f"lot {lot} has no viability in the export"
    return ("\n".join(lines) + "\n").encode(), float(old)


# The chain ----------------------------------------------------------------------------------


@dataclass
class Trip:
    """What the chain up to the fresh hub's import made."""

    pool: dict[str, pd.DataFrame]  # the site's released rows, de-identified
    synthetic: dict[str, pd.DataFrame]  # the synthetic rows the gateway serves as JSON
    exported: dict[str, bytes]  # the same tables as FHIR R5 NDJSON from the gateway
    safe: dict[str, list[str]]  # columns de-identification leaves alone, per table


def site_to_synthetic_fhir(
    app: Flask, client: FlaskClient, users: Users, database: Database, settings: Settings
) -> Trip:
    """Steps 1 to 3: the site's spreadsheets uploaded and released; the agreement's linked
    tables synthesised together by the steward and published; the synthetic tables taken
    out as FHIR R5 by the researcher through the gateway (as ``cr.synthetic_fhir`` does)."""
    users.institution("st-aurelia")
    users.make("st-aurelia-admin", "contributor_admin", "st-aurelia")
    users.make("sam", "steward")
    users.make("rosa", "researcher", "st-aurelia")
    users.make("nadia", "contributor", "st-aurelia")
    with database.session() as s:
        token = accounts.create_token(
            s, settings, accounts.get_user(s, "nadia"), "lims", ["upload", "read"], actor="t"
        ).secret
    for table, text in site_files().items():
        resp = api_upload(client, token, text.encode(), f"{table}.csv", table=table)
        assert resp.status_code == 201, resp.get_json()
        vid = resp.get_json()["id"]
        reviewed = accept_mapping(client, token, database, settings, vid)
        assert reviewed["state"] == "awaiting_review", reviewed["error"]
        release_all(client, token, [vid])
    pool = {t: pooled_rows(app, database, t) for t in TABLES}
    sizes = {t: len(f) for t, f in pool.items()}
    assert sizes == {"episode": N, "collection": N, "batch": N, "release_test": 2 * N}
    assert pool["episode"]["age"].astype(str).str.fullmatch(r"\d+-\d+").all()  # bands
    for table, column in (("collection", "collection_date"), ("batch", "release_date")):
        assert pd.api.types.is_integer_dtype(pool[table][column]), column  # day offsets

    activate_agreement(database, TERMS)
    steward = app.test_client()
    AuthActions(steward).login("sam")
    resp = steward.post(
        "/synthetic",
        data={
            "csrf_token": csrf_from(steward, "/synthetic"),
            "agreement": "rt",
            "table": ALL_LINKED,
            "method": "gaussian_copula",
            "seed": str(SEED),
        },
    )
    assert resp.status_code == 303
    drain(database, settings)
    with database.session() as s:
        members = {m.cdm_table: (m.state, m.error) for m in s.scalars(select(SyntheticVersion))}
    assert set(members) == set(TABLES)
    assert {state for state, _ in members.values()} == {"published"}, members

    rosa = bearer(database, settings, "rosa")
    synthetic: dict[str, pd.DataFrame] = {}
    exported: dict[str, bytes] = {}
    for table in TABLES:
        url = f"/api/v1/sandbox/synthetic/{table}?agreement=rt"
        rows = client.get(url, headers=rosa)
        assert rows.status_code == 200, rows.get_json()
        body = rows.get_json()
        assert body["total"] == len(body["rows"]) > 0
        synthetic[table] = pd.DataFrame(body["rows"], columns=body["columns"])
        resp = client.get(url + "&format=fhir-ndjson", headers=rosa)
        assert resp.status_code == 200, resp.get_json()
        assert resp.mimetype == "application/fhir+ndjson"
        left_out = resp.headers.get("X-Cleanroom-Left-Out", "")
        for column in LEFT_OUT[table]:
            assert f"{table}.{column} (" in left_out, (table, left_out)
        exported[table] = resp.data
        # One resource per row, of the type the mapping names, each valid R5 by itself.
        resources = [json.loads(line) for line in resp.data.decode().splitlines()]
        assert len(resources) == body["total"], table
        assert {r["resourceType"] for r in resources} == {RESOURCE[table]}, table
        for resource in resources:
            get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    # Synthetic keys are new (never the pool's pseudonyms) and join across tables.
    assert not set(synthetic["episode"]["coi_id"]) & set(pool["episode"]["coi_id"])
    assert synthetic["batch"]["din"].dropna().isin(synthetic["collection"]["din"]).all()
    cdm = load_cdm()
    safe = {
        t: [
            c.name
            for c in cdm.table(t).columns
            if c.identifier == "safe" and c.name in synthetic[t].columns
        ]
        for t in TABLES
    }
    return Trip(pool, synthetic, exported, safe)


def import_into(hub: Hub, trip: Trip) -> dict[str, int]:
    """Step 4's upload: the four NDJSON files sent as one (a bulk-data export is a set of
    NDJSON files) through the fresh hub's API; the versions it made are checked, and the rows
    it took in compared with the synthetic rows. Returns the version ids by table."""
    upload = b"".join(trip.exported[t] for t in TABLES)
    resp = api_upload(hub.client, hub.token, upload, "synthetic-rt.ndjson")
    assert resp.status_code == 201, resp.get_json()
    versions = resp.get_json()["versions"]
    assert [v["table"] for v in versions] == list(TABLES)
    assert all(v["file_kind"] == "fhir" for v in versions)
    assert {v["table"]: v["rows"] for v in versions} == {
        t: len(f) for t, f in trip.synthetic.items()
    }
    made = {v["table"]: v["id"] for v in versions}
    taken = _raw_rows(hub, made)
    for table in TABLES:
        assert differences(table, trip.synthetic[table], taken[table]) == [], table
    return made


def assert_relinked(trip: Trip, fresh_pool: dict[str, pd.DataFrame], links: list[str]) -> None:
    """The fresh pool's keys are its own pseudonyms, and each of ``links``' child rows joins
    its parent exactly as in the synthetic data."""
    for table, key in (("episode", "coi_id"), ("collection", "din"), ("batch", "lot_id")):
        if table in fresh_pool:
            assert len(fresh_pool[table]) == len(trip.synthetic[table]), table
            assert not set(fresh_pool[table][key]) & set(trip.synthetic[table][key]), table
    expected = link_shape(trip.synthetic, trip.safe, links)
    got = link_shape(fresh_pool, trip.safe, links)
    for link in links:
        assert len(expected[link]) > 0, link
        pd.testing.assert_frame_equal(got[link], expected[link], obj=link)


# The tests ----------------------------------------------------------------------------------

# The tests' arguments: the main hub (its database on SQLite and PostgreSQL) and what a fresh
# hub is made of.
Hubs = tuple[Flask, FlaskClient, Users, Database, Settings, dict[str, Any], Path, Path]


@pytest.fixture
def hubs(
    app: Flask,
    client: FlaskClient,
    users: Users,
    database: Database,
    settings: Settings,
    settings_overrides: dict[str, Any],
    sqlite_template: Path,
    tmp_path: Path,
) -> Hubs:
    return app, client, users, database, settings, settings_overrides, sqlite_template, tmp_path


def _release_in_fresh_hub(
    hubs: Hubs, tables: tuple[str, ...]
) -> tuple[Trip, dict[str, pd.DataFrame]]:
    """The chain to the fresh hub; there ``tables`` processed, checked valid in full and
    released. Returns the trip and the fresh pool's rows of ``tables``."""
    app, client, users, database, settings, overrides, template, tmp_path = hubs
    trip = site_to_synthetic_fhir(app, client, users, database, settings)
    with fresh_hub(tmp_path / "fresh", template, overrides) as fresh:
        made = import_into(fresh, trip)
        drain(fresh.database, fresh.settings)
        for table in tables:
            reviewed = show(fresh.client, fresh.token, made[table])
            assert reviewed["state"] == "awaiting_review", (table, reviewed["error"])
            rows = len(trip.synthetic[table])
            messages = reviewed["validation"].get("messages")
            assert reviewed["valid_rows"] == rows, (table, rows, messages)
        release_all(fresh.client, fresh.token, [made[t] for t in tables])
        return trip, {t: pooled_rows(fresh.app, fresh.database, t) for t in tables}


def test_synthetic_rows_through_fhir_into_a_fresh_hub_are_the_rows_exported(
    hubs: Hubs,
) -> None:
    """The whole chain: the fresh hub takes in exactly the synthetic rows of all four
    tables (every column FHIR carries); the lots are valid in full there and released with
    their keys pseudonymised again, consistently. The tables that do not yet survive
    validation there are the two tests below."""
    trip, fresh_pool = _release_in_fresh_hub(hubs, ("batch",))
    before, after = trip.synthetic["batch"], fresh_pool["batch"]
    assert len(after) == len(before)
    for column in ("lot_id", "din", "coi_id"):
        assert after[column].nunique() == before[column].nunique(), column
        assert after[column].isna().sum() == before[column].isna().sum(), column
        assert not set(after[column].dropna()) & set(before[column].dropna()), column
    # The same lots share a patient, and the lots' other values are untouched.
    assert sorted(after.groupby("coi_id").size()) == sorted(before.groupby("coi_id").size())
    kept = trip.safe["batch"]
    pd.testing.assert_frame_equal(_normalised(after, kept), _normalised(before, kept))

    # The control: one value changed in the exported file is caught by the same comparison.
    _, _, _, _, _, overrides, template, tmp_path = hubs
    lot = str(before["lot_id"].iloc[0])
    bad, old = _tampered(trip.exported["batch"], lot)
    with fresh_hub(tmp_path / "control", template, overrides) as control:
        resp = api_upload(control.client, control.token, bad, "tampered.ndjson")
        assert resp.status_code == 201, resp.get_json()
        made = {v["table"]: v["id"] for v in resp.get_json()["versions"]}
        found = differences("batch", before, _raw_rows(control, made)["batch"])
    assert len(found) == 1, found
    assert found[0].startswith("batch.viability, row ")
    assert f"exported {round(old, 6)!r}, imported {round(old + 1.5, 6)!r}" in found[0]


def test_patients_and_collections_survive_the_round_trip_relinked(hubs: Hubs) -> None:
    """Patients, collections and lots released in the fresh hub, and every link among
    them joins as in the synthetic data. The age bands and day offsets the export left out
    (and tagged as withheld) are warned about, not held back."""
    trip, fresh_pool = _release_in_fresh_hub(hubs, ("episode", "collection", "batch"))
    links = [f"{c}.{k} -> {p}.{pk}" for c, k, p, pk in LINKS if c != "release_test"]
    assert_relinked(trip, fresh_pool, links)


def test_release_tests_survive_the_round_trip_relinked(hubs: Hubs) -> None:
    """Lots and their release tests released in the fresh hub, each test joined to its lot
    as in the synthetic data: the synthetic tests keep their key (lot_id, test) unique.)"""
    trip, fresh_pool = _release_in_fresh_hub(hubs, ("batch", "release_test"))
    assert_relinked(trip, fresh_pool, ["release_test.lot_id -> batch.lot_id"])
