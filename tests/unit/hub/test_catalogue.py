"""The data catalogue (hub.catalogue): tables and columns from the common data model, patient
counts rounded, agreement coverage, who sees which agreement's facts; the portal pages, the
``/api/v1/catalogue`` API and the sandbox's per-agreement ``/api/v1/sandbox/catalogue``."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

import policies
from contracts.cdm import load_cdm
from hub.accounts import services as accounts
from hub.agreements import services as agreements
from hub.audit.models import AuditEntry
from hub.catalogue import services
from hub.db import Database
from hub.errors import NotFound
from hub.settings import Settings
from tests.conftest import AuthActions, Users, activate_agreement, bearer, release_into_pool
from tests.unit.hub.conftest import V2V_TERMS

PARTIES = ("acme-bio", "st-aurelia", "kelvin")

# The unit tests' v2v agreement, with part of `episode` covered too (`patient_name` is a
# direct identifier: never covered, even when named).
TERMS = V2V_TERMS.replace(
    "  batch: all\n", "  batch: all\n  episode: [coi_id, product_class, indication, patient_name]\n"
)

# Patients per party in `episode`, and how many more appear only in `batch` (a lot whose
# episode row was never released still names its patient).
EPISODES = {"acme-bio": 23, "st-aurelia": 14, "kelvin": 23}
ONLY_IN_BATCH = {"acme-bio": 5, "st-aurelia": 0, "kelvin": 7}
# 60 in `episode`, 72 with the batch-only ones: "about 70" only if both are counted, once.
OUTSIDER_PATIENTS = 40  # released by an institution that is no party: never counted


def _patients(slug: str, n: int, start: int = 0) -> list[str]:
    return [f"{slug}-{i:04d}" for i in range(start, start + n)]


def _episode(slug: str) -> pd.DataFrame:
    ids = _patients(slug, EPISODES[slug])
    return pd.DataFrame(
        {"coi_id": ids, "product_class": "autologous_car_t", "indication": "LBCL", "age": 60}
    )


def _batch(slug: str) -> pd.DataFrame:
    # Every episode patient has a lot (so they are counted twice unless counted distinct),
    # and some lots belong to patients with no released episode row.
    ids = _patients(slug, EPISODES[slug]) + _patients(slug, ONLY_IN_BATCH[slug], 1000)
    return pd.DataFrame(
        {
            "lot_id": [f"lot-{slug}-{i}" for i in range(len(ids))],
            "coi_id": ids,
            "viability": 90.0,
        }
    )


@pytest.fixture
def world(users: Users, database: Database, app: Flask) -> None:
    """Three parties with released `episode` and `batch`, an outsider institution with its
    own released data, the active agreement `v2v` naming rosa, and one user of each kind."""
    for slug in (*PARTIES, "outsider-lab"):
        users.institution(slug, "hospital")
        users.make(f"{slug}-admin", "contributor_admin", slug)
        users.make(f"{slug}-data", "contributor", slug)
    users.make("sam", "steward")
    users.make("rosa", "researcher", "st-aurelia")
    users.make("omar", "researcher", "kelvin")
    storage = app.extensions["cleanroom.storage"]
    with database.session() as s:
        for slug in PARTIES:
            release_into_pool(s, storage, slug, "episode", _episode(slug))
            release_into_pool(s, storage, slug, "batch", _batch(slug))
        outsider = pd.DataFrame(
            {
                "coi_id": _patients("outsider", OUTSIDER_PATIENTS),
                "product_class": "allogeneic",
                "indication": "ALL",
                "age": 30,
            }
        )
        release_into_pool(s, storage, "outsider-lab", "episode", outsider)
    activate_agreement(database, TERMS)


# The common data model, in the API's shape and in words -------------------------------------


def test_every_table_and_column_comes_from_the_cdm() -> None:
    cdm = load_cdm()
    answer = services.catalogue()
    assert answer["version"] == cdm.version
    assert [t["table"] for t in answer["tables"]] == list(cdm.table_names)
    for entry, table in zip(answer["tables"], cdm.tables, strict=True):
        assert entry["description"] == table.description and entry["grain"] == table.grain
        assert "covered" not in entry
        assert [c["name"] for c in entry["columns"]] == list(table.column_names)
        for got, column in zip(entry["columns"], table.columns, strict=True):
            assert got["description"] == column.description
            assert got["type"] == column.type.value
            assert got["identifier_class"] == column.identifier.value
            assert got["unit"] == column.unit
            assert "covered" not in got
    age = next(c for c in answer["tables"][0]["columns"] if c["name"] == "age")
    assert age["range"] == [0, 120] and age["unit"] == "years" and age["allowed_values"] is None
    sex = services.column_entry(cdm.table("episode").column("sex"))
    assert sex["allowed_values"] == ["female", "male", "other", "unknown"]
    assert sex["range"] is None


def test_pages_speak_plain_words() -> None:
    view = services.table_view(load_cdm().table("episode"))
    by_name = {c.name: c for c in view.columns}
    assert by_name["age"].range == "0 to 120 years" and by_name["age"].type == "whole number"
    assert (
        by_name["coi_id"].identifier_label == "pseudonymised key" and by_name["coi_id"].primary_key
    )
    assert by_name["mrn"].identifier_label == "direct identifier"
    assert "never reaches the pool" in by_name["mrn"].identifier_meaning
    assert by_name["weight_kg"].unit == "kilograms"
    assert by_name["sex"].type == "one of a fixed list"
    batch = {c.name: c for c in services.table_view(load_cdm().table("batch")).columns}
    assert batch["coi_id"].refers_to == "episode"
    assert {code for code, _label, _meaning in services.legend()} == {
        c.identifier.value for t in load_cdm().tables for c in t.columns
    }


@pytest.mark.parametrize(
    ("count", "words"),
    [
        (0, "none yet"),
        (1, "fewer than 10"),
        (9, "fewer than 10"),
        (10, "about 10"),
        (14, "about 10"),
        (15, "about 20"),
        (364, "about 360"),
        (365, "about 370"),
        (12_344, "about 12,340"),
    ],
)
def test_patient_counts_are_rounded_to_ten_and_hidden_below_it(count: int, words: str) -> None:
    assert services.patients_in_words(count) == words


def test_the_policy_opens_the_catalogue_to_members_and_every_agreement_to_the_steward() -> None:
    for role in ("steward", "contributor", "contributor_admin", "researcher"):
        assert policies.allowed(role, "read", "catalogue")
    assert policies.allowed("steward", "read", "catalogue/agreements")
    assert not policies.allowed("researcher", "read", "catalogue/agreements")
    assert not policies.allowed("contributor", "read", "catalogue/agreements")
    assert policies.allowed("contributor", "read", "catalogue/agreements/institution")
    assert not policies.allowed("researcher", "read", "catalogue/agreements/institution")


# Agreement facts ------------------------------------------------------------------------------


@pytest.mark.db
def test_facts_count_distinct_patients_of_the_contributors_only(
    app: Flask, database: Database, world: None
) -> None:
    storage = app.extensions["cleanroom.storage"]
    with database.session() as s:
        stored = agreements.get(s, "v2v")
        facts = services.facts(s, storage, stored, agreements.contract_of(stored))
    assert facts.state == "active"
    assert facts.patients == "about 70"  # 72: episode and batch-only patients, outsider not
    assert facts.institutions == ("Acme Bio", "St Aurelia", "Kelvin")
    # Listed columns only; a direct identifier is never covered, even when listed.
    assert facts.coverage["episode"] == ("coi_id", "product_class", "indication")
    batch = load_cdm().table("batch")
    assert facts.coverage["batch"] == tuple(
        c.name for c in batch.columns if c.identifier != "direct_identifier"
    )
    assert "released_by" not in facts.coverage["batch"]  # direct identifier of `batch`
    shape = facts.as_json()
    assert set(shape) == {"agreement", "institutions", "patients", "tables"}
    tables = {t["table"]: t for t in shape["tables"]}
    assert tables["episode"]["covered"] and not tables["collection"]["covered"]
    episode = {c["name"]: c["covered"] for c in tables["episode"]["columns"]}
    assert episode["indication"] and not episode["age"] and not episode["patient_name"]
    assert not any(c["covered"] for c in tables["collection"]["columns"])


@pytest.mark.db
def test_a_suspended_agreement_pools_nobody(app: Flask, database: Database, world: None) -> None:
    storage = app.extensions["cleanroom.storage"]
    with database.session() as s:
        agreements.transition(s, agreements.get(s, "v2v"), "suspend", actor="user:sam")
    with database.session() as s:
        stored = agreements.get(s, "v2v")
        facts = services.facts(s, storage, stored, agreements.contract_of(stored))
    assert facts.state == "suspended" and "not active" in facts.patients


@pytest.mark.db
def test_only_those_the_agreement_concerns_see_its_facts(
    app: Flask, database: Database, world: None
) -> None:
    storage = app.extensions["cleanroom.storage"]
    policy = app.extensions["cleanroom.policy"]
    policy.refresh()
    seen = {}
    with database.session() as s:
        for username in (
            "sam",
            "rosa",
            "omar",
            "st-aurelia-data",
            "kelvin-admin",
            "outsider-lab-data",
            "outsider-lab-admin",
        ):
            user = accounts.get_user(s, username)
            seen[username] = [r.slug for r, _ in services.concerning(s, policy, user)]
    assert seen == {
        "sam": ["v2v"],
        "rosa": ["v2v"],  # named researcher
        "omar": [],  # researcher not named
        "st-aurelia-data": ["v2v"],  # its institution is a party
        "kelvin-admin": ["v2v"],
        "outsider-lab-data": [],
        "outsider-lab-admin": [],
    }
    with database.session() as s:
        outsider = accounts.get_user(s, "outsider-lab-data")
        with pytest.raises(NotFound) as refused:
            services.facts_for(s, policy, storage, outsider, "v2v")
        with pytest.raises(NotFound) as missing:
            services.facts_for(s, policy, storage, outsider, "no-such-agreement")
    # The same words whether the agreement exists or not.
    assert refused.value.message.replace("'v2v'", "X") == missing.value.message.replace(
        "'no-such-agreement'", "X"
    )


# The JSON API ---------------------------------------------------------------------------------


@pytest.mark.db
def test_api_answers_tables_and_columns(
    client: FlaskClient, database: Database, settings: Settings, world: None
) -> None:
    reader = bearer(database, settings, "outsider-lab-data", ("read",))
    whole = client.get("/api/v1/catalogue", headers=reader)
    assert whole.status_code == 200
    assert [t["table"] for t in whole.get_json()["tables"]] == list(load_cdm().table_names)
    batch = client.get("/api/v1/catalogue/batch", headers=reader).get_json()
    assert (
        batch["table"] == "batch" and batch["description"] == load_cdm().table("batch").description
    )
    viability = next(c for c in batch["columns"] if c["name"] == "viability")
    assert viability["unit"] == "%" and viability["identifier_class"] == "safe"

    missing = client.get("/api/v1/catalogue/batches", headers=reader)
    assert missing.status_code == 404
    error = missing.get_json()["error"]
    assert (
        error["code"] == "not_found" and "its tables are: episode, collection" in error["message"]
    )

    upload_only = bearer(database, settings, "outsider-lab-data", ("upload",))
    refused = client.get("/api/v1/catalogue", headers=upload_only)
    assert refused.status_code == 403
    assert refused.get_json()["error"]["code"] == "insufficient_scope"


@pytest.mark.db
def test_sandbox_catalogue_for_a_named_researcher(
    client: FlaskClient, database: Database, settings: Settings, world: None
) -> None:
    rosa = bearer(database, settings, "rosa", ("sandbox",))
    resp = client.get("/api/v1/sandbox/catalogue?agreement=v2v", headers=rosa)
    assert resp.status_code == 200, resp.get_json()
    answer = resp.get_json()
    assert set(answer) == {"agreement", "institutions", "patients", "tables"}
    assert answer["agreement"] == "v2v" and answer["patients"] == "about 70"
    assert answer["institutions"] == ["Acme Bio", "St Aurelia", "Kelvin"]
    tables = {t["table"]: t for t in answer["tables"]}
    assert list(tables) == list(load_cdm().table_names)
    assert set(tables["batch"]) == {"table", "description", "grain", "covered", "columns"}
    column = tables["batch"]["columns"][0]
    assert set(column) == {
        "name",
        "description",
        "type",
        "unit",
        "allowed_values",
        "range",
        "identifier_class",
        "covered",
    }
    covered = {c["name"] for c in tables["episode"]["columns"] if c["covered"]}
    assert covered == {"coi_id", "product_class", "indication"}
    assert not tables["release_test"]["covered"]
    with database.session() as s:
        entry = s.scalars(
            select(AuditEntry)
            .where(AuditEntry.action == "sandbox.catalogue")
            .order_by(AuditEntry.id.desc())
        ).first()
        assert entry is not None and entry.actor == "user:rosa"
        assert entry.target == "agreement:v2v"
        assert json.loads(entry.detail)["request"] == "/api/v1/sandbox/catalogue"


@pytest.mark.db
def test_sandbox_catalogue_refuses_whom_the_agreement_does_not_concern(
    client: FlaskClient, database: Database, settings: Settings, world: None
) -> None:
    omar = bearer(database, settings, "omar", ("sandbox",))
    refused = client.get("/api/v1/sandbox/catalogue?agreement=v2v", headers=omar)
    unknown = client.get("/api/v1/sandbox/catalogue?agreement=nothing-here", headers=omar)
    assert refused.status_code == unknown.status_code == 403
    assert refused.get_json()["error"]["code"] == "policy_denied"
    assert "about" not in refused.get_data(as_text=True)
    # No word tells a real agreement from a made-up one.
    assert refused.get_json()["error"]["message"].replace("'v2v'", "X") == unknown.get_json()[
        "error"
    ]["message"].replace("'nothing-here'", "X")
    with database.session() as s:
        actions = list(s.scalars(select(AuditEntry.action).where(AuditEntry.actor == "user:omar")))
    assert actions.count("sandbox.refused") == 2

    rosa_read = bearer(database, settings, "rosa", ("read",))
    scope = client.get("/api/v1/sandbox/catalogue?agreement=v2v", headers=rosa_read)
    assert scope.status_code == 403 and scope.get_json()["error"]["code"] == "insufficient_scope"
    rosa = bearer(database, settings, "rosa", ("sandbox",))
    unnamed = client.get("/api/v1/sandbox/catalogue", headers=rosa)
    assert unnamed.status_code == 400
    assert "?agreement=" in unnamed.get_json()["error"]["message"]


# The portal -----------------------------------------------------------------------------------


@pytest.mark.db
def test_pages_show_tables_and_only_the_agreements_that_concern_the_reader(
    client: FlaskClient, auth: AuthActions, world: None
) -> None:
    auth.login("outsider-lab-data")
    index = client.get("/catalogue")
    assert index.status_code == 200
    page = index.get_data(as_text=True)
    assert "Data catalogue" in page and 'href="/catalogue/batch"' in page
    assert load_cdm().table("batch").description in page
    assert "No agreement concerns you yet" in page
    assert "Vein-to-vein benchmarking" not in page and "about 70" not in page
    hidden = client.get("/catalogue/agreements/v2v")
    assert hidden.status_code == 404
    assert "about 70" not in hidden.get_data(as_text=True)
    table = client.get("/catalogue/episode").get_data(as_text=True)
    assert "pseudonymised key" in table and "0 to 120 years" in table
    assert "never reaches the pool" in table
    assert "Your agreements covering it" not in table
    assert "<code>academic</code> for investigational" in table  # the CDM's backticks
    assert "`" not in table
    missing = client.get("/catalogue/episodes")
    assert missing.status_code == 404 and "its tables are: episode" in missing.get_data(
        as_text=True
    )
    auth.logout()

    auth.login("st-aurelia-data")
    page = client.get("/catalogue").get_data(as_text=True)
    assert "Vein-to-vein benchmarking" in page and "about 70" in page
    assert "<li>Acme Bio</li><li>St Aurelia</li><li>Kelvin</li>" in page
    detail = client.get("/catalogue/agreements/v2v")
    assert detail.status_code == 200
    text = detail.get_data(as_text=True)
    assert "Acme Bio, St Aurelia, Kelvin" in text
    assert "about 70" in text and "never shared" in text
    assert 'href="/agreements/v2v"' not in text  # a plain contributor cannot read the terms
    table = client.get("/catalogue/episode").get_data(as_text=True)
    assert "Your agreements covering it" in table
    assert 'href="/catalogue/agreements/v2v"' in table
    auth.logout()

    auth.login("rosa")
    text = client.get("/catalogue/agreements/v2v").get_data(as_text=True)
    assert "about 70" in text and 'href="/agreements/v2v"' in text  # she may read the terms


def test_the_cdm_is_served_as_a_data_contract(
    client: FlaskClient, users: Users, database: Database, settings: Settings
) -> None:
    """``/api/v1/catalogue/schema``: one JSON Schema per table that refuses a row with a
    column the CDM lacks (tests/unit/contracts/test_export.py validates real rows); the
    Frictionless package names every table; an unknown format is explained."""
    import jsonschema

    users.make("nadia", "researcher")
    headers = bearer(database, settings, "nadia", ("read",))
    found = client.get("/api/v1/catalogue/schema", headers=headers)
    assert found.status_code == 200
    body = found.get_json()
    cdm = load_cdm()
    assert body["version"] == cdm.version and set(body["tables"]) == set(cdm.table_names)
    schema = body["tables"]["episode"]
    row = {c.name: None for c in cdm.table("episode").columns if not c.required}
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors({**row, "unexpected_column": 1}))  # refused
    package = client.get("/api/v1/catalogue/schema?format=frictionless", headers=headers)
    names = {r["name"] for r in package.get_json()["resources"]}
    assert names == set(cdm.table_names)
    bad = client.get("/api/v1/catalogue/schema?format=xml", headers=headers)
    assert bad.status_code == 400 and "format=jsonschema" in bad.get_json()["error"]["message"]
    refused = client.get(
        "/api/v1/catalogue/schema", headers=bearer(database, settings, "nadia", ("upload",))
    )
    assert refused.status_code == 403
