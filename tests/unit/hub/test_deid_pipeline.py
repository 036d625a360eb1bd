"""De-identification in the ingest pipeline: date anchors across tables, the contributor's
stronger choices above the floor, approval before release, and key rotation of the pool."""

from __future__ import annotations

import io
import json

import pandas as pd
import pyarrow.parquet as pq
import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from anonymisation.pseudonyms import pseudonymise
from hub.db import Database
from hub.demodata import generate_frames
from hub.ingest.models import DatasetVersion, DateAnchor
from hub.jobs.services import Worker
from hub.settings import Settings, load_settings
from tests.conftest import AuthActions, csrf_from
from tests.unit.hub.uploads import (
    APPROVE,
    EPISODE_CSV,
    accept_mapping,
    auth_headers,
    drain,
    show,
    upload,
)

pytestmark = pytest.mark.db

NEW_KEY = "a-new-pseudonym-key-for-epoch-two"


@pytest.fixture(scope="module")
def site() -> dict[str, pd.DataFrame]:
    """One institution's tables, in the data model's column names."""
    return generate_frames(institutions=1, patients=60, seed=11)["northbridge-cell"]


def _csv(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, date_format="%Y-%m-%d")


def _through(
    client: FlaskClient, token: str, database: Database, settings: Settings, table: str, data: str
) -> dict:
    """Upload, accept the proposed mapping, process; returns the version under review."""
    resp = upload(client, token, table, f"{table}.csv", data)
    assert resp.status_code == 201, resp.get_json()
    version = accept_mapping(client, token, database, settings, resp.get_json()["id"])
    assert version["state"] == "awaiting_review", version["error"]
    return version


def _release(client: FlaskClient, token: str, vid: int) -> dict:
    resp = client.post(f"/api/v1/uploads/{vid}/release", headers=auth_headers(token), json=APPROVE)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def _pooled(app, database: Database, vid: int) -> pd.DataFrame:
    with database.session() as s:
        v = s.get(DatasetVersion, vid)
        assert v is not None
        key = v.pool_key
    with app.extensions["cleanroom.storage"].open(key) as fh:
        return pq.read_table(io.BytesIO(fh.read())).to_pandas()


def test_dates_count_from_the_first_collection_across_tables_and_survive_rotation(
    client: FlaskClient,
    token: str,
    database: Database,
    settings: Settings,
    app,
    site: dict[str, pd.DataFrame],
) -> None:
    ids = {}
    for table in ("episode", "collection", "batch", "release_test"):
        version = _through(client, token, database, settings, table, _csv(site[table]))
        ids[table] = version["id"]
        _release(client, token, version["id"])
        if table == "release_test":
            anchors = version["deidentification"]["anchors"]
            assert anchors["key"] == "lot_id" and anchors["self_anchored_lots"] == 0
            assert anchors["created"] == 0  # every lot found its episode through the batch

    collection = _pooled(app, database, ids["collection"])
    batch = _pooled(app, database, ids["batch"])
    tests = _pooled(app, database, ids["release_test"])
    assert pd.api.types.is_integer_dtype(collection["collection_date"].dtype)
    # Day 0 is each episode's first collection.
    assert (collection.groupby("coi_id")["collection_date"].min() == 0).all()
    # The same episode's manufacturing counts from the same anchor: the real gap survives.
    raw_c, raw_b = site["collection"], site["batch"]
    first = raw_c.groupby("coi_id")["collection_date"].min()
    expected = (raw_b["manufacturing_start"] - raw_b["coi_id"].map(first)).dt.days
    pooled_b = batch.dropna(subset=["manufacturing_start"])
    assert len(pooled_b) > 0
    pairs = set(zip(pseudonymise(raw_b["coi_id"], settings.key_chain), expected, strict=True))
    assert set(zip(pooled_b["coi_id"], pooled_b["manufacturing_start"], strict=True)) <= pairs
    assert pd.api.types.is_integer_dtype(tests["test_date"].dtype)
    with database.session() as s:
        anchors = s.scalar(select(func.count()).select_from(DateAnchor))
    assert anchors == site["collection"]["coi_id"].nunique()
    # No calendar date reached the pool.
    for frame in (collection, batch, tests):
        assert not any(pd.api.types.is_datetime64_any_dtype(frame[c]) for c in frame)

    # Rotate: the old key moves to the chain, a new key is appended.
    rotated_settings = load_settings(
        {
            **{k: v for k, v in settings.data.items() if settings.sources.get(k) == "override"},
            "hmac_previous_keys": settings.hmac_key,
            "hmac_key": NEW_KEY,
        },
        environ={},
    )
    assert len(rotated_settings.key_chain) == 2
    with database.session() as s:
        from hub.jobs.services import enqueue

        enqueue(s, "pool.rotate_keys", {}, actor="test", settings=rotated_settings)
    worker = Worker(database, rotated_settings, worker_id="rotate")
    while worker.run_once() is not None:
        pass
    storage = app.extensions["cleanroom.storage"]
    with database.session() as s:
        versions = {v.cdm_table: v for v in s.scalars(select(DatasetVersion))}
        assert all(v.key_epoch == 2 for v in versions.values())
        assert all("part-e2" in v.pool_key for v in versions.values())
        assert s.scalar(select(func.max(DateAnchor.key_epoch))) == 2
    assert not storage.exists("pool/collection/institution=st-aurelia/version=1/part-0.parquet")
    collection2 = _pooled(app, database, ids["collection"])
    batch2 = _pooled(app, database, ids["batch"])
    assert set(collection2["coi_id"]).isdisjoint(set(collection["coi_id"]))
    # Joins hold after rotation, and new uploads pseudonymised with the chain meet them.
    assert set(batch2["coi_id"]) <= set(collection2["coi_id"])
    assert set(pseudonymise(site["collection"]["coi_id"], rotated_settings.key_chain)) == set(
        collection2["coi_id"]
    )
    assert (collection2["collection_date"] == collection["collection_date"]).all()


def test_contributor_may_strengthen_never_weaken(
    client: FlaskClient, token: str, database: Database, settings: Settings, app
) -> None:
    version = _through(client, token, database, settings, "episode", EPISODE_CSV)
    vid = version["id"]
    floor = version["deidentification_floor"]
    assert floor["coi_id"] == "pseudonymise" and floor["patient_name"] == "drop"
    url = f"/api/v1/uploads/{vid}/deidentification"

    weaker = client.post(url, json={"columns": {"coi_id": "keep"}}, headers=auth_headers(token))
    assert weaker.status_code == 400
    assert "below the floor" in weaker.get_json()["error"]["message"]
    unknown = client.post(url, json={"columns": {"nope": "drop"}}, headers=auth_headers(token))
    assert unknown.status_code == 400
    low_k = client.post(url, json={"k": 2}, headers=auth_headers(token))
    assert low_k.status_code == 400 and "floor is 5" in low_k.get_json()["error"]["message"]
    assert show(client, token, vid)["state"] == "awaiting_review"  # nothing changed

    ok = client.post(
        url,
        json={"columns": {"weight_kg": "drop", "sex": "drop"}, "k": 6},
        headers=auth_headers(token),
    )
    assert ok.status_code == 202, ok.get_json()
    assert ok.get_json()["state"] == "processing"
    drain(database, settings)
    again = show(client, token, vid)
    assert again["state"] == "awaiting_review"
    columns = {c["name"]: c for c in again["deidentification"]["columns"]}
    assert columns["weight_kg"]["action_kind"] == "drop" and columns["weight_kg"]["chosen"]
    assert again["deidentification"]["k"] == 6
    assert again["deidentification_floor"] == floor  # the floor never moves
    _release(client, token, vid)
    pooled = _pooled(app, database, vid)
    assert "weight_kg" not in pooled and "sex" not in pooled and "age" in pooled


def test_portal_review_offers_only_stronger_actions_and_needs_approval(
    client: FlaskClient,
    token: str,
    database: Database,
    settings: Settings,
    auth: AuthActions,
) -> None:
    vid = _through(client, token, database, settings, "episode", EPISODE_CSV)["id"]
    auth.login("nadia")
    page = client.get(f"/datasets/{vid}").get_data(as_text=True)
    assert 'data-testid="deid-summary"' in page and "k reached" in page
    select_coi = page.split('name="action::coi_id"', 1)[1].split("</select>", 1)[0]
    assert 'value="pseudonymise"' in select_coi and 'value="drop"' in select_coi
    assert 'value="keep"' not in select_coi
    assert "cdm hint" in page  # evidence is shown
    csrf = csrf_from(client, f"/datasets/{vid}")

    # A form forged to weaken is refused with the reason; nothing changes.
    resp = client.post(
        f"/datasets/{vid}/deidentification",
        data={"csrf_token": csrf, "action::coi_id": "keep", "k": "5"},
        follow_redirects=True,
    )
    assert "below the floor" in resp.get_data(as_text=True)
    # Release without ticking the approval is refused.
    resp = client.post(f"/datasets/{vid}/release", data={"csrf_token": csrf}, follow_redirects=True)
    assert "approve the de-identification report" in resp.get_data(as_text=True)
    with database.session() as s:
        v = s.get(DatasetVersion, vid)
        assert v is not None and v.state == "awaiting_review" and v.pool_key == ""
    resp = client.post(
        f"/datasets/{vid}/release",
        data={"csrf_token": csrf, "approve": "yes"},
        follow_redirects=True,
    )
    assert "released to the pool" in resp.get_data(as_text=True)
    with database.session() as s:
        from hub.audit.models import AuditEntry

        entry = s.scalar(select(AuditEntry).where(AuditEntry.action == "release"))
        assert entry is not None
        detail = json.loads(entry.detail)
        assert detail["deidentification_approved"] is True and len(detail["report_sha256"]) == 64


def test_other_institutions_cannot_choose(
    client: FlaskClient, token: str, users, database: Database, settings: Settings
) -> None:
    from hub.accounts import services as accounts

    vid = _through(client, token, database, settings, "episode", EPISODE_CSV)["id"]
    users.institution("kelvin-institute", "academic")
    users.make("kim", "contributor", institution="kelvin-institute")
    with database.session() as s:
        other = accounts.create_token(
            s, settings, accounts.get_user(s, "kim"), "t", ["upload", "read"], actor="t"
        ).secret
    resp = client.post(
        f"/api/v1/uploads/{vid}/deidentification",
        json={"columns": {"age": "drop"}},
        headers=auth_headers(other),
    )
    assert resp.status_code in (403, 404)
    assert show(client, token, vid)["deidentification_choices"] == {}


def test_released_values_and_institution_name_feed_the_allow_list(
    client: FlaskClient,
    token: str,
    database: Database,
    settings: Settings,
    app,
    site: dict[str, pd.DataFrame],
) -> None:
    """Issue 17: what a site has released in the data model's safe text columns (its
    devices) and its own name are its vocabulary; notes keep them, people are still
    scrubbed, and the data model's categories are on the list too."""
    from anonymisation.pseudonyms import KeyChain
    from hub.accounts.models import Institution
    from hub.ingest import deid
    from hub.ingest.services import cdm_table

    table = cdm_table("collection")
    version = _through(client, token, database, settings, "collection", _csv(site["collection"]))
    _release(client, token, version["id"])
    storage = app.extensions["cleanroom.storage"]
    with database.session() as s:
        v = s.get(DatasetVersion, version["id"])
        assert v is not None
        institution_id = v.institution_id
        name = s.get(Institution, institution_id).name
    vocabulary = deid.site_vocabulary(database, storage, table, institution_id)
    assert set(site["collection"]["device"].dropna()) <= vocabulary
    assert name in vocabulary
    assert deid.site_vocabulary(database, storage, table, institution_id + 999) == set()
    assert {"fresh", "cryopreserved"} <= deid.cdm_vocabulary(table)

    frame = site["collection"].head(20).copy()
    frame["notes"] = [f"Collected at Kestrel Park by Sophie Dubois, row {i}." for i in range(20)]
    chain: KeyChain = settings.key_chain
    common = {"chain": chain, "k": 1, "choices": deid.Choices(), "anchors": None}
    plain = deid.run(frame, table, scrub_free_text=True, **common)
    assert not plain.frame["notes"].str.contains("Kestrel").any()  # scrubbed as a place
    kept = deid.run(
        frame, table, scrub_free_text=True, allow=vocabulary | {"Kestrel Park"}, **common
    )
    notes = kept.frame["notes"]
    assert notes.str.contains("Kestrel Park").all()
    assert not notes.str.contains("Dubois").any()


def test_the_ingest_job_keeps_the_sites_own_vocabulary_in_notes(
    client: FlaskClient,
    token: str,
    database: Database,
    settings: Settings,
    app,
    site: dict[str, pd.DataFrame],
) -> None:
    """The processing job passes the site's vocabulary to de-identification: the
    institution's own name stays in a note of its next upload, the person is scrubbed. The
    control, the same rows without the vocabulary, loses the name."""
    from hub.accounts.models import Institution
    from hub.ingest import deid
    from hub.ingest.services import cdm_table

    first = _through(client, token, database, settings, "collection", _csv(site["collection"]))
    _release(client, token, first["id"])
    with database.session() as s:
        v = s.get(DatasetVersion, first["id"])
        assert v is not None
        name = s.get(Institution, v.institution_id).name
    frame = site["collection"].head(20).copy()
    frame["notes"] = [f"Processed for {name} by Sophie Dubois, bag {i}." for i in range(20)]

    control = deid.run(
        frame,
        cdm_table("collection"),
        chain=settings.key_chain,
        k=1,
        choices=deid.Choices(),
        anchors=None,
        scrub_free_text=True,
    )
    assert not control.frame["notes"].str.contains(name, regex=False).any()

    second = _through(client, token, database, settings, "collection", _csv(frame))
    _release(client, token, second["id"])
    notes = _pooled(app, database, second["id"])["notes"]
    assert notes.str.contains(name, regex=False).all(), notes.head(3).tolist()
    assert not notes.str.contains("Dubois").any()
