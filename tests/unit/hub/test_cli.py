"""The ``cleanroom`` command: one line for a user error, never a traceback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from click.testing import CliRunner

from hub.cli import cli

pytestmark = pytest.mark.db


def test_config_masks_secrets(runner: CliRunner, cli_env) -> None:
    result = runner.invoke(cli, ["config"], env={**cli_env, "CLEANROOM_SECRET_KEY": "topsecret"})
    assert result.exit_code == 0
    assert "topsecret" not in result.output
    assert "secret_key" in result.output and "********" in result.output
    assert "[env CLEANROOM_SECRET_KEY]" in result.output


def test_db_upgrade_is_idempotent(runner: CliRunner) -> None:
    for _ in range(2):
        result = runner.invoke(cli, ["db", "upgrade"])
        assert result.exit_code == 0, result.output
        assert "database at revision" in result.output
    assert "up to date" in runner.invoke(cli, ["db", "current"]).output


def test_institution_user_and_token_commands(runner: CliRunner) -> None:
    assert (
        runner.invoke(
            cli,
            ["institution", "add", "kelvin", "--name", "Kelvin Institute", "--kind", "academic"],
        ).exit_code
        == 0
    )
    added = runner.invoke(
        cli,
        [
            "user",
            "add",
            "kiri",
            "--role",
            "contributor_admin",
            "--institution",
            "kelvin",
            "--password",
            "long enough pass",
        ],
    )
    assert added.exit_code == 0, added.output
    token = runner.invoke(cli, ["token", "create", "kiri", "--scope", "upload", "--days", "7"])
    assert token.exit_code == 0, token.output
    assert token.stdout.startswith("crt_")
    listing = runner.invoke(cli, ["token", "list", "kiri"]).output
    assert "upload" in listing and "active" in listing
    lookup = token.stdout.split("_")[1]
    assert runner.invoke(cli, ["token", "revoke", lookup]).exit_code == 0
    assert "revoked" in runner.invoke(cli, ["token", "list", "kiri"]).output
    assert "kelvin" in runner.invoke(cli, ["institution", "list"]).output


def test_user_errors_are_one_line(runner: CliRunner) -> None:
    dup = runner.invoke(cli, ["institution", "add", "x", "--name", "X", "--kind", "hospital"])
    assert dup.exit_code == 1
    assert "Error: institution id 'x'" in dup.output
    missing = runner.invoke(
        cli,
        [
            "user",
            "add",
            "ann",
            "--role",
            "contributor",
            "--institution",
            "nowhere",
            "--password",
            "long enough pass",
        ],
    )
    assert missing.exit_code == 1
    assert missing.output.strip().splitlines() == [
        "Error: no institution 'nowhere'; `cleanroom institution list` shows them."
    ]


def test_schema_must_be_current(runner: CliRunner, cli_env, tmp_path) -> None:
    env = {**cli_env, "CLEANROOM_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"}
    result = runner.invoke(cli, ["user", "list"], env=env)
    assert result.exit_code == 1
    assert "run `cleanroom db upgrade` first" in result.output


@pytest.mark.parametrize(
    "url, reason",
    [
        ("postgresql://cleanroom:pw@127.0.0.1:1/nowhere", "connection"),
        ("sqlite:////etc/hostname/x.db", "cannot create the database folder"),
        ("notadb://x", "not a valid database URL"),
    ],
)
def test_unreachable_database_is_one_clear_line(url: str, reason: str) -> None:
    """A real process, as a user would run it: one line on stderr, exit 1, no traceback."""
    env = {"CLEANROOM_DATABASE_URL": url, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "hub", "db", "upgrade"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert reason in lines[0]
    assert "pw@" not in lines[0]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_up_stops_cleanly_on_sigterm_and_ctrl_c(tmp_path, signum: int) -> None:
    """A real `cleanroom up`: SIGTERM (a service manager) and Ctrl-C end it with status 0
    and no traceback (closing waitress inside the signal handler once ended in EBADF)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        "PATH": "/usr/bin:/bin",
        "CLEANROOM_DATA_DIR": str(tmp_path / "data"),
        "CLEANROOM_SANDBOX_ENABLED": "false",
        "CLEANROOM_LOG_LEVEL": "WARNING",
    }
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub", "up", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "no /healthz in 60 s"
                time.sleep(0.2)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "Bad file descriptor" not in err, err
    assert "Cleanroom stopped." in out
