"""Job kinds used by the job-queue tests (loaded with CLEANROOM_TASK_MODULES=tests.jobtasks)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from hub.errors import BadRequest
from hub.jobs.services import JobContext, task


@task("test.sleep")
def sleep(ctx: JobContext) -> dict[str, Any]:
    """Works for ``seconds`` in small steps, logging start and end lines with the worker's
    pid, so a test can prove that no two runs overlapped."""
    log = Path(ctx.payload["log"])
    seconds = float(ctx.payload.get("seconds", 1))
    with log.open("a") as fh:
        fh.write(f"start {ctx.job_id} {os.getpid()} {ctx.attempt} {time.time():.6f}\n")
    steps = max(1, int(seconds / 0.05))
    for i in range(steps):
        time.sleep(seconds / steps)
        ctx.progress(int(100 * (i + 1) / steps), f"step {i + 1}/{steps}")
    with log.open("a") as fh:
        fh.write(f"end {ctx.job_id} {os.getpid()} {ctx.attempt} {time.time():.6f}\n")
    return {"pid": os.getpid(), "attempt": ctx.attempt}


@task("test.crash")
def crash(ctx: JobContext) -> None:
    raise RuntimeError(f"simulated crash on attempt {ctx.attempt}")


@task("test.refuse")
def refuse(ctx: JobContext) -> None:
    raise BadRequest("column `viability`: 3 values above 100 %; check the unit")
