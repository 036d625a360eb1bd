"""When the database or the object store is down: a clear answer, never a traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from hub import create_app


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def down_app(tmp_path: Path):
    port = _closed_port()
    app = create_app(
        {
            "data_dir": str(tmp_path),
            "database_url": f"postgresql://cleanroom:pw@127.0.0.1:{port}/cleanroom",
            "storage_backend": "s3",
            "s3_bucket": "cleanroom",
            "s3_endpoint_url": f"http://127.0.0.1:{port}",
            "s3_access_key_id": "x",
            "s3_secret_access_key": "y",
            "log_level": "CRITICAL",
        }
    )
    app.config["TESTING"] = True
    return app


def test_healthz_names_what_is_down(down_app) -> None:
    resp = down_app.test_client().get("/healthz")
    assert resp.status_code == 503
    assert resp.get_json() == {
        "status": "degraded",
        "checks": {"database": "unavailable", "storage": "unavailable"},
    }


def test_api_answers_503_in_the_error_shape(down_app) -> None:
    resp = down_app.test_client().get(
        "/api/v1/me", headers={"Authorization": "Bearer crt_AAAAAAAAAAAAAAAA_" + "b" * 43}
    )
    assert resp.status_code == 503
    body = resp.get_json()
    assert body["error"]["code"] == "database_unavailable"
    assert "pw" not in resp.get_data(as_text=True)


def test_portal_shows_a_page_not_a_traceback(down_app) -> None:
    client = down_app.test_client()
    with client.session_transaction() as sess:
        sess["uid"], sess["epoch"] = 1, 0
    resp = client.get("/")
    body = resp.get_data(as_text=True)
    assert resp.status_code == 503
    assert "metadata database is unavailable" in body
    assert "Traceback" not in body and "psycopg" not in body
