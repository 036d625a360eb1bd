"""The ingest pipeline through the JSON API and the portal: upload → profile → mapping →
validation and de-identification → review → release / withdrawal, and hostile input."""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from hub.accounts import services as accounts
from hub.audit.models import AuditEntry
from hub.db import Database
from hub.ingest.models import DatasetVersion
from hub.settings import Settings
from tests.conftest import AuthActions, csrf_from
from tests.unit.hub.uploads import (
    APPROVE,
    BATCH_CSV,
    EPISODE_CSV,
    accept_mapping,
    auth_headers,
    drain,
    release_episode,
    show,
    upload,
    workbook,
)

pytestmark = pytest.mark.db


def test_upload_to_release(
    client: FlaskClient, token: str, database: Database, settings: Settings, app
) -> None:
    storage = app.extensions["cleanroom.storage"]
    resp = upload(client, token, "episode", "episodes.csv", EPISODE_CSV)
    assert resp.status_code == 201
    created = resp.get_json()
    assert created["state"] == "uploaded" and created["file_kind"] == "csv"
    assert resp.headers["Location"].endswith(f"/api/v1/uploads/{created['id']}")
    vid = created["id"]

    drain(database, settings)
    profiled = show(client, token, vid)
    assert profiled["state"] == "awaiting_mapping"
    targets = {c["source"]: c["target"] for c in profiled["mapping"]["columns"]}
    assert targets["Patient ID"] == "coi_id"
    assert targets["Patient Name"] == "patient_name"
    assert targets["Weight (kg)"] == "weight_kg"

    reviewed = accept_mapping(client, token, database, settings, vid)
    assert reviewed["state"] == "awaiting_review", reviewed["error"]
    assert (reviewed["rows"], reviewed["valid_rows"]) == (24, 23)  # age 130 is held back
    report = reviewed["deidentification"]
    actions = {c["name"]: c["action_kind"] for c in report["columns"]}
    assert actions["patient_name"] == actions["mrn"] == "drop"
    assert actions["coi_id"] == "pseudonymise" and actions["age"] == "generalise"
    assert report["k"] == 5 and report["risk"]["k_after"] >= 5
    assert reviewed["deidentification_floor"] == actions

    # Release needs the contributor's approval of that report.
    refused = client.post(f"/api/v1/uploads/{vid}/release", headers=auth_headers(token))
    assert refused.status_code == 400
    assert refused.get_json()["error"]["code"] == "approval_required"

    resp = client.post(f"/api/v1/uploads/{vid}/release", headers=auth_headers(token), json=APPROVE)
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["state"] == "released"
    with database.session() as s:
        v = s.get(DatasetVersion, vid)
        assert v is not None
        pool_key, raw_key = v.pool_key, v.raw_key
        actions = s.scalars(select(AuditEntry.action)).all()
    assert pool_key == "pool/episode/institution=st-aurelia/version=1/part-0.parquet"
    assert raw_key == ""  # the raw copy is deleted on release
    assert not any(
        o.key.startswith("quarantine/") and o.key.endswith("/raw")
        for o in storage.list("quarantine/")
    )
    with storage.open(pool_key) as fh:
        pooled = pq.read_table(io.BytesIO(fh.read())).to_pandas()
    assert "patient_name" not in pooled.columns and "mrn" not in pooled.columns
    assert len(pooled) == report["rows_out"] >= 18
    assert not pooled["coi_id"].str.startswith("COI-").any()
    assert pooled["coi_id"].str.fullmatch(r"[0-9a-f]{32}").all()
    # The one-off site (a formula-looking cell) is a rare category: merged, not pooled.
    assert '=HYPERLINK("http://x")' not in set(pooled["site"].dropna())
    assert pooled["age"].dropna().str.fullmatch(r"\d+-\d+|90\+").all()  # bands, not ages
    assert {"upload", "ingest.map", "ingest.processed", "release"} <= set(actions)


def test_reports_are_downloadable_and_formula_safe(
    client: FlaskClient, token: str, database: Database, settings: Settings, auth: AuthActions
) -> None:
    vid = upload(client, token, "episode", "e.csv", EPISODE_CSV).get_json()["id"]
    drain(database, settings)
    client.post(f"/api/v1/uploads/{vid}/mapping", json={}, headers=auth_headers(token))
    drain(database, settings)
    auth.login("nadia")
    with client.get(f"/datasets/{vid}/held-back.csv") as held:  # streamed: close it
        assert held.status_code == 200
        text = held.get_data(as_text=True)
    assert "130" in text and "row" in text.splitlines()[0]
    with client.get(f"/datasets/{vid}/report.csv") as resp:
        report = resp.get_data(as_text=True)
    assert "age" in report
    for line in report.splitlines():
        for cell in line.split(","):
            assert not cell.startswith(("=", "+", "@")), line


def test_referential_links_use_released_keys(client, token, database, settings) -> None:
    release_episode(client, token, database, settings)
    vid = upload(client, token, "batch", "batches.csv", BATCH_CSV).get_json()["id"]
    drain(database, settings)
    client.post(f"/api/v1/uploads/{vid}/mapping", json={}, headers=auth_headers(token))
    drain(database, settings)
    v = show(client, token, vid)
    assert v["state"] == "awaiting_review", v["error"]
    assert (v["rows"], v["valid_rows"]) == (3, 2)  # COI-9999 has no episode


def test_remembered_mapping_is_offered(client, token, database, settings) -> None:
    first = upload(client, token, "episode", "e.csv", EPISODE_CSV).get_json()["id"]
    drain(database, settings)
    # The contributor says "Weight (kg)" is not to be used.
    resp = client.post(
        f"/api/v1/uploads/{first}/mapping",
        json={"columns": {"Weight (kg)": {"target": ""}}},
        headers=auth_headers(token),
    )
    assert resp.status_code == 200
    second = upload(client, token, "episode", "e2.csv", EPISODE_CSV).get_json()["id"]
    drain(database, settings)
    cols = {c["source"]: c for c in show(client, token, second)["mapping"]["columns"]}
    assert cols["Patient ID"]["target"] == "coi_id"
    assert "remembered" in cols["Patient ID"]["reason"]


def test_withdrawal_takes_a_version_out_of_the_pool(client, token, database, settings, app) -> None:
    from hub.ingest.services import released_keys

    released = release_episode(client, token, database, settings)
    storage = app.extensions["cleanroom.storage"]
    with database.session() as s:
        assert released_keys(s, "episode") != []
        key = released_keys(s, "episode")[0]
    resp = client.post(f"/api/v1/uploads/{released['id']}/withdraw", headers=auth_headers(token))
    assert resp.get_json()["state"] == "withdrawn"
    with database.session() as s:
        assert released_keys(s, "episode") == []
        assert "withdrawal" in s.scalars(select(AuditEntry.action)).all()
    assert not storage.exists(key)
    again = client.post(
        f"/api/v1/uploads/{released['id']}/release", headers=auth_headers(token), json=APPROVE
    )
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "wrong_state"


def test_rejecting_deletes_the_quarantine_copy(client, token, database, settings, app) -> None:
    vid = upload(client, token, "episode", "e.csv", EPISODE_CSV).get_json()["id"]
    drain(database, settings)
    resp = client.post(f"/api/v1/uploads/{vid}/reject", headers=auth_headers(token))
    assert resp.get_json()["state"] == "rejected"
    assert list(app.extensions["cleanroom.storage"].list("quarantine/")) == []


# Hostile and broken input -----------------------------------------------------------------


def _nothing_kept(database: Database, app) -> None:
    with database.session() as s:
        assert s.scalar(select(func.count()).select_from(DatasetVersion)) == 0
    assert list(app.extensions["cleanroom.storage"].list("quarantine/")) == []


@pytest.mark.parametrize(
    "data, needle",
    [
        (b"", "empty"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "binary"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 64, "xls"),
    ],
    ids=["empty", "pdf", "png", "legacy-xls"],
)
def test_bad_files_are_refused_and_leave_nothing(
    client, token, database, app, data, needle
) -> None:
    resp = upload(client, token, "episode", "data.csv", data)
    assert resp.status_code == 400
    body = resp.get_json()
    assert body["error"]["code"] == "invalid_file"
    assert needle in body["error"]["message"].lower()
    _nothing_kept(database, app)


def test_oversize_upload_is_refused_and_leaves_nothing(
    token, database, settings_overrides, users
) -> None:
    from hub import create_app

    app = create_app({**settings_overrides, "max_upload_mb": 1})
    client = app.test_client()
    big = b"a,b\n" + b"1,2\n" * (400_000)  # 1.6 MB
    resp = upload(client, token, "episode", "big.csv", big)
    assert resp.status_code == 413
    assert resp.get_json()["error"]["code"] in ("payload_too_large", "request_entity_too_large")
    _nothing_kept(database, app)


def test_filename_cannot_escape(client, token, database, settings) -> None:
    resp = upload(client, token, "episode", "..%2F..%2Fetc%2Fpasswd", EPISODE_CSV)
    assert resp.status_code == 201
    body = resp.get_json()
    assert body["filename"] == "passwd"
    with database.session() as s:
        v = s.get(DatasetVersion, body["id"])
        assert v is not None and v.raw_key.startswith("quarantine/st-aurelia/")
        assert ".." not in v.raw_key


def test_api_refusals(client, token, users, database, settings) -> None:
    assert upload(client, token, "nonsense", "x.csv", EPISODE_CSV).status_code == 400
    resp = client.post("/api/v1/uploads?table=episode&filename=x.csv", data=b"a")
    assert resp.status_code == 401
    users.make("rosa", "researcher")
    with database.session() as s:
        rtoken = accounts.create_token(
            s, settings, accounts.get_user(s, "rosa"), "t", ["upload", "read"], actor="t"
        ).secret
    assert upload(client, rtoken, "episode", "x.csv", EPISODE_CSV).status_code == 403
    vid = upload(client, token, "episode", "x.csv", EPISODE_CSV).get_json()["id"]
    users.institution("kelvin", "academic")
    users.make("kiri", "contributor", institution="kelvin")
    with database.session() as s:
        other = accounts.create_token(
            s, settings, accounts.get_user(s, "kiri"), "t", ["upload", "read"], actor="t"
        ).secret
    assert client.get(f"/api/v1/uploads/{vid}", headers=auth_headers(other)).status_code == 403
    assert (
        client.post(f"/api/v1/uploads/{vid}/reject", headers=auth_headers(other)).status_code == 403
    )


# Portal -----------------------------------------------------------------------------------


def test_portal_upload_and_mapping_form(client, auth, users, database, settings) -> None:
    users.make("nadia", "contributor")
    auth.login("nadia")
    token = csrf_from(client, "/datasets")
    resp = client.post(
        "/datasets",
        data={
            "csrf_token": token,
            "table": "episode",
            "file": (io.BytesIO(EPISODE_CSV.encode()), "episodes.csv"),
        },
        content_type="multipart/form-data",
    )
    assert resp.status_code == 303
    page = client.get(resp.location)
    assert "uploaded" in page.get_data(as_text=True)
    drain(database, settings)
    vid = int(resp.location.rstrip("/").rsplit("/", 1)[1])
    page = client.get(f"/datasets/{vid}").get_data(as_text=True)
    assert 'name="target::Patient ID"' in page
    # Sources not in the form keep the proposed match.
    form = {"csrf_token": token, "target::Patient ID": "coi_id"}
    resp = client.post(f"/datasets/{vid}/mapping", data=form)
    assert resp.status_code == 303
    status = json.loads(client.get(f"/datasets/{vid}/status.json").get_data(as_text=True))
    assert status["state"] in ("processing", "awaiting_review")


def _zip_bomb() -> bytes:
    """An 'XLSX' whose one sheet inflates from a few KB to 64 MiB of zeros."""
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        zf.writestr("xl/workbook.xml", "<workbook/>")
        with zf.open("xl/worksheets/sheet1.xml", "w") as member:
            block = b"\0" * (1 << 20)
            for _ in range(64):
                member.write(block)
    return buf.getvalue()


@pytest.mark.parametrize(
    "filename, data, needle",
    [
        ("bomb.xlsx", _zip_bomb(), "zip bomb"),
        ("ragged.csv", "a,b,c\n1,2,3\n4,5,6,7,8\n", "line 3 has 5 fields"),
        ("wide.csv", ",".join(f"c{i}" for i in range(100_000)) + "\n", "100,000 columns"),
    ],
    ids=["zip-bomb", "ragged-rows", "100k-columns"],
)
def test_files_refused_while_parsing_fail_and_keep_nothing(
    client, token, database, settings, app, filename, data, needle
) -> None:
    resp = upload(client, token, "episode", filename, data)
    assert resp.status_code == 201  # accepted by content sniffing; the parser decides
    vid = resp.get_json()["id"]
    drain(database, settings)
    failed = show(client, token, vid)
    assert failed["state"] == "failed"
    assert needle in failed["error"], failed["error"]
    assert list(app.extensions["cleanroom.storage"].list("quarantine/")) == []
    with database.session() as s:
        v = s.get(DatasetVersion, vid)
        assert v is not None and v.raw_key == ""


def test_workbook_asks_which_sheet(client, token, database, settings) -> None:
    data = workbook(
        {"Read me": "Exported from the LIMS;\n", "Patients 2024": EPISODE_CSV.lstrip("\ufeff")}
    )
    vid = upload(client, token, "episode", "register.xlsx", data).get_json()["id"]
    drain(database, settings)
    waiting = show(client, token, vid)
    assert waiting["state"] == "awaiting_sheet"
    bad = client.post(
        f"/api/v1/uploads/{vid}/sheet", json={"sheet": "Nope"}, headers=auth_headers(token)
    )
    assert bad.status_code == 400 and "Patients 2024" in bad.get_json()["error"]["message"]
    ok = client.post(
        f"/api/v1/uploads/{vid}/sheet", json={"sheet": "Patients 2024"}, headers=auth_headers(token)
    )
    assert ok.status_code == 200
    drain(database, settings)
    profiled = show(client, token, vid)
    assert profiled["state"] == "awaiting_mapping" and profiled["sheet"] == "Patients 2024"
    assert profiled["rows"] == 24


def test_steward_sees_records_not_content(client, token, users, database, settings) -> None:
    vid = upload(client, token, "episode", "e.csv", EPISODE_CSV).get_json()["id"]
    drain(database, settings)
    client.post(f"/api/v1/uploads/{vid}/mapping", json={}, headers=auth_headers(token))
    drain(database, settings)
    users.make("sam", "steward")
    with database.session() as s:
        stoken = accounts.create_token(
            s, settings, accounts.get_user(s, "sam"), "t", ["read"], actor="t"
        ).secret
    seen = client.get(f"/api/v1/uploads/{vid}", headers=auth_headers(stoken)).get_json()
    assert seen["state"] == "awaiting_review" and seen["valid_rows"] == 23
    assert seen["mapping"] == {} and "columns" not in seen["validation"]
    # The steward sees what was done to each column, but no value, masked or not.
    assert seen["deidentification"]["columns"]
    assert all("examples" not in c for c in seen["deidentification"]["columns"])
    assert "COI-0" not in json.dumps(seen) and "C***" not in json.dumps(seen)
    assert "Patient ID" not in json.dumps(seen) and "130" not in json.dumps(seen["validation"])
    assert client.get(f"/datasets/{vid}/report.csv", headers=auth_headers(stoken)).status_code in (
        302,
        403,
    )
