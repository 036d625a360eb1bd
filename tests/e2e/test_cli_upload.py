"""``cleanroom upload`` against a real server: stream, progress, follow the job."""

from __future__ import annotations

import subprocess

import pytest

from tests.e2e.conftest import LiveServer
from tests.serving import cleanroom_command, server_env

pytestmark = [pytest.mark.e2e]

CSV = (
    "Lot No.,COI,Manufacturing Facility,Platform,Outcome,Viability %\n"
    "LOT-CLI-1,COI-CLI-1,Northbridge,central,conforming,91.5\n"
)


def _run(live_server: LiveServer, *args: str) -> subprocess.CompletedProcess[str]:
    port = int(live_server.url.rsplit(":", 1)[1])
    env = server_env(live_server.data_dir, port)
    return subprocess.run(
        [*cleanroom_command(), *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_upload_streams_and_follows_the_job(live_server: LiveServer, tmp_path) -> None:
    token = _run(
        live_server,
        "token",
        "create",
        "northbridge-data",
        "--scope",
        "upload",
        "--scope",
        "read",
        "--days",
        "1",
    )
    assert token.returncode == 0, token.stderr
    path = tmp_path / "batches.csv"
    path.write_text(CSV)
    done = _run(
        live_server,
        "upload",
        str(path),
        "--table",
        "batch",
        "--url",
        live_server.url,
        "--token",
        token.stdout.strip(),
    )
    assert done.returncode == 0, done.stderr
    assert "uploaded: dataset version" in done.stdout
    assert "awaiting mapping" in done.stdout
    assert "uploading batches.csv" in done.stderr  # the progress bars go to stderr


def test_cli_upload_explains_a_bad_token(live_server: LiveServer, tmp_path) -> None:
    path = tmp_path / "b.csv"
    path.write_text(CSV)
    bad = _run(
        live_server,
        "upload",
        str(path),
        "--table",
        "batch",
        "--url",
        live_server.url,
        "--token",
        "crt_AAAAAAAAAAAAAAAA_" + "x" * 43,
    )
    assert bad.returncode == 1
    assert "unknown API token" in bad.stderr
    assert "Traceback" not in bad.stderr
