"""Driving the hub's upload API in tests: a contributor's files, the calls a LIMS script
makes (upload, follow, map, release) and the pool they end in. Shared by the ingest, FHIR,
terms, export and de-identification tests (and the integration round trip)."""

from __future__ import annotations

import io
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
from flask.testing import FlaskClient
from sqlalchemy import select

from hub.db import Database
from hub.ingest.models import DatasetVersion
from hub.jobs.services import Worker
from hub.settings import Settings

EPISODE_CSV = (
    "\ufeffPatient ID;Site;Product Class;Indication;Age;Sex;Patient Name;MRN;Weight (kg)\n"
    "COI-0001;St Aurelia;autologous_car_t;LBCL;54;female;Jane Doe;MRN123456;71.5\n"
    "COI-0002;St Aurelia;autologous_car_t;ALL;23;male;John Roe;MRN654321;80\n"
    'COI-0003;=HYPERLINK("http://x");autologous_car_t;MM;67;female;Ann Poe;MRN111111;64\n'
    "COI-0004;St Aurelia;autologous_car_t;FL;130;male;Bob Loe;MRN222222;90\n"
    # Enough look-alike episodes for k=5 to hold without suppressing everything.
    + "".join(
        f"COI-{i:04d};St Aurelia;autologous_car_t;LBCL;{50 + i % 5};"
        f"{'female' if i % 2 else 'male'};Pat Person{i};MRN{700000 + i};{70 + i % 3}\n"
        for i in range(5, 25)
    )
)


APPROVE = {"approve_deidentification": True}


def auth_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def upload(client: FlaskClient, token: str, table: str, filename: str, data: bytes | str):
    body = data.encode("utf-8") if isinstance(data, str) else data
    return client.post(
        f"/api/v1/uploads?table={table}&filename={filename}",
        data=body,
        headers={**auth_headers(token), "Content-Type": "application/octet-stream"},
    )


def drain(database: Database, settings: Settings) -> None:
    worker = Worker(database, settings, worker_id="test")
    while worker.run_once() is not None:
        pass


def show(client: FlaskClient, token: str, version_id: int) -> dict:
    resp = client.get(f"/api/v1/uploads/{version_id}", headers=auth_headers(token))
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def workbook(sheets: dict[str, str]) -> bytes:
    from openpyxl import Workbook

    wb = Workbook()
    wb.remove(wb.active)
    for name, csv_text in sheets.items():
        ws = wb.create_sheet(name)
        for line in csv_text.strip().splitlines():
            ws.append(line.split(";"))
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def api_upload(client: FlaskClient, token: str, data: bytes, filename: str, table: str = ""):
    return client.post(
        f"/api/v1/uploads?filename={filename}" + (f"&table={table}" if table else ""),
        data=data,
        headers={**auth_headers(token), "Content-Type": "application/octet-stream"},
    )


def release_all(client: FlaskClient, token: str, ids: list[int]) -> None:
    for vid in ids:
        resp = client.post(
            f"/api/v1/uploads/{vid}/release", headers=auth_headers(token), json=APPROVE
        )
        assert resp.status_code == 200, resp.get_json()


def pooled_rows(app: Any, database: Database, table: str) -> pd.DataFrame:
    storage = app.extensions["cleanroom.storage"]
    with database.session() as s:
        keys = s.scalars(
            select(DatasetVersion.pool_key).where(
                DatasetVersion.cdm_table == table, DatasetVersion.state == "released"
            )
        ).all()
    frames = []
    for key in keys:
        with storage.open(key) as fh:
            frames.append(pq.read_table(io.BytesIO(fh.read())).to_pandas())
    return pd.concat(frames, ignore_index=True)


# Tests --------------------------------------------------------------------------------------


BATCH_CSV = (
    "Lot No.,COI,Manufacturing Facility,Platform,Outcome,Viability %\n"
    "LOT-1,COI-0001,Northbridge,central,conforming,91.5\n"
    "LOT-2,COI-0002,Northbridge,central,failed,62\n"
    "LOT-3,COI-9999,Northbridge,central,conforming,88\n"
)


def accept_mapping(
    client: FlaskClient, token: str, database: Database, settings: Settings, version_id: int
) -> dict:
    """Profile the upload, accept its proposed mapping and process it (the jobs run here);
    the version as the API then shows it."""
    drain(database, settings)
    mapped = client.post(
        f"/api/v1/uploads/{version_id}/mapping", json={}, headers=auth_headers(token)
    )
    assert mapped.status_code == 200, mapped.get_json()
    drain(database, settings)
    return show(client, token, version_id)


def release_episode(client, token, database, settings) -> dict:
    resp = upload(client, token, "episode", "episodes.csv", EPISODE_CSV)
    assert resp.status_code == 201, resp.get_json()
    vid = resp.get_json()["id"]
    accept_mapping(client, token, database, settings, vid)
    resp = client.post(f"/api/v1/uploads/{vid}/release", headers=auth_headers(token), json=APPROVE)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()
