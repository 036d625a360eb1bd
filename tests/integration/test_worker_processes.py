"""Job workers as real processes: a worker killed mid-job, and two workers sharing a queue.

Runs on SQLite and PostgreSQL (where claims use ``SELECT … FOR UPDATE SKIP LOCKED``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.db import Database
from hub.jobs.services import enqueue, get_job, load_task_modules

pytestmark = [pytest.mark.db, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def worker_env(cli_env: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEANROOM_")}
    env.update(cli_env)
    env.update(
        CLEANROOM_TASK_MODULES="tests.jobtasks",
        CLEANROOM_JOB_LEASE_SECONDS="1",
        CLEANROOM_WORKER_POLL_SECONDS="0.05",
        PYTHONPATH=str(ROOT),
    )
    return env


@pytest.fixture
def start_worker(worker_env: dict[str, str]) -> Iterator:
    procs: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hub", "worker"],
            env=worker_env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_for(predicate, what: str, timeout: float = 30.0, procs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"worker exited early ({p.returncode}): {p.stderr.read()}")
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def _read_log(path: Path) -> list[tuple[str, int, int, int, float]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        kind, job, pid, attempt, at = line.split()
        rows.append((kind, int(job), int(pid), int(attempt), float(at)))
    return rows


def test_killed_worker_job_is_taken_over(
    database: Database, settings, start_worker, tmp_path: Path
) -> None:
    load_task_modules("tests.jobtasks")
    log = tmp_path / "runs.log"
    with database.session() as s:
        job_id = enqueue(s, "test.sleep", {"log": str(log), "seconds": 2.0}, actor="user:t").id

    def job():
        with database.session() as s:
            return get_job(s, job_id)

    first = start_worker()
    _wait_for(lambda: job().progress >= 10, "the first worker to make progress", procs=[first])
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    killed_at = time.time()
    interrupted = job()
    assert interrupted.state == "running" and interrupted.progress < 100

    second = start_worker()
    _wait_for(
        lambda: job().state == "succeeded", "the second worker to finish the job", procs=[second]
    )
    done = job()
    assert done.attempts == 2
    runs = _read_log(log)
    starts = [r for r in runs if r[0] == "start"]
    ends = [r for r in runs if r[0] == "end"]
    assert [r[2] for r in starts] == [first.pid, second.pid]
    assert [r[2] for r in ends] == [second.pid]  # the killed run never finished
    assert starts[1][4] >= killed_at  # taken over only after the first worker died


def test_two_workers_never_run_a_job_twice(
    database: Database, start_worker, tmp_path: Path
) -> None:
    load_task_modules("tests.jobtasks")
    log = tmp_path / "runs.log"
    with database.session() as s:
        ids = [
            enqueue(s, "test.sleep", {"log": str(log), "seconds": 0.15}, actor="user:t").id
            for _ in range(8)
        ]
    workers = [start_worker(), start_worker()]

    def all_done() -> bool:
        with database.session() as s:
            return all(get_job(s, i).state == "succeeded" for i in ids)

    _wait_for(all_done, "all jobs to finish", timeout=60, procs=workers)
    runs = _read_log(log)
    starts = sorted(r[1] for r in runs if r[0] == "start")
    assert starts == sorted(ids)  # each job started exactly once
    with database.session() as s:
        assert all(get_job(s, i).attempts == 1 for i in ids)
