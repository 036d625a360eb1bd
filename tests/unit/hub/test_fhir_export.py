"""FHIR R5 export of what a party may take out: a contributor's own released versions (portal
and API), published synthetic versions (the steward's page, the sandbox API for researchers
under an agreement that allows synthetic rows, the researcher client). The files are read
back with plain ``json`` and validated with ``fhir.resources`` independently of the hub."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fhir.resources import get_fhir_model_class
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from contracts.fhir import WITHHELD_SYSTEM
from hub.accounts import services as accounts
from hub.audit.models import AuditEntry
from hub.db import Database
from hub.exports import _RANGES, FhirExportError, fhir_file
from hub.settings import Settings
from hub.storage.frames import put_frame
from hub.synth.models import SyntheticVersion
from sandbox import PolicyDenied, connect
from tests.conftest import AuthActions, Users, activate_agreement, bearer, release_into_pool
from tests.unit.hub.conftest import batch_frame, gateway_terms

pytestmark = pytest.mark.db

LOTS = pd.DataFrame(
    {
        "lot_id": ["LOT-A1", "LOT-B2", "LOT-C3"],
        "platform": ["central", "point_of_care", "central"],
        "manufacturing_outcome": ["conforming", "failed", "conforming"],
        "viability": [91.5, 72.25, 88.0],
        "culture_days": [9, 11, 8],
        # As the pool holds dates: days since each patient's anchor (de-identified).
        "release_date": pd.array([17, 19, 14], dtype="Int64"),
    }
)


@pytest.fixture
def released(users: Users, database: Database, app: Flask) -> dict[str, int]:
    """st-aurelia (nadia) has released LOTS as ``batch`` and a ``deviation`` table; kelvin
    has a contributor (otto); rosa is a researcher, sam the steward."""
    users.institution("st-aurelia")
    users.institution("kelvin")
    users.make("nadia", "contributor", "st-aurelia")
    users.make("otto", "contributor", "kelvin")
    users.make("rosa", "researcher", "st-aurelia")
    users.make("sam", "steward")
    storage = app.extensions["cleanroom.storage"]
    with database.session() as s:
        batch = release_into_pool(s, storage, "st-aurelia", "batch", LOTS)
        deviation = release_into_pool(
            s,
            storage,
            "st-aurelia",
            "deviation",
            pd.DataFrame({"deviation_id": ["D1"], "lot_id": ["LOT-A1"]}),
        )
        ids = {"batch": batch.id, "deviation": deviation.id}
        s.commit()
    return ids


def _exports(database: Database) -> list[dict[str, Any]]:
    with database.session() as s:
        entries = s.scalars(
            select(AuditEntry).where(AuditEntry.action == "export.download").order_by(AuditEntry.id)
        )
        return [{"actor": e.actor, "target": e.target, **json.loads(e.detail)} for e in entries]


def _ndjson(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body.decode().splitlines() if line.strip()]


def _validated(resources: list[dict[str, Any]]) -> None:
    """Each resource passes ``fhir.resources``' own R5 model."""
    for resource in resources:
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def _values(resource: dict[str, Any]) -> set[str]:
    """Every identifier value, code and quantity of a product, as text."""
    found = {i["value"] for i in resource.get("identifier", [])}
    for prop in resource.get("property", []):
        if "valueQuantity" in prop:
            found.add(f"{float(prop['valueQuantity']['value']):g}")
        for coding in prop.get("valueCodeableConcept", {}).get("coding", []):
            found.add(coding["code"])
        if "valueString" in prop:
            found.add(prop["valueString"])
    return found


def _rows_appear(resources: list[dict[str, Any]], frame: pd.DataFrame) -> None:
    by_lot = {}
    for resource in resources:
        values = _values(resource)
        lots = [lot for lot in frame["lot_id"] if lot in values]
        assert len(lots) == 1, values
        by_lot[lots[0]] = values
    for row in frame.to_dict("records"):
        values = by_lot[row["lot_id"]]
        for column in ("platform", "manufacturing_outcome"):
            assert row[column] in values, (column, row, values)
        for column in ("viability", "culture_days"):
            assert f"{float(row[column]):g}" in values, (column, row, values)


def test_contributor_downloads_its_released_version_as_ndjson_and_bundle(
    client: FlaskClient, auth: AuthActions, database: Database, released: dict[str, int]
) -> None:
    auth.login("nadia")
    vid = released["batch"]
    resp = client.get(f"/datasets/{vid}/fhir.ndjson")
    assert resp.status_code == 200 and resp.mimetype == "application/fhir+ndjson"
    assert "batch-v1-fhir.ndjson" in resp.headers["Content-Disposition"]
    resources = _ndjson(resp.data)
    assert Counter(r["resourceType"] for r in resources) == {"BiologicallyDerivedProduct": 3}
    _validated(resources)
    _rows_appear(resources, LOTS)
    # Day offsets are no calendar dates: left out and said so, never written as 1970-01-18.
    assert (
        "batch.release_date (days since each patient's first date"
        in resp.headers["X-Cleanroom-Left-Out"]
    )
    assert "1970" not in resp.get_data(as_text=True)
    for resource in resources:  # each resource says what was withheld, and carries none of it
        tags = {(t["system"], t["code"]) for t in resource["meta"]["tag"]}
        assert (WITHHELD_SYSTEM, "batch.release_date") in tags
        rest = json.dumps({k: v for k, v in resource.items() if k != "meta"})
        assert "release_date" not in rest

    resp = client.get(f"/datasets/{vid}/fhir-bundle.json")
    assert resp.status_code == 200 and resp.mimetype == "application/fhir+json"
    bundle = json.loads(resp.data)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    get_fhir_model_class("Bundle").model_validate(bundle)
    inner = [e["resource"] for e in bundle["entry"]]
    assert len(inner) == 3 and all(e["fullUrl"].startswith("urn:uuid:") for e in bundle["entry"])
    _validated(inner)
    _rows_appear(inner, LOTS)

    ledger = _exports(database)
    assert [(e["actor"], e["target"], e["format"]) for e in ledger] == [
        ("user:nadia", f"dataset:{vid}", "fhir-ndjson"),
        ("user:nadia", f"dataset:{vid}", "fhir-bundle"),
    ]
    assert ledger[0]["table"] == "batch" and ledger[0]["version"] == 1
    assert ledger[0]["left_out"] == ["batch.release_date"]


def test_others_may_not_take_a_contributors_version_out(
    client: FlaskClient,
    auth: AuthActions,
    database: Database,
    settings: Settings,
    released: dict[str, int],
) -> None:
    vid = released["batch"]
    for username in ("otto", "rosa", "sam"):  # another institution, a researcher, the steward
        auth.login(username)
        resp = client.get(f"/datasets/{vid}/fhir.ndjson")
        assert resp.status_code == 403, username
        assert b"BiologicallyDerivedProduct" not in resp.data
        auth.logout()
    resp = client.get(
        f"/api/v1/uploads/{vid}/fhir-bundle.json",
        headers=bearer(database, settings, "otto", ("read",)),
    )
    assert resp.status_code == 403 and "error" in resp.get_json()
    assert _exports(database) == []


def test_api_download_and_a_table_fhir_cannot_carry(
    client: FlaskClient, database: Database, settings: Settings, released: dict[str, int]
) -> None:
    nadia = bearer(database, settings, "nadia", ("read",))
    resp = client.get(f"/api/v1/uploads/{released['batch']}/fhir.ndjson", headers=nadia)
    assert resp.status_code == 200
    resources = _ndjson(resp.data)
    _validated(resources)
    _rows_appear(resources, LOTS)

    refused = client.get(f"/api/v1/uploads/{released['deviation']}/fhir-bundle.json", headers=nadia)
    error = refused.get_json()["error"]
    assert refused.status_code == 409 and error["code"] == "fhir_export_refused"
    assert "`deviation` rows cannot be written as FHIR R5" in error["message"]
    assert "CSV or XLSX" in error["message"]
    # Only the download that left is in the ledger.
    assert [e["target"] for e in _exports(database)] == [f"dataset:{released['batch']}"]


def test_portal_refusal_is_a_message_on_the_version_page(
    client: FlaskClient, auth: AuthActions, database: Database, released: dict[str, int]
) -> None:
    auth.login("nadia")
    vid = released["deviation"]
    resp = client.get(f"/datasets/{vid}/fhir.ndjson")
    assert resp.status_code == 303 and resp.headers["Location"].endswith(f"/datasets/{vid}")
    page = client.get(f"/datasets/{vid}").get_data(as_text=True)
    assert "cannot be written as FHIR R5" in page and "CSV or XLSX" in page
    assert "Traceback" not in page
    assert _exports(database) == []


# Synthetic versions --------------------------------------------------------------------------


def _publish(app: Flask, database: Database, frame: pd.DataFrame, state: str = "published") -> int:
    """A synthetic version of v2v's pooled ``batch`` with ``frame`` as its rows."""
    storage = app.extensions["cleanroom.storage"]
    with database.session() as s:
        synthetic = SyntheticVersion(
            agreement_slug="v2v",
            cdm_table="batch",
            method="gaussian_copula",
            state=state,
            rows=len(frame),
            created_by="user:sam",
        )
        s.add(synthetic)
        s.flush()
        if state == "published":
            key = f"synthetic/batch/agreement=v2v/synthetic={synthetic.id}/data.parquet"
            put_frame(storage, key, frame)
            synthetic.data_key = key
        s.commit()
        return synthetic.id


SYNTHETIC = batch_frame(7, rows=12)


def test_researcher_takes_synthetic_rows_out_as_fhir_where_the_agreement_allows(
    client: FlaskClient,
    app: Flask,
    database: Database,
    settings: Settings,
    pooled,  # noqa: F811
) -> None:
    activate_agreement(database, gateway_terms("disclosure:\n  allow_synthetic: true\n"))
    sid = _publish(app, database, SYNTHETIC)
    rosa = bearer(database, settings, "rosa")
    url = "/api/v1/sandbox/synthetic/batch?agreement=v2v&format="
    resp = client.get(url + "fhir-ndjson", headers=rosa)
    assert resp.status_code == 200 and resp.mimetype == "application/fhir+ndjson"
    resources = _ndjson(resp.data)
    assert Counter(r["resourceType"] for r in resources) == {"BiologicallyDerivedProduct": 12}
    _validated(resources)
    _rows_appear(resources, SYNTHETIC)

    bundle = client.get(url + "fhir-bundle", headers=rosa)
    assert bundle.status_code == 200
    parsed = json.loads(bundle.data)
    get_fhir_model_class("Bundle").model_validate(parsed)
    assert len(parsed["entry"]) == 12

    with database.session() as s:
        entries = s.scalars(
            select(AuditEntry)
            .where(AuditEntry.action == "sandbox.synthetic")
            .order_by(AuditEntry.id)
        ).all()
    details = [json.loads(e.detail) for e in entries]
    assert [d["format"] for d in details] == ["fhir-ndjson", "fhir-bundle"]
    assert all(d["synthetic_versions"] == [sid] and d["rows"] == 12 for d in details)

    wrong = client.get(url + "fhir-xml", headers=rosa)
    assert wrong.status_code == 400 and "`format` must be" in wrong.get_json()["error"]["message"]
    paged = client.get(url + "fhir-ndjson&limit=5", headers=rosa)
    assert paged.status_code == 400 and "leave them out" in paged.get_json()["error"]["message"]


def test_no_synthetic_fhir_under_an_agreement_that_does_not_allow_it(
    client: FlaskClient,
    app: Flask,
    database: Database,
    settings: Settings,
    pooled,  # noqa: F811
) -> None:
    activate_agreement(database, gateway_terms())
    _publish(app, database, SYNTHETIC)
    resp = client.get(
        "/api/v1/sandbox/synthetic/batch?agreement=v2v&format=fhir-ndjson",
        headers=bearer(database, settings, "rosa"),
    )
    assert resp.status_code == 403
    assert "does not allow synthetic rows" in resp.get_json()["error"]["message"]
    assert b"BiologicallyDerivedProduct" not in resp.data
    # omar is not named in the agreement at all.
    other = client.get(
        "/api/v1/sandbox/synthetic/batch?agreement=v2v&format=fhir-bundle",
        headers=bearer(database, settings, "omar"),
    )
    assert other.status_code == 403


def test_steward_downloads_a_published_synthetic_version_from_its_page(
    client: FlaskClient,
    auth: AuthActions,
    app: Flask,
    database: Database,
    pooled,  # noqa: F811
) -> None:
    activate_agreement(database, gateway_terms("disclosure:\n  allow_synthetic: true\n"))
    sid = _publish(app, database, SYNTHETIC)
    failed = _publish(app, database, SYNTHETIC, state="failed_gates")
    auth.login("sam")
    page = client.get(f"/synthetic/{sid}").get_data(as_text=True)
    assert "FHIR R5 (NDJSON)" in page and "FHIR R5 Bundle (JSON)" in page
    resp = client.get(f"/synthetic/{sid}/fhir.ndjson")
    assert resp.status_code == 200
    resources = _ndjson(resp.data)
    _validated(resources)
    _rows_appear(resources, SYNTHETIC)
    assert [(e["target"], e["format"]) for e in _exports(database)] == [
        (f"synthetic:{sid}", "fhir-ndjson")
    ]
    # A version that failed its gates has no download link and no rows to give.
    assert "FHIR R5 (NDJSON)" not in client.get(f"/synthetic/{failed}").get_data(as_text=True)
    refused = client.get(f"/synthetic/{failed}/fhir-bundle.json")
    assert refused.status_code == 303
    shown = client.get(f"/synthetic/{failed}").get_data(as_text=True)
    assert "only published synthetic versions can be downloaded" in shown
    auth.logout()
    # A researcher reads synthetic rows through the sandbox API only, not from this page.
    auth.login("rosa")
    assert client.get(f"/synthetic/{sid}/fhir.ndjson").status_code == 403
    assert len(_exports(database)) == 1


def test_client_fetches_synthetic_fhir(
    served: str,
    app: Flask,
    database: Database,
    settings: Settings,
    pooled,  # noqa: F811
    tmp_path: Path,
) -> None:
    activate_agreement(database, gateway_terms("disclosure:\n  allow_synthetic: true\n"))
    _publish(app, database, SYNTHETIC)
    token = bearer(database, settings, "rosa")["Authorization"].removeprefix("Bearer ")
    cr = connect(served, token)
    saved = tmp_path / "batch.ndjson"
    resources = cr.synthetic_fhir("batch", path=saved)
    assert len(resources) == 12 and resources == _ndjson(saved.read_bytes())
    assert resources.left_out == ""  # every column of these rows has its FHIR form
    _validated(resources)
    _rows_appear(resources, SYNTHETIC)
    bundled = cr.synthetic_fhir("batch", form="bundle", path=tmp_path / "batch.json")
    assert [r["id"] for r in bundled] == [r["id"] for r in resources]
    assert json.loads((tmp_path / "batch.json").read_text())["resourceType"] == "Bundle"
    with pytest.raises(PolicyDenied):
        connect(served, bearer(database, settings, "omar")["Authorization"][7:]).synthetic_fhir(
            "batch", agreement="v2v"
        )


def test_calendar_dates_are_written_and_de_identified_ones_left_out_by_name() -> None:
    batch = LOTS.drop(columns=["release_date"]).assign(
        release_date=pd.to_datetime(["2026-01-05", "2026-02-10", "2026-03-15"])
    )
    episode = pd.DataFrame({"coi_id": ["c1", "c2"], "age": ["60-79", "40-59"]})
    written = fhir_file({"batch": batch, "episode": episode}, "bundle")
    text = written.body.decode()
    assert "2026-01-05" in text and "2026-03-15" in text
    assert written.left_out == {"episode.age": _RANGES}
    assert "episode.age (ranges such as 60-79" in written.note()
    assert "60-79" not in text
    get_fhir_model_class("Bundle").model_validate(json.loads(text))
    with pytest.raises(FhirExportError, match="`deviation` rows cannot be written"):
        fhir_file({"deviation": pd.DataFrame({"deviation_id": ["D1"]})}, "ndjson")


def test_cli_export_writes_the_released_version_and_refuses_what_fhir_cannot_carry(
    runner: Any,
    served: str,
    released: dict[str, int],
    database: Database,
    settings: Settings,
    tmp_path: Path,
) -> None:
    from hub.cli import cli

    with database.session() as s:
        nadia = accounts.get_user(s, "nadia")
        secret = accounts.create_token(s, settings, nadia, "lims", ["read"], actor="t").secret
        s.commit()
    out = tmp_path / "batch.ndjson"
    args = ["export-fhir", str(released["batch"]), "--url", served, "--token", secret]
    result = runner.invoke(cli, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    resources = _ndjson(out.read_bytes())
    _validated(resources)
    _rows_appear(resources, LOTS)
    assert "batch.release_date" in result.output  # said what was left out
    assert {e["format"] for e in _exports(database)} == {"fhir-ndjson"}

    bundle = tmp_path / "batch.json"
    result = runner.invoke(cli, [*args, "--form", "bundle", "--out", str(bundle)])
    assert result.exit_code == 0, result.output
    assert json.loads(bundle.read_bytes())["resourceType"] == "Bundle"

    refused = tmp_path / "deviation.ndjson"
    dev = ["export-fhir", str(released["deviation"]), "--url", served, "--token", secret]
    result = runner.invoke(cli, [*dev, "--out", str(refused)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "CSV or XLSX" in result.output and not refused.exists()
