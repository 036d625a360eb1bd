"""Site terms for category values: proposed from the shared code book, confirmed by the
contributor, remembered per institution, never guessed silently (issue 19, item 3)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from flask.testing import FlaskClient
from sqlalchemy import select

from contracts.cdm import ColumnType, load_cdm
from contracts.codes import CDM_SYSTEM, load_codes, term_key
from contracts.fhir import write_fhir
from hub.accounts import models as hub_accounts
from hub.audit.models import AuditEntry
from hub.db import Database
from hub.errors import BadRequest
from hub.ingest import terms
from hub.ingest.models import DatasetVersion, InstitutionTerm
from hub.settings import Settings
from hub.storage.frames import read_frames
from tests.conftest import csrf_from
from tests.unit.hub.uploads import auth_headers, drain, show, upload

EPISODE = load_cdm().table("episode")

# A site's own words: brand names for products, F/M for sex, one product no list knows.
PRODUCTS = ["Kymriah", "Yescarta", "tisa-cel", "Flux-cel"]
SITE_CSV = "Patient ID,Site,Product Class,Product,Indication,Sex,Age\n" + "".join(
    f"COI-{i:04d},St Aurelia,autologous_car_t,{PRODUCTS[i % 4]},DLBCL,{'F' if i % 2 else 'M'},"
    f"{50 + i % 3}\n"
    for i in range(40)
)


def _terms(listed: dict[str, list[terms.Term]]) -> dict[str, dict[str, tuple[str | None, str]]]:
    return {c: {t.term: (t.value, t.how) for t in ts} for c, ts in listed.items()}


def test_proposals_come_from_the_code_book_and_new_terms_are_not_guessed() -> None:
    frame = pd.DataFrame(
        {
            "Product": ["Kymriah", "kymriah ", "Breyanzi", "axi-cel", "Flux-cel", None],
            "Test": ["Sterilty", "BacT/ALERT", "LAL", "viability", "Flux", "Flux"],
        }
    )
    distinct = terms.distinct_values(frame)
    assert sorted(v for v, _ in distinct["Product"]) == sorted(
        ["Kymriah", "kymriah", "Breyanzi", "axi-cel", "Flux-cel"]  # stripped, empty left out
    )
    assert dict(map(tuple, distinct["Test"]))["Flux"] == 2
    listed = _terms(terms.propose(EPISODE, {"product": "Product"}, distinct, {}))
    product = listed["product"]
    assert product["Kymriah"] == ("tisa-cel", "synonym")
    assert product["Breyanzi"] == ("liso-cel", "synonym")
    assert product["Flux-cel"] == (None, "new")
    assert "axi-cel" not in product  # already the data model's value: nothing to ask

    tests = load_cdm().table("release_test")
    listed = _terms(terms.propose(tests, {"test": "Test"}, distinct, {}))["test"]
    assert listed["Sterilty"] == ("sterility", "fuzzy")
    assert listed["BacT/ALERT"] == ("sterility", "synonym")
    assert listed["LAL"] == ("endotoxin", "synonym")
    assert listed["Flux"] == (None, "new")
    assert "viability" not in listed


def test_remembered_terms_apply_without_asking() -> None:
    distinct = {"Product": [["Flux-cel", 3], ["Kymriah", 2]]}
    remembered = {("product", term_key("FLUX-CEL")): "academic"}
    listed = terms.propose(EPISODE, {"product": "Product"}, distinct, remembered)
    assert _terms(listed)["product"]["Flux-cel"] == ("academic", "remembered")
    assert [t.open for t in listed["product"]] == [False, True]
    remembered[("product", term_key("Kymriah"))] = "tisa-cel"
    listed = terms.propose(EPISODE, {"product": "Product"}, distinct, remembered)
    assert terms.decide(listed, {}, EPISODE) == {
        "product": {"Flux-cel": "academic", "Kymriah": "tisa-cel"}
    }


def test_open_terms_are_refused_until_decided() -> None:
    distinct = {"Product": [["Flux-cel", 3], ["Kymriah", 2]]}
    listed = terms.propose(EPISODE, {"product": "Product"}, distinct, {})
    with pytest.raises(BadRequest) as err:
        terms.decide(listed, {}, EPISODE)
    assert err.value.code == "terms_unconfirmed"
    assert "Flux-cel" in err.value.message and "proposed: `tisa-cel`" in err.value.message
    # Accepting the proposals still leaves the new term open.
    with pytest.raises(BadRequest, match="Flux-cel"):
        terms.decide(listed, {}, EPISODE, accept_proposals=True)
    decided = terms.decide(listed, {"product": {"flux-cel": ""}}, EPISODE, accept_proposals=True)
    assert decided == {"product": {"Flux-cel": "", "Kymriah": "tisa-cel"}}
    with pytest.raises(BadRequest) as err:
        terms.decide(listed, {"product": {"Flux-cel": "nonsense", "Kymriah": "tisa-cel"}}, EPISODE)
    assert err.value.code == "unknown_term_value"


def test_apply_replaces_decided_terms_and_leaves_held_back_ones_as_written() -> None:
    frame = pd.DataFrame({"product": [" Kymriah", "Flux-cel", None, "axi-cel"]})
    out = terms.apply(frame, {"product": {"Kymriah": "tisa-cel", "Flux-cel": ""}})
    assert out["product"].tolist() == ["tisa-cel", "Flux-cel", None, "axi-cel"]


def test_every_category_column_names_its_code_system() -> None:
    book = load_codes()
    cdm = load_cdm()
    assert book.version == cdm.version
    for table in cdm.tables:
        for column in table.columns:
            if column.type != ColumnType.CATEGORY:
                continue
            codes = book.column(table.name, column.name)
            assert codes is not None, f"{table.name}.{column.name}"
            assert list(codes.codes) == list(column.allowed or ())
            for value, code in codes.codes.items():
                assert code.display
                if code.system.key == CDM_SYSTEM:
                    assert code.code == value
                else:  # a standard code names where it was verified
                    assert code.source and code.code, (value, code)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["columns"].pop("episode.sex"), "episode.sex"),
        (lambda d: d["columns"]["episode.sex"]["values"].pop("male"), "missing: male"),
        (
            lambda d: d["columns"]["episode.product"]["values"]["academic"]["synonyms"].append(
                "Kymriah"
            ),
            "given for both",
        ),
        (lambda d: d.update(version="9.9.9"), "same version"),
        (
            lambda d: d["columns"]["episode.sex"]["values"]["male"].pop("source"),
            "`source`",
        ),
    ],
)
def test_a_broken_code_book_is_refused(tmp_path: Path, change, message: str) -> None:
    data = yaml.safe_load(Path("contracts/codes.yaml").read_text(encoding="utf-8"))
    change(data)
    path = tmp_path / "codes.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_codes(path)


def _map(client: FlaskClient, token: str, vid: int, body: dict):
    return client.post(f"/api/v1/uploads/{vid}/mapping", json=body, headers=auth_headers(token))


def test_api_asks_about_terms_then_remembers_them(
    client: FlaskClient, token: str, database: Database, settings: Settings, app
) -> None:
    resp = upload(client, token, "episode", "site.csv", SITE_CSV)
    assert resp.status_code == 201, resp.get_json()
    vid = resp.get_json()["id"]
    drain(database, settings)
    asked = show(client, token, vid)
    listed = {c: {t["term"]: t for t in ts} for c, ts in asked["terms"].items()}
    assert listed["product"]["Kymriah"]["value"] == "tisa-cel"
    assert listed["product"]["Kymriah"]["open"] is True
    assert listed["product"]["Flux-cel"]["value"] is None
    assert listed["sex"]["F"]["value"] == "female"
    assert listed["indication"]["DLBCL"]["value"] == "LBCL"

    refused = _map(client, token, vid, {})
    assert refused.status_code == 400
    error = refused.get_json()["error"]
    assert error["code"] == "terms_unconfirmed" and "Flux-cel" in error["message"]
    assert show(client, token, vid)["state"] == "awaiting_mapping"

    body = {"accept_proposed_terms": True, "terms": {"product": {"Flux-cel": ""}}}
    assert _map(client, token, vid, body).status_code == 200
    drain(database, settings)
    reviewed = show(client, token, vid)
    assert reviewed["state"] == "awaiting_review", reviewed["error"]
    # The oracle: the file itself, read with pandas.
    site = pd.read_csv(io.StringIO(SITE_CSV))
    assert reviewed["rows"] == len(site)
    assert reviewed["valid_rows"] == int((site["Product"] != "Flux-cel").sum())
    with database.session() as s:
        staged = s.get(DatasetVersion, vid).staged_key
        # The file's distinct values were kept only to ask about them.
        assert "distinct" not in json.loads(s.get(DatasetVersion, vid).profile)
        entry = s.scalars(
            select(AuditEntry).where(AuditEntry.action == "ingest.map").order_by(AuditEntry.id)
        ).all()[-1]
        kept = {(r.column, r.term): r.value for r in s.scalars(select(InstitutionTerm)).all()}
    assert json.loads(entry.detail)["terms"] == {"mapped": 5, "held_back": 1}
    assert kept[("product", "Kymriah")] == "tisa-cel"
    assert ("product", "Flux-cel") not in kept  # held back: not kept, asked about again
    frame = read_frames(app.extensions["cleanroom.storage"], [staged])
    expected = (
        site["Product"].map({"Kymriah": "tisa-cel", "Yescarta": "axi-cel"}).fillna(site["Product"])
    )
    assert sorted(frame["product"]) == sorted(expected[expected != "Flux-cel"])
    assert set(frame["sex"]) == {"female", "male"}

    # The next upload of the same words asks only about the term held back.
    again = upload(client, token, "episode", "site-2.csv", SITE_CSV).get_json()["id"]
    drain(database, settings)
    remembered = show(client, token, again)["terms"]
    still_open = [t["term"] for ts in remembered.values() for t in ts if t["open"]]
    assert still_open == ["Flux-cel"]
    assert _map(client, token, again, {"terms": {"product": {"Flux-cel": ""}}}).status_code == 200


def test_portal_shows_terms_and_keeps_the_mapping_while_one_is_open(
    client: FlaskClient, auth, users, database: Database, settings: Settings
) -> None:
    users.make("nadia", "contributor")
    auth.login("nadia")
    csrf = csrf_from(client, "/datasets")
    resp = client.post(
        "/datasets",
        data={
            "csrf_token": csrf,
            "table": "episode",
            "file": (io.BytesIO(SITE_CSV.encode()), "site.csv"),
        },
        content_type="multipart/form-data",
    )
    vid = int(resp.location.rstrip("/").rsplit("/", 1)[1])
    drain(database, settings)
    page = client.get(f"/datasets/{vid}").get_data(as_text=True)
    assert 'data-testid="terms-product"' in page
    assert 'name="term::product::Flux-cel"' in page and "choose what it means" in page
    assert "Tisagenlecleucel" in page  # the code book's display text
    assert "HL7 FHIR AdministrativeGender" in page  # sex's codes name their system

    # The new term left unchosen: nothing is queued, the page says which term is open.
    form = {"csrf_token": csrf, "term::product::Kymriah": "tisa-cel"}
    resp = client.post(f"/datasets/{vid}/mapping", data=form, follow_redirects=True)
    assert "Flux-cel" in resp.get_data(as_text=True)
    with database.session() as s:
        assert s.get(DatasetVersion, vid).state == "awaiting_mapping"

    form = {
        "csrf_token": csrf,
        "term::product::Kymriah": "tisa-cel",
        "term::product::Yescarta": "axi-cel",
        "term::product::Flux-cel": "academic",
        "term::sex::F": "female",
        "term::sex::M": "male",
        "term::indication::DLBCL": "LBCL",
    }
    resp = client.post(f"/datasets/{vid}/mapping", data=form)
    assert resp.status_code == 303
    with database.session() as s:
        version = s.get(DatasetVersion, vid)
        assert version.state == "processing"
        assert json.loads(version.mapping)["terms"]["product"]["Flux-cel"] == "academic"


def test_remembered_terms_page_lists_and_forgets_for_the_own_institution_only(
    client: FlaskClient, auth, users, database: Database, settings: Settings
) -> None:
    users.make("nadia", "contributor")
    users.make("omar", "contributor", institution=users.institution("northbridge"))
    with database.session() as s:
        nadia = s.scalars(
            select(hub_accounts.User).where(hub_accounts.User.username == "nadia")
        ).one()
        omar = s.scalars(
            select(hub_accounts.User).where(hub_accounts.User.username == "omar")
        ).one()
        for user, term in ((nadia, "Kymriah"), (omar, "Yescarta")):
            s.add(
                InstitutionTerm(
                    institution_id=user.institution_id,
                    cdm_table="episode",
                    column="product",
                    term_key=term_key(term),
                    term=term,
                    value="tisa-cel" if term == "Kymriah" else "axi-cel",
                    confirmed_by=f"user:{user.username}",
                )
            )
        s.commit()
        theirs = (
            s.scalars(select(InstitutionTerm).where(InstitutionTerm.term == "Yescarta")).one().id
        )
        ours = s.scalars(select(InstitutionTerm).where(InstitutionTerm.term == "Kymriah")).one().id
    auth.login("nadia")
    page = client.get("/datasets/terms").get_data(as_text=True)
    assert "Kymriah" in page and "Tisagenlecleucel" in page
    assert "Yescarta" not in page  # another institution's words
    csrf = csrf_from(client, "/datasets/terms")
    assert (
        client.post(f"/datasets/terms/{theirs}/forget", data={"csrf_token": csrf}).status_code
        == 404
    )
    resp = client.post(f"/datasets/terms/{ours}/forget", data={"csrf_token": csrf})
    assert resp.status_code == 303
    with database.session() as s:
        left = {t.term for t in s.scalars(select(InstitutionTerm))}
        forgot = s.scalars(
            select(AuditEntry).where(AuditEntry.action == "ingest.term_forget")
        ).all()
    assert left == {"Yescarta"} and len(forgot) == 1
    assert "no-terms" in client.get("/datasets/terms").get_data(as_text=True)


def test_a_fhir_file_with_standard_codes_is_asked_about_then_processed(
    client: FlaskClient, token: str, database: Database, settings: Settings
) -> None:
    """A site's FHIR export that codes the indication in SNOMED CT: the code is proposed
    as the data model's value (the code book knows it), and the version waits for the
    contributor instead of holding the rows back or guessing."""
    episodes = pd.DataFrame(
        {
            "coi_id": [f"COI-F{i:03d}" for i in range(12)],
            "site": "St Aurelia",
            "product_class": "autologous_car_t",
            "indication": ["109969005"] * 6 + ["LBCL"] * 6,  # SNOMED CT for DLBCL, and ours
            "age": 55,
            "sex": "female",
        }
    )
    body = write_fhir({"episode": episodes}, form="bundle")
    resp = client.post(
        "/api/v1/uploads?filename=site.json",
        data=body,
        headers={**auth_headers(token), "Content-Type": "application/octet-stream"},
    )
    assert resp.status_code == 201, resp.get_json()
    (made,) = resp.get_json()["versions"]
    asked = show(client, token, made["id"])
    assert asked["state"] == "awaiting_mapping"
    (term,) = asked["terms"]["indication"]
    assert (term["term"], term["value"], term["how"], term["rows"]) == (
        "109969005",
        "LBCL",
        "synonym",
        6,
    )
    assert "its code" in term["why"]
    assert _map(client, token, made["id"], {"accept_proposed_terms": True}).status_code == 200
    drain(database, settings)
    done = show(client, token, made["id"])
    assert done["state"] == "awaiting_review", done["error"]
    assert done["valid_rows"] == len(episodes)
