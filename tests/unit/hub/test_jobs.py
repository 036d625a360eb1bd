"""The job queue in one process: claiming, progress, retries, lease fencing."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import update

from hub.db import Database, utcnow
from hub.jobs.models import Job
from hub.jobs.services import (
    LeaseLost,
    Worker,
    claim,
    enqueue,
    get_job,
    load_task_modules,
    run,
)
from hub.settings import Settings

pytestmark = pytest.mark.db


@pytest.fixture(autouse=True)
def _tasks() -> None:
    load_task_modules("tests.jobtasks")


def _enqueue(database: Database, kind: str, payload: dict | None = None) -> int:
    with database.session() as s:
        return enqueue(s, kind, payload, actor="user:t", max_attempts=2).id


def _job(database: Database, job_id: int) -> Job:
    with database.session() as s:
        return get_job(s, job_id)


def test_a_job_runs_and_reports(database: Database, settings: Settings, tmp_path) -> None:
    job_id = _enqueue(database, "test.sleep", {"log": str(tmp_path / "log"), "seconds": 0.1})
    assert _job(database, job_id).state == "queued"
    assert Worker(database, settings).run_once() == "succeeded"
    job = _job(database, job_id)
    assert (job.state, job.progress, job.attempts) == ("succeeded", 100, 1)
    assert json.loads(job.result)["attempt"] == 1
    assert job.finished_at is not None and job.lease_token == ""


def test_idle_worker_finds_nothing(database: Database, settings: Settings) -> None:
    assert Worker(database, settings).run_once() is None


def test_unknown_kind_is_refused(database: Database) -> None:
    from hub.errors import NotFound

    with database.session() as s, pytest.raises(NotFound, match="no job kind"):
        enqueue(s, "no.such.kind", actor="t")


def test_crash_is_retried_with_backoff_then_fails(database: Database, settings: Settings) -> None:
    job_id = _enqueue(database, "test.crash")
    worker = Worker(database, settings)
    assert worker.run_once() == "queued"
    job = _job(database, job_id)
    assert job.attempts == 1 and "simulated crash on attempt 1" in job.error
    assert job.run_after > utcnow()  # backing off
    assert worker.run_once() is None
    with database.session() as s:
        s.execute(update(Job).values(run_after=utcnow()))
    assert worker.run_once() == "failed"
    job = _job(database, job_id)
    assert (job.state, job.attempts) == ("failed", 2)
    assert "RuntimeError: simulated crash on attempt 2" == job.error


def test_user_errors_fail_at_once_with_their_message(
    database: Database, settings: Settings
) -> None:
    job_id = _enqueue(database, "test.refuse")
    assert Worker(database, settings).run_once() == "failed"
    job = _job(database, job_id)
    assert job.attempts == 1
    assert job.error == "column `viability`: 3 values above 100 %; check the unit"


def test_a_running_job_is_not_claimed_twice(
    database: Database, settings: Settings, tmp_path
) -> None:
    _enqueue(database, "test.sleep", {"log": str(tmp_path / "log")})
    first = claim(database, settings, "w1")
    assert first is not None
    assert claim(database, settings, "w2") is None  # lease still fresh


def test_expired_lease_is_taken_over_and_the_old_worker_is_fenced(
    database: Database, settings: Settings, tmp_path
) -> None:
    job_id = _enqueue(database, "test.sleep", {"log": str(tmp_path / "log"), "seconds": 0.1})
    old = claim(database, settings, "w1")
    assert old is not None
    with database.session() as s:  # w1 stops heartbeating
        s.execute(update(Job).values(heartbeat_at=utcnow() - timedelta(seconds=60)))
    new = claim(database, settings, "w2")
    assert new is not None and new.job_id == job_id and new.attempt == 2
    with pytest.raises(LeaseLost):
        old.progress(50, "still here?")
    assert run(new) == "succeeded"
    job = _job(database, job_id)
    assert (job.state, job.worker_id, job.attempts) == ("succeeded", "w2", 2)


def test_worker_that_keeps_dying_gives_up(database: Database, settings: Settings, tmp_path) -> None:
    job_id = _enqueue(database, "test.sleep", {"log": str(tmp_path / "log")})
    for _ in range(2):
        assert claim(database, settings, "doomed") is not None
        with database.session() as s:
            s.execute(update(Job).values(heartbeat_at=utcnow() - timedelta(seconds=60)))
    assert claim(database, settings, "w3") is None
    job = _job(database, job_id)
    assert job.state == "failed" and "stopped 2 time(s)" in job.error
