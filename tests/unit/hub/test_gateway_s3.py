"""The gateway over the S3 backend: the pooled Parquet is read from an S3-protocol server
over HTTP through pyarrow's filesystem (no DuckDB extension), with the same answers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from flask.testing import FlaskClient

from hub.db import Database
from hub.settings import Settings
from hub.storage.s3 import S3Storage
from tests.conftest import activate_agreement, bearer
from tests.s3server import (
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    s3_server,
    s3_settings_overrides,
)
from tests.unit.hub.conftest import LOTS, QUERY, gateway_terms, whole_count

pytestmark = [pytest.mark.db, pytest.mark.s3]


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with s3_server() as url:
        yield url


@pytest.fixture
def settings_overrides(db_url: str, data_dir: Path, endpoint: str) -> dict[str, Any]:
    bucket = f"gw-{uuid.uuid4().hex[:12]}"
    boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        config=Config(s3={"addressing_style": "path"}),
    ).create_bucket(Bucket=bucket)
    return {
        "data_dir": str(data_dir),
        "database_url": db_url,
        "log_level": "WARNING",
        **s3_settings_overrides(endpoint, bucket),
    }


def test_query_reads_the_pool_from_s3(
    client: FlaskClient,
    database: Database,
    settings: Settings,
    app,
    pooled,  # noqa: F811 - the imported fixture
) -> None:
    assert isinstance(app.extensions["cleanroom.storage"], S3Storage)
    activate_agreement(database, gateway_terms())
    rosa = bearer(database, settings, "rosa")
    resp = client.post(
        "/api/v1/sandbox/query", json={"agreement": "v2v", "sql": QUERY}, headers=rosa
    )
    assert resp.status_code == 200, resp.get_json()
    rows = resp.get_json()["rows"]
    assert [r[0] for r in rows] == ["central", "point_of_care", None]
    # Noisy, and a cell may be withheld by the noisy institution rules: all the lots.
    scale = resp.get_json()["aggregates"][0]["noise_scale"]["n"]
    assert sum(r[1] or 0 for r in rows) <= LOTS + 12 * scale
    # The whole table, one row per patient, read from S3: close to its lot count.
    whole = whole_count(client, rosa)
    assert abs(whole["rows"][0][0] - LOTS) <= 12 * whole["scale"]
