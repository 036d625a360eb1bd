"""Least knowledge for the steward (issue 14, item 6): no route shows the steward what is
derived from a contributor's file.

One institution uploads four versions holding planted personal data (a patient's name, an
NHS number and a one-off site name): one that validates with errors and is released (its
de-identification merges the rare site and names it), one whose header is its first data
row and which is mapped and processed anyway, one that fails to parse with an error
quoting that row, and a workbook whose sheet is named after the patient, waiting for its
mapping. A job's error quotes a cell too. The test then signs in as the steward
and requests every GET route of the app, filling each route's ids with those of the uploads,
their jobs and synthetic versions, and finds none of the planted text in any answer. The
control: the uploading contributor does see it where the feature shows it, so the same
search would find a leak.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from hub.accounts import services as accounts
from hub.audit.models import AuditEntry
from hub.db import Database
from hub.ingest.models import DatasetVersion
from hub.jobs.models import Job
from hub.settings import Settings
from hub.synth.models import SyntheticVersion
from tests.conftest import AuthActions, Users
from tests.unit.hub.uploads import APPROVE, drain, upload, workbook

pytestmark = pytest.mark.db

NAME = "Zebedee Quincefoot"
NHS = "943 476 5919"
RARE_SITE = "Glimmerdale Infirmary"
#: What must never reach the steward: the planted values and recognisable parts of them.
PLANTED = (NAME, "Quincefoot", NHS, "476 5919", "4765919", RARE_SITE, "Glimmerdale")

_HEADER = "Patient ID;Site;Product Class;Indication;Age;Sex;Patient Name;NHS Number;Weight (kg)\n"


def _row(i: int, *, site: str = "St Aurelia", age: str = "", sex: str = "") -> str:
    return (
        f"COI-{i:04d};{site};autologous_car_t;LBCL;{age or 50 + i % 5};"
        f"{sex or ('female' if i % 2 else 'male')};Pat Person{i};{900_000_0000 + i};{70 + i % 3}\n"
    )


#: Released after validation: the rare site is merged by name, one row is held back with
#: the name and NHS number in cells whose errors quote them, and the patient's own row
#: carries both in the identifier columns.
RELEASED_CSV = (
    _HEADER
    + f"COI-0001;St Aurelia;autologous_car_t;LBCL;54;female;{NAME};{NHS};71\n"
    + _row(2, site=RARE_SITE)
    + _row(3, age=NAME, sex=NHS)
    + "".join(_row(i) for i in range(4, 30))
)
#: No header: the first row is a patient's, and becomes the column names.
HEADERLESS_CSV = f"COI-0100;{RARE_SITE};autologous_car_t;LBCL;54;female;{NAME};{NHS};71\n" + (
    "".join(_row(i) for i in range(101, 130))
)
HEADERLESS_MAPPING = {
    "COI-0100": "coi_id",
    RARE_SITE: "site",
    "autologous_car_t": "product_class",
    "LBCL": "indication",
    "54": "age",
    "female": "sex",
    NAME: "patient_name",
    NHS: "nhs_number",
    "71": "weight_kg",
}
#: Refused while parsing: the "header" repeats names, and the error quotes them.
UNPARSABLE_CSV = f"{NAME},{NAME},{NHS},{NHS}\n1,2,3,4\n"

#: A workbook whose one sheet is named after the patient (and so is chosen by itself).
WORKBOOK = {NAME: _HEADER + "".join(_row(i) for i in range(200, 210))}

JOB_ERROR = f"ValueError: could not convert {NAME!r} ({NHS}) to int"

#: Routes whose arguments are not about a dataset version, its job or its synthetic
#: version, with what they are about; each was reviewed. A new route with an argument not
#: filled below must be added here or given values, so it cannot escape the search.
NOT_ABOUT_A_DATASET = {
    "static": "the hub's own files",
    "admin_agreements.admin_show": "an agreement's terms, written by the steward",
    "admin_agreements.admin_confirm": "a question naming an agreement the steward wrote",
    "agreements.show": "an agreement's terms",
    "agreements_api.api_show": "an agreement's terms",
    "releases_api.show": "a researcher's own release request (aggregates of the pool, the "
    "researcher's token only)",
    "releases.page": "a release request: aggregates of the pool under the disclosure rules",
    "releases.download": "a released table: aggregates of the pool under the disclosure rules",
    "releases.change": "the form revising a researcher's own release request",
}


def auth_headers(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _token(database: Database, settings: Settings, username: str) -> str:
    with database.session() as s:
        return accounts.create_token(
            s,
            settings,
            accounts.get_user(s, username),
            "t",
            ["read", "upload", "sandbox"],
            actor="t",
        ).secret


class Planted:
    """The uploads, their jobs and synthetic versions, made through the JSON API."""

    def __init__(self, client: FlaskClient, database: Database, settings: Settings) -> None:
        self.client, self.database, self.settings = client, database, settings
        self.token = _token(database, settings, "nadia")
        self.released = self._upload("released.csv", RELEASED_CSV)
        self._map(self.released, {})
        release = self._post(f"/api/v1/uploads/{self.released}/release", APPROVE)
        assert release["state"] == "released", release
        self.headerless = self._upload("headerless.csv", HEADERLESS_CSV)
        columns = {source: {"target": target} for source, target in HEADERLESS_MAPPING.items()}
        self._map(self.headerless, {"columns": columns})
        self.unparsable = self._upload("unparsable.csv", UNPARSABLE_CSV)
        assert self.show(self.unparsable)["state"] == "failed"
        self.workbook = self._upload("register.xlsx", workbook(WORKBOOK))
        assert self.show(self.workbook)["state"] == "awaiting_mapping"
        synthesised = self._post(f"/api/v1/uploads/{self.released}/synthesise", {"seed": 1})
        drain(database, settings)
        self.synthetic = synthesised["id"]
        with database.session() as s:
            # A job that died on a cell, the way an unexpected exception would say it.
            job = s.get(Job, s.get(DatasetVersion, self.headerless).job_id)
            job.error = JOB_ERROR

    def _upload(self, filename: str, data: str | bytes) -> int:
        resp = upload(self.client, self.token, "episode", filename, data)
        assert resp.status_code == 201, resp.get_json()
        drain(self.database, self.settings)
        return int(resp.get_json()["id"])

    def _post(self, path: str, body: dict) -> dict:
        resp = self.client.post(path, json=body, headers=auth_headers(self.token))
        assert resp.status_code in (200, 202), resp.get_json()
        return resp.get_json()

    def _map(self, version_id: int, body: dict) -> None:
        # The planted values in category columns are terms the file's own institution is
        # asked about (never the steward): hold them back.
        asked = self.show(version_id).get("terms") or {}
        held = {column: {t["term"]: "" for t in listed} for column, listed in asked.items()}
        self._post(f"/api/v1/uploads/{version_id}/mapping", {**body, "terms": held})
        drain(self.database, self.settings)
        shown = self.show(version_id)
        assert shown["state"] == "awaiting_review", shown["error"]

    def show(self, version_id: int) -> dict:
        return self.client.get(
            f"/api/v1/uploads/{version_id}", headers=auth_headers(self.token)
        ).json

    @property
    def versions(self) -> list[int]:
        return [self.released, self.headerless, self.unparsable, self.workbook]

    def values(self) -> dict[str, list[str]]:
        """Values for each route argument."""
        with self.database.session() as s:
            jobs = [str(i) for i in s.scalars(select(Job.id))]
            entries = [str(i) for i in s.scalars(select(AuditEntry.id))]
            synthetic = s.scalars(select(SyntheticVersion)).all()
            plots = sorted({p for v in synthetic for p in json.loads(v.plot_keys or "{}")})
        return {
            "version_id": [str(v) for v in self.versions],
            "job_id": jobs,
            "entry_id": entries,  # each ledger entry's page
            "synthetic_id": [str(v.id) for v in synthetic],
            "which": ["report", "held-back"],
            "name": plots or ["none.svg"],
            "table": ["episode"],
            "slug": ["no-such-agreement"],  # the catalogue's agreement page
        }


@pytest.fixture
def planted(client: FlaskClient, users: Users, database: Database, settings: Settings) -> Planted:
    users.make("nadia", "contributor")
    users.make("sam", "steward")
    return Planted(client, database, settings)


def _paths(app: Flask, values: dict[str, list[str]]) -> Iterator[tuple[str, str]]:
    """``(endpoint, path)`` for every GET route, each argument filled with every value."""
    for rule in app.url_map.iter_rules():
        if "GET" not in (rule.methods or ()) or rule.endpoint in NOT_ABOUT_A_DATASET:
            continue
        unknown = set(rule.arguments) - set(values)
        assert not unknown, f"{rule.endpoint} takes {unknown}: fill them or review the route"
        combos: list[dict[str, str]] = [{}]
        for arg in sorted(rule.arguments):
            combos = [{**c, arg: v} for c in combos for v in values[arg]]
        for combo in combos:
            path = rule.rule
            for arg, value in combo.items():
                path = re.sub(rf"<(?:[^:<>]+:)?{arg}>", value, path)
            yield rule.endpoint, path


def _fetch(client: FlaskClient, path: str, headers: dict[str, str]) -> tuple[int, str]:
    with client.get(path, headers=headers) as resp:  # streamed answers are closed
        return resp.status_code, resp.get_data(as_text=True)


def _answers(
    client: FlaskClient, app: Flask, planted: Planted, api_token: str
) -> dict[str, tuple[int, str]]:
    answers = {}
    for _endpoint, path in _paths(app, planted.values()):
        headers = auth_headers(api_token) if path.startswith("/api/") else {}
        answers[path] = _fetch(client, path, headers)
    return answers


def _leaks(answers: dict[str, tuple[int, str]]) -> dict[str, list[str]]:
    return {
        path: found
        for path, (_status, body) in answers.items()
        if (found := [p for p in PLANTED if p in body])
    }


def test_no_steward_route_shows_content_derived_from_a_file(
    app: Flask,
    client: FlaskClient,
    auth: AuthActions,
    database: Database,
    settings: Settings,
    planted: Planted,
) -> None:
    auth.login("sam")
    answers = _answers(client, app, planted, _token(database, settings, "sam"))
    assert _leaks(answers) == {}
    # The search reached the routes that show a version, its job and its synthetic version.
    ok = {path for path, (status, _body) in answers.items() if status == 200}
    for vid in planted.versions:
        assert {f"/datasets/{vid}", f"/datasets/{vid}/status.json"} <= ok
        assert f"/api/v1/uploads/{vid}" in ok
    with database.session() as s:
        job_id = s.get(DatasetVersion, planted.headerless).job_id
    assert f"/api/v1/jobs/{job_id}" in ok
    assert f"/synthetic/{planted.synthetic}" in ok
    assert {"/datasets", "/api/v1/uploads", "/admin/audit", "/admin/audit.csv"} <= ok
    # What the steward does see: the record, counts and the kind of each problem.
    failed = client.get(f"/datasets/{planted.unparsable}/status.json").get_json()
    assert failed["state"] == "failed" and "uploading institution" in failed["error"]
    seen = client.get(
        f"/api/v1/uploads/{planted.released}",
        headers=auth_headers(_token(database, settings, "sam")),
    ).get_json()
    assert seen["validation"]["summary"]["invalid_rows"] == 1
    assert seen["validation"]["summary"]["by_rule"]
    actions = {c["name"]: c["action"] for c in seen["deidentification"]["columns"]}
    assert actions["site"] == "generalise" and actions["patient_name"] == "drop"
    assert seen["deidentification"]["risk"]["k_after"] >= 5


def test_the_contributor_sees_what_the_steward_does_not(
    app: Flask,
    client: FlaskClient,
    auth: AuthActions,
    database: Database,
    settings: Settings,
    planted: Planted,
) -> None:
    """The control: the same search over the uploading institution's own answers finds the
    planted text where the features show it, so the steward's empty result means something."""
    auth.login("nadia")
    answers = _answers(client, app, planted, planted.token)
    leaks = _leaks(answers)
    # The parse error quoting the first row, in the page, its status and the API.
    for path in (
        f"/datasets/{planted.unparsable}",
        f"/datasets/{planted.unparsable}/status.json",
        f"/api/v1/uploads/{planted.unparsable}",
    ):
        assert {NAME, NHS} <= set(leaks.get(path, ())), path
    # Validation errors quoting cells, the merged rare site named, the held-back rows.
    assert {NAME, NHS, RARE_SITE} <= set(leaks[f"/api/v1/uploads/{planted.released}"])
    assert {NAME, RARE_SITE} <= set(leaks[f"/datasets/{planted.released}"])
    assert {NAME, NHS} <= set(leaks[f"/datasets/{planted.released}/held-back.csv"])
    # The header that was a patient's row, as the mapping's source names.
    assert {NAME, NHS, RARE_SITE} <= set(leaks[f"/api/v1/uploads/{planted.headerless}"])
    # The sheet's name, and the file's header in the mapping form.
    assert NAME in leaks[f"/api/v1/uploads/{planted.workbook}"]
    assert NAME in leaks[f"/datasets/{planted.workbook}"]
    with database.session() as s:
        job_id = s.get(DatasetVersion, planted.headerless).job_id
    assert NAME in leaks[f"/api/v1/jobs/{job_id}"]


def test_the_ledger_records_the_kind_of_a_failure_not_its_text(
    database: Database, planted: Planted
) -> None:
    from hub.audit.models import AuditEntry

    with database.session() as s:
        entries = [
            (e.action, json.loads(e.detail or "{}"))
            for e in s.scalars(
                select(AuditEntry).where(
                    AuditEntry.target.in_([f"dataset:{v}" for v in planted.versions])
                )
            )
        ]
    assert ("ingest.failed", {"code": "invalid_file"}) in entries
    mapped = [detail for action, detail in entries if action == "ingest.map"]
    assert len(mapped) == 2 and all("coi_id" in d["columns"] for d in mapped)
    assert not [p for p in PLANTED for _a, detail in entries if p in json.dumps(detail)]
