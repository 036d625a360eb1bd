"""FHIR R5 files through the normal upload path (portal, JSON API): one dataset version per
CDM table the file fills, each validated, de-identified, reviewed and released like a
spreadsheet; the import report on each version's page; hostile files refused with nothing
left behind; the CDM version each upload was checked against; and the round trip
spreadsheet → pool → FHIR → a fresh hub → the same rows.

The expected tables and row counts are read from the bundles with plain ``json`` here, not
with ``contracts.fhir``."""

from __future__ import annotations

import io
import json
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from anonymisation.pseudonyms import pseudonymise
from contracts.cdm import cdm_version
from contracts.fhir import write_fhir
from hub import create_app
from hub.accounts import services as accounts
from hub.audit.models import AuditEntry
from hub.db import Database
from hub.ingest.models import DatasetVersion
from hub.settings import Settings, load_settings
from tests.conftest import PASSWORD, AuthActions, Users, csrf_from
from tests.unit.hub.uploads import (
    accept_mapping,
    api_upload,
    drain,
    pooled_rows,
    release_all,
    show,
)

pytestmark = pytest.mark.db

SAMPLE = Path(__file__).parents[1] / "contracts" / "fhir_samples" / "car_t_episode.bundle.json"
LOT_SYSTEM = "urn:cleanroom:id:lot"
# Each table after the tables it links to (custody events link to lots).
RELEASE_ORDER = [
    "episode",
    "collection",
    "batch",
    "custody_event",
    "release_test",
    "administration",
]


# Reading the bundle independently ---------------------------------------------------------


def _table_of(resource: dict[str, Any]) -> str | None:
    """The CDM table a resource belongs to, by the rules docs/cdm.md states in words."""
    kind = resource["resourceType"]
    if kind == "BiologicallyDerivedProduct":
        is_lot = "parent" in resource or any(
            i.get("system") == LOT_SYSTEM for i in resource.get("identifier", [])
        )
        return "batch" if is_lot else "collection"
    return {
        "Patient": "episode",
        "Observation": "release_test",
        "BiologicallyDerivedProductDispense": "administration",
        "Provenance": "custody_event",
    }.get(kind)


def expected_rows(bundle: dict[str, Any]) -> dict[str, int]:
    counts = Counter(_table_of(e["resource"]) for e in bundle["entry"])
    return {t: n for t, n in counts.items() if t is not None}


def unknown_types(bundle: dict[str, Any]) -> set[str]:
    return {
        e["resource"]["resourceType"] for e in bundle["entry"] if _table_of(e["resource"]) is None
    }


def many_episodes(n: int) -> dict[str, Any]:
    """The sample episode ``n`` times over, each copy with its own identifiers, ids and
    references, and the same quasi-identifiers (so k-anonymity keeps every row)."""
    text = SAMPLE.read_text()
    entries = []
    for i in range(n):
        copy = (
            text.replace("5c1f3d2e-", f"{i:08x}-")
            .replace("COI-2024-000123", f"COI-2024-{i:06d}")
            .replace("A999924123456", f"A99992412{i:04d}")
            .replace("LOT-24-0042", f"LOT-24-{i:04d}")
            .replace("EV-0001", f"EV-{i:04d}")
            .replace("MRN778812", f"MRN{700000 + i}")
        )
        copy = re.sub(r'"id": "([a-z]+-\d)"', rf'"id": "\1-{i}"', copy)
        entries += json.loads(copy)["entry"]
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


# Driving the hub --------------------------------------------------------------------------


def versions_in_db(database: Database) -> list[DatasetVersion]:
    with database.session() as s:
        found = list(s.scalars(select(DatasetVersion).order_by(DatasetVersion.id)))
        s.expunge_all()
    return found


def test_sample_bundle_through_the_api_makes_one_version_per_table(
    client: FlaskClient, token: str, database: Database, settings: Settings
) -> None:
    bundle = json.loads(SAMPLE.read_text())
    expected = expected_rows(bundle)
    resp = api_upload(client, token, SAMPLE.read_bytes(), "episode.json", table="batch")
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    made = body["versions"]
    # In the data model's order, one per table, the table asked for ignored.
    assert [v["table"] for v in made] == [t for t in RELEASE_ORDER if t in expected]
    assert body["id"] == made[0]["id"] and body["table"] == "episode"
    assert all(v["file_kind"] == "fhir" and v["state"] == "processing" for v in made)
    assert {v["table"]: v["rows"] for v in made} == expected

    drain(database, settings)
    for v in made:
        reviewed = show(client, token, v["id"])
        assert reviewed["state"] == "awaiting_review", reviewed["error"]
        assert reviewed["rows"] == expected[v["table"]]
        assert reviewed["cdm_version"] == cdm_version()
        # The mapping was confirmed without asking: every column onto itself.
        columns = reviewed["mapping"]["columns"]
        assert columns and all(c["source"] == c["target"] for c in columns)
    with database.session() as s:
        processed = s.scalars(
            select(AuditEntry).where(AuditEntry.action == "ingest.processed")
        ).all()
        uploads = s.scalars(select(AuditEntry).where(AuditEntry.action == "upload")).all()
        assert len(processed) == len(made)
        assert all(json.loads(e.detail)["cdm_version"] == cdm_version() for e in processed)
        assert sorted(json.loads(e.detail)["table"] for e in uploads) == sorted(expected)


def test_portal_upload_shows_the_import_report_and_cdm_version(
    client: FlaskClient, auth: AuthActions, users: Users, database: Database, settings: Settings
) -> None:
    users.make("nadia", "contributor")
    auth.login("nadia")
    bundle = json.loads(SAMPLE.read_text())
    resp = client.post(
        "/datasets",
        data={
            "csrf_token": csrf_from(client, "/datasets"),
            "table": "administration",
            "file": (io.BytesIO(SAMPLE.read_bytes()), "episode.json"),
        },
        content_type="multipart/form-data",
        follow_redirects=True,
    )
    page = resp.get_data(as_text=True)
    assert resp.status_code == 200
    assert "read as FHIR R5" in page and "6 versions" in page
    made = versions_in_db(database)
    assert {v.cdm_table: v.rows for v in made} == expected_rows(bundle)
    assert len(made) == len(expected_rows(bundle))  # one version per table
    drain(database, settings)
    for v in made:
        page = client.get(f"/datasets/{v.id}").get_data(as_text=True)
        assert 'data-testid="fhir-report"' in page
        for kind in unknown_types(bundle):  # Organization: no table for it, said so
            assert f"{kind}: 1 not mapped (the data model has no table for it)." in page
        assert "bag_colour" in page  # an element the mapping does not take, listed
        assert f"Checked against common data model version {cdm_version()}" in page
        assert "{&#39;" not in page and "[&#39;" not in page  # no Python reprs


HOSTILE = {
    "deeply nested": (
        b'{"resourceType":"Bundle","type":"collection","entry":[{"resource":'
        + b'{"resourceType":"Basic","extension":[' * 200
        + b"]}" * 200
        + b"}]}",
        "nested more than",
    ),
    "not FHIR": (b'{"name": "a spreadsheet exported as JSON", "rows": [1, 2]}', "not FHIR R5"),
    "a Patient alone": (
        json.dumps(
            [e["resource"] for e in json.loads(SAMPLE.read_text())["entry"]][0], indent=2
        ).encode(),
        "single Patient resource",
    ),
    "a history Bundle": (
        json.dumps({"resourceType": "Bundle", "type": "history", "entry": []}).encode(),
        "several versions of the same resources",
    ),
    "only unknown resources": (
        json.dumps(
            {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": {"resourceType": "Organization", "id": "o1"}}],
            }
        ).encode(),
        "no resource the common data model has a table for",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_fhir_is_refused_with_nothing_left_behind(
    case: str, client: FlaskClient, token: str, database: Database, app: Any
) -> None:
    data, words = HOSTILE[case]
    resp = api_upload(client, token, data, "hostile.json")
    assert resp.status_code == 400, resp.get_json()
    error = resp.get_json()["error"]
    assert words in error["message"]
    assert "Traceback" not in error["message"]
    assert versions_in_db(database) == []
    storage = app.extensions["cleanroom.storage"]
    assert list(storage.list("quarantine/")) == []
    with database.session() as s:
        refused = s.scalars(select(AuditEntry).where(AuditEntry.action == "upload.refused")).all()
        assert len(refused) == 1


def test_portal_refusal_is_flashed(
    client: FlaskClient, auth: AuthActions, users: Users, database: Database
) -> None:
    users.make("nadia", "contributor")
    auth.login("nadia")
    data, words = HOSTILE["a Patient alone"]
    resp = client.post(
        "/datasets",
        data={
            "csrf_token": csrf_from(client, "/datasets"),
            "table": "episode",
            "file": (io.BytesIO(data), "patient.json"),
        },
        content_type="multipart/form-data",
        follow_redirects=True,
    )
    assert words in resp.get_data(as_text=True)
    assert versions_in_db(database) == []


def test_release_pools_every_table_with_keys_relinked(
    client: FlaskClient, token: str, database: Database, settings: Settings, app: Any
) -> None:
    bundle = many_episodes(12)
    expected = expected_rows(bundle)
    assert expected["episode"] == 12 and expected["release_test"] == 24
    resp = api_upload(client, token, json.dumps(bundle).encode(), "episodes.json")
    assert resp.status_code == 201, resp.get_json()
    made = resp.get_json()["versions"]
    drain(database, settings)
    for v in made:
        reviewed = show(client, token, v["id"])
        assert reviewed["state"] == "awaiting_review", reviewed["error"]
        assert reviewed["valid_rows"] == expected[v["table"]], reviewed["validation"]
    release_all(client, token, [v["id"] for v in made])

    episode = pooled_rows(app, database, "episode")
    collection = pooled_rows(app, database, "collection")
    batch = pooled_rows(app, database, "batch")
    assert len(episode) == 12 and len(collection) == 12 and len(batch) == 12
    assert len(pooled_rows(app, database, "release_test")) == 24
    # Keys are pseudonyms, the same in every table: each batch's coi_id and din are its
    # collection's, and each collection's coi_id an episode's.
    coi = {f"COI-2024-{i:06d}" for i in range(12)}
    assert not coi & set(episode["coi_id"])  # pseudonymised
    pseudonyms = set(pseudonymise(pd.Series(sorted(coi)), settings.key_chain))
    assert set(episode["coi_id"]) == pseudonyms
    assert set(collection["coi_id"]) == pseudonyms
    joined = batch.merge(collection, on="din", suffixes=("_batch", "_collection"))
    assert len(joined) == 12
    assert (joined["coi_id_batch"] == joined["coi_id_collection"]).all()


# The round trip: a site spreadsheet → pool → FHIR R5 → a fresh hub -------------------------

N_SITE = 10
SITE_EPISODES = "coi_id,site,product_class,indication,age,sex\n" + "".join(
    f"COI-{i:04d},St Aurelia,autologous_car_t,LBCL,{60 + i % 2},{'female' if i % 2 else 'male'}\n"
    for i in range(N_SITE)
)
SITE_COLLECTIONS = "din,coi_id,collection_date,fresh_or_cryo,device\n" + "".join(
    f"A99992412{i:04d},COI-{i:04d},2024-03-0{1 + i % 2},fresh,Spectra Optia\n"
    for i in range(N_SITE)
)
SITE_BATCHES = (
    "lot_id,coi_id,din,processing_facility,platform,manufacturing_outcome,viability\n"
    + "".join(
        f"LOT-{i:04d},COI-{i:04d},A99992412{i:04d},Northbridge,central,conforming,9{i % 2}\n"
        for i in range(N_SITE)
    )
)
SITE_FILES = {
    "episode": SITE_EPISODES,
    "collection": SITE_COLLECTIONS,
    "batch": SITE_BATCHES,
}


def _through_mapping(
    client: FlaskClient, token: str, db: Database, settings: Settings, table: str
) -> int:
    resp = api_upload(client, token, SITE_FILES[table].encode(), f"{table}.csv", table=table)
    assert resp.status_code == 201, resp.get_json()
    vid = resp.get_json()["id"]
    assert accept_mapping(client, token, db, settings, vid)["state"] == "awaiting_review"
    release_all(client, token, [vid])
    return vid


@pytest.fixture
def fresh_hub(
    tmp_path: Path, sqlite_template: Path, settings_overrides: dict[str, Any]
) -> Iterator[tuple[Flask, Settings, Database, str]]:
    """A second hub with its own (SQLite) database and data directory, hence its own
    pseudonym key, and a contributor's upload token there."""
    path = tmp_path / "fresh.db"
    shutil.copy(sqlite_template, path)
    data = tmp_path / "fresh-data"
    data.mkdir(mode=0o700)
    fresh = load_settings(
        {**settings_overrides, "data_dir": str(data), "database_url": f"sqlite:///{path}"},
        environ={},
    )
    app = create_app(fresh)
    app.config["TESTING"] = True
    database = Database(fresh.database_url)
    with database.session() as s:
        accounts.create_institution(s, "kelvin", "Kelvin", "hospital", actor="test")
        user = accounts.create_user(
            s, "kai", PASSWORD, "contributor", institution="kelvin", actor="t"
        )
        secret = accounts.create_token(s, fresh, user, "lims", ["upload", "read"], actor="t").secret
    yield app, fresh, database, secret
    app.extensions["cleanroom.policy"].close()
    app.extensions["cleanroom.db"].dispose()
    database.dispose()


def test_round_trip_spreadsheet_pool_fhir_fresh_hub(
    client: FlaskClient,
    token: str,
    database: Database,
    settings: Settings,
    app: Any,
    fresh_hub: tuple[Flask, Settings, Database, str],
) -> None:
    for table in SITE_FILES:
        _through_mapping(client, token, database, settings, table)
    released = {t: pooled_rows(app, database, t) for t in SITE_FILES}
    assert all(len(f) == N_SITE for f in released.values())
    # The pool holds an episode's age as a band and every date as days since the
    # patient's anchor date: FHIR R5 has no element for either, so the export carries the
    # product tables (collection and lot) and the comparison leaves the day offsets out.
    products = {t: released[t] for t in ("collection", "batch")}
    exported = write_fhir(products, form="bundle")

    fresh_app, fresh_settings, fresh_db, fresh_token = fresh_hub
    other = fresh_app.test_client()
    resp = api_upload(other, fresh_token, exported, "from-the-pool.json")
    assert resp.status_code == 201, resp.get_json()
    made = {v["table"]: v["id"] for v in resp.get_json()["versions"]}
    assert list(made) == ["collection", "batch"]

    # The rows the fresh hub took in (before its own de-identification) are the pool's rows.
    storage = fresh_app.extensions["cleanroom.storage"]
    with fresh_db.session() as s:
        raw = {v.cdm_table: v.raw_key for v in s.scalars(select(DatasetVersion))}
    for table, frame in products.items():
        with storage.open(raw[table]) as fh:
            imported = pq.read_table(io.BytesIO(fh.read())).to_pandas()
        assert len(imported) == N_SITE
        filled = [c for c in frame.columns if frame[c].notna().any() and c != "collection_date"]
        assert set(filled) <= set(imported.columns), table
        key = {"collection": "din", "batch": "lot_id"}[table]
        left = frame[filled].sort_values(key).reset_index(drop=True)
        right = imported[filled].sort_values(key).reset_index(drop=True)
        pd.testing.assert_frame_equal(
            left.astype(object).map(_plain),
            right.astype(object).map(_plain),
            check_dtype=False,
            obj=table,
        )

    drain(fresh_db, fresh_settings)
    for vid in made.values():
        reviewed = show(other, fresh_token, vid)
        assert reviewed["state"] == "awaiting_review", reviewed["error"]
        assert reviewed["valid_rows"] == N_SITE, reviewed["validation"]
    release_all(other, fresh_token, list(made.values()))
    collection = pooled_rows(fresh_app, fresh_db, "collection")
    batch = pooled_rows(fresh_app, fresh_db, "batch")
    # Pseudonymised again with the fresh hub's own key, and still linked across tables.
    assert not set(collection["din"]) & set(products["collection"]["din"])
    joined = batch.merge(collection, on="din", suffixes=("_batch", "_collection"))
    assert len(joined) == N_SITE
    assert (joined["coi_id_batch"] == joined["coi_id_collection"]).all()


def _plain(value: Any) -> Any:
    """A cell compared across Parquet round trips: missing as None, numbers as floats,
    dates as ISO text."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return round(float(value), 9)
    if hasattr(value, "isoformat"):
        return value.isoformat()[:10]
    return value


def test_cli_upload_of_a_fhir_file_follows_every_version(
    runner: Any, served: str, token: str, database: Database, tmp_path: Path
) -> None:
    from hub.cli import cli

    bundle = json.loads(SAMPLE.read_text())
    path = tmp_path / "episode.json"
    path.write_bytes(SAMPLE.read_bytes())
    result = runner.invoke(
        cli, ["upload", str(path), "--url", served, "--token", token, "--no-wait"]
    )
    assert result.exit_code == 0, result.output
    expected = expected_rows(bundle)
    for table in expected:
        assert f"({table} v1," in result.output
    assert {v.cdm_table: v.rows for v in versions_in_db(database)} == expected

    # A spreadsheet still needs its table, and is told so.
    csv = tmp_path / "lots.csv"
    csv.write_text("lot_id,coi_id\nLOT-1,COI-1\n")
    result = runner.invoke(cli, ["upload", str(csv), "--url", served, "--token", token])
    assert result.exit_code != 0
    assert "choose the table of the common data model" in result.output


def test_invalid_resources_and_missing_references_are_listed_on_the_page(
    client: FlaskClient, auth: AuthActions, users: Users, database: Database, settings: Settings
) -> None:
    users.make("nadia", "contributor")
    auth.login("nadia")
    bundle = json.loads(SAMPLE.read_text())
    bundle["entry"] += [
        {
            "resource": {
                "resourceType": "Observation",
                "id": "bad-1",
                "status": "final",
                "code": {"text": "viability"},
                "valueQuantity": {"value": "lots"},
            }
        },
        {
            "resource": {
                "resourceType": "BiologicallyDerivedProductDispense",
                "id": "dispense-2",
                "status": "completed",
                "patient": {"reference": "Patient/nobody"},
                "product": {"reference": "BiologicallyDerivedProduct/lot-1"},
            }
        },
    ]
    resp = client.post(
        "/datasets",
        data={
            "csrf_token": csrf_from(client, "/datasets"),
            "file": (io.BytesIO(json.dumps(bundle).encode()), "with-problems.json"),
        },
        content_type="multipart/form-data",
    )
    assert resp.status_code == 303
    drain(database, settings)
    made = versions_in_db(database)
    release_test = next(v for v in made if v.cdm_table == "release_test")
    assert release_test.rows == 2  # the invalid Observation was not taken
    page = client.get(f"/datasets/{made[0].id}").get_data(as_text=True)
    assert "1 resources are not valid FHIR R5 and were not taken" in page
    assert "Observation/bad-1" in page and "does not match" in page  # the validator's words
    assert "refers to Patient/nobody, which is not in the upload" in page
