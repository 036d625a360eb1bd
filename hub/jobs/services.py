"""Enqueue, claim, run and report jobs.

A job is claimed by setting a fresh *lease token*; the worker renews the lease by heartbeat
while the job runs. A job whose worker stopped heartbeating for ``job_lease_seconds`` is
claimed again by another worker, and the old worker's writes are refused (its token no
longer matches), so no job runs twice at once. On PostgreSQL the claim is
``SELECT … FOR UPDATE SKIP LOCKED``; on SQLite the claim transaction begins IMMEDIATE.
"""

from __future__ import annotations

import importlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from hub.audit.services import record
from hub.db import Database, utcnow
from hub.errors import CleanroomError, Conflict, NotFound
from hub.jobs.models import Job, JobState
from hub.settings import Settings

log = logging.getLogger(__name__)

TaskFn = Callable[["JobContext"], dict[str, Any] | None]
TASKS: dict[str, TaskFn] = {}

# Modules whose import registers the built-in tasks.
BUILTIN_TASK_MODULES: tuple[str, ...] = (
    "hub.audit.jobs",
    "hub.ingest.services",
    "hub.ingest.rotation",
    "hub.synth.services",
    "hub.releases.services",
    "hub.audit.checkpoints",
)


def task(kind: str) -> Callable[[TaskFn], TaskFn]:
    """Register a job body under ``kind``."""

    def register(fn: TaskFn) -> TaskFn:
        if kind in TASKS and TASKS[kind] is not fn:
            raise ValueError(f"job kind {kind!r} is registered twice")
        TASKS[kind] = fn
        return fn

    return register


PeriodicFn = Callable[[Database, Settings], object]
# Housekeeping the workers run between jobs: name -> (every so many seconds, function).
PERIODIC: dict[str, tuple[float, PeriodicFn]] = {}


def periodic(name: str, seconds: float) -> Callable[[PeriodicFn], PeriodicFn]:
    """Register ``fn(database, settings)`` for the workers to run every ``seconds`` (each
    worker on its own clock: the function must be safe to run twice at once)."""

    def register(fn: PeriodicFn) -> PeriodicFn:
        PERIODIC[name] = (seconds, fn)
        return fn

    return register


def load_task_modules(extra: str = "") -> None:
    for name in (*BUILTIN_TASK_MODULES, *(m.strip() for m in extra.split(",") if m.strip())):
        importlib.import_module(name)


class LeaseLost(Exception):
    """The job was taken over by another worker; this one must stop working on it."""


def enqueue(
    session: Session,
    kind: str,
    payload: dict[str, Any] | None = None,
    *,
    actor: str,
    max_attempts: int | None = None,
    settings: Settings | None = None,
    run_after: datetime | None = None,
) -> Job:
    if kind not in TASKS:
        raise NotFound(f"no job kind {kind!r}; known kinds: {', '.join(sorted(TASKS))}")
    attempts = max_attempts or (settings.job_max_attempts if settings else 3)
    job = Job(
        kind=kind,
        payload=json.dumps(payload or {}),
        max_attempts=attempts,
        created_by=actor,
        run_after=run_after or utcnow(),
    )
    session.add(job)
    session.flush()
    record(
        session, actor=actor, action="job.enqueue", target=f"job:{job.id}", detail={"kind": kind}
    )
    return job


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job {job_id}.")
    return job


HIDDEN_JOB_ERROR = (
    "the job failed; its error may quote what it read, so only whoever started it sees it."
)


def job_dict(job: Job, *, content: bool) -> dict[str, Any]:
    """The job as JSON. A job's message, error and result may quote the data it read
    (an upload's cells): without ``content`` (policies: ``read`` on ``jobs/<id>/content``,
    whoever started it) they are left out, save the result's numbers and state."""
    result = json.loads(job.result or "{}")
    if not content:
        result = {
            k: v
            for k, v in result.items()
            if k == "state" or isinstance(v, int | float)  # counts; text may quote data
        }
    return {
        "id": job.id,
        "kind": job.kind,
        "state": job.state,
        "progress": job.progress,
        "message": job.message if content else "",
        "error": job.error if content or not job.error else HIDDEN_JOB_ERROR,
        "result": result,
        "attempts": job.attempts,
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


@dataclass
class JobContext:
    """What a job body gets: its payload, progress reporting and the hub's resources."""

    database: Database
    settings: Settings
    job_id: int
    kind: str
    payload: dict[str, Any]
    attempt: int
    lease_token: str
    _lost: threading.Event = field(default_factory=threading.Event)

    def progress(self, percent: int, message: str = "") -> None:
        """Report progress (0-100). Raises :class:`LeaseLost` if another worker took over."""
        self._write(progress=max(0, min(100, int(percent))), message=message[:2000])

    def heartbeat(self) -> None:
        self._write()

    def _write(self, **values: Any) -> None:
        if self._lost.is_set():
            raise LeaseLost(f"job {self.job_id} was taken over by another worker")
        with self.database.session() as s:
            n = s.execute(  # type: ignore[attr-defined]  # an UPDATE's CursorResult
                update(Job)
                .where(
                    Job.id == self.job_id,
                    Job.lease_token == self.lease_token,
                    Job.state == JobState.RUNNING,
                )
                .values(heartbeat_at=utcnow(), **values)
            ).rowcount
        if n == 0:
            self._lost.set()
            raise LeaseLost(f"job {self.job_id} was taken over by another worker")


def claim(database: Database, settings: Settings, worker_id: str) -> JobContext | None:
    """Claim the oldest runnable job (queued, or running with an expired lease)."""
    now = utcnow()
    stale = now - timedelta(seconds=settings.job_lease_seconds)
    with database.session() as s:
        job = s.scalar(
            select(Job)
            .where(
                or_(
                    and_(Job.state == JobState.QUEUED, Job.run_after <= now),
                    and_(Job.state == JobState.RUNNING, Job.heartbeat_at < stale),
                )
            )
            .order_by(Job.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        if job is None:
            return None
        if job.state == JobState.RUNNING:
            log.warning(
                "job %s: worker %s stopped reporting; taking it over", job.id, job.worker_id
            )
            if job.attempts >= job.max_attempts:
                job.state = JobState.FAILED
                job.error = (
                    f"the worker running this job stopped {job.attempts} time(s); "
                    "giving up. Check the worker logs, then retry the job."
                )
                job.finished_at = now
                job.lease_token = ""
                return None
        return _start(database, settings, job, worker_id, now)


def _start(
    database: Database,
    settings: Settings,
    job: Job,
    worker_id: str,
    now: datetime,
    context: type[JobContext] | None = None,
    **extra: Any,
) -> JobContext:
    """Mark ``job`` running under a new lease for ``worker_id``; its context (``context``
    with ``extra`` fields, default :class:`JobContext`)."""
    job.state = JobState.RUNNING
    job.attempts += 1
    job.worker_id = worker_id
    job.lease_token = uuid.uuid4().hex
    job.heartbeat_at = now
    job.started_at = job.started_at or now
    job.error = ""
    return (context or JobContext)(
        database,
        settings,
        job.id,
        job.kind,
        json.loads(job.payload or "{}"),
        job.attempts,
        job.lease_token,
        **extra,
    )


@dataclass
class _ReportingContext(JobContext):
    """A job context that also tells ``on_progress`` (a progress bar) how far it is."""

    on_progress: Callable[[int, str], None] | None = None

    def progress(self, percent: int, message: str = "") -> None:
        super().progress(percent, message)
        if self.on_progress is not None:
            self.on_progress(int(percent), message)


def run_now(
    database: Database,
    settings: Settings,
    job_id: int,
    on_progress: Callable[[int, str], None] | None = None,
    *,
    worker_id: str = "cli",
) -> str:
    """Claim queued job ``job_id`` for this process and run it now (a CLI that shows its
    progress); returns its final state."""
    with database.session() as s:
        job = s.get(Job, job_id)
        if job is None or job.state != JobState.QUEUED:
            raise Conflict(f"job {job_id} is not waiting to run.")
        ctx = _start(
            database, settings, job, worker_id, utcnow(), _ReportingContext, on_progress=on_progress
        )
    return run(ctx)


def _finish(ctx: JobContext, **values: Any) -> bool:
    with ctx.database.session() as s:
        n = s.execute(  # type: ignore[attr-defined]  # an UPDATE's CursorResult
            update(Job)
            .where(Job.id == ctx.job_id, Job.lease_token == ctx.lease_token)
            .values(**{"finished_at": utcnow(), "lease_token": "", **values})
        ).rowcount
    return bool(n)


def run(ctx: JobContext) -> str:
    """Run a claimed job with a heartbeat thread; return its final state."""
    fn = TASKS.get(ctx.kind)
    stop = threading.Event()

    def beat() -> None:
        interval = max(0.2, ctx.settings.job_lease_seconds / 4)
        while not stop.wait(interval):
            try:
                ctx.heartbeat()
            except LeaseLost:
                return
            except Exception:  # a missed beat is retried at the next interval
                log.exception("job %s: heartbeat failed", ctx.job_id)

    beater = threading.Thread(target=beat, name=f"job-{ctx.job_id}-heartbeat", daemon=True)
    beater.start()
    try:
        if fn is None:
            raise CleanroomError(f"no task registered for job kind {ctx.kind!r}")
        result = fn(ctx) or {}
    except LeaseLost:
        log.warning("job %s: lease lost; another worker has it", ctx.job_id)
        return "lost"
    except CleanroomError as err:
        # A user-facing error (bad input, refused by policy) will not fix itself on retry.
        _finish(ctx, state=JobState.FAILED, error=err.message)
        return JobState.FAILED
    except Exception as err:
        log.exception("job %s (%s) failed on attempt %s", ctx.job_id, ctx.kind, ctx.attempt)
        message = f"{type(err).__name__}: {err}"[:2000]
        if ctx.attempt < _max_attempts(ctx):
            backoff = timedelta(seconds=min(300, 5 * 2 ** (ctx.attempt - 1)))
            _finish(
                ctx,
                state=JobState.QUEUED,
                error=message,
                run_after=utcnow() + backoff,
                finished_at=None,
            )
            return JobState.QUEUED
        _finish(ctx, state=JobState.FAILED, error=message)
        return JobState.FAILED
    finally:
        stop.set()
        beater.join(timeout=5)
    if _finish(
        ctx, state=JobState.SUCCEEDED, progress=100, result=json.dumps(result), message="done"
    ):
        return JobState.SUCCEEDED
    return "lost"


def _max_attempts(ctx: JobContext) -> int:
    with ctx.database.session() as s:
        return int(s.scalar(select(Job.max_attempts).where(Job.id == ctx.job_id)) or 1)


class Worker:
    """Claims and runs jobs until stopped. Used by ``cleanroom worker`` and, as a thread,
    by ``cleanroom serve``."""

    def __init__(self, database: Database, settings: Settings, worker_id: str | None = None):
        import os
        import socket

        self.database = database
        self.settings = settings
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stop_event = threading.Event()
        self._last_run: dict[str, float] = {}

    def run_periodic(self, now: float | None = None) -> list[str]:
        """Run the housekeeping that is due (:func:`periodic`); the names run. A failure is
        logged and retried at the next interval."""
        now = time.monotonic() if now is None else now
        ran = []
        for name, (seconds, fn) in PERIODIC.items():
            last = self._last_run.get(name)
            if last is not None and now - last < seconds:
                continue
            self._last_run[name] = now
            try:
                fn(self.database, self.settings)
            except Exception:
                log.exception("worker: housekeeping %s failed", name)
            ran.append(name)
        return ran

    def run_once(self) -> str | None:
        ctx = claim(self.database, self.settings, self.worker_id)
        if ctx is None:
            return None
        log.info(
            "job %s (%s) attempt %s started by %s",
            ctx.job_id,
            ctx.kind,
            ctx.attempt,
            self.worker_id,
        )
        state = run(ctx)
        log.info("job %s finished: %s", ctx.job_id, state)
        return state

    def run_forever(self) -> None:
        while not self.stop_event.is_set():
            self.run_periodic()
            try:
                state = self.run_once()
            except CleanroomError as err:
                log.error("worker: %s", err.message)
                state = None
            except Exception:
                log.exception("worker: unexpected error while claiming a job")
                state = None
            if state is None:
                self.stop_event.wait(self.settings.worker_poll_seconds)

    def stop(self) -> None:
        self.stop_event.set()

    def start_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.run_forever, name="cleanroom-worker", daemon=True)
        thread.start()
        return thread
