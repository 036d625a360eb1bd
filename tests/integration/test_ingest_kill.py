"""A worker killed in the middle of ingest leaves the previous state; another finishes it."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hub.accounts import services as accounts
from hub.db import Database
from hub.ingest import services as ingest
from hub.jobs.models import Job
from hub.jobs.services import load_task_modules
from hub.storage import get_storage
from tests.unit.hub.uploads import EPISODE_CSV

pytestmark = [pytest.mark.db, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _worker(cli_env: dict[str, str], modules: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEANROOM_")}
    env.update(
        cli_env,
        CLEANROOM_TASK_MODULES=modules,
        CLEANROOM_JOB_LEASE_SECONDS="1",
        CLEANROOM_WORKER_POLL_SECONDS="0.05",
        PYTHONPATH=str(ROOT),
    )
    return subprocess.Popen(
        [sys.executable, "-m", "hub", "worker"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _until(predicate, what: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"worker exited early: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def test_kill_mid_ingest(database: Database, settings, users, cli_env) -> None:
    load_task_modules()
    users.make("nadia", "contributor")
    storage = get_storage(settings)
    with database.session() as s:
        user = accounts.get_user(s, "nadia")
        s.commit()
        vid = ingest.start_upload(
            s,
            settings,
            storage,
            user=user,
            table="episode",
            filename="e.csv",
            stream=io.BytesIO(EPISODE_CSV.encode()),
        ).id

    def version():
        with database.session() as s:
            v = ingest.get_version(s, vid)
            job = s.get(Job, v.job_id) if v.job_id else None
            s.expunge_all()
            return v, job

    slow = _worker(cli_env, "tests.slowingest")
    try:
        _until(lambda: version()[0].state == "awaiting_mapping", "profiling", slow)
        with database.session() as s:
            ingest.confirm_mapping(s, settings, ingest.get_version(s, vid), {}, actor="user:nadia")
        _until(lambda: (version()[1].progress or 0) >= 60, "de-identification to start", slow)
        slow.send_signal(signal.SIGKILL)
        slow.wait(timeout=10)
    finally:
        if slow.poll() is None:
            slow.kill()
    interrupted, job = version()
    # The previous state, whole: still processing, nothing staged, nothing reported.
    assert interrupted.state == "processing"
    assert interrupted.staged_key == "" and interrupted.validation == "{}"
    assert job.state == "running"

    healthy = _worker(cli_env, "")
    try:
        _until(lambda: version()[0].state == "awaiting_review", "another worker to finish", healthy)
    finally:
        healthy.terminate()
        healthy.wait(timeout=10)
    done, job = version()
    assert job.attempts == 2 and job.state == "succeeded"
    assert (done.rows, done.valid_rows) == (24, 23)
    assert storage.exists(done.staged_key)
    staged = [o.key for o in storage.list("quarantine/") if o.key.endswith(".parquet")]
    assert sorted(staged) == sorted([done.staged_key, done.keys_key])
